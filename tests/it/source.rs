//! The upstream client against a real HTTP server on loopback (wiremock).

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use chrono_tz::Europe::Stockholm;
use nprov_sync::source::{Auth, Client, RetryReason, SourceError, SourceSettings, USER_AGENT};
use nprov_sync::window::{covering, Window};
use secrecy::SecretString;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

fn settings(url: &str, rate: u32) -> SourceSettings {
    SourceSettings {
        name: "test".into(),
        base_url: url.into(),
        rate_limit_per_second: NonZeroU32::new(rate).expect("non-zero"),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        max_attempts: 3,
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(50),
        auth: Auth::default(),
    }
}

fn window() -> Window {
    let t = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    };
    covering(
        Stockholm,
        t("2026-01-10T08:00:00Z"),
        t("2026-01-10T09:59:00Z"),
    )
}

const API: &str = "/api/skolplattform/nationellaprov";

#[tokio::test]
async fn a_429_is_retried_after_the_time_the_server_names() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(API))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(API))
        .respond_with(ResponseTemplate::new(200).set_body_string("<ok/>"))
        .mount(&server)
        .await;
    let client = Client::new(settings(&server.uri(), 5)).expect("client");
    let mut retries = Vec::new();
    let started = Instant::now();
    let fetched = client
        .fetch(&window(), |reason, status| retries.push((reason, status)))
        .await
        .expect("second attempt succeeds");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    assert_eq!((fetched.status, fetched.attempts), (200, 2));
    assert_eq!(retries, vec![(RetryReason::RateLimited, Some(429))]);
}

#[tokio::test]
async fn a_401_fails_at_once_and_says_what_to_check() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401))
        .expect(1)
        .mount(&server)
        .await;
    let client = Client::new(settings(&server.uri(), 5)).expect("client");
    let err = client
        .fetch(&window(), |_, _| {})
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, SourceError::Refused { status: 401, .. }));
    assert!(err.to_string().contains("client certificate"), "{err}");
}

#[tokio::test]
async fn server_errors_are_retried_a_bounded_number_of_times() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(502))
        .expect(3)
        .mount(&server)
        .await;
    let client = Client::new(settings(&server.uri(), 50)).expect("client");
    let err = client
        .fetch(&window(), |_, _| {})
        .await
        .err()
        .expect("gave up");
    assert!(
        matches!(
            err,
            SourceError::GaveUp {
                status: 502,
                attempts: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.wants_split());
}

#[tokio::test]
async fn a_413_asks_for_a_smaller_window() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(413))
        .mount(&server)
        .await;
    let client = Client::new(settings(&server.uri(), 50)).expect("client");
    let err = client
        .fetch(&window(), |_, _| {})
        .await
        .err()
        .expect("too large");
    assert!(err.wants_split());
}

#[tokio::test]
async fn requests_carry_the_window_our_name_and_credentials_but_the_url_carries_no_secret() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(API))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let mut s = settings(&format!("{}/", server.uri()), 50);
    s.auth.basic = Some(("kommun".into(), SecretString::from("hemligt")));
    let client = Client::new(s).expect("client");
    client.fetch(&window(), |_, _| {}).await.expect("ok");
    let received = server.received_requests().await.expect("recorded");
    let r = &received[0];
    assert_eq!(
        r.url.query(),
        Some("from=2026-01-10T09%3A00&tom=2026-01-10T10%3A59")
    );
    assert_eq!(
        r.headers
            .get("user-agent")
            .expect("ua")
            .to_str()
            .expect("text"),
        USER_AGENT
    );
    assert!(r
        .headers
        .get("authorization")
        .expect("auth")
        .to_str()
        .expect("text")
        .starts_with("Basic "));
    assert!(!r.url.as_str().contains("hemligt"));

    let refused = Client::new(settings("https://kommun:hemligt@example.invalid", 5))
        .err()
        .expect("refused");
    assert!(!refused.to_string().contains("hemligt"), "{refused}");
}

#[tokio::test]
async fn no_one_second_interval_sees_more_requests_than_the_rate_limit() {
    let server = MockServer::start().await;
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = arrivals.clone();
    Mock::given(method("GET"))
        .respond_with(move |_: &Request| {
            seen.lock().expect("lock").push(Instant::now());
            ResponseTemplate::new(200)
        })
        .mount(&server)
        .await;
    let client = Arc::new(Client::new(settings(&server.uri(), 5)).expect("client"));
    // Several windows at once, as a catch-up with concurrency would send them.
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.fetch(&window(), |_, _| {}).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("fetch");
    }
    let times = arrivals.lock().expect("lock").clone();
    assert_eq!(times.len(), 12);
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .filter(|u| **u < *t + Duration::from_secs(1))
            .count();
        assert!(in_window <= 5, "{in_window} requests within one second");
    }
}

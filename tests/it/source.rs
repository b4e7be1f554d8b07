//! The upstream client against a real HTTP server on loopback (wiremock).

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use chrono_tz::Europe::Stockholm;
use nprov_sync::source::{
    Auth, Client, Event, RetryReason, SourceError, SourceSettings, USER_AGENT,
};
use nprov_sync::sync::{next_step, Next, SyncError};
use nprov_sync::window::{covering, Window};
use secrecy::SecretString;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// What the sync engine does after a client error.
fn next(e: SourceError) -> Next {
    next_step(&SyncError::Source(e))
}

fn settings(url: &str, rate: u32) -> SourceSettings {
    SourceSettings {
        name: "test".into(),
        base_url: url.into(),
        rate_limit_per_second: NonZeroU32::new(rate).expect("non-zero"),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        read_timeout: nprov_sync::source::DEFAULT_READ_TIMEOUT,
        max_retry_wait: nprov_sync::source::DEFAULT_MAX_RETRY_WAIT,
        redirects: Default::default(),
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
    let mut events = Vec::new();
    let started = Instant::now();
    let fetched = client
        .fetch(&window(), |e| {
            events.push(match e {
                Event::Attempt { status, .. } => ("attempt", None, status),
                Event::Retry { reason, status } => ("retry", Some(reason), status),
            })
        })
        .await
        .expect("second attempt succeeds");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    assert_eq!((fetched.status, fetched.attempts), (200, 2));
    // Every attempt and the retry between them, in the order they happened.
    assert_eq!(
        events,
        vec![
            ("attempt", None, Some(429)),
            ("retry", Some(RetryReason::RateLimited), Some(429)),
            ("attempt", None, Some(200)),
        ]
    );
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
        .fetch(&window(), |_| {})
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
        .fetch(&window(), |_| {})
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
    assert_eq!(next(err), Next::RetryLater);
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
        .fetch(&window(), |_| {})
        .await
        .err()
        .expect("too large");
    assert_eq!(next(err), Next::Split);
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
    client.fetch(&window(), |_| {}).await.expect("ok");
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
            c.fetch(&window(), |_| {}).await.map(|_| ())
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

#[tokio::test]
async fn an_absurd_wait_asked_by_the_server_fails_the_window_at_once_and_says_what_was_asked() {
    for (status, header, value) in [
        (429, "x-ratelimit-reset", "1e20"),
        (429, "x-ratelimit-reset", "1e300"),
        (503, "retry-after", "1000000000"),
        (429, "retry-after", "301"),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(status).insert_header(header, value))
            .expect(1)
            .mount(&server)
            .await;
        let client = Client::new(settings(&server.uri(), 50)).expect("client");
        let err = tokio::time::timeout(Duration::from_secs(10), client.fetch(&window(), |_| {}))
            .await
            .expect("no wait at all")
            .err()
            .expect("given up");
        assert!(
            matches!(err, SourceError::WaitTooLong { status: s, .. } if s == status),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(value) && text.contains("max_retry_wait (5m)"),
            "{text}"
        );
        assert_eq!(err.status(), Some(status));
        assert_eq!(next(err), Next::RetryLater);
    }
}

#[tokio::test]
async fn a_redirect_is_not_followed_by_default_and_its_location_is_named() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(302).insert_header("location", "http://platform.invalid/steal"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let client = Client::new(settings(&server.uri(), 50)).expect("client");
    let err = client
        .fetch(&window(), |_| {})
        .await
        .err()
        .expect("not followed");
    assert!(
        matches!(err, SourceError::Redirected { status: 302, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("http://platform.invalid/steal") && text.contains("same-origin"),
        "{text}"
    );
}

#[tokio::test]
async fn with_same_origin_allowed_a_moved_endpoint_is_followed_and_nothing_else_is() {
    let server = MockServer::start().await;
    let elsewhere = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<stolen/>"))
        .expect(0)
        .mount(&elsewhere)
        .await;
    // Moved within the origin (a relative Location): followed, the query kept by the server.
    Mock::given(method("GET"))
        .and(path(format!("/v1{API}")))
        .respond_with(|req: &Request| {
            ResponseTemplate::new(308).insert_header(
                "location",
                format!("/v2{API}?{}", req.url.query().unwrap_or_default()).as_str(),
            )
        })
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/v2{API}")))
        .respond_with(ResponseTemplate::new(200).set_body_string("<ok/>"))
        .mount(&server)
        .await;
    // A loop, and a hop to another port (another origin).
    Mock::given(method("GET"))
        .and(path(format!("/loop{API}")))
        .respond_with(
            ResponseTemplate::new(302).insert_header("location", format!("/loop{API}").as_str()),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/away{API}")))
        .respond_with(
            ResponseTemplate::new(301)
                .insert_header("location", format!("{}{API}", elsewhere.uri()).as_str()),
        )
        .mount(&server)
        .await;
    let client = |base: &str| {
        let mut s = settings(&format!("{}{base}", server.uri()), 1000);
        s.redirects = nprov_sync::source::Redirects::SameOrigin;
        Client::new(s).expect("client")
    };
    let fetched = client("/v1")
        .fetch(&window(), |_| {})
        .await
        .expect("followed within the origin");
    assert_eq!(fetched.attempts, 1, "a hop is not a failed attempt");
    let got = server.received_requests().await.expect("recorded");
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].url.query(), got[0].url.query());

    let err = client("/loop")
        .fetch(&window(), |_| {})
        .await
        .err()
        .expect("a loop ends");
    assert!(err.to_string().contains("too many redirects"), "{err}");
    let looped = server
        .received_requests()
        .await
        .expect("recorded")
        .iter()
        .filter(|r| r.url.path().starts_with("/loop"))
        .count();
    assert_eq!(looped as u32, nprov_sync::source::MAX_REDIRECTS + 1);

    let err = client("/away")
        .fetch(&window(), |_| {})
        .await
        .err()
        .expect("another origin is never followed");
    assert!(
        err.to_string().contains("another scheme, host or port"),
        "{err}"
    );
}

#[test]
fn credentials_travel_only_over_https_or_to_loopback_and_only_http_schemes_are_accepted() {
    let with_password = |url: &str| {
        let mut s = settings(url, 5);
        s.auth.basic = Some(("kommun".into(), SecretString::from("hemligt")));
        Client::new(s)
    };
    let with_token = |url: &str| {
        let mut s = settings(url, 5);
        s.auth.bearer = Some(SecretString::from("token"));
        Client::new(s)
    };
    for refused in [
        with_password("http://platform.example.se"),
        with_token("http://platform.example.se"),
        with_token("http://10.0.0.1:8080"),
        Client::new(settings("ftp://platform.example.se", 5)),
        Client::new(settings("file:///etc/passwd", 5)),
    ] {
        let err = refused.err().expect("refused");
        let SourceError::Config { setting, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(*setting, "url");
        assert!(!err.to_string().contains("hemligt"), "{err}");
    }
    for accepted in [
        with_password("https://platform.example.se"),
        with_password("http://127.0.0.1:8080"),
        with_password("http://localhost:8080"),
        with_token("http://[::1]:8080"),
        // Without credentials there is nothing to leak.
        Client::new(settings("http://platform.example.se", 5)),
    ] {
        accepted.expect("accepted");
    }
}

//! The sync engine against a loopback HTTP server that answers each window with a document.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Europe::Stockholm;
use nprov_sync::source::{Auth, Client, SourceSettings};
use nprov_sync::store::Store;
use nprov_sync::sync::{catch_up, SyncSource};
use nprov_sync::window::{parse_local, Plan};
use nprov_sync::xml::Limits;
use sqlx::Row;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::helpers::*;

/// A document with one provområde named after the window it answers.
fn answer(req: &Request) -> String {
    let q: std::collections::HashMap<_, _> = req.url.query_pairs().into_owned().collect();
    doc(&[kurs(
        &format!("e-{}", q["from"]),
        "MATMAT01a",
        "GY",
        vec![pt("2026-01-10", "A", &[])],
    )])
}

pub(crate) fn source(url: &str, max_window_hours: i64) -> SyncSource {
    source_with(
        url,
        max_window_hours,
        nprov_sync::source::DEFAULT_READ_TIMEOUT,
    )
}

fn source_with(url: &str, max_window_hours: i64, read_timeout: Duration) -> SyncSource {
    let client = Client::new(SourceSettings {
        name: "default".into(),
        base_url: url.into(),
        rate_limit_per_second: NonZeroU32::new(50).expect("non-zero"),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        read_timeout,
        max_retry_wait: nprov_sync::source::DEFAULT_MAX_RETRY_WAIT,
        redirects: Default::default(),
        max_attempts: 3,
        backoff_base: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(20),
        auth: Auth::default(),
    })
    .expect("client");
    SyncSource {
        client,
        plan: Plan {
            tz: Stockholm,
            overlap: chrono::Duration::minutes(30),
            safety_lag: chrono::Duration::minutes(2),
            max_window: chrono::Duration::hours(max_window_hours),
        },
        start: parse_local("2026-01-10T00:00").expect("start"),
        limits: Limits {
            max_document_bytes: Some(1 << 20),
            ..Limits::default()
        },
        body_attempts: 3,
        // Fixed windows: these tests count them.
        target_response_bytes: 0,
        max_in_flight: 1,
        certificates: Default::default(),
        metrics: SyncSource::detached_metrics("default"),
    }
}

fn horizon() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-11T00:02:00Z")
        .expect("time")
        .with_timezone(&Utc)
}

async fn runs(db: &TestDb) -> Vec<(String, String, String)> {
    sqlx::query("SELECT from_local, tom_local, outcome FROM sync_run ORDER BY id")
        .fetch_all(db.store.pool())
        .await
        .expect("runs")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn a_catch_up_commits_every_window_and_ends_at_the_horizon_despite_a_503() {
    let server = MockServer::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    Mock::given(wiremock::matchers::method("GET"))
        .respond_with(move |req: &Request| {
            if c.fetch_add(1, Ordering::SeqCst) == 2 {
                return ResponseTemplate::new(503);
            }
            ResponseTemplate::new(200).set_body_string(answer(req))
        })
        .mount(&server)
        .await;
    let db = fresh_sqlite().await;
    let src = source(&server.uri(), 6);
    let reports = catch_up(&db.store, &src, horizon(), |_| {})
        .await
        .expect("caught up");
    // From 2026-01-10T00:00 local (23:00Z) to 00:00Z: 25 hours in windows of 6 h minus overlap.
    assert_eq!(reports.len(), 5);
    let wm = db
        .store
        .watermark("default")
        .await
        .expect("read")
        .expect("set");
    assert_eq!(wm.utc.to_rfc3339(), "2026-01-11T00:00:00+00:00");
    let r = runs(&db).await;
    assert_eq!(r.len(), 5);
    assert!(r.iter().all(|(_, _, outcome)| outcome == "ok"));
    assert_eq!(r[0].0, "2026-01-10T00:00");
    for pair in r.windows(2) {
        assert!(pair[1].0 < pair[0].1, "windows overlap: {pair:?}");
    }
    assert_eq!(db.store.table_counts().await.expect("counts").provomrade, 5);
    // Nothing left to do: a second catch-up asks for nothing.
    assert!(catch_up(&db.store, &src, horizon(), |_| {})
        .await
        .expect("idle")
        .is_empty());
}

#[tokio::test]
async fn a_body_cut_short_is_fetched_again_and_commits_once() {
    let server = MockServer::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    Mock::given(wiremock::matchers::method("GET"))
        .respond_with(move |req: &Request| {
            let body = answer(req);
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                // A proxy that gives up half-way.
                return ResponseTemplate::new(200)
                    .set_body_string(body[..body.len() / 2].to_string());
            }
            ResponseTemplate::new(200).set_body_string(body)
        })
        .mount(&server)
        .await;
    let db = fresh_sqlite().await;
    let reports = catch_up(&db.store, &source(&server.uri(), 30), horizon(), |_| {})
        .await
        .expect("ok");
    assert_eq!(reports.len(), 1);
    assert_eq!(runs(&db).await.len(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_window_that_stays_malformed_fails_with_its_location_and_keeps_the_watermark() {
    let server = MockServer::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    Mock::given(wiremock::matchers::method("GET"))
        .respond_with(move |req: &Request| {
            let body = answer(req);
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                return ResponseTemplate::new(200).set_body_string(body);
            }
            ResponseTemplate::new(200).set_body_string(body.replace("</kursresultat>", "</kurs>"))
        })
        .mount(&server)
        .await;
    let db = fresh_sqlite().await;
    let err = catch_up(&db.store, &source(&server.uri(), 6), horizon(), |_| {})
        .await
        .expect_err("second window fails");
    let text = err.to_string();
    assert!(text.contains("line ") && text.contains("column "), "{text}");
    let wm = db
        .store
        .watermark("default")
        .await
        .expect("read")
        .expect("first window committed");
    let r = runs(&db).await;
    assert_eq!(
        r.iter().map(|x| x.2.as_str()).collect::<Vec<_>>(),
        vec!["ok", "failed"]
    );
    assert_eq!(wm.local.format("%Y-%m-%dT%H:%M").to_string(), r[0].1);
    // Three whole attempts at the broken window, after the first good one.
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_window_the_server_finds_too_large_is_split_until_it_fits() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::method("GET"))
        .respond_with(move |req: &Request| {
            let q: std::collections::HashMap<_, _> = req.url.query_pairs().into_owned().collect();
            let (from, tom) = (
                parse_local(&q["from"]).expect("from"),
                parse_local(&q["tom"]).expect("tom"),
            );
            if tom - from > chrono::Duration::hours(2) {
                return ResponseTemplate::new(413);
            }
            ResponseTemplate::new(200).set_body_string(answer(req))
        })
        .mount(&server)
        .await;
    let db = fresh_sqlite().await;
    let reports = catch_up(&db.store, &source(&server.uri(), 30), horizon(), |_| {})
        .await
        .expect("ok");
    assert!(reports.len() >= 13, "{} parts", reports.len());
    for r in &reports {
        assert!(r.window.tom_utc - r.window.from_utc <= chrono::Duration::hours(2));
    }
    let wm = db
        .store
        .watermark("default")
        .await
        .expect("read")
        .expect("set");
    assert_eq!(wm.utc.to_rfc3339(), "2026-01-11T00:00:00+00:00");
}

/// A platform on a raw socket that starts every window longer than `stall_above` and then goes
/// silent (headers and a few bytes of body, then nothing, the connection held open); shorter
/// windows get a whole document. wiremock can only delay a whole response, not stall a body.
async fn stalling_platform(stall_above: chrono::Duration) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let stalls = Arc::new(AtomicUsize::new(0));
    let counted = stalls.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            socket.set_nodelay(true).expect("nodelay");
            let stalls = counted.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let target = head.split(' ').nth(1).expect("request target");
                let url = reqwest::Url::parse(&format!("http://x{target}")).expect("url");
                let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
                let (from, tom) = (
                    parse_local(&q["from"]).expect("from"),
                    parse_local(&q["tom"]).expect("tom"),
                );
                let body = doc(&[kurs(
                    &format!("e-{}", q["from"]),
                    "MATMAT01a",
                    "GY",
                    vec![pt("2026-01-10", "A", &[])],
                )]);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                if tom - from > stall_above {
                    stalls.fetch_add(1, Ordering::SeqCst);
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(&body.as_bytes()[..40]).await;
                    tokio::time::sleep(Duration::from_secs(60)).await;
                } else {
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(body.as_bytes()).await;
                }
            });
        }
    });
    (url, stalls)
}

#[tokio::test]
async fn a_body_that_stalls_is_a_timeout_that_splits_its_window_and_is_recorded_with_its_status() {
    let (url, stalls) = stalling_platform(chrono::Duration::hours(3)).await;
    let db = fresh_sqlite().await;
    let src = source_with(&url, 6, Duration::from_millis(300));
    let started = std::time::Instant::now();
    let reports = catch_up(&db.store, &src, horizon(), |_| {})
        .await
        .expect("the split windows commit");
    // Each stall costs one read_timeout (0.3 s); were it noticed by request_timeout, a single
    // stall would take the 10 s this bound allows for all of them.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(stalls.load(Ordering::SeqCst) >= 1);
    for r in &reports {
        assert!(r.window.tom_utc - r.window.from_utc <= chrono::Duration::hours(3));
    }
    let wm = db
        .store
        .watermark("default")
        .await
        .expect("read")
        .expect("set");
    assert_eq!(wm.utc.to_rfc3339(), "2026-01-11T00:00:00+00:00");
    // Each stalled attempt is on record as a timeout, with the 200 it had received.
    let failed =
        sqlx::query("SELECT http_status, error FROM sync_run WHERE outcome = 'failed' ORDER BY id")
            .fetch_all(db.store.pool())
            .await
            .expect("runs");
    assert_eq!(failed.len(), stalls.load(Ordering::SeqCst));
    for row in &failed {
        let (status, error): (Option<i64>, String) = (row.get(0), row.get(1));
        assert_eq!(status, Some(200), "{error}");
        assert!(
            error.contains("timed out") && error.contains("stalled at line 1"),
            "{error}"
        );
    }
}

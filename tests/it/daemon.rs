//! The daemon as a whole: scheduled against the simulator and a mock upstream, scraped over
//! HTTP, reloaded and stopped through its injected world.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Europe::Stockholm;
use nprov_sync::config::Settings;
use nprov_sync::daemon::{self, Loaded, Loader, Notifier, World};
use nprov_sync::metrics::Metrics;
use nprov_sync::simulate::server::{serve, Faults, Simulator, Stats, VirtualClock};
use nprov_sync::simulate::{Platform, Population};
use nprov_sync::store::Store;
use nprov_sync::xml::version::newest;
use tokio_util::sync::CancellationToken;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::helpers::*;

/// Remembers what the daemon told systemd.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Notifier for Recorder {
    fn notify(&self, state: &[sd_notify::NotifyState<'_>]) {
        let mut seen = self.0.lock().expect("lock");
        seen.extend(state.iter().map(ToString::to_string));
    }
}

impl Recorder {
    fn seen(&self) -> Vec<String> {
        self.0.lock().expect("lock").clone()
    }
}

/// A daemon running in this test's runtime.
struct Running {
    metrics_url: String,
    shutdown: CancellationToken,
    reload: tokio::sync::mpsc::Sender<()>,
    notifier: Arc<Recorder>,
    handle: tokio::task::JoinHandle<Result<(), daemon::DaemonError>>,
}

impl Running {
    async fn scrape(&self) -> String {
        reqwest::get(format!("{}/metrics", self.metrics_url))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body")
    }

    /// Scrapes until `ready` says the metrics show what the test waits for (at most `limit`).
    async fn scrape_until(&self, limit: Duration, ready: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let text = self.scrape().await;
            if ready(&text) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the metrics never got there; last scrape:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Cancels and waits for the daemon to return (bounded).
    async fn stop(self) -> Vec<String> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the daemon stops within its grace period")
            .expect("the daemon task")
            .expect("the daemon returns Ok");
        self.notifier.seen()
    }
}

fn load(config: &std::path::Path) -> Result<Loaded, String> {
    let settings = Settings::load(Some(config), Vec::new()).map_err(|e| e.to_string())?;
    let sources =
        nprov_sync::sync::sources(&settings, Some(config), None).map_err(|e| e.to_string())?;
    let provisioning = nprov_sync::provisioning::sources(&settings, Some(config), None)
        .map_err(|e| e.to_string())?;
    Ok(Loaded {
        settings,
        sources,
        provisioning,
    })
}

async fn start(store: Arc<dyn Store>, config: std::path::PathBuf) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let metrics_url = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    let (reload, reload_rx) = tokio::sync::mpsc::channel(4);
    let notifier = Arc::new(Recorder::default());
    let loaded = load(&config).expect("the test configuration loads");
    let loader: Loader = Box::new(move || load(&config));
    let world = World {
        listener: Some(listener),
        shutdown: shutdown.clone(),
        reload: reload_rx,
        loader,
        notifier: notifier.clone(),
        metrics: Metrics::new(),
        watchdog: None,
    };
    let handle = tokio::spawn(daemon::run(store, loaded, world));
    Running {
        metrics_url,
        shutdown,
        reload,
        notifier,
        handle,
    }
}

/// The value of one series in a scrape (0 when absent).
pub(crate) fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

fn local_minutes_ago(minutes: i64) -> String {
    (Utc::now() - chrono::Duration::minutes(minutes))
        .with_timezone(&Stockholm)
        .format("%Y-%m-%dT%H:%M")
        .to_string()
}

fn write_config(dir: &std::path::Path, db: &std::path::Path, sources: &str) -> std::path::PathBuf {
    let path = dir.join("nprov.toml");
    std::fs::write(
        &path,
        format!(
            "[database]\nurl = \"sqlite://{}\"\n[daemon]\nshutdown_grace = \"10s\"\nfailure_backoff_max = \"1s\"\n{sources}",
            db.display()
        ),
    )
    .expect("write config");
    path
}

async fn sqlite_at(path: &std::path::Path) -> Arc<nprov_sync::store::SqliteStore> {
    let store = nprov_sync::store::SqliteStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("open");
    store.migrate().await.expect("migrate");
    Arc::new(store)
}

/// A simulator on real time whose students' results change between `hours` hours and one hour
/// ago.
pub(crate) async fn simulator(
    students: u64,
    hours: i64,
    rate_limit: Option<u32>,
) -> (String, Arc<Platform>) {
    let now = Utc::now();
    let platform = Arc::new(Platform::new(
        Population {
            students,
            seed: 77,
            version: newest(),
            year: 2026,
        },
        Stockholm,
        now - chrono::Duration::hours(hours),
        now - chrono::Duration::hours(1),
        3,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let sim = Simulator {
        platform: platform.clone(),
        clock: VirtualClock::new(now),
        faults: Faults {
            rate_limit_per_second: rate_limit,
            seed: 9,
            ..Faults::default()
        },
        load: Default::default(),
        basic: None,
    };
    tokio::spawn(serve(
        listener,
        sim,
        Arc::new(Stats::default()),
        std::future::pending(),
    ));
    (url, platform)
}

#[tokio::test]
async fn a_running_daemon_exports_what_happens_a_429_a_failed_window_and_a_quarantined_record() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("d.db");
    // "sim": the simulator answers 429 beyond 3 requests a second; the client may send 20.
    let (sim_url, platform) = simulator(120, 20, Some(3)).await;
    // "broken": the first request fails for good (one attempt allowed), then every window
    // carries one element that breaks the XSD.
    let broken = MockServer::start().await;
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    let bad = std::fs::read_to_string(fixture("bad/record-bad-arskurs.xml")).expect("fixture");
    Mock::given(wiremock::matchers::method("GET"))
        .respond_with(move |_: &Request| {
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                ResponseTemplate::new(500)
            } else {
                ResponseTemplate::new(200).set_body_string(bad.clone())
            }
        })
        .mount(&broken)
        .await;
    let config = write_config(
        dir.path(),
        &db,
        &format!(
            "[[source]]\nname = \"sim\"\nurl = \"{sim_url}\"\nstart = \"{}\"\nmax_window = \"2h\"\nrate_limit_per_second = 20\nschedule = \"*/2 * * * * *\"\n\
             [[source]]\nname = \"broken\"\nurl = \"{}\"\nstart = \"{}\"\nmax_attempts = 1\nschedule = \"* * * * * *\"\n",
            local_minutes_ago(24 * 60),
            broken.uri(),
            local_minutes_ago(90),
        ),
    );
    let store = sqlite_at(&db).await;
    let daemon = start(store.clone(), config).await;

    let text = daemon
        .scrape_until(Duration::from_secs(60), |t| {
            value(t, r#"nprov_sync_lag_seconds{source="sim"}"#) > 0.0
                && value(t, r#"nprov_sync_lag_seconds{source="sim"}"#) < 300.0
                && value(
                    t,
                    r#"nprov_sync_records_quarantined_total{source="broken"}"#,
                ) >= 1.0
                && value(
                    t,
                    r#"nprov_sync_windows_total{kind="sync",outcome="failed",source="broken"}"#,
                ) >= 1.0
        })
        .await;
    // The 429s were received, counted and retried; the catch-up still completed.
    assert!(value(&text, r#"nprov_sync_http_rate_limited_total{source="sim"}"#) >= 1.0);
    assert!(
        value(
            &text,
            r#"nprov_sync_http_retries_total{reason="rate_limited",source="sim"}"#
        ) >= 1.0
    );
    assert!(
        value(
            &text,
            r#"nprov_sync_http_requests_total{class="4xx",source="sim"}"#
        ) >= 1.0
    );
    assert_eq!(
        value(
            &text,
            r#"nprov_sync_windows_total{kind="sync",outcome="failed",source="sim"}"#
        ),
        0.0
    );
    assert!(value(&text, r#"nprov_sync_records_received_total{source="sim"}"#) > 0.0);
    // The failed window: counted, and followed by successes after the back-off.
    assert!(
        value(
            &text,
            r#"nprov_sync_http_requests_total{class="5xx",source="broken"}"#
        ) >= 1.0
    );
    assert!(
        value(
            &text,
            r#"nprov_sync_windows_total{kind="sync",outcome="ok",source="broken"}"#
        ) >= 1.0
    );
    assert!(
        value(
            &text,
            r#"nprov_sync_last_success_timestamp_seconds{source="broken"}"#
        ) > 0.0
    );
    assert_eq!(value(&text, r#"nprov_leader{source="sim"}"#), 1.0);
    let build_info = text
        .lines()
        .find(|l| l.starts_with("nprov_build_info{"))
        .unwrap_or_else(|| panic!("no nprov_build_info in\n{text}"));
    assert!(
        build_info.contains(r#"version="0.1.0""#)
            && build_info.contains("revision=\"")
            && !build_info.contains(r#"rustc="unknown""#)
            && build_info.ends_with(" 1"),
        "{build_info}"
    );
    assert!(text.contains("process_resident_memory_bytes"));

    let ready = reqwest::get(format!("{}/readyz", daemon.metrics_url))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value =
        serde_json::from_str(&ready.text().await.expect("body")).expect("json");
    assert_eq!(body["database"], "ok");
    assert_eq!(body["sources"].as_array().map(Vec::len), Some(2));
    let health = reqwest::get(format!("{}/healthz", daemon.metrics_url))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);

    let notified = daemon.stop().await;
    assert_eq!(notified.first().map(String::as_str), Some("READY=1"));
    assert!(notified.iter().any(|n| n == "STOPPING=1"), "{notified:?}");
    assert!(
        notified.iter().any(|n| n.starts_with("STATUS=2 source(s)")),
        "{notified:?}"
    );

    // What the daemon synced is the platform's state, for every student it holds.
    let expected = platform.current_state(Utc::now()).len() as i64;
    let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM provomrade WHERE source = 'sim'")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(held, expected);
}

/// A mock platform whose answers take `delay`, counting requests.
async fn slow_platform(delay: Duration) -> (MockServer, Arc<AtomicUsize>) {
    let server = MockServer::start().await;
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    Mock::given(wiremock::matchers::method("GET"))
        .respond_with(move |_: &Request| {
            seen.fetch_add(1, Ordering::SeqCst);
            ResponseTemplate::new(200)
                .set_body_string(doc(&[kurs("e1", "MATMAT01a", "GY", vec![])]))
                .set_delay(delay)
        })
        .mount(&server)
        .await;
    (server, count)
}

/// Waits (at most 10 s) until the mock platform has been asked once.
async fn first_request(count: &AtomicUsize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no request came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn watermark(store: &dyn Store) -> Option<DateTime<Utc>> {
    store
        .watermark("default")
        .await
        .expect("watermark")
        .map(|w| w.utc)
}

#[tokio::test]
async fn ticks_during_a_run_are_skipped_and_shutdown_lets_the_window_in_flight_commit() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("d.db");
    let (server, count) = slow_platform(Duration::from_secs(3)).await;
    // One window only (start 20 min ago), a tick every second while it takes 3 s.
    let config = write_config(
        dir.path(),
        &db,
        &format!(
            "[[source]]\nurl = \"{}\"\nstart = \"{}\"\nschedule = \"* * * * * *\"\n",
            server.uri(),
            local_minutes_ago(20)
        ),
    );
    let store = sqlite_at(&db).await;
    let daemon = start(store.clone(), config).await;
    first_request(&count).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    // Two ticks came and went while the first window was in flight: no second request.
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(watermark(store.as_ref()).await, None);
    daemon.stop().await;
    // The grace period (10 s) let the window commit before the daemon returned.
    assert!(watermark(store.as_ref()).await.is_some());
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_window_still_in_flight_when_the_grace_period_ends_is_rolled_back() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("d.db");
    let (server, count) = slow_platform(Duration::from_secs(8)).await;
    let config = dir.path().join("nprov.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"sqlite://{}\"\n[daemon]\nshutdown_grace = \"1s\"\n\
             [[source]]\nurl = \"{}\"\nstart = \"{}\"\n",
            db.display(),
            server.uri(),
            local_minutes_ago(20)
        ),
    )
    .expect("config");
    let store = sqlite_at(&db).await;
    let daemon = start(store.clone(), config).await;
    first_request(&count).await;
    let stopping = tokio::time::Instant::now();
    daemon.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(7),
        "the daemon waited for the slow window instead of dropping it"
    );
    // Nothing of the window: no watermark, no committed run.
    assert_eq!(watermark(store.as_ref()).await, None);
    let ok: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sync_run WHERE outcome = 'ok'")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(ok, 0);
}

#[tokio::test]
async fn a_reload_adds_a_source_and_a_broken_configuration_keeps_the_running_one() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("d.db");
    let (first, _) = slow_platform(Duration::ZERO).await;
    let (second, second_count) = slow_platform(Duration::ZERO).await;
    let one = format!(
        "[[source]]\nname = \"a\"\nurl = \"{}\"\nstart = \"{}\"\n",
        first.uri(),
        local_minutes_ago(20)
    );
    let config = write_config(dir.path(), &db, &one);
    let store = sqlite_at(&db).await;
    let daemon = start(store.clone(), config.clone()).await;
    daemon
        .scrape_until(Duration::from_secs(20), |t| {
            value(
                t,
                r#"nprov_sync_windows_total{kind="sync",outcome="ok",source="a"}"#,
            ) >= 1.0
        })
        .await;

    assert_eq!(
        value(
            &daemon.scrape().await,
            "nprov_config_last_reload_successful"
        ),
        1.0
    );
    // A configuration that does not load: logged, and the running one stays. systemd hears
    // RELOADING=1 with the monotonic clock, then READY=1 once the (old) configuration is in
    // force; the metric says the reload was refused.
    std::fs::write(&config, "[database\n").expect("write");
    let notes_before = daemon.notifier.seen().len();
    daemon.reload.send(()).await.expect("reload");
    daemon
        .scrape_until(Duration::from_secs(20), |t| {
            value(t, "nprov_config_last_reload_successful") == 0.0
                && t.contains("nprov_config_last_reload_successful 0")
        })
        .await;
    let notes = daemon.notifier.seen()[notes_before..].to_vec();
    let at = |prefix: &str| {
        notes
            .iter()
            .position(|n| n.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {notes:?}"))
    };
    assert!(
        at("RELOADING=1") < at("MONOTONIC_USEC=") && at("MONOTONIC_USEC=") < at("READY=1"),
        "{notes:?}"
    );
    assert!(notes[at("MONOTONIC_USEC=")]["MONOTONIC_USEC=".len()..]
        .parse::<u64>()
        .is_ok_and(|usec| usec > 0));
    // A good one with a second source: it is scheduled and synced at once.
    let two = format!(
        "{one}[[source]]\nname = \"b\"\nurl = \"{}\"\nstart = \"{}\"\n",
        second.uri(),
        local_minutes_ago(20)
    );
    write_config(dir.path(), &db, &two);
    daemon.reload.send(()).await.expect("reload");
    let text = daemon
        .scrape_until(Duration::from_secs(20), |t| {
            value(
                t,
                r#"nprov_sync_windows_total{kind="sync",outcome="ok",source="b"}"#,
            ) >= 1.0
        })
        .await;
    assert!(second_count.load(Ordering::SeqCst) >= 1);
    assert_eq!(value(&text, r#"nprov_leader{source="a"}"#), 1.0);
    assert_eq!(value(&text, "nprov_config_last_reload_successful"), 1.0);
    // And a source taken out of the configuration gives its lead up.
    let only_b = format!(
        "[[source]]\nname = \"b\"\nurl = \"{}\"\nstart = \"{}\"\n",
        second.uri(),
        local_minutes_ago(20)
    );
    write_config(dir.path(), &db, &only_b);
    daemon.reload.send(()).await.expect("reload");
    // Before: "a" has series in every per-source family. After: none at all, so no alert can
    // fire on a source that is gone (a leader gauge at 0, a watermark that stopped moving).
    assert!(text.contains(r#"nprov_sync_watermark_timestamp_seconds{source="a"}"#));
    let after = daemon
        .scrape_until(Duration::from_secs(20), |t| {
            !t.contains(r#"source="a""#) && value(t, r#"nprov_leader{source="b"}"#) == 1.0
        })
        .await;
    assert!(
        after.contains(r#"nprov_sync_watermark_timestamp_seconds{source="b"}"#),
        "{after}"
    );
    daemon.stop().await;
    for source in ["a", "b"] {
        assert!(store.watermark(source).await.expect("read").is_some());
    }
}

/// The daemon prunes past `[retention]` once at start (and daily): an old failed window is
/// gone shortly after start, and the metrics say how many rows of which table went.
#[tokio::test]
async fn the_daemon_prunes_past_retention_at_start_and_counts_it() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    {
        let store = nprov_sync::store::sqlite::SqliteStore::connect(&url)
            .await
            .expect("open");
        store.migrate().await.expect("migrate");
        let mut old = sync_run(
            nprov_sync::store::RunKind::Sync,
            window("2020-03-01T00:00:00Z", "2020-03-01T23:59:00Z"),
            Default::default(),
            None,
        );
        old.started_at = "2020-03-02T00:00:00Z".parse().expect("time");
        old.finished_at = old.started_at;
        old.error = Some("HTTP 503".into());
        store
            .record_failed_run(&old)
            .await
            .expect("an old failed window");
        store.close().await;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let config = dir.path().join("nprov.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{url}\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\
             [retention]\nsync_run = \"30d\"\n[[source]]\nurl = \"http://127.0.0.1:9\"\n\
             start = \"2026-01-05T00:00\"\n"
        ),
    )
    .expect("config");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .env_remove("NPROV_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start");
    let series = r#"nprov_retention_pruned_rows_total{table="sync_run"}"#;
    let started = std::time::Instant::now();
    let text = loop {
        let text = match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if value(&text, series) >= 1.0 {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no prune within 30 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(value(&text, series), 1.0);
    assert!(value(&text, "nprov_retention_last_success_timestamp_seconds") > 0.0);
    assert!(text.contains(r#"nprov_retention_pruned_rows_total{table="change_log"} 0"#));
    child.kill().await.ok();
}

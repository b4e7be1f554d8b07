//! Full syncs against the simulated platform over HTTP: the mirror must end equal, row for row,
//! to the platform's current state, with faults on, and across both daylight-saving transitions
//! while time passes, with windows starting, ending and straddling each of them.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Europe::Stockholm;
use nprov_sync::simulate::server::{
    serve, serve_tls, Faults, Load, Simulator, Stats, TlsSettings, VirtualClock,
};
use nprov_sync::simulate::{render_to_string, Platform, Population};
use nprov_sync::source::{Auth, Client, SourceSettings};
use nprov_sync::sync::{backfill, catch_up, SyncSource};
use nprov_sync::window::{latest_instant, parse_local, Plan};
use nprov_sync::xml::version::{newest, VersionRules, VERSIONS};
use nprov_sync::xml::Limits;

use crate::helpers::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

/// A platform of `students` (seeded) whose results change 1 to `max_changes` times between two
/// instants.
fn platform(students: u64, seed: u64, first: &str, last: &str, max_changes: u32) -> Platform {
    platform_in(newest(), students, seed, first, last, max_changes)
}

/// As [`platform`], answering in a chosen schema version.
fn platform_in(
    version: &'static VersionRules,
    students: u64,
    seed: u64,
    first: &str,
    last: &str,
    max_changes: u32,
) -> Platform {
    let pop = Population {
        students,
        seed,
        version,
        year: 2026,
    };
    Platform::new(pop, Stockholm, t(first), t(last), max_changes)
}

struct Running {
    url: String,
    stats: Arc<Stats>,
    clock: VirtualClock,
    platform: Arc<Platform>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn simulator(
    platform: Platform,
    now: DateTime<Utc>,
    faults: Faults,
    basic: Option<(&str, &str)>,
) -> Running {
    simulator_loaded(platform, now, faults, Load::default(), basic).await
}

/// As [`simulator`], at a pace or with a response limit of its own.
async fn simulator_loaded(
    platform: Platform,
    now: DateTime<Utc>,
    faults: Faults,
    load: Load,
    basic: Option<(&str, &str)>,
) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let stats = Arc::new(Stats::default());
    let clock = VirtualClock::new(now);
    let platform = Arc::new(platform);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sim = Simulator {
        platform: platform.clone(),
        clock: clock.clone(),
        faults,
        load,
        basic: basic.map(|(u, p)| (u.to_owned(), p.to_owned())),
    };
    tokio::spawn(serve(listener, sim, stats.clone(), async {
        stopped.await.ok();
    }));
    Running {
        url,
        stats,
        clock,
        platform,
        _stop: stop,
    }
}

fn source(
    url: &str,
    rate: u32,
    max_window: chrono::Duration,
    overlap: chrono::Duration,
    start: &str,
) -> SyncSource {
    source_timed(
        url,
        rate,
        max_window,
        overlap,
        start,
        Duration::from_secs(20),
    )
}

fn source_timed(
    url: &str,
    rate: u32,
    max_window: chrono::Duration,
    overlap: chrono::Duration,
    start: &str,
    request_timeout: Duration,
) -> SyncSource {
    SyncSource {
        client: Client::new(SourceSettings {
            name: "default".into(),
            base_url: url.into(),
            rate_limit_per_second: NonZeroU32::new(rate).expect("rate"),
            connect_timeout: Duration::from_secs(2),
            request_timeout,
            read_timeout: nprov_sync::source::DEFAULT_READ_TIMEOUT,
            max_retry_wait: nprov_sync::source::DEFAULT_MAX_RETRY_WAIT,
            redirects: Default::default(),
            max_attempts: 12,
            backoff_base: Duration::from_millis(5),
            backoff_cap: Duration::from_millis(50),
            auth: Auth::default(),
        })
        .expect("client"),
        plan: Plan {
            tz: Stockholm,
            overlap,
            safety_lag: chrono::Duration::minutes(2),
            max_window,
        },
        start: nprov_sync::window::parse_local(start).expect("start"),
        limits: Limits::default(),
        body_attempts: 12,
        // Fixed windows unless a test paces them.
        target_response_bytes: 0,
        max_in_flight: 1,
        certificates: Default::default(),
        metrics: SyncSource::detached_metrics("default"),
    }
}

/// The platform's current state imported as one document into a fresh database: what a correct
/// sync must equal.
pub(crate) async fn reference(platform: &Platform, now: DateTime<Utc>) -> Vec<String> {
    let db = fresh_sqlite().await;
    let xml = render_to_string(
        newest(),
        "2000-01-01T00:00:00",
        "2100-01-01T00:00:00",
        &platform.current_state(now),
    );
    import_at(&db.store, "default", &xml, at(0))
        .await
        .expect("reference import");
    dump(&db.store).await
}

#[tokio::test]
async fn a_full_catch_up_equals_the_platforms_current_state_row_for_row() {
    let platform = platform(400, 11, "2026-01-05T00:00:00Z", "2026-01-12T00:00:00Z", 3);
    let now = t("2026-01-12T06:00:00Z");
    let sim = simulator(platform, now, Faults::default(), None).await;
    let db = fresh_sqlite().await;
    let src = source(
        &sim.url,
        200,
        chrono::Duration::hours(12),
        chrono::Duration::minutes(30),
        "2026-01-05T00:00",
    );
    catch_up(&db.store, &src, now, |_| {})
        .await
        .expect("catch up");
    assert_eq!(dump(&db.store).await, reference(&sim.platform, now).await);
    assert!(sim.platform.changes_by(now) > 400);
}

#[tokio::test]
async fn with_faults_and_a_rate_limit_the_catch_up_still_ends_equal_and_polite() {
    // One window at a time, then the next fetched while the last is written (and sized by
    // what the platform answers): faults fall on fetches ahead too.
    for (in_flight, target) in [(1, 0), (2, 16 * 1024), (3, 16 * 1024), (4, 0)] {
        let platform = platform(300, 12, "2026-01-05T00:00:00Z", "2026-01-08T00:00:00Z", 3);
        let now = t("2026-01-08T06:00:00Z");
        let faults = Faults {
            server_error: 0.15,
            truncated: 0.1,
            malformed: 0.1,
            rate_limit_per_second: Some(12),
            seed: 5,
            ..Faults::default()
        };
        let sim = simulator(platform, now, faults, None).await;
        let db = fresh_sqlite().await;
        let mut src = source(
            &sim.url,
            10,
            chrono::Duration::hours(2),
            chrono::Duration::minutes(30),
            "2026-01-05T00:00",
        );
        src.max_in_flight = in_flight;
        src.target_response_bytes = target;
        catch_up(&db.store, &src, now, |_| {})
            .await
            .expect("catch up through faults");
        assert_eq!(
            dump(&db.store).await,
            reference(&sim.platform, now).await,
            "{in_flight} in flight"
        );
        assert!(
            sim.stats.faults.load(Ordering::Relaxed) > 0,
            "no fault was injected"
        );
        assert_eq!(
            sim.stats.rate_limited.load(Ordering::Relaxed),
            0,
            "the client exceeded the limit"
        );
        let arrivals = sim.stats.arrivals.lock().expect("lock").clone();
        for (i, a) in arrivals.iter().enumerate() {
            let within = arrivals[i..]
                .iter()
                .filter(|b| **b < *a + Duration::from_secs(1))
                .count();
            assert!(within <= 10, "{within} requests in one second");
        }
    }
}

#[tokio::test]
async fn a_pipelined_catch_up_commits_in_window_order_and_ends_equal() {
    for in_flight in [2, 3] {
        pipelined_catch_up(in_flight).await;
    }
}

async fn pipelined_catch_up(in_flight: u32) {
    let (sim, db, mut src, now) = a_week_in_six_hour_windows(800, 33).await;
    src.max_in_flight = in_flight;
    let reports = catch_up(&db.store, &src, now, |_| {})
        .await
        .expect("catch up");
    assert_eq!(dump(&db.store).await, reference(&sim.platform, now).await);
    // In order, each past the one before, and no request wasted.
    for pair in reports.windows(2) {
        assert!(pair[1].window.from_utc < pair[0].window.tom_utc);
        assert!(pair[1].window.tom_utc > pair[0].window.tom_utc);
    }
    assert_eq!(
        sim.stats.requests.load(Ordering::Relaxed),
        reports.len() as u64
    );
    let runs = sqlx::query_scalar::<_, String>(
        "SELECT tom_local FROM sync_run WHERE outcome = 'ok' ORDER BY id",
    )
    .fetch_all(db.store.pool())
    .await
    .expect("runs");
    let mut sorted = runs.clone();
    sorted.sort();
    assert_eq!(runs, sorted, "committed out of order");
    assert_eq!(runs.len(), reports.len());
    assert!(
        fetched_ahead(&db, "sync").await > 0,
        "no window was fetched ahead"
    );
}

/// A simulated week (`students`, `seed`) and a fresh mirror, with a source of fixed six-hour
/// windows on it, as of six hours after the week.
async fn a_week_in_six_hour_windows(
    students: u64,
    seed: u64,
) -> (Running, TestDb, SyncSource, DateTime<Utc>) {
    let platform = platform(
        students,
        seed,
        "2026-01-05T00:00:00Z",
        "2026-01-12T00:00:00Z",
        3,
    );
    let now = t("2026-01-12T06:00:00Z");
    let sim = simulator(platform, now, Faults::default(), None).await;
    let db = fresh_sqlite().await;
    let src = source(
        &sim.url,
        1000,
        chrono::Duration::hours(6),
        chrono::Duration::minutes(30),
        "2026-01-05T00:00",
    );
    (sim, db, src, now)
}

/// Windows of `kind` whose request began before the one before it had committed: fetched
/// ahead.
async fn fetched_ahead(db: &TestDb, kind: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM sync_run a JOIN sync_run b ON b.id = a.id + 1
         WHERE a.kind = $1 AND b.kind = $1 AND b.started_at < a.finished_at",
    )
    .bind(kind)
    .fetch_one(db.store.pool())
    .await
    .expect("count")
}

#[tokio::test]
async fn a_pipelined_backfill_rereads_in_window_order_and_leaves_the_mirror_equal() {
    let (sim, db, mut src, now) = a_week_in_six_hour_windows(400, 35).await;
    catch_up(&db.store, &src, now, |_| {})
        .await
        .expect("catch up");
    let requests = sim.stats.requests.load(Ordering::Relaxed);
    src.max_in_flight = 3;
    let reports = backfill(
        &db.store,
        &src,
        parse_local("2026-01-05T00:00").expect("from"),
        parse_local("2026-01-12T00:00").expect("to"),
        |_| {},
    )
    .await
    .expect("backfill");
    assert_eq!(dump(&db.store).await, reference(&sim.platform, now).await);
    // Back to back, in order, and no request wasted on a window fetched ahead for nothing.
    for pair in reports.windows(2) {
        assert!(pair[1].window.from_utc > pair[0].window.tom_utc);
    }
    assert_eq!(
        sim.stats.requests.load(Ordering::Relaxed) - requests,
        reports.len() as u64
    );
    assert!(
        fetched_ahead(&db, "backfill").await > 0,
        "no window was fetched ahead"
    );
}

#[tokio::test]
async fn a_platform_that_answers_too_slowly_at_times_is_waited_out_and_the_catch_up_ends_equal() {
    // A third of the answers start only after 1.5 s; the client gives a request 1 s. Those
    // requests time out and are retried (or their windows split), and nothing is lost.
    let platform = platform(150, 21, "2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z", 2);
    let now = t("2026-01-06T06:00:00Z");
    let faults = Faults {
        slow: 0.3,
        slow_delay: Duration::from_millis(1500),
        seed: 8,
        ..Faults::default()
    };
    let sim = simulator(platform, now, faults, None).await;
    let db = fresh_sqlite().await;
    let src = source_timed(
        &sim.url,
        50,
        chrono::Duration::hours(4),
        chrono::Duration::minutes(30),
        "2026-01-05T00:00",
        Duration::from_secs(1),
    );
    catch_up(&db.store, &src, now, |_| {})
        .await
        .expect("catch up despite slow answers");
    assert!(
        sim.stats.faults.load(Ordering::Relaxed) > 0,
        "no answer was slow"
    );
    assert_eq!(dump(&db.store).await, reference(&sim.platform, now).await);
}

#[tokio::test]
async fn syncing_while_the_autumn_hour_repeats_misses_nothing() {
    // Changes every few minutes through the night the clocks go back; the client polls while
    // time passes, with short windows and no overlap, so only the window rule protects it.
    let platform = platform(250, 13, "2026-10-24T23:00:00Z", "2026-10-25T03:00:00Z", 2);
    let start_now = t("2026-10-24T23:00:00Z");
    let sim = simulator(platform, start_now, Faults::default(), None).await;
    let db = fresh_sqlite().await;
    let src = source(
        &sim.url,
        500,
        chrono::Duration::minutes(20),
        chrono::Duration::zero(),
        "2026-10-25T01:00",
    );
    let end = t("2026-10-25T03:30:00Z");
    let mut now = start_now;
    while now <= end {
        sim.clock.set(now);
        catch_up(&db.store, &src, now, |_| {}).await.expect("poll");
        now += chrono::Duration::minutes(7);
    }
    let final_now = sim.clock.now();
    // Everything that happened up to the last synced minute is mirrored in its current state.
    assert_eq!(
        dump(&db.store).await,
        reference(&sim.platform, final_now).await
    );
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_the_right_one_syncs() {
    let platform = platform(20, 14, "2026-01-05T00:00:00Z", "2026-01-05T12:00:00Z", 1);
    let now = t("2026-01-05T13:00:00Z");
    let sim = simulator(platform, now, Faults::default(), Some(("kommun", "rätt"))).await;
    let db = fresh_sqlite().await;
    let mut src = source(
        &sim.url,
        50,
        chrono::Duration::days(1),
        chrono::Duration::minutes(30),
        "2026-01-05T00:00",
    );
    let with_password = |password: &str| {
        Client::new(SourceSettings {
            name: "default".into(),
            base_url: sim.url.clone(),
            rate_limit_per_second: NonZeroU32::new(50).expect("rate"),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            read_timeout: nprov_sync::source::DEFAULT_READ_TIMEOUT,
            max_retry_wait: nprov_sync::source::DEFAULT_MAX_RETRY_WAIT,
            redirects: Default::default(),
            max_attempts: 3,
            backoff_base: Duration::from_millis(5),
            backoff_cap: Duration::from_millis(10),
            auth: Auth {
                basic: Some(("kommun".into(), password.to_string().into())),
                ..Auth::default()
            },
        })
        .expect("client")
    };
    src.client = with_password("fel");
    let err = catch_up(&db.store, &src, now, |_| {})
        .await
        .expect_err("401");
    assert!(err.to_string().contains("credentials"), "{err}");
    src.client = with_password("rätt");
    catch_up(&db.store, &src, now, |_| {})
        .await
        .expect("right password");
    assert_eq!(dump(&db.store).await, reference(&sim.platform, now).await);
}

/// A pipelined catch-up of four days for a test to run as the real binary and kill: about 50
/// two-hour windows at 8 requests a second, the next fetched ahead, into SQLite in a fresh
/// directory. The simulator, the directory, the command line and the platform's "now".
async fn killable_sync() -> (Running, tempfile::TempDir, Vec<String>, DateTime<Utc>) {
    let platform = platform(600, 15, "2026-01-05T00:00:00Z", "2026-01-09T00:00:00Z", 3);
    let now = t("2026-01-09T06:00:00Z");
    let sim = simulator(platform, now, Faults::default(), None).await;
    let dir = tempfile::tempdir().expect("dir");
    let cfg = dir.path().join("nprov.toml");
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = \"sqlite://{}/db.sqlite\"\n\n[[source]]\nurl = \"{}\"\nstart = \"2026-01-05T00:00\"\nmax_window = \"2h\"\nrate_limit_per_second = 8\nmax_in_flight = 2\n",
            dir.path().display(),
            sim.url
        ),
    )
    .expect("config");
    let args = ["sync", "--once", "--until", "2026-01-09T07:00", "--config"]
        .into_iter()
        .map(String::from)
        .chain([cfg.display().to_string()])
        .collect();
    (sim, dir, args, now)
}

/// kill -9 at moments nobody chose: during start-up and migration, mid-fetch, mid-write, between
/// windows, with the next window fetched ahead. Every restart resumes from what was committed and
/// the last run, left to finish, ends with the mirror equal to the platform.
#[tokio::test]
async fn a_pipelined_sync_killed_at_random_points_ends_equal_after_a_clean_finish() {
    use rand::{Rng, SeedableRng};
    let (sim, dir, args, now) = killable_sync().await;
    // About 50 windows at 8 requests a second take six seconds or more: each kill lands
    // somewhere in the first four. The seed is printed so a failure can be replayed.
    let seed: u64 = std::env::var("TEST_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("kill points from seed {seed} (TEST_KILL_SEED)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for _ in 0..4 {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        let at = Duration::from_millis(rng.random_range(0..4000));
        if tokio::time::timeout(at, child.wait()).await.is_ok() {
            // Finished before its kill: nothing left to interrupt.
            break;
        }
        child.kill().await.expect("kill -9");
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
        .args(&args)
        .output()
        .await
        .expect("run to the end");
    assert!(
        out.status.success(),
        "seed {seed}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = nprov_sync::store::SqliteStore::connect(&format!(
        "sqlite://{}/db.sqlite",
        dir.path().display()
    ))
    .await
    .expect("open");
    assert_eq!(
        dump(&store).await,
        reference(&sim.platform, now).await,
        "seed {seed}"
    );
}

#[tokio::test]
async fn a_sync_killed_mid_run_resumes_from_its_watermark_and_ends_equal() {
    let (sim, dir, args, now) = killable_sync().await;
    // About 50 windows at 8 requests a second: kill it part-way, at no particular moment.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    // Kill it as soon as it has committed something: at 8 requests a second the remaining
    // windows take seconds, so this is always part-way, without relying on timing.
    let url = format!("sqlite://{}/db.sqlite", dir.path().display());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let cut = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            std::time::Instant::now() < deadline,
            "no window committed within a minute"
        );
        if !std::path::Path::new(&format!("{}/db.sqlite", dir.path().display())).exists() {
            continue;
        }
        let Ok(store) = nprov_sync::store::SqliteStore::connect(&url).await else {
            continue;
        };
        let wm = nprov_sync::store::Store::watermark(&store, "default").await;
        nprov_sync::store::Store::close(&store).await;
        if let Ok(Some(wm)) = wm {
            break wm;
        }
    };
    assert!(cut.utc > t("2026-01-04T00:00:00Z"));
    child.kill().await.expect("kill");
    let store = nprov_sync::store::SqliteStore::connect(&url)
        .await
        .expect("open");
    // A window may have committed between the poll and the kill: resume from what is stored.
    let cut = nprov_sync::store::Store::watermark(&store, "default")
        .await
        .expect("read")
        .expect("set");
    assert!(
        cut.local < nprov_sync::window::parse_local("2026-01-09T07:00").expect("t"),
        "it finished before the kill"
    );

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
        .args(&args)
        .output()
        .await
        .expect("run again");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The second run starts one overlap before where the first one stopped.
    let resumed_from = (cut.local - chrono::Duration::minutes(30))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    assert!(
        stdout
            .lines()
            .next()
            .expect("a window")
            .contains(&format!("default {resumed_from}..")),
        "{stdout}"
    );
    assert_eq!(dump(&store).await, reference(&sim.platform, now).await);
}

#[tokio::test]
async fn a_streamed_answer_is_the_rendered_document_byte_for_byte_without_a_length() {
    let platform = platform(3000, 16, "2026-01-05T00:00:00Z", "2026-01-12T00:00:00Z", 2);
    let now = t("2026-01-12T06:00:00Z");
    let sim = simulator(platform, now, Faults::default(), None).await;
    let url = format!(
        "{}{}?from=2026-01-01T00:00&tom=2026-01-13T00:00",
        sim.url,
        nprov_sync::source::ENDPOINT_PATH
    );
    let response = reqwest::get(&url).await.expect("response");
    assert_eq!(response.status(), 200);
    // Streamed: the length is not known when the headers leave.
    assert_eq!(response.content_length(), None);
    let body = response.bytes().await.expect("whole body");
    let expected = render_to_string(
        newest(),
        "2026-01-01T00:00:00",
        "2026-01-13T00:00:00",
        &sim.platform.answer(
            nprov_sync::window::parse_local("2026-01-01T00:00").expect("from"),
            nprov_sync::window::parse_local("2026-01-13T00:00").expect("tom"),
            now,
        ),
    );
    assert!(body.len() > 1_000_000, "{} bytes", body.len());
    assert!(body == expected.as_bytes(), "the streamed body differs");
}

#[tokio::test]
async fn a_cut_body_breaks_off_and_a_malformed_one_ends_in_a_broken_tag() {
    let platform = platform(500, 17, "2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z", 1);
    let now = t("2026-01-06T06:00:00Z");
    let path = format!(
        "{}?from=2026-01-05T00:00&tom=2026-01-06T00:00",
        nprov_sync::source::ENDPOINT_PATH
    );
    let cut = Faults {
        truncated: 1.0,
        ..Faults::default()
    };
    let sim = simulator(platform, now, cut, None).await;
    let response = reqwest::get(format!("{}{path}", sim.url))
        .await
        .expect("headers arrive");
    assert_eq!(response.status(), 200);
    // The body does not end, it breaks: the client cannot take it for a complete response.
    let err = response.bytes().await.expect_err("a cut body");
    assert!(err.is_body() || err.is_decode(), "{err:?}");
    assert_eq!(sim.stats.faults.load(Ordering::Relaxed), 1);

    let platform = self::platform(500, 17, "2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z", 1);
    let garbled = Faults {
        malformed: 1.0,
        ..Faults::default()
    };
    let sim = simulator(platform, now, garbled, None).await;
    let body = reqwest::get(format!("{}{path}", sim.url))
        .await
        .expect("response")
        .text()
        .await
        .expect("a whole (malformed) body");
    assert!(
        body.ends_with("</provresultat\n") && !body.contains("</provresultat>"),
        "{}",
        &body[body.len().saturating_sub(80)..]
    );
}

#[tokio::test]
async fn the_simulators_answers_validate_against_the_vendor_xsd_of_every_version() {
    let test = "the_simulators_answers_validate…";
    let Some(spec) = vendor_spec_dir() else {
        skip(test, "../shared/spec/nationellaprov not found");
        return;
    };
    if !xmllint_available() {
        skip(test, "xmllint is not installed");
        return;
    }
    // Every version the vendor published is one we answer in, and the other way round.
    let mut published: Vec<String> = std::fs::read_dir(&spec)
        .expect("spec dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| spec.join(name).join("nationellaprov.xsd").is_file())
        .collect();
    published.sort();
    let mut ours: Vec<String> = VERSIONS.iter().map(|v| v.name.to_owned()).collect();
    ours.sort();
    assert_eq!(published, ours);

    let dir = tempfile::tempdir().expect("dir");
    let now = t("2026-01-08T06:00:00Z");
    for version in VERSIONS {
        let platform = platform_in(
            version,
            400,
            18,
            "2026-01-05T00:00:00Z",
            "2026-01-08T00:00:00Z",
            3,
        );
        let sim = simulator(platform, now, Faults::default(), None).await;
        let url = format!(
            "{}{}?from=2026-01-01T00:00&tom=2026-01-09T00:00",
            sim.url,
            nprov_sync::source::ENDPOINT_PATH
        );
        let body = reqwest::get(&url)
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("response")
            .bytes()
            .await
            .expect("body");
        // Not vacuous: both kinds of record, with their delprov, are in it.
        let text = std::str::from_utf8(&body).expect("UTF-8");
        for element in ["<ämnesresultat ", "<kursresultat ", "<delprovsresultat>"] {
            assert!(text.contains(element), "{}: no {element}", version.name);
        }
        let file = dir.path().join(format!("{}.xml", version.name));
        std::fs::write(&file, &body).expect("write");
        let xsd = spec.join(version.name).join("nationellaprov.xsd");
        if let Err(report) = xmllint_validate(&xsd, &file) {
            panic!(
                "{}: {}",
                version.name,
                report.lines().take(20).collect::<Vec<_>>().join("\n")
            );
        }
    }
}

#[tokio::test]
async fn syncing_while_the_spring_hour_is_skipped_misses_nothing() {
    // The night the clocks go forward (02:00 CET becomes 03:00 CEST at 01:00 UTC): changes every
    // few minutes, the client polling while time passes, short windows, no overlap.
    let platform = platform(250, 19, "2026-03-28T23:00:00Z", "2026-03-29T03:00:00Z", 2);
    let start_now = t("2026-03-28T23:00:00Z");
    let sim = simulator(platform, start_now, Faults::default(), None).await;
    let db = fresh_sqlite().await;
    let src = source(
        &sim.url,
        500,
        chrono::Duration::minutes(20),
        chrono::Duration::zero(),
        "2026-03-29T00:00",
    );
    let end = t("2026-03-29T03:30:00Z");
    let mut now = start_now;
    let mut windows = Vec::new();
    while now <= end {
        sim.clock.set(now);
        windows.extend(catch_up(&db.store, &src, now, |_| {}).await.expect("poll"));
        now += chrono::Duration::minutes(7);
    }
    // The clocks did go forward under the client: a window asked across the gap.
    let gap = t("2026-03-29T01:00:00Z");
    assert!(
        windows
            .iter()
            .any(|r| r.window.from_utc < gap && r.window.tom_utc >= gap),
        "no window straddled the transition"
    );
    let final_now = sim.clock.now();
    assert_eq!(
        dump(&db.store).await,
        reference(&sim.platform, final_now).await
    );
}

/// A night around a transition, synced in phases whose windows start, end or straddle it.
struct EdgeCase {
    name: &'static str,
    /// The platform's changes fall in `[first, last)` (instants).
    changes: (&'static str, &'static str),
    /// The source's configured `start` (local).
    start: &'static str,
    /// Where the source's first window must start (instant).
    first_from: &'static str,
    max_window_minutes: i64,
    /// Where each phase's last window ends: an instant (`…Z`), or a local `--until` time read
    /// as `sync --once --until` does (its latest instant). Polls while time passes follow.
    ends: &'static [&'static str],
    /// Whether the case is about a window with minutes on both sides of the transition (one
    /// must then exist; consecutive windows share a minute, so others may straddle too).
    straddles: bool,
}

/// Spring: 2026-03-29 01:00 UTC, when 02:00 CET becomes 03:00 CEST (02:00–02:59 never happens).
const SPRING: &str = "2026-03-29T01:00:00Z";
/// Autumn: 2026-10-25 01:00 UTC, when 03:00 CEST becomes 02:00 CET (02:00–02:59 happens twice:
/// 00:00–00:59 and 01:00–01:59 UTC).
const AUTUMN: &str = "2026-10-25T01:00:00Z";

const EDGE_CASES: &[(&str, EdgeCase)] = &[
    (
        SPRING,
        EdgeCase {
            name: "spring: a window ends at the last minute before the gap, the next starts there",
            changes: ("2026-03-28T23:00:00Z", "2026-03-29T03:00:00Z"),
            start: "2026-03-29T00:00",
            first_from: "2026-03-28T23:00:00Z",
            max_window_minutes: 20,
            ends: &["2026-03-29T00:59:00Z"],
            straddles: false,
        },
    ),
    (
        SPRING,
        EdgeCase {
            name: "spring: --until inside the gap ends at its last minute before",
            changes: ("2026-03-28T23:00:00Z", "2026-03-29T03:00:00Z"),
            start: "2026-03-29T00:00",
            first_from: "2026-03-28T23:00:00Z",
            max_window_minutes: 20,
            ends: &["2026-03-29T02:30"],
            straddles: false,
        },
    ),
    (
        SPRING,
        EdgeCase {
            name: "spring: a window ends at the first minute after the gap, the next starts there",
            changes: ("2026-03-28T23:00:00Z", "2026-03-29T03:00:00Z"),
            start: "2026-03-29T00:00",
            first_from: "2026-03-28T23:00:00Z",
            max_window_minutes: 20,
            ends: &["2026-03-29T03:00"],
            straddles: false,
        },
    ),
    (
        SPRING,
        EdgeCase {
            name: "spring: a window straddles the gap",
            changes: ("2026-03-28T23:00:00Z", "2026-03-29T03:00:00Z"),
            start: "2026-03-29T00:00",
            first_from: "2026-03-28T23:00:00Z",
            max_window_minutes: 20,
            ends: &["2026-03-29T00:50:00Z"],
            straddles: true,
        },
    ),
    (
        SPRING,
        EdgeCase {
            name: "spring: one window over the whole night",
            changes: ("2026-03-28T23:00:00Z", "2026-03-29T03:00:00Z"),
            start: "2026-03-29T00:00",
            first_from: "2026-03-28T23:00:00Z",
            max_window_minutes: 360,
            ends: &["2026-03-29T03:30:00Z"],
            straddles: true,
        },
    ),
    (
        SPRING,
        EdgeCase {
            name: "spring: the configured start is the first minute after the gap",
            changes: ("2026-03-29T01:00:00Z", "2026-03-29T03:00:00Z"),
            start: "2026-03-29T03:00",
            first_from: "2026-03-29T01:00:00Z",
            max_window_minutes: 20,
            ends: &["2026-03-29T03:30:00Z"],
            straddles: false,
        },
    ),
    (
        SPRING,
        EdgeCase {
            name: "spring: the configured start is inside the gap",
            changes: ("2026-03-29T01:00:00Z", "2026-03-29T03:00:00Z"),
            start: "2026-03-29T02:30",
            first_from: "2026-03-29T01:00:00Z",
            max_window_minutes: 20,
            ends: &["2026-03-29T03:30:00Z"],
            straddles: false,
        },
    ),
    (
        AUTUMN,
        EdgeCase {
            name: "autumn: a window ends just before the repeated hour, the next starts there",
            changes: ("2026-10-24T23:00:00Z", "2026-10-25T03:00:00Z"),
            start: "2026-10-25T01:00",
            first_from: "2026-10-24T23:00:00Z",
            max_window_minutes: 20,
            ends: &["2026-10-24T23:59:00Z"],
            straddles: false,
        },
    ),
    (
        AUTUMN,
        EdgeCase {
            name: "autumn: a window ends in the first pass through the repeated hour",
            changes: ("2026-10-24T23:00:00Z", "2026-10-25T03:00:00Z"),
            start: "2026-10-25T01:00",
            first_from: "2026-10-24T23:00:00Z",
            max_window_minutes: 20,
            ends: &["2026-10-25T00:30:00Z"],
            straddles: false,
        },
    ),
    (
        AUTUMN,
        EdgeCase {
            name: "autumn: a window ends at the last minute before the clocks go back",
            changes: ("2026-10-24T23:00:00Z", "2026-10-25T03:00:00Z"),
            start: "2026-10-25T01:00",
            first_from: "2026-10-24T23:00:00Z",
            max_window_minutes: 20,
            ends: &["2026-10-25T00:59:00Z"],
            straddles: false,
        },
    ),
    (
        AUTUMN,
        EdgeCase {
            name: "autumn: a window ends at the first minute after the clocks go back, the next starts there",
            changes: ("2026-10-24T23:00:00Z", "2026-10-25T03:00:00Z"),
            start: "2026-10-25T01:00",
            first_from: "2026-10-24T23:00:00Z",
            max_window_minutes: 20,
            ends: &["2026-10-25T01:00:00Z"],
            straddles: false,
        },
    ),
    (
        AUTUMN,
        EdgeCase {
            name: "autumn: --until inside the repeated hour ends in its second pass",
            changes: ("2026-10-24T23:00:00Z", "2026-10-25T03:00:00Z"),
            start: "2026-10-25T01:00",
            first_from: "2026-10-24T23:00:00Z",
            max_window_minutes: 20,
            ends: &["2026-10-25T02:30"],
            straddles: false,
        },
    ),
    (
        AUTUMN,
        EdgeCase {
            name: "autumn: a window ends at the repeated hour's last minute",
            changes: ("2026-10-24T23:00:00Z", "2026-10-25T03:00:00Z"),
            start: "2026-10-25T01:00",
            first_from: "2026-10-24T23:00:00Z",
            max_window_minutes: 20,
            ends: &["2026-10-25T01:59:00Z"],
            straddles: false,
        },
    ),
    (
        AUTUMN,
        EdgeCase {
            name: "autumn: a window straddles the transition",
            changes: ("2026-10-24T23:00:00Z", "2026-10-25T03:00:00Z"),
            start: "2026-10-25T01:00",
            first_from: "2026-10-24T23:00:00Z",
            max_window_minutes: 20,
            ends: &["2026-10-25T00:50:00Z"],
            straddles: true,
        },
    ),
    (
        AUTUMN,
        EdgeCase {
            name: "autumn: one window over the whole night",
            changes: ("2026-10-24T23:00:00Z", "2026-10-25T03:00:00Z"),
            start: "2026-10-25T01:00",
            first_from: "2026-10-24T23:00:00Z",
            max_window_minutes: 360,
            ends: &["2026-10-25T03:30:00Z"],
            straddles: true,
        },
    ),
    (
        AUTUMN,
        EdgeCase {
            name: "autumn: the configured start is the repeated hour (its earlier pass is taken)",
            changes: ("2026-10-25T00:00:00Z", "2026-10-25T03:00:00Z"),
            start: "2026-10-25T02:00",
            first_from: "2026-10-25T00:00:00Z",
            max_window_minutes: 20,
            ends: &["2026-10-25T03:30:00Z"],
            straddles: false,
        },
    ),
    (
        AUTUMN,
        EdgeCase {
            name: "autumn: the configured start is the first minute after the repeated hour",
            changes: ("2026-10-25T02:00:00Z", "2026-10-25T04:00:00Z"),
            start: "2026-10-25T03:00",
            first_from: "2026-10-25T02:00:00Z",
            max_window_minutes: 20,
            ends: &["2026-10-25T04:30:00Z"],
            straddles: false,
        },
    ),
];

#[tokio::test]
async fn windows_that_start_end_or_straddle_a_transition_miss_nothing() {
    // Every case runs; the failures are reported together, so a broken rule shows its pattern.
    let mut failed = Vec::new();
    for (seed, (transition, case)) in EDGE_CASES.iter().enumerate() {
        if let Err(why) = edge_case(t(transition), case, 100 + seed as u64).await {
            failed.push(format!("{}: {why}", case.name));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

async fn edge_case(transition: DateTime<Utc>, case: &EdgeCase, seed: u64) -> Result<(), String> {
    // One change per student, a few a minute: a change the windows miss is a student missing.
    let platform = platform(500, seed, case.changes.0, case.changes.1, 1);
    let sim = simulator(platform, t(case.first_from), Faults::default(), None).await;
    let db = fresh_sqlite().await;
    let src = source(
        &sim.url,
        500,
        chrono::Duration::minutes(case.max_window_minutes),
        chrono::Duration::zero(),
        case.start,
    );
    let mut windows = Vec::new();
    let mut now = t(case.first_from);
    // The phases: each a catch-up whose last window ends at the edge, run when the platform's
    // clock says it is just that late (a platform only answers with what has happened).
    for end in case.ends {
        let last_tom = if end.ends_with('Z') {
            t(end)
        } else {
            latest_instant(Stockholm, parse_local(end).expect("until"))
        };
        // As `sync --once --until`: the horizon is the safety lag past the last minute.
        now = last_tom + src.plan.safety_lag;
        sim.clock.set(now);
        let reports = catch_up(&db.store, &src, now, |_| {})
            .await
            .map_err(|e| e.to_string())?;
        let last = reports.last().ok_or("the phase synced no window")?.window;
        if last.tom_utc != last_tom {
            return Err(format!(
                "the phase ended at {}, not {last_tom}",
                last.tom_utc
            ));
        }
        windows.extend(reports);
    }
    // Then the daemon's life: a poll every 7 minutes while time passes, past the last change.
    let stop = t(case.changes.1) + chrono::Duration::minutes(30);
    loop {
        now += chrono::Duration::minutes(7);
        if now > stop {
            break;
        }
        sim.clock.set(now);
        let reports = catch_up(&db.store, &src, now, |_| {})
            .await
            .map_err(|e| e.to_string())?;
        windows.extend(reports);
    }
    let first = windows.first().ok_or("no window")?.window;
    if first.from_utc != t(case.first_from) {
        return Err(format!("the first window started at {}", first.from_utc));
    }
    let straddled = windows
        .iter()
        .any(|r| r.window.from_utc < transition && r.window.tom_utc >= transition);
    if case.straddles && !straddled {
        return Err("no window straddled the transition".into());
    }
    let mirror = dump(&db.store).await;
    let platform = reference(&sim.platform, sim.clock.now()).await;
    if mirror != platform {
        let missing: Vec<&String> = platform.iter().filter(|r| !mirror.contains(r)).collect();
        return Err(format!(
            "the mirror differs from the platform: {} of {} rows missing or stale, e.g. {:?}",
            missing.len(),
            platform.len(),
            missing.first()
        ));
    }
    Ok(())
}

/// The simulator behind mutual TLS; `url` is `https://127.0.0.1:PORT`.
async fn tls_simulator(platform: Platform, now: DateTime<Utc>, pki: &Pki) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let tls = TlsSettings::from_pem(
        pki.server_cert.as_bytes(),
        pki.server_key.as_bytes(),
        pki.ca.as_bytes(),
    )
    .expect("TLS settings");
    let stats = Arc::new(Stats::default());
    let clock = VirtualClock::new(now);
    let platform = Arc::new(platform);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sim = Simulator {
        platform: platform.clone(),
        clock: clock.clone(),
        faults: Faults::default(),
        load: Default::default(),
        basic: None,
    };
    tokio::spawn(serve_tls(listener, sim, stats.clone(), tls, async {
        stopped.await.ok();
    }));
    Running {
        url,
        stats,
        clock,
        platform,
        _stop: stop,
    }
}

fn client_with(url: &str, auth: Auth) -> Client {
    Client::new(SourceSettings {
        name: "default".into(),
        base_url: url.into(),
        rate_limit_per_second: NonZeroU32::new(100).expect("rate"),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        read_timeout: nprov_sync::source::DEFAULT_READ_TIMEOUT,
        max_retry_wait: nprov_sync::source::DEFAULT_MAX_RETRY_WAIT,
        redirects: Default::default(),
        max_attempts: 2,
        backoff_base: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(10),
        auth,
    })
    .expect("client")
}

#[tokio::test]
async fn over_mutual_tls_a_client_certificate_syncs_and_none_is_refused_at_the_handshake() {
    let pki = pki("nprov-sync test CA");
    let platform = platform(300, 20, "2026-01-05T00:00:00Z", "2026-01-07T00:00:00Z", 3);
    let now = t("2026-01-07T06:00:00Z");
    let sim = tls_simulator(platform, now, &pki).await;
    let db = fresh_sqlite().await;
    let mut src = source(
        &sim.url,
        100,
        chrono::Duration::hours(12),
        chrono::Duration::minutes(30),
        "2026-01-05T00:00",
    );

    // Without a client certificate: refused in the handshake, never answered, promptly.
    src.client = client_with(
        &sim.url,
        Auth {
            extra_roots_pem: vec![pki.ca.clone().into_bytes()],
            ..Auth::default()
        },
    );
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        catch_up(&db.store, &src, now, |_| {}),
    )
    .await
    .expect("a refusal, not a hang")
    .expect_err("no client certificate");
    let message = err.to_string();
    assert!(
        message.contains("TLS handshake refused after 1 attempt:")
            && message.contains("CertificateRequired"),
        "{message}"
    );
    // Refused once, not retried: a handshake refused now is refused a second later too.
    assert_eq!(sim.stats.tls_refused.load(Ordering::Relaxed), 1);
    assert_eq!(sim.stats.requests.load(Ordering::Relaxed), 0);

    // With a certificate from another CA: refused the same way.
    let other = self::pki("another CA");
    src.client = client_with(
        &sim.url,
        Auth {
            identity_pem: Some(secrecy::SecretBox::new(Box::new(
                format!("{}{}", other.client_cert, other.client_key).into_bytes(),
            ))),
            extra_roots_pem: vec![pki.ca.clone().into_bytes()],
            ..Auth::default()
        },
    );
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        catch_up(&db.store, &src, now, |_| {}),
    )
    .await
    .expect("a refusal, not a hang")
    .expect_err("a certificate the CA did not sign");
    let message = err.to_string();
    assert!(
        message.contains("TLS handshake refused after 1 attempt:") && message.contains("UnknownCA"),
        "{message}"
    );
    assert_eq!(sim.stats.tls_refused.load(Ordering::Relaxed), 2);
    assert_eq!(sim.stats.requests.load(Ordering::Relaxed), 0);

    // With the certificate the CA signed: a full catch-up, equal to the platform.
    src.client = client_with(
        &sim.url,
        Auth {
            identity_pem: Some(secrecy::SecretBox::new(Box::new(
                format!("{}{}", pki.client_cert, pki.client_key).into_bytes(),
            ))),
            extra_roots_pem: vec![pki.ca.clone().into_bytes()],
            ..Auth::default()
        },
    );
    catch_up(&db.store, &src, now, |_| {})
        .await
        .expect("catch up over mutual TLS");
    assert_eq!(dump(&db.store).await, reference(&sim.platform, now).await);
    assert!(sim.stats.ok.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn the_configured_certificate_files_reach_the_platform_over_mutual_tls() {
    let pki = pki("nprov-sync test CA");
    let platform = platform(100, 21, "2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z", 2);
    let now = t("2026-01-06T06:00:00Z");
    let sim = tls_simulator(platform, now, &pki).await;
    let dir = tempfile::tempdir().expect("dir");
    for (name, pem) in [
        ("client.crt", &pki.client_cert),
        ("client.key", &pki.client_key),
        ("platform-ca.crt", &pki.ca),
    ] {
        std::fs::write(dir.path().join(name), pem).expect("write PEM");
    }
    // Relative names, looked up beside the configuration file, as an operator would write them.
    let config: nprov_sync::config::SourceConfig = toml::from_str(&format!(
        "url = \"{}\"\nstart = \"2026-01-05T00:00\"\nmax_window = \"12h\"\nclient_certificate_file = \"client.crt\"\nclient_key_file = \"client.key\"\nca_file = \"platform-ca.crt\"\n",
        sim.url
    ))
    .expect("source config");
    let spec = config
        .spec(
            &Default::default(),
            Some(&dir.path().join("nprov.toml")),
            None,
        )
        .expect("source settings and credentials");
    let src = SyncSource::from_spec(spec).expect("source builds");
    // Their expiry dates, as the metrics and `config check` report them: the client
    // certificate's notAfter, and the CA's (rcgen's default, 4096-01-01).
    assert_eq!(src.certificates.client, Some(t("2031-05-17T00:00:00Z")));
    assert_eq!(src.certificates.ca, Some(t("4096-01-01T00:00:00Z")));
    let db = fresh_sqlite().await;
    catch_up(&db.store, &src, now, |_| {})
        .await
        .expect("catch up with the configured certificate");
    assert_eq!(dump(&db.store).await, reference(&sim.platform, now).await);
    assert_eq!(sim.stats.tls_refused.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn the_simulate_command_serves_mutual_tls_from_pem_files() {
    use tokio::io::AsyncBufReadExt;
    let pki = pki("nprov-sync test CA");
    let dir = tempfile::tempdir().expect("dir");
    let file = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path.to_str().expect("path").to_owned()
    };
    let (cert, key, ca) = (
        file("server.crt", &pki.server_cert),
        file("server.key", &pki.server_key),
        file("ca.crt", &pki.ca),
    );
    let simulate = |key: &str| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_nprov-sync"));
        command
            .args(["simulate", "--listen", "127.0.0.1:0", "--students", "50"])
            .args(["--tls-cert", &cert, "--tls-key", key, "--client-ca", &ca])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        command
    };

    // A key file that is not there is a configuration error naming it.
    let missing = dir.path().join("missing.key");
    let out = simulate(missing.to_str().expect("path"))
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing.key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut child = simulate(&key).spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let first = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::BufReader::new(stdout).lines().next_line(),
    )
    .await
    .expect("the simulator starts")
    .expect("read")
    .expect("a line");
    // "simulated platform: https://127.0.0.1:PORT (…"
    let url = first
        .split_whitespace()
        .nth(2)
        .filter(|u| u.starts_with("https://"))
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    let window = nprov_sync::window::covering(
        Stockholm,
        t("2026-01-05T00:00:00Z"),
        t("2026-01-05T23:59:00Z"),
    );
    let with_certificate = client_with(
        &url,
        Auth {
            identity_pem: Some(secrecy::SecretBox::new(Box::new(
                format!("{}{}", pki.client_cert, pki.client_key).into_bytes(),
            ))),
            extra_roots_pem: vec![pki.ca.clone().into_bytes()],
            ..Auth::default()
        },
    );
    let fetched = with_certificate
        .fetch(&window, |_| {})
        .await
        .expect("answered over mutual TLS");
    assert_eq!(fetched.status, 200);
    let without = client_with(
        &url,
        Auth {
            extra_roots_pem: vec![pki.ca.clone().into_bytes()],
            ..Auth::default()
        },
    );
    let refused = without
        .fetch(&window, |_| {})
        .await
        .err()
        .expect("refused without a client certificate");
    assert!(
        refused.to_string().contains("CertificateRequired"),
        "{refused}"
    );
    child.kill().await.expect("kill");
}

#[tokio::test]
async fn windows_sized_by_what_the_platform_answers_take_a_fraction_of_the_requests_and_end_equal()
{
    let platform = platform(2000, 31, "2026-01-05T00:00:00Z", "2026-02-05T00:00:00Z", 3);
    let now = t("2026-02-06T06:00:00Z");
    let sim = simulator(platform, now, Faults::default(), None).await;
    let mut requests = Vec::new();
    for target in [0, 1 << 20] {
        let db = fresh_sqlite().await;
        let mut src = source(
            &sim.url,
            1000,
            chrono::Duration::days(if target == 0 { 1 } else { 31 }),
            chrono::Duration::minutes(30),
            "2026-01-05T00:00",
        );
        src.target_response_bytes = target;
        let before = sim.stats.requests.load(Ordering::Relaxed);
        let reports = catch_up(&db.store, &src, now, |_| {})
            .await
            .expect("catch up");
        assert_eq!(dump(&db.store).await, reference(&sim.platform, now).await);
        let largest = reports.iter().map(|r| r.bytes).max().unwrap_or(0);
        if target > 0 {
            // The first window is four days; every later one aims at the target, and none is
            // more than a few times over it (density varies within a window).
            assert!(largest < 4 * target, "{largest} bytes");
        }
        requests.push(sim.stats.requests.load(Ordering::Relaxed) - before);
    }
    // 33 fixed one-day windows (about 160 KB each) against a handful sized to 1 MiB.
    assert!(
        requests[1] * 3 <= requests[0],
        "fixed {} requests, paced {}",
        requests[0],
        requests[1]
    );
}

#[tokio::test]
async fn a_platform_that_refuses_large_windows_costs_a_few_413s_per_busy_period_not_one_per_window()
{
    let now = t("2026-01-26T06:00:00Z");
    let load = Load {
        max_students_per_response: Some(40),
        ..Load::default()
    };
    let mut refused = Vec::new();
    for target in [0, 8 << 20] {
        let sim =
            simulator_loaded(busy_platform(), now, Faults::default(), load.clone(), None).await;
        let db = fresh_sqlite().await;
        let mut src = source(
            &sim.url,
            1000,
            chrono::Duration::days(7),
            chrono::Duration::minutes(30),
            "2026-01-05T00:00",
        );
        src.target_response_bytes = target;
        let reports = catch_up(&db.store, &src, now, |_| {})
            .await
            .expect("catch up");
        assert_eq!(dump(&db.store).await, reference(&sim.platform, now).await);
        refused.push((sim.stats.too_large.load(Ordering::Relaxed), reports.len()));
    }
    let ((fixed, fixed_windows), (paced, paced_windows)) = (refused[0], refused[1]);
    // Fixed 7-day windows start over at 7 days after every split: refusals pile up with the
    // windows. Paced ones start from the size that worked.
    assert!(
        paced * 3 <= fixed,
        "413s: fixed windows {fixed} ({fixed_windows} windows), paced {paced} ({paced_windows} windows)"
    );
    assert!(paced <= 12, "{paced} refusals");
}

/// 600 students whose results change over three weeks, the same each time it is made.
fn busy_platform() -> Platform {
    platform(600, 32, "2026-01-05T00:00:00Z", "2026-01-25T00:00:00Z", 3)
}

/// A municipality's platform whose certificate comes from a CA that only the operating system's
/// store holds (no `ca_file`): trusted, because the client reads that store. The store here is
/// the one OpenSSL would read, chosen with `SSL_CERT_FILE` for the child process alone.
#[tokio::test]
async fn a_ca_in_the_operating_system_store_is_trusted_without_ca_file() {
    let pki = pki("kommunens interna CA");
    let platform = platform(80, 22, "2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z", 2);
    let now = t("2026-01-07T06:00:00Z");
    let sim = tls_simulator(platform, now, &pki).await;
    let dir = tempfile::tempdir().expect("dir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    write("client.crt", &pki.client_cert);
    write("client.key", &pki.client_key);
    let system_store = write("system-ca.pem", &pki.ca);
    let other_store = write("other-ca.pem", &self::pki("a public CA").ca);
    let empty_store = write("empty.pem", "");
    let config = write(
        "nprov.toml",
        &format!(
            "[database]\nurl = \"sqlite://{}\"\n[[source]]\nurl = \"{}\"\nstart = \"2026-01-05T00:00\"\nclient_certificate_file = \"client.crt\"\nclient_key_file = \"client.key\"\n",
            dir.path().join("mirror.db").display(),
            sim.url
        ),
    );
    // tokio's Command: the simulator answers on this test's runtime while the child runs.
    let command_for = |args: &[&str], store: &std::path::Path| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_nprov-sync"));
        command
            .args(args)
            .arg("--config")
            .arg(&config)
            .env_remove("NPROV_CONFIG")
            .env_remove("NPROV_DATABASE_URL")
            .env_remove("SSL_CERT_DIR")
            .env("SSL_CERT_FILE", store);
        command
    };
    let run = |args: &[&str], store: &std::path::Path| {
        let mut command = command_for(args, store);
        async move {
            let out = command.output().await.expect("the binary runs");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.code(), text)
        }
    };
    let backfill = [
        "backfill",
        "--from",
        "2026-01-05T00:00",
        "--to",
        "2026-01-07T00:00",
    ];

    // The store as `config check` reports it.
    let (code, text) = run(&["config", "check"], &system_store).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "trust: 1 CA certificates from SSL_CERT_FILE={}",
            system_store.display()
        )),
        "{text}"
    );

    // A store without the platform's CA: the handshake fails on the server's certificate, and
    // nothing was asked of the platform.
    let (code, text) = run(&backfill, &other_store).await;
    assert_eq!(code, Some(3), "{text}");
    // Not retried: a certificate not trusted now is not trusted a second later either.
    assert!(
        text.contains("TLS handshake refused after 1 attempt:") && text.contains("UnknownIssuer"),
        "{text}"
    );
    assert_eq!(sim.stats.requests.load(Ordering::Relaxed), 0);

    // An empty store and no ca_file: refused before any connection, saying what to install.
    let (code, text) = run(&["config", "check"], &empty_store).await;
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("no certificate authority to trust")
            && text.contains("ca-certificates")
            && text.contains("ca_file"),
        "{text}"
    );

    // The store with the CA: the day is synced, equal to the platform.
    let (code, text) = run(&backfill, &system_store).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(sim.stats.ok.load(Ordering::Relaxed) > 0, "{text}");
    let store = nprov_sync::store::sqlite::SqliteStore::connect(&format!(
        "sqlite://{}",
        dir.path().join("mirror.db").display()
    ))
    .await
    .expect("open the mirror");
    // status reports the client certificate's expiry, read from the public file alone.
    let (code, text) = run(&["status"], &system_store).await;
    assert_eq!(code.map(|c| c == 0 || c == 4), Some(true), "{text}");
    assert!(
        text.contains("client certificate expires 2031-05-17T00:00:00+00:00 (in "),
        "{text}"
    );
    assert!(!text.contains("CA (ca_file)"), "{text}");
    // Every change lies inside the backfilled span, so the mirror holds the platform's state.
    let expected = reference(&sim.platform, now).await;
    assert!(!expected.is_empty());
    assert_eq!(dump(&store).await, expected);
}

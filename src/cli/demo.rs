//! `nprov-sync demo`: the whole pipeline against a simulated platform, into a fresh SQLite file.
//!
//! It starts the simulator on a loopback port with a generated school year (every student's
//! results change one to three times), syncs the year over HTTP window by window as `sync
//! --once` would, reads one day again (nothing changes), checks that the mirror holds exactly the
//! platform's current state, passes the simulated provtjänst register twice (the second pass
//! finds nothing changed), and runs a few of the queries a warehouse would, the joins of the
//! two mirrors among them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use sqlx::{Column, Row};

use super::failure::Failure;
use crate::simulate::provisioning::{ProvFaults, ProvSim, Register};
use crate::simulate::server::{serve_with, Faults, Simulator, Stats, VirtualClock};
use crate::simulate::{Platform, Population};
use crate::source::{Client, SourceSettings};
use crate::store::{SqliteStore, Store, DEFAULT_SOURCE};
use crate::sync::SyncSource;
use crate::xml::version::newest;
use crate::xml::Limits;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Students in the generated population.
    #[arg(long, default_value_t = 20_000)]
    pub students: u64,
    /// The demo's own database file; it is recreated on every run.
    #[arg(long, default_value = "nprov-demo.db", value_name = "PATH")]
    pub file: PathBuf,
}

const SEED: u64 = 2026;

/// Queries shown to the user, with what they answer.
pub const EXAMPLE_QUERIES: &[(&str, &str)] = &[
    (
        "Sammanvägt provbetyg per subject in årskurs 9",
        "SELECT p.amne, t.sammanvagt_provbetyg AS betyg, COUNT(*) AS elever
         FROM provomrade p JOIN provtillfalle t ON t.provomrade_id = p.id
         WHERE p.kind = 'amne' AND p.arskurs = 9 AND t.sammanvagt_provbetyg IS NOT NULL
           AND p.amne IN ('MA', 'SV', 'EN')
         GROUP BY p.amne, t.sammanvagt_provbetyg ORDER BY p.amne, betyg",
    ),
    (
        "Delprov not taken or lost, per course",
        "SELECT p.kurs, d.utfall, COUNT(*) AS delprov
         FROM provomrade p JOIN provtillfalle t ON t.provomrade_id = p.id
         JOIN delprovsresultat d ON d.provtillfalle_id = t.id
         WHERE p.kind = 'kurs' AND d.utfall <> 'resultat'
         GROUP BY p.kurs, d.utfall ORDER BY delprov DESC LIMIT 6",
    ),
    (
        "Registered at Skolverket (provtjänst) and with results: the two mirrors joined",
        "SELECT (SELECT COUNT(DISTINCT elev) FROM v_prov_registered_result) AS registered_with_results,
                (SELECT COUNT(*) FROM v_prov_registered_without_result) AS registered_without_results,
                (SELECT COUNT(DISTINCT elev) FROM v_prov_result_without_registration) AS results_not_registered",
    ),
    (
        "What an incremental loader reads: change_log by operation",
        "SELECT op, COUNT(*) AS changes, MIN(seq) AS first_seq, MAX(seq) AS last_seq
         FROM change_log GROUP BY op ORDER BY op",
    ),
];

pub(crate) async fn run(file: &Path, students: u64, out: &mut dyn Write) -> Result<(), Failure> {
    let store = fresh_database(file).await.map_err(Failure::Runtime)?;
    let result = steps(&store, file, students, out).await;
    store.close().await;
    result.map_err(Failure::Runtime)
}

/// The demo's steps, in order, on its fresh database.
async fn steps(
    store: &SqliteStore,
    file: &Path,
    students: u64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let platform = SimulatedPlatform::start(students).await?;
    writeln!(
        out,
        "nprov-sync demo: a simulated platform at {} with {students} students ({} changes over a school year, schema {}); syncing into {}",
        platform.url,
        platform.platform.changes_by(platform.now),
        platform.platform.population.version.name,
        file.display()
    )?;
    let source = demo_source(&platform.url)?;
    first_sync(store, &source, &platform, out).await?;
    let after = read_again(store, &source, out).await?;
    check(&platform, after.provomrade, out)?;
    provisioning(store, &platform, out).await?;
    platform.stop().await;
    example_queries(store, file, out).await
}

/// A new SQLite file at `file` (an old one and its WAL are removed), migrated.
async fn fresh_database(file: &Path) -> anyhow::Result<SqliteStore> {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = file.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::Error::new(e).context("removing the old demo database")),
        }
    }
    let store = SqliteStore::connect(&format!("sqlite://{}", file.display())).await?;
    store.migrate().await?;
    Ok(store)
}

/// The demo's time zone, where its dates are.
const TZ: chrono_tz::Tz = chrono_tz::Europe::Stockholm;

fn instant(s: &str) -> chrono::DateTime<chrono::Utc> {
    crate::window::earliest_instant(TZ, crate::window::parse_local(s).expect("demo time"))
}

/// A school year on the simulated platform, served on a loopback port: every student's results
/// change one to three times between August and June; "now" is mid-June.
struct SimulatedPlatform {
    platform: Arc<Platform>,
    /// The provtjänst register of the same pupils, served beside the platform.
    register: Arc<ProvSim>,
    now: chrono::DateTime<chrono::Utc>,
    url: String,
    stats: Arc<Stats>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl SimulatedPlatform {
    async fn start(students: u64) -> anyhow::Result<SimulatedPlatform> {
        let population = Population {
            students,
            seed: SEED,
            version: newest(),
            year: 2026,
        };
        let register = ProvSim::new(
            Register::generate(&population, students + students / 10),
            ProvFaults {
                // On this machine: a real provtjänst gets the published 10 per second.
                rate_limit_per_second: None,
                ..ProvFaults::default()
            },
        );
        let platform = Arc::new(Platform::new(
            population,
            TZ,
            instant("2025-08-11T07:00"),
            instant("2026-06-12T17:00"),
            3,
        ));
        let now = instant("2026-06-15T08:00");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| {
                anyhow::Error::new(e).context("binding the simulator to a loopback port")
            })?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stats = Arc::new(Stats::default());
        let server = tokio::spawn(serve_with(
            listener,
            Simulator {
                platform: platform.clone(),
                clock: VirtualClock::new(now),
                faults: Faults::default(),
                load: Default::default(),
                basic: None,
            },
            stats.clone(),
            register.router(),
            async {
                stopped.await.ok();
            },
        ));
        Ok(SimulatedPlatform {
            platform,
            register,
            now,
            url,
            stats,
            stop,
            server,
        })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

/// The source as a configuration would give it, but for the simulator's address and pace.
fn demo_source(url: &str) -> anyhow::Result<SyncSource> {
    Ok(SyncSource {
        // The simulator is on this machine: a real platform gets the default 5 per second.
        client: Client::new(demo_settings(DEFAULT_SOURCE, url.to_owned(), 100))?,
        plan: crate::window::Plan {
            tz: TZ,
            overlap: chrono::Duration::minutes(30),
            safety_lag: chrono::Duration::minutes(2),
            max_window: chrono::Duration::days(31),
        },
        start: crate::window::parse_local("2025-08-01T00:00").expect("demo start"),
        limits: Limits::default(),
        body_attempts: 3,
        target_response_bytes: crate::window::DEFAULT_TARGET_RESPONSE_BYTES,
        max_in_flight: crate::config::DEFAULT_MAX_IN_FLIGHT,
        certificates: Default::default(),
        metrics: SyncSource::detached_metrics(DEFAULT_SOURCE),
    })
}

/// A demo client's settings: the defaults but for the simulator's address and pace.
fn demo_settings(name: &str, base_url: String, rate: u32) -> SourceSettings {
    SourceSettings {
        name: name.into(),
        base_url,
        rate_limit_per_second: std::num::NonZeroU32::new(rate).unwrap_or(std::num::NonZeroU32::MIN),
        connect_timeout: std::time::Duration::from_secs(5),
        request_timeout: std::time::Duration::from_secs(60),
        read_timeout: crate::source::DEFAULT_READ_TIMEOUT,
        max_retry_wait: crate::source::DEFAULT_MAX_RETRY_WAIT,
        redirects: Default::default(),
        max_attempts: 6,
        backoff_base: std::time::Duration::from_millis(100),
        backoff_cap: std::time::Duration::from_secs(5),
        auth: Default::default(),
    }
}

/// The provtjänst step: a pass of the simulated register into the prov_* tables, then a second
/// one, which finds nothing changed and writes nothing but its pass row.
async fn provisioning(
    store: &SqliteStore,
    platform: &SimulatedPlatform,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use crate::provisioning::{civic::Keyed, client::Api, client::KeyProof, pass};
    // On this machine: a real provtjänst gets the published 10 per second.
    let settings = |url: String| demo_settings("provtjanst", url, 200);
    let api = Api::new(
        Client::with_path(
            settings(format!(
                "{}{}",
                platform.url,
                crate::simulate::provisioning::BASE_PATH
            )),
            "",
        )?,
        Client::with_path(
            settings(format!(
                "{}{}",
                platform.url,
                crate::simulate::provisioning::TOKEN_PATH
            )),
            "",
        )?,
        KeyProof::EntityId("https://demo.example/idp".into()),
        32 << 20,
    );
    // A demo key, not a secret: a real one is read from civic_no_key_file.
    let keyed =
        Keyed::from_bytes(b"nprov-sync demo key, not a secret").map_err(anyhow::Error::msg)?;
    let spec = pass::PassSpec {
        source: "provtjanst",
        page_size: 100,
        max_removed_share: 0.2,
    };
    let persons = platform
        .register
        .register
        .lock()
        .map(|r| r.persons.len())
        .unwrap_or(0);
    writeln!(
        out,
        "\nprovtjänst: a simulated register of {persons} persons (pupils and teachers) with their duties, groups and activities"
    )?;
    for _ in 0..2 {
        let started = Instant::now();
        let report = pass::run(&api, store, &keyed, &spec).await?;
        writeln!(
            out,
            "{} ({:.1} s)",
            report.summary("provtjanst"),
            started.elapsed().as_secs_f64()
        )?;
        match report.outcome {
            pass::PassOutcome::Complete => {}
            pass::PassOutcome::Refused | pass::PassOutcome::Failed => anyhow::bail!(
                "the provisioning pass did not complete: {}",
                report.error.unwrap_or_default()
            ),
        }
    }
    Ok(())
}

/// Step 1, the first sync: the whole year, in windows sized by what the platform answers.
async fn first_sync(
    store: &SqliteStore,
    source: &SyncSource,
    platform: &SimulatedPlatform,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let now = platform.now;
    let started = Instant::now();
    let mut total = crate::store::ApplySummary::default();
    let mut windows = 0usize;
    let mut last_print = Instant::now();
    let from = crate::window::earliest_instant(TZ, source.start);
    let bar = super::sync::progress_bar("first sync", (now - from).num_minutes().max(1) as u64);
    let result = crate::sync::catch_up(store, source, now, |r| {
        windows += 1;
        total.add(&r.summary);
        match &bar {
            Some(bar) => {
                bar.set_position((r.window.tom_utc.min(now) - from).num_minutes().max(0) as u64);
                bar.set_message(r.window.tom_param());
            }
            None if last_print.elapsed().as_secs() >= 2 => {
                last_print = Instant::now();
                let _ = writeln!(
                    out,
                    "  … {} synced ({windows} windows)",
                    r.window.tom_param()
                );
            }
            None => {}
        }
    })
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result?;
    writeln!(
        out,
        "first sync: {windows} windows, {} requests, {} records → {} changed, {} unchanged, {} cleared ({:.1} s)",
        platform.stats.requests.load(std::sync::atomic::Ordering::Relaxed),
        total.records,
        total.changed,
        total.unchanged,
        total.cleared,
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}

/// Step 2, an overlapping window read again: everything in it is unchanged and nothing is
/// logged. Returns the table counts after it.
async fn read_again(
    store: &SqliteStore,
    source: &SyncSource,
    out: &mut dyn Write,
) -> anyhow::Result<crate::store::TableCounts> {
    let before = store.table_counts().await?;
    let started = Instant::now();
    let again = crate::sync::backfill(
        store,
        source,
        crate::window::parse_local("2026-05-20T00:00").expect("demo time"),
        crate::window::parse_local("2026-05-20T23:59").expect("demo time"),
        |_| {},
    )
    .await?;
    let after = store.table_counts().await?;
    let s = again.first().map(|r| r.summary.clone()).unwrap_or_default();
    writeln!(
        out,
        "2026-05-20 read again (backfill): {} records → {} changed, {} unchanged; change_log {} → {} ({:.2} s)",
        s.records,
        s.changed,
        s.unchanged,
        before.change_log,
        after.change_log,
        started.elapsed().as_secs_f64()
    )?;
    Ok(after)
}

/// Step 3, the check: the mirror holds exactly the platform's current state.
fn check(platform: &SimulatedPlatform, held: i64, out: &mut dyn Write) -> anyhow::Result<()> {
    let expected: std::collections::HashSet<_> = platform
        .platform
        .current_state(platform.now)
        .into_iter()
        .map(|p| p.key)
        .collect();
    writeln!(
        out,
        "check: {} provområden in the database, {} on the platform{}",
        held,
        expected.len(),
        if held as usize == expected.len() {
            " — equal"
        } else {
            " — DIFFERENT"
        }
    )?;
    Ok(())
}

/// Step 4: the tables and a few of the queries a warehouse would run.
async fn example_queries(
    store: &SqliteStore,
    file: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let counts = store.table_counts().await?;
    writeln!(
        out,
        "\ntables: provomrade {}, provtillfalle {}, delprovsresultat {}, change_log {}, quarantine {}",
        counts.provomrade, counts.provtillfalle, counts.delprovsresultat, counts.change_log, counts.quarantine
    )?;
    for (title, sql) in EXAMPLE_QUERIES {
        writeln!(out, "\n-- {title}\n{}", squeeze(sql))?;
        let rows = sqlx::query(sql).fetch_all(store.pool()).await?;
        if let Some(first) = rows.first() {
            let names: Vec<&str> = first.columns().iter().map(|c| c.name()).collect();
            writeln!(out, "   {}", names.join(" | "))?;
        }
        for r in &rows {
            let cells: Vec<String> = (0..r.len()).map(|i| cell(r, i)).collect();
            writeln!(out, "   {}", cells.join(" | "))?;
        }
    }
    writeln!(out, "\nExplore it yourself: sqlite3 {}", file.display())?;
    Ok(())
}

fn squeeze(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn cell(row: &sqlx::sqlite::SqliteRow, i: usize) -> String {
    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
        return v.map(|v| v.to_string()).unwrap_or_else(|| "NULL".into());
    }
    if let Ok(v) = row.try_get::<Option<String>, _>(i) {
        return v.unwrap_or_else(|| "NULL".into());
    }
    "?".into()
}

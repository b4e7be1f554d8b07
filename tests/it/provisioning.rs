//! The provisioning mirror against the simulated provisioning API, on both backends: a pass
//! mirrors the register exactly and an unchanged one costs list requests only and writes
//! nothing; changes, additions and deletions; a pass that stops part way removes nothing; a mass
//! drop is refused until confirmed or agreed; tokens expire mid-pass; no personnummer or
//! protected name reaches the database; the join views see matches and both mismatches.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;
use nprov_sync::provisioning::civic::Keyed;
use nprov_sync::provisioning::client::{Api, KeyProof};
use nprov_sync::provisioning::pass::{self, PassOutcome, PassReport, PassSpec};
use nprov_sync::simulate::provisioning::{ProvFaults, ProvSim, Register};
use nprov_sync::simulate::Population;
use nprov_sync::source::{Auth, Client, Redirects, SourceSettings};

for_each_backend!(
    a_pass_mirrors_the_register_and_an_unchanged_pass_looks_nothing_up_and_writes_nothing,
    changes_additions_and_deletions_are_mirrored_and_a_pass_stopped_part_way_removes_nothing,
    a_mass_drop_is_refused_until_an_operator_confirms_or_the_next_pass_agrees,
    the_join_views_see_matches_and_both_mismatches,
    forget_drop_and_prune_cover_the_provisioning_mirror,
    the_mirror_is_read_without_waiting_for_a_writer,
);

const SOURCE: &str = "kommun";

fn population(students: u64) -> Population {
    Population {
        students,
        seed: 7,
        version: nprov_sync::xml::version::VERSIONS
            .last()
            .expect("a version"),
        year: 2026,
    }
}

struct Sim {
    sim: Arc<ProvSim>,
    addr: std::net::SocketAddr,
    _server: tokio::task::JoinHandle<()>,
}

async fn serve(register: Register, faults: ProvFaults) -> Sim {
    let sim = ProvSim::new(register, faults);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = sim.router();
    let server = tokio::spawn(async move {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            tcp.set_nodelay(true).ok();
        });
        axum::serve(listener, app).await.ok();
    });
    Sim {
        sim,
        addr,
        _server: server,
    }
}

fn settings(url: String, rate: u32) -> SourceSettings {
    SourceSettings {
        name: SOURCE.into(),
        base_url: url,
        rate_limit_per_second: NonZeroU32::new(rate).expect("rate"),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
        read_timeout: Duration::from_secs(10),
        max_retry_wait: Duration::from_secs(30),
        redirects: Redirects::Never,
        max_attempts: 6,
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(500),
        auth: Auth::default(),
    }
}

fn api(s: &Sim, rate: u32) -> Api {
    Api::new(
        Client::with_path(
            settings(format!("http://{}/provisioning/v1", s.addr), rate),
            "",
        )
        .expect("api client"),
        Client::with_path(settings(format!("http://{}/transaction", s.addr), 5), "")
            .expect("auth client"),
        KeyProof::EntityId("https://kommun.example/idp".into()),
        32 << 20,
    )
}

fn keyed() -> Keyed {
    Keyed::from_bytes(b"an example key of thirty-two bytes!").expect("key")
}

async fn run(db: &Db, api: &Api, page_size: u32) -> PassReport {
    pass::run(
        api,
        db.store.as_ref(),
        &keyed(),
        &PassSpec {
            source: SOURCE,
            page_size,
            max_removed_share: 0.2,
        },
    )
    .await
    .expect("the pass is recorded")
}

/// The live ids of a kind's table, sorted.
async fn live(db: &Db, table: &str) -> Vec<String> {
    db.texts(&format!(
        "SELECT id FROM {table} WHERE removed_at IS NULL ORDER BY id"
    ))
    .await
    .into_iter()
    .map(|r| r[0].clone())
    .collect()
}

fn register_ids(sim: &ProvSim, kind: &str) -> Vec<String> {
    let r = sim.register.lock().expect("register");
    let map = match kind {
        "prov_person" => &r.persons,
        "prov_duty" => &r.duties,
        "prov_group" => &r.groups,
        _ => &r.activities,
    };
    map.keys().cloned().collect()
}

async fn assert_mirrored(db: &Db, sim: &ProvSim) {
    for table in ["prov_person", "prov_duty", "prov_group", "prov_activity"] {
        assert_eq!(live(db, table).await, register_ids(sim, table), "{table}");
    }
}

async fn count(db: &Db, sql: &str) -> u64 {
    db.texts(&format!("SELECT CAST(({sql}) AS TEXT)")).await[0][0]
        .parse()
        .expect("a count")
}

async fn a_pass_mirrors_the_register_and_an_unchanged_pass_looks_nothing_up_and_writes_nothing(
    backend: Backend,
) {
    let db = backend.fresh().await;
    let s = serve(
        Register::generate(&population(60), 66),
        ProvFaults::default(),
    )
    .await;
    let api = api(&s, 10);
    let first = run(&db, &api, 10).await;
    assert_eq!(first.outcome, PassOutcome::Complete, "{:?}", first.error);
    assert_mirrored(&db, &s.sim).await;
    let persons = register_ids(&s.sim, "prov_person").len() as u64;
    assert_eq!(first.counts[0], [persons, persons, 0, 0]);
    // Lists and memberships are whole.
    assert_eq!(
        count(&db, "SELECT count(*) FROM prov_group_membership").await,
        2 * 63
    );
    assert!(count(&db, "SELECT count(*) FROM prov_activity_teacher").await > 0);
    assert!(
        s.sim.stats.max_per_second() <= 10,
        "{}",
        s.sim.stats.max_per_second()
    );
    // No personnummer and no protected person's name in the database.
    let everything = db
        .texts(
            "SELECT COALESCE(given_name, '') || COALESCE(family_name, '') || COALESCE(eppn, '')
                 || COALESCE(civic_no_hmac, ''), CAST(protected AS TEXT)
             FROM prov_person",
        )
        .await;
    let civics: Vec<String> = {
        let r = s.sim.register.lock().expect("register");
        r.persons
            .values()
            .filter_map(|p| p["civicNo"]["value"].as_str().map(str::to_owned))
            .collect()
    };
    for row in &everything {
        for c in &civics {
            assert!(
                !row[0].contains(c.as_str()),
                "a personnummer is stored in clear"
            );
        }
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM prov_person WHERE protected = (1 = 1)
               AND (given_name IS NOT NULL OR family_name IS NOT NULL OR eppn IS NOT NULL)"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM prov_person WHERE protected = (1 = 1)"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM prov_person_email e JOIN prov_person p
               ON p.source = e.source AND p.id = e.person_id WHERE p.protected = (1 = 1)"
        )
        .await,
        0
    );
    let log = count(&db, "SELECT count(*) FROM prov_change_log").await;
    let lookups = s.sim.stats.lookup_requests.load(Ordering::Relaxed);
    let lists = s.sim.stats.list_requests.load(Ordering::Relaxed);
    // A token revoked before its time: the first request answers 403 5002, the client asks
    // for a new token once and the pass goes on.
    let tokens = s.sim.stats.tokens_issued.load(Ordering::Relaxed);
    s.sim.revoke_tokens();
    let second = run(&db, &api, 10).await;
    assert_eq!(
        s.sim.stats.tokens_issued.load(Ordering::Relaxed),
        tokens + 1,
        "one new token after the 403"
    );
    // The kinds pass at once: each has a request refused with the revoked token, and they share
    // the one new token.
    let refused = s.sim.stats.token_refused.load(Ordering::Relaxed);
    assert!((1..=4).contains(&refused), "{refused}");
    assert_eq!(second.outcome, PassOutcome::Complete);
    assert_eq!(second.counts[0], [persons, 0, 0, 0]);
    assert_eq!(
        s.sim.stats.lookup_requests.load(Ordering::Relaxed),
        lookups,
        "an unchanged pass looks nothing up"
    );
    assert_eq!(
        s.sim.stats.list_requests.load(Ordering::Relaxed) - lists,
        lists,
        "an unchanged pass lists what the first did"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM prov_change_log").await,
        log
    );
    assert_eq!(
        db.texts("SELECT outcome FROM prov_pass ORDER BY id").await,
        vec![vec!["complete".to_owned()], vec!["complete".to_owned()]]
    );
}

async fn changes_additions_and_deletions_are_mirrored_and_a_pass_stopped_part_way_removes_nothing(
    backend: Backend,
) {
    let db = backend.fresh().await;
    let faults = ProvFaults {
        rate_limit_per_second: None,
        // A token lives 1 s: the pass refreshes it on its way.
        token_ttl: Duration::from_secs(1),
        latency: Duration::from_millis(80),
        burst_429: 0.05,
        burst_503: 0.05,
        ..ProvFaults::default()
    };
    let s = serve(Register::generate(&population(40), 44), faults).await;
    // At 10 requests a second the pass takes longer than a token lives.
    let api = api(&s, 10);
    assert_eq!(run(&db, &api, 10).await.outcome, PassOutcome::Complete);
    assert!(
        s.sim.stats.tokens_issued.load(Ordering::Relaxed) > 1,
        "tokens are refreshed mid-pass"
    );
    // A change, an addition and a deletion while nobody looks.
    let (changed, deleted) = {
        let mut r = s.sim.register.lock().expect("register");
        let ids: Vec<String> = r.persons.keys().cloned().collect();
        r.change_person(&ids[3]);
        r.persons.remove(&ids[5]);
        r.churn(&mut rand::SeedableRng::seed_from_u64(1));
        (ids[3].clone(), ids[5].clone())
    };
    let report = run(&db, &api, 10).await;
    assert_eq!(report.outcome, PassOutcome::Complete, "{:?}", report.error);
    assert_mirrored(&db, &s.sim).await;
    let enrolment = db
        .texts(&format!(
            "SELECT CAST(school_year AS TEXT) FROM prov_person_enrolment WHERE person_id = '{changed}'"
        ))
        .await;
    assert_eq!(enrolment, vec![vec!["9".to_owned()]]);
    let ops = db
        .texts(&format!(
            "SELECT op FROM prov_change_log WHERE id = '{deleted}' ORDER BY seq"
        ))
        .await;
    assert_eq!(
        ops,
        vec![vec!["upsert".to_owned()], vec!["remove".to_owned()]]
    );
    // A pass stopped part way (activities unavailable) removes nothing, though persons went.
    let gone = {
        let mut r = s.sim.register.lock().expect("register");
        let id = r.persons.keys().next().cloned().expect("a person");
        r.persons.remove(&id);
        id
    };
    *s.sim.outage.lock().expect("outage") = Some("activities".into());
    let failed = run(&db, &api, 10).await;
    assert_eq!(failed.outcome, PassOutcome::Failed);
    let error = failed.error.expect("an error");
    assert!(error.contains("activities page 1"), "{error}");
    assert!(live(&db, "prov_person").await.contains(&gone));
    *s.sim.outage.lock().expect("outage") = None;
    let again = run(&db, &api, 10).await;
    assert_eq!(again.outcome, PassOutcome::Complete, "{:?}", again.error);
    assert!(!live(&db, "prov_person").await.contains(&gone));
    assert_mirrored(&db, &s.sim).await;
    assert_eq!(
        db.texts("SELECT outcome FROM prov_pass ORDER BY id").await,
        [["complete"], ["complete"], ["failed"], ["complete"]]
            .map(|r| r.map(str::to_owned).to_vec())
            .to_vec()
    );
}

async fn a_mass_drop_is_refused_until_an_operator_confirms_or_the_next_pass_agrees(
    backend: Backend,
) {
    let db = backend.fresh().await;
    let faults = ProvFaults {
        rate_limit_per_second: None,
        ..ProvFaults::default()
    };
    let s = serve(Register::generate(&population(40), 40), faults).await;
    let api = api(&s, 50);
    assert_eq!(run(&db, &api, 100).await.outcome, PassOutcome::Complete);
    let drop_half = |s: &Sim| {
        let mut r = s.sim.register.lock().expect("register");
        let ids: Vec<String> = r.persons.keys().cloned().collect();
        for id in ids.iter().step_by(2) {
            r.persons.remove(id);
        }
    };
    drop_half(&s);
    let refused = run(&db, &api, 100).await;
    assert_eq!(refused.outcome, PassOutcome::Refused);
    assert!(refused
        .error
        .as_deref()
        .unwrap_or("")
        .contains("accept-removals kommun"));
    assert_eq!(refused.counts[0][3], 0);
    assert_ne!(
        live(&db, "prov_person").await,
        register_ids(&s.sim, "prov_person")
    );
    // The operator confirms: the next pass applies them.
    let mut tx = db.store.begin_sql("test").await.expect("begin");
    assert!(
        nprov_sync::provisioning::store::accept_removals(&mut *tx, SOURCE)
            .await
            .expect("accept")
    );
    tx.commit("test").await.expect("commit");
    assert_eq!(run(&db, &api, 100).await.outcome, PassOutcome::Complete);
    assert_mirrored(&db, &s.sim).await;
    // Another drop: refused once, applied when the next pass sees the same.
    drop_half(&s);
    assert_eq!(run(&db, &api, 100).await.outcome, PassOutcome::Refused);
    assert_eq!(run(&db, &api, 100).await.outcome, PassOutcome::Complete);
    assert_mirrored(&db, &s.sim).await;
}

async fn the_mirror_is_read_without_waiting_for_a_writer(backend: Backend) {
    // A pass looks up what it holds of each page, and the daemon reads when the last complete
    // pass ended. Neither takes the write lock: with a window's transaction open (on SQLite
    // the one writer connection, BEGIN IMMEDIATE) both answer at once.
    let db = backend.fresh().await;
    let s = serve(
        Register::generate(&population(20), 21),
        ProvFaults::default(),
    )
    .await;
    assert_eq!(
        run(&db, &api(&s, 50), 100).await.outcome,
        PassOutcome::Complete
    );
    let ids = register_ids(&s.sim, "prov_person");
    let writer = db.store.begin_sql("a window").await.expect("begin");
    let (known, last) = tokio::time::timeout(Duration::from_secs(2), async {
        let known = nprov_sync::provisioning::store::known(
            db.store.as_ref(),
            SOURCE,
            nprov_sync::provisioning::Kind::Person,
            &ids,
        )
        .await
        .expect("known");
        let last = nprov_sync::provisioning::store::last_complete(db.store.as_ref(), SOURCE)
            .await
            .expect("last complete");
        (known, last)
    })
    .await
    .expect("a read waited for the writer");
    writer.commit("a window").await.expect("commit");
    assert_eq!(known.len(), ids.len());
    assert!(known.values().all(|k| !k.removed));
    assert!(last.is_some(), "the complete pass is recorded");
}

async fn the_join_views_see_matches_and_both_mismatches(backend: Backend) {
    let db = backend.fresh().await;
    let population = population(40);
    let mut xml = Vec::new();
    population
        .write_document(
            &mut xml,
            "2026-03-01T00:00",
            "2026-03-02T00:00",
            0..40,
            |_| 0,
        )
        .expect("render");
    import_at(
        db.store.as_ref(),
        "default",
        std::str::from_utf8(&xml).expect("utf-8"),
        at(1),
    )
    .await
    .expect("import");
    let faults = ProvFaults {
        rate_limit_per_second: None,
        ..ProvFaults::default()
    };
    // 40 pupils with results (2 not registered, 2 registered by an external id only) and 4
    // registered without results.
    let s = serve(Register::generate(&population, 44), faults).await;
    let api = api(&s, 50);
    assert_eq!(run(&db, &api, 100).await.outcome, PassOutcome::Complete);
    assert_eq!(
        count(
            &db,
            "SELECT count(DISTINCT elev) FROM v_prov_registered_result"
        )
        .await,
        38
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(DISTINCT elev) FROM v_prov_result_without_registration"
        )
        .await,
        2
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM v_prov_registered_without_result").await,
        4
    );
}

/// The released binary end to end: `simulate` serves the provisioning API, `sync --once` passes
/// it, `provisioning hash-civic-no` gives the HMAC the database holds, and neither the database
/// file nor the output carries a personnummer or a protected person's name.
#[tokio::test]
async fn the_binary_mirrors_the_simulated_register_and_hashes_a_personnummer_as_stored() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().expect("dir");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
        .args(["simulate", "--listen", "127.0.0.1:0", "--students", "50"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the simulator");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut base = None;
    for _ in 0..2 {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the simulator starts")
            .expect("read")
            .expect("a line");
        if let Some(rest) = line.split("base_url = \"").nth(1) {
            base = rest.split('"').next().map(str::to_owned);
        }
    }
    let base = base.expect("the provisioning API's base_url");
    let auth = base.replace("/provisioning/v1", "/transaction");
    std::fs::write(
        dir.path().join("civic.key"),
        "an example key of thirty-two bytes!\n",
    )
    .expect("key");
    let db = dir.path().join("n.db");
    let config = dir.path().join("nprov.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"sqlite://{}\"\n\n[[provisioning]]\nname = \"kommun\"\n\
             base_url = \"{base}\"\nauth_url = \"{auth}\"\nentity_id = \"https://kommun.example/idp\"\n\
             civic_no_key_file = \"civic.key\"\n",
            db.display()
        ),
    )
    .expect("config");
    let nprov = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("NPROV_CONFIG")
            .env_remove("RUST_LOG")
            .output()
            .expect("runs")
    };
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let synced = nprov(&["sync", "--once"]);
    assert!(synced.status.success(), "{}", text(&synced));
    let said = text(&synced);
    assert!(
        said.contains("kommun: provisioning pass complete: persons 56 seen, 56 added"),
        "{said}"
    );
    let textfile = dir.path().join("nprov.prom");
    let again = nprov(&[
        "sync",
        "--once",
        "--source",
        "kommun",
        "--textfile",
        textfile.to_str().expect("path"),
    ]);
    let prom = std::fs::read_to_string(&textfile).expect("the textfile");
    assert!(
        prom.contains("nprov_provisioning_passes_total{outcome=\"complete\",source=\"kommun\"} 1"),
        "{prom}"
    );
    assert!(prom.contains("nprov_provisioning_records{kind=\"person\",source=\"kommun\"} 56"));
    assert!(
        text(&again).contains("persons 56 seen, 0 added, 0 changed, 0 removed"),
        "{}",
        text(&again)
    );
    // Person 0's personnummer, as the simulator generates it.
    let hashed = nprov(&["provisioning", "hash-civic-no", "kommun", "20120101-0000"]);
    assert!(hashed.status.success(), "{}", text(&hashed));
    let hmac = String::from_utf8_lossy(&hashed.stdout).trim().to_owned();
    assert_eq!(hmac.len(), 64);
    let accepted = nprov(&["provisioning", "accept-removals", "kommun"]);
    assert!(accepted.status.success(), "{}", text(&accepted));
    // status shows the passes, and the source is ready (a complete pass just now).
    let status = nprov(&["status"]);
    assert!(status.status.success(), "{}", text(&status));
    let shown = text(&status);
    assert!(
        shown.contains("provisioning kommun: last complete pass 20"),
        "{shown}"
    );
    assert!(shown.contains("complete persons 56/0/0/0"), "{shown}");
    let json = nprov(&["status", "--json"]);
    let doc: serde_json::Value =
        serde_json::from_slice(&json.stdout).expect("status --json is JSON");
    assert_eq!(doc["provisioning"][0]["ready"], true, "{doc}");
    assert_eq!(doc["provisioning"][0]["recent_passes"][1]["person"][1], 56);
    let store = nprov_sync::store::SqliteStore::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("open");
    let found: i64 = sqlx::query_scalar("SELECT count(*) FROM prov_person WHERE civic_no_hmac = ?")
        .bind(&hmac)
        .fetch_one(store.pool())
        .await
        .expect("query");
    assert_eq!(found, 1);
    nprov_sync::store::Store::close(&store).await;
    let bytes = std::fs::read(&db).expect("the database file");
    for secret in ["201201010000", "Elev42", "Efternamn42", "elev42@"] {
        assert!(
            memchr::memmem::find(&bytes, secret.as_bytes()).is_none(),
            "{secret} is in the database file"
        );
        assert!(!said.contains(secret), "{secret} in the output");
    }
    child.kill().await.ok();
}

/// The service passes a provisioning source on its schedule, counts it in the metrics, is
/// ready while passes complete, and logs neither a personnummer nor a protected name.
#[tokio::test]
async fn the_service_passes_on_schedule_with_metrics_and_readiness() {
    let s = serve(
        Register::generate(&population(30), 33),
        ProvFaults::default(),
    )
    .await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("civic.key"),
        "an example key of thirty-two bytes!\n",
    )
    .expect("key");
    let config = dir.path().join("nprov.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"sqlite://{}\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [[provisioning]]\nname = \"kommun\"\nbase_url = \"http://{addr}/provisioning/v1\"\n\
             auth_url = \"http://{addr}/transaction\"\nentity_id = \"https://kommun.example/idp\"\n\
             civic_no_key_file = \"civic.key\"\nschedule = \"*/2 * * * * *\"\n",
            dir.path().join("n.db").display(),
            addr = s.addr
        ),
    )
    .expect("config");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
        .args(["run", "--config"])
        .arg(&config)
        // The default level: stderr is read only at the end, and a pipe holds 64 KiB.
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the service");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
            let text = r.text().await.expect("body");
            let complete = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix(
                        "nprov_provisioning_passes_total{outcome=\"complete\",source=\"kommun\"} ",
                    )
                })
                .and_then(|v| v.parse::<f64>().ok());
            if complete.is_some_and(|n| n >= 2.0) {
                break text;
            }
        }
        if std::time::Instant::now() > deadline {
            child.start_kill().ok();
            let out = child.wait_with_output().await.expect("output");
            panic!("no two passes:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        metrics.contains("nprov_provisioning_records{kind=\"person\",source=\"kommun\"} 34"),
        "{metrics}"
    );
    assert!(metrics.contains("nprov_provisioning_schedule_seconds{source=\"kommun\"} 2"));
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value =
        serde_json::from_str(&ready.text().await.expect("body")).expect("json");
    assert_eq!(body["provisioning"][0]["source"], "kommun");
    assert_eq!(body["provisioning"][0]["ready"], true);
    let pid = child.id().expect("pid").to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("it stops")
        .expect("output");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    for secret in ["20120101", "Elev", "Efternamn", "elev0@"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

async fn forget_drop_and_prune_cover_the_provisioning_mirror(backend: Backend) {
    use nprov_sync::store::governance::{Cutoffs, Erasure, Mode};
    let db = backend.fresh().await;
    let population = population(40);
    let faults = ProvFaults {
        rate_limit_per_second: None,
        ..ProvFaults::default()
    };
    let s = serve(Register::generate(&population, 44), faults).await;
    let api = api(&s, 50);
    assert_eq!(run(&db, &api, 100).await.outcome, PassOutcome::Complete);
    assert_eq!(run(&db, &api, 100).await.outcome, PassOutcome::Complete);
    let persons = || count(&db, "SELECT count(*) FROM prov_person");
    let before = persons().await;
    // Pupil 3 is registered by its platform id, pupil 7 by an external identifier only; the
    // results' braces and case do not matter.
    for (i, elev) in [
        (3, population.elev_id(3).to_uppercase()),
        (7, population.elev_id(7)),
    ] {
        let erasure = |mode| Erasure {
            elev: &elev,
            source: None,
            reason: Some("test"),
            now: at(9),
            mode,
        };
        let dry = db
            .store
            .forget(&erasure(Mode::DryRun))
            .await
            .expect("dry run");
        assert!(dry.provisioning >= 3, "pupil {i}: {dry:?}");
        assert_eq!(persons().await, before - if i == 3 { 0 } else { 1 });
        let done = db
            .store
            .forget(&erasure(Mode::Apply))
            .await
            .expect("forget");
        assert_eq!(done.provisioning, dry.provisioning, "pupil {i}");
    }
    assert_eq!(persons().await, before - 2);
    let bare = population.elev_id(3).trim_matches(['{', '}']).to_owned();
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM prov_group_membership WHERE person_id = '{bare}'")
        )
        .await,
        0
    );
    assert_eq!(
        db.texts(&format!(
            "SELECT op FROM prov_change_log WHERE id = '{bare}' ORDER BY seq"
        ))
        .await,
        vec![vec!["erase".to_owned()]]
    );
    assert!(
        count(
            &db,
            "SELECT CAST(max(provisioning) AS INTEGER) FROM erasure"
        )
        .await
            > 0
    );
    // Retention: passes and log entries by the sync_run and change_log horizons; the latest
    // complete pass stays.
    let future = Some(chrono::Utc::now() + chrono::Duration::days(1));
    let pruned = db
        .store
        .prune(
            &Cutoffs {
                sync_run: future,
                quarantine_raw_xml: None,
                quarantine: None,
                change_log: future,
            },
            Mode::Apply,
        )
        .await
        .expect("prune");
    assert_eq!(pruned.prov_pass, 1);
    assert!(pruned.prov_change_log > 0);
    assert_eq!(count(&db, "SELECT count(*) FROM prov_pass").await, 1);
    // Dropping the source removes every row of its mirror.
    let dropped = db
        .store
        .drop_source(SOURCE, at(10), Mode::Apply)
        .await
        .expect("drop");
    assert!(dropped.provisioning > before);
    for table in [
        "prov_person",
        "prov_group_membership",
        "prov_pass",
        "prov_state",
    ] {
        assert_eq!(
            count(&db, &format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
}

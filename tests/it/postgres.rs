//! What only PostgreSQL has: schemas, native types, several instances on one database (leadership,
//! the watermark fence under real concurrency), and a server that can drop its connections in the
//! middle of a window. Run against the server at `NPROV_TEST_POSTGRES_URL` (default: the local
//! one); each test in a schema of its own. The behaviour both backends share is tested in
//! `store`, `vendor` and `corpus`, once per backend.

use crate::helpers::*;
use nprov_sync::import::{apply_document, ImportError};
use nprov_sync::store::{
    ApplyContext, ApplySummary, PostgresStore, RunKind, Store, StoreError, Watermark,
};
use nprov_sync::window::Window;
use nprov_sync::xml::Limits;

/// PostgreSQL, or a visible skip (a failure under CI=true).
async fn postgres(test: &str) -> Option<Db> {
    let b = Backend::Postgres;
    if !b.available(&format!("{}::{test}", module_path!())).await {
        return None;
    }
    Some(b.fresh().await)
}

fn ctx(label: &str) -> ApplyContext {
    ApplyContext {
        source: "default".into(),
        document: label.into(),
        now: at(3),
    }
}

/// Applies a document as the window `w` planned from `expected`, and commits it if the fence
/// lets it (as the sync engine does: apply, record the window, commit).
async fn sync_window_doc(
    store: &dyn Store,
    w: Window,
    xml: String,
    expected: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<ApplySummary, StoreError> {
    let input = std::io::Cursor::new(xml.into_bytes());
    let (mut tx, report) =
        match apply_document(store, input, Limits::default(), ctx(&w.label())).await {
            Ok(applied) => applied,
            Err(ImportError::Store(e)) => return Err(e),
            Err(e) => panic!("the document is valid: {e}"),
        };
    if let Err(e) = tx
        .record_window(&sync_run(
            RunKind::Sync,
            w,
            report.summary.clone(),
            expected,
        ))
        .await
    {
        tx.rollback().await.ok();
        return Err(e);
    }
    tx.commit().await?;
    Ok(report.summary)
}

async fn watermark(db: &Db) -> Option<Watermark> {
    db.store
        .watermark("default")
        .await
        .expect("read the watermark")
}

#[tokio::test]
async fn the_tables_live_in_the_configured_schema_in_native_types() {
    let Some(db) = postgres("the_tables_live_in_the_configured_schema_in_native_types").await
    else {
        return;
    };
    let schema = db.schema();
    let tables = db
        .texts(&format!(
            "SELECT table_name, table_type FROM information_schema.tables
             WHERE table_schema = '{schema}' ORDER BY table_name"
        ))
        .await;
    let tables: Vec<String> = tables.iter().map(|r| r.join(" ")).collect();
    assert_eq!(
        tables,
        [
            "_sqlx_migrations BASE TABLE",
            "change_log BASE TABLE",
            "delprovsresultat BASE TABLE",
            "erasure BASE TABLE",
            "prov_activity BASE TABLE",
            "prov_activity_group BASE TABLE",
            "prov_activity_teacher BASE TABLE",
            "prov_change_log BASE TABLE",
            "prov_duty BASE TABLE",
            "prov_group BASE TABLE",
            "prov_group_membership BASE TABLE",
            "prov_pass BASE TABLE",
            "prov_person BASE TABLE",
            "prov_person_email BASE TABLE",
            "prov_person_enrolment BASE TABLE",
            "prov_person_external_id BASE TABLE",
            "prov_state BASE TABLE",
            "provomrade BASE TABLE",
            "provtillfalle BASE TABLE",
            "quarantine BASE TABLE",
            "sync_run BASE TABLE",
            "sync_watermark BASE TABLE",
            "v_delprovsresultat VIEW",
            "v_prov_activity VIEW",
            "v_prov_duty VIEW",
            "v_prov_group VIEW",
            "v_prov_person VIEW",
            "v_prov_person_key VIEW",
            "v_prov_registered_result VIEW",
            "v_prov_registered_without_result VIEW",
            "v_prov_result_without_registration VIEW",
            "v_provresultat VIEW",
        ]
    );
    let types = db
        .texts(&format!(
            "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_identity
             FROM information_schema.columns
             WHERE table_schema = '{schema}'
               AND (table_name, column_name) IN (('provomrade', 'id'), ('provomrade', 'changed_at'),
                    ('provtillfalle', 'uppdaterat'), ('provtillfalle', 'intedeltagit'),
                    ('delprovsresultat', 'maluppfyllnad'), ('change_log', 'seq'),
                    ('sync_watermark', 'watermark_local'), ('sync_watermark', 'watermark_utc'))
             ORDER BY 1"
        ))
        .await;
    let types: Vec<String> = types.into_iter().map(|r| r.join(" ")).collect();
    assert_eq!(
        types,
        [
            "change_log.seq bigint YES",
            "delprovsresultat.maluppfyllnad boolean NO",
            "provomrade.changed_at timestamp with time zone NO",
            "provomrade.id bigint YES",
            "provtillfalle.intedeltagit boolean NO",
            "provtillfalle.uppdaterat date NO",
            "sync_watermark.watermark_local timestamp without time zone NO",
            "sync_watermark.watermark_utc timestamp with time zone NO",
        ]
    );
    // Migrating again (every start-up does) changes nothing.
    db.store.migrate().await.expect("migrate again");
    let applied = db
        .texts("SELECT CAST(count(*) AS text) FROM _sqlx_migrations")
        .await;
    // Each migration file once: none applied twice, none left out.
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .expect("migrations")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    assert_eq!(applied, vec![vec![files.to_string()]]);
}

#[tokio::test]
async fn a_connection_lost_mid_window_fails_it_cleanly_and_the_next_attempt_succeeds() {
    let Some(db) =
        postgres("a_connection_lost_mid_window_fails_it_cleanly_and_the_next_attempt_succeeds")
            .await
    else {
        return;
    };
    let first = window("2026-01-10T08:00:00Z", "2026-01-10T09:59:00Z");
    sync_window_doc(
        &*db.store,
        first,
        doc(&[kurs(
            "e0",
            "ENGENG05",
            "GY",
            vec![pt("2026-01-02", "A", &[])],
        )]),
        None,
    )
    .await
    .expect("the first window");
    let before = (db.dump().await, db.runs().await, watermark(&db).await);

    // The next window: more elements than two write batches (2000 elements each) hold.
    let records: Vec<_> = (0..5000)
        .map(|i| {
            kurs(
                &format!("s{i:04}"),
                "ENGENG05",
                "GY",
                vec![pt("2026-01-10", "C", &[("TALA", "C")])],
            )
        })
        .collect();
    let next = window("2026-01-10T09:30:00Z", "2026-01-10T11:59:00Z");
    let size = || async {
        db.texts("SELECT CAST(pg_relation_size('provtillfalle') AS text)")
            .await[0][0]
            .parse::<u64>()
            .expect("a size")
    };
    let size_before = size().await;
    let (doc_ctx, elements) = scan_elements(&records);
    let mut tx = db
        .store
        .begin(ctx(&next.label()), doc_ctx)
        .await
        .expect("begin");
    // The second batch is handed to the writer only once the first is written: by now the first
    // 2000 elements are in the database, uncommitted.
    for e in &elements[..4500] {
        tx.element(e.clone())
            .await
            .expect("applying before the loss");
    }
    // Rows of the window are written (uncommitted rows take space, visible from outside)…
    assert!(size().await > size_before, "nothing was written yet");
    // …when the server drops the session, as a restart or an administrator would.
    let ended = db.terminate_sessions(db.application_name()).await;
    assert!(ended >= 1, "no session of the store was found");
    let failed = async {
        for e in &elements[4500..] {
            tx.element(e.clone()).await?;
        }
        tx.finish().await
    }
    .await
    .expect_err("the window's connection is gone");
    assert!(
        failed.is_transient(),
        "a lost connection is worth another attempt: {failed:?}"
    );
    tx.rollback().await.ok();
    // The sync engine records the failure on a connection of its own; the pool reconnects.
    let mut run = sync_run(RunKind::Sync, next, ApplySummary::default(), None);
    run.error = Some(failed.to_string());
    db.store
        .record_failed_run(&run)
        .await
        .expect("record the failure");

    // Nothing of the window is there: no rows, the watermark where it was, no ok run.
    assert_eq!(db.dump().await, before.0);
    assert_eq!(watermark(&db).await, before.2);
    let mut runs = before.1.clone();
    runs.push("sync 2026-01-10T10:30..2026-01-10T12:59 failed 0".into());
    assert_eq!(db.runs().await, runs);

    // The next attempt, on the same store, succeeds.
    let planned = watermark(&db).await.map(|w| w.utc);
    let summary = sync_window_doc(&*db.store, next, doc(&records), planned)
        .await
        .expect("the next attempt");
    assert_eq!((summary.records, summary.changed), (5000, 5000));
    assert_eq!(db.dump().await.len(), 5001);
    assert_eq!(
        watermark(&db).await.map(|w| w.utc),
        Some(next.tom_utc),
        "the watermark moves with the window"
    );
}

#[tokio::test]
async fn only_one_instance_leads_a_source_and_a_lost_leader_is_replaced() {
    let Some(db) = postgres("only_one_instance_leads_a_source_and_a_lost_leader_is_replaced").await
    else {
        return;
    };
    // Two instances on the same schema; the second's sessions are named apart.
    let other: PostgresStore = db.another_store("-b").await;
    let mut first = db
        .store
        .try_lead("default")
        .await
        .expect("ask")
        .expect("the first to ask leads");
    assert!(first.still_held().await);
    assert!(
        other.try_lead("default").await.expect("ask").is_none(),
        "a second instance led the same source"
    );
    let solna = other
        .try_lead("solna")
        .await
        .expect("ask")
        .expect("another source is free");
    // The same source in another deployment (schema) is another lock.
    let elsewhere = Backend::Postgres.fresh().await;
    elsewhere
        .store
        .try_lead("default")
        .await
        .expect("ask")
        .expect("another schema's source is free")
        .release()
        .await;

    // The leader's session ends (its machine vanished, the server restarted): it notices, and
    // the other instance takes over.
    assert!(db.terminate_sessions(db.application_name()).await >= 1);
    assert!(
        !first.still_held().await,
        "a leadership whose session ended is still reported held"
    );
    let second = other
        .try_lead("default")
        .await
        .expect("ask")
        .expect("a lost leader is replaced");
    assert!(
        db.store.try_lead("default").await.expect("ask").is_none(),
        "the old leader took the source back while it was led"
    );
    // Released leadership is free at once.
    second.release().await;
    solna.release().await;
    db.store
        .try_lead("default")
        .await
        .expect("ask")
        .expect("a released source is free")
        .release()
        .await;
}

/// Two instances sync the same window at the same moment, planned from the same watermark and
/// receiving the same document: exactly one commits; the other fails on the fence and leaves
/// nothing.
async fn race(db: &Db, w: Window, planned: Option<chrono::DateTime<chrono::Utc>>, elev: &str) {
    let xml = doc(&[
        kurs(elev, "MATMAT01a", "GY", vec![pt("2026-01-05", "B", &[])]),
        kurs(
            "shared",
            "MATMAT01a",
            "GY",
            vec![pt("2026-01-05", elev, &[])],
        ),
    ]);
    let other = db.another_store("-b").await;
    let (a, b) = tokio::join!(
        sync_window_doc(&*db.store, w, xml.clone(), planned),
        sync_window_doc(&other, w, xml, planned),
    );
    let (won, lost) = match (a, b) {
        (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
        (a, b) => panic!("exactly one must commit: {a:?} / {b:?}"),
    };
    assert!(
        matches!(lost, StoreError::WatermarkMoved { .. }),
        "the loser must fail on the fence: {lost}"
    );
    assert_eq!(won.records, 2);
    assert_eq!(
        watermark(db).await.map(|w| w.utc),
        Some(w.tom_utc),
        "the winner's watermark stands"
    );
    other.close().await;
}

#[tokio::test]
async fn two_instances_syncing_the_same_window_at_once_commit_it_exactly_once() {
    let Some(db) =
        postgres("two_instances_syncing_the_same_window_at_once_commit_it_exactly_once").await
    else {
        return;
    };
    // A source's first window (no watermark row to lock yet)…
    race(
        &db,
        window("2026-01-10T08:00:00Z", "2026-01-10T09:59:00Z"),
        None,
        "A",
    )
    .await;
    // …and a later one.
    let planned = watermark(&db).await.map(|w| w.utc);
    race(
        &db,
        window("2026-01-10T09:30:00Z", "2026-01-10T11:59:00Z"),
        planned,
        "C",
    )
    .await;
    assert_eq!(
        db.dump().await,
        [
            "default A kurs MATMAT01a #0 GY 2026-01-05 g=- i=0 s=B []",
            "default C kurs MATMAT01a #0 GY 2026-01-05 g=- i=0 s=B []",
            "default shared kurs MATMAT01a #0 GY 2026-01-05 g=- i=0 s=C []",
        ]
    );
    assert_eq!(
        db.runs().await,
        [
            "sync 2026-01-10T09:00..2026-01-10T10:59 ok 2",
            "sync 2026-01-10T10:30..2026-01-10T12:59 ok 2",
        ]
    );
    // Within a document in provomrade id order: "shared" was created before "C".
    assert_eq!(
        db.change_log().await,
        [
            "A MATMAT01a upsert",
            "shared MATMAT01a upsert",
            "shared MATMAT01a upsert",
            "C MATMAT01a upsert",
        ]
    );
}

#[tokio::test]
async fn the_cli_imports_into_a_postgres_schema_from_settings() {
    let Some(db) = postgres("the_cli_imports_into_a_postgres_schema_from_settings").await else {
        return;
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nprov-sync"))
        .args(["import", "--source", "cli"])
        .arg(fixture("good/v12.0.xml"))
        .env_remove("NPROV_CONFIG")
        .env_remove("RUST_LOG")
        .env("NPROV_DATABASE_URL", postgres_url())
        .env("NPROV_DATABASE_SCHEMA", db.schema())
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let sources = db
        .texts("SELECT DISTINCT source FROM provomrade ORDER BY 1")
        .await;
    assert_eq!(sources, vec![vec!["cli"]]);
}

#[tokio::test]
async fn an_unreachable_server_is_a_transient_error_without_the_password() {
    // Port 1 on loopback: nothing listens there, whether or not PostgreSQL runs.
    let e = PostgresStore::connect("postgres://nprov:s3cret@127.0.0.1:1/wh", "")
        .await
        .err()
        .expect("nothing listens on port 1");
    let text = e.to_string();
    assert!(
        text.contains("postgres://nprov:***@127.0.0.1:1/wh") && !text.contains("s3cret"),
        "{text}"
    );
    assert!(e.is_transient(), "{e:?}");
    let e = nprov_sync::store::connect(
        "postgres://127.0.0.1:1/wh",
        nprov_sync::store::ConnectOptions {
            schema: "Bad-Name",
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("not an identifier");
    assert!(matches!(e, StoreError::InvalidSchema { .. }), "{e}");
}

/// A database that refuses connections when the service starts (stopped, restarting, not yet
/// reachable): `run` waits with back-off, /readyz says 503 and why, and once the server answers
/// the service becomes ready, without having exited. The "server" here is a port that refuses
/// until a proxy to the real one starts listening on it.
#[tokio::test]
async fn the_service_waits_for_a_database_that_comes_up_after_it_starts() {
    let test = "postgres::the_service_waits_for_a_database_that_comes_up_after_it_starts";
    let Some(db) = postgres(test).await else {
        return;
    };
    let real: reqwest::Url = postgres_url().parse().expect("url");
    let upstream = format!(
        "{}:{}",
        real.host_str().expect("host"),
        real.port().unwrap_or(5432)
    );
    let (db_port, metrics_port) = (free_port(), free_port());
    let mut via_proxy = real.clone();
    via_proxy.set_host(Some("127.0.0.1")).expect("host");
    via_proxy.set_port(Some(db_port)).expect("port");
    let dir = tempfile::tempdir().expect("dir");
    let cfg = dir.path().join("nprov.toml");
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = \"{via_proxy}\"\nschema = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n[[source]]\nurl = \"http://127.0.0.1:9\"\nstart = \"2026-01-05T00:00\"\n",
            db.schema()
        ),
    )
    .expect("config");
    let child = spawn_run(&cfg);
    // Waiting: 503, naming the database.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some((503, body)) = readyz(metrics_port).await {
            assert!(body.contains("waiting for the database"), "{body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no 503 while waiting");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The database comes up.
    let proxy = tokio::net::TcpListener::bind(("127.0.0.1", db_port))
        .await
        .expect("proxy port");
    let proxy_task = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = proxy.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some((200, _)) = readyz(metrics_port).await {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready after the database came up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let log = stop_run(child).await;
    assert!(
        log.contains("the database does not answer yet; waiting"),
        "{log}"
    );
    proxy_task.abort();
}

/// PostgreSQL behind TLS with a certificate from a CA that only the operating system's store
/// holds: `sslmode=verify-full` without `sslrootcert` connects, because sqlx reads that store
/// (chosen here with `SSL_CERT_FILE`, for the child process alone); a store without the CA is
/// refused. The "server" is a proxy that answers PostgreSQL's SSLRequest, terminates TLS with
/// the test CA's certificate and passes the session on to the real server in plain text.
#[tokio::test]
async fn a_database_ca_in_the_operating_system_store_is_trusted_without_sslrootcert() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let test =
        "postgres::a_database_ca_in_the_operating_system_store_is_trusted_without_sslrootcert";
    let Some(db) = postgres(test).await else {
        return;
    };
    let pki = pki("kommunens databas-CA");
    let certs = CertificateDer::pem_slice_iter(pki.server_cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("server certificate");
    let key = PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes()).expect("server key");
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server TLS");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let real: reqwest::Url = postgres_url().parse().expect("test URL");
    let upstream = format!(
        "{}:{}",
        real.host_str().expect("host"),
        real.port().unwrap_or(5432)
    );
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = handshakes.clone();
    let proxy = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            inbound.set_nodelay(true).ok();
            let (acceptor, upstream, counted) =
                (acceptor.clone(), upstream.clone(), counted.clone());
            tokio::spawn(async move {
                // SSLRequest: length 8, code 80877103; anything else is not for this proxy.
                let mut request = [0u8; 8];
                if inbound.read_exact(&mut request).await.is_err()
                    || request != [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]
                {
                    return;
                }
                if inbound.write_all(b"S").await.is_err() {
                    return;
                }
                let Ok(mut tls) = acceptor.accept(inbound).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                server.set_nodelay(true).ok();
                tokio::io::copy_bidirectional(&mut tls, &mut server)
                    .await
                    .ok();
            });
        }
    });

    let dir = tempfile::tempdir().expect("dir");
    let system_store = dir.path().join("system-ca.pem");
    std::fs::write(&system_store, &pki.ca).expect("write");
    let other_store = dir.path().join("other-ca.pem");
    std::fs::write(&other_store, pki_other_ca()).expect("write");
    let mut via_tls = real.clone();
    via_tls.set_host(Some("127.0.0.1")).expect("host");
    via_tls.set_port(Some(port)).expect("port");
    via_tls.set_query(Some("sslmode=verify-full"));
    // tokio's Command: the proxy runs on this test's runtime while the child connects.
    let migrate = |store: &std::path::Path| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_nprov-sync"));
        command
            .arg("migrate")
            .env_remove("NPROV_CONFIG")
            .env_remove("RUST_LOG")
            .env_remove("SSL_CERT_DIR")
            .env("SSL_CERT_FILE", store)
            .env("NPROV_DATABASE_URL", via_tls.as_str())
            .env("NPROV_DATABASE_SCHEMA", db.schema());
        async move {
            let out = command.output().await.expect("the binary runs");
            (
                out.status.code(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        }
    };

    let (code, text) = migrate(&other_store).await;
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert_eq!(handshakes.load(Ordering::SeqCst), 0);

    let (code, text) = migrate(&system_store).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("migrated postgres://"), "{text}");
    assert!(handshakes.load(Ordering::SeqCst) >= 1);
    proxy.abort();
}

/// A CA certificate that signed nothing the tests serve.
fn pki_other_ca() -> String {
    pki("a public CA").ca
}

/// `database.reader_role`: the warehouse's role reads every table and view, also one a later
/// migration adds (default privileges), and writes nothing.
#[tokio::test]
async fn the_reader_role_reads_every_table_and_view_and_writes_nothing() {
    let test = "postgres::the_reader_role_reads_every_table_and_view_and_writes_nothing";
    let Some(db) = postgres(test).await else {
        return;
    };
    use sqlx::Connection;
    let role = format!("nprov_reader_{:08x}", rand::random::<u32>());
    let missing = db
        .store
        .grant_reader(&role)
        .await
        .expect_err("no such role yet");
    assert!(
        missing.to_string().contains("there is no role") && missing.to_string().contains(&role),
        "{missing}"
    );
    db.execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .expect("create role");
    db.store.grant_reader(&role).await.expect("grant");
    // What a later migration would add, created as the migrating role after the grant.
    db.execute("CREATE TABLE later_added (id bigint)")
        .await
        .expect("a later table");
    db.execute("CREATE VIEW later_view AS SELECT id FROM later_added")
        .await
        .expect("a later view");

    let mut url: reqwest::Url = postgres_url().parse().expect("url");
    url.set_username(&role).expect("user");
    url.set_password(None).expect("no password");
    let mut reader = sqlx::postgres::PgConnection::connect(url.as_str())
        .await
        .expect("the reader connects");
    let objects: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1
         ORDER BY 1",
    )
    .bind(db.schema())
    .fetch_all(&mut reader)
    .await
    .expect("list");
    for expected in [
        "provomrade",
        "provtillfalle",
        "delprovsresultat",
        "quarantine",
        "change_log",
        "sync_watermark",
        "sync_run",
        "erasure",
        "v_provresultat",
        "v_delprovsresultat",
        "later_added",
        "later_view",
    ] {
        assert!(
            objects.iter().any(|o| o == expected),
            "{expected} in {objects:?}"
        );
    }
    for object in &objects {
        sqlx::query(&format!(
            "SELECT count(*) FROM \"{}\".\"{object}\"",
            db.schema()
        ))
        .fetch_one(&mut reader)
        .await
        .unwrap_or_else(|e| panic!("the reader cannot read {object}: {e}"));
    }
    for write in [
        "INSERT INTO sync_watermark (source, watermark_local, watermark_utc, updated_at) \
         VALUES ('x', now(), now(), now())",
        "DELETE FROM provomrade",
        "UPDATE sync_run SET error = 'x'",
        "CREATE TABLE mine (id int)",
    ] {
        let sql = write
            .replace("INTO ", &format!("INTO \"{}\".", db.schema()))
            .replace("FROM ", &format!("FROM \"{}\".", db.schema()))
            .replace("UPDATE ", &format!("UPDATE \"{}\".", db.schema()))
            .replace("TABLE mine", &format!("TABLE \"{}\".mine", db.schema()));
        let e = sqlx::query(&sql)
            .execute(&mut reader)
            .await
            .expect_err("the reader writes nothing");
        let code = e
            .as_database_error()
            .and_then(|d| d.code())
            .unwrap_or_default()
            .to_string();
        assert_eq!(code, "42501", "{sql}: {e}");
    }
    reader.close().await.ok();
    db.execute("DROP VIEW later_view").await.ok();
    db.execute("DROP TABLE later_added").await.ok();
    db.execute(&format!("DROP OWNED BY {role}")).await.ok();
    db.execute(&format!("DROP ROLE {role}")).await.ok();
}

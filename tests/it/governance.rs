//! Personal data and state, on both backends: retention (prune, dry runs), erasure of one pupil
//! (`forget`), rewinding and dropping a source, and the data contract the database carries.

use crate::helpers::*;
use nprov_sync::import::apply_document;
use nprov_sync::store::governance::{Cutoffs, Erasure, Mode};
use nprov_sync::store::{ApplyContext, RunKind, StoreError};
use nprov_sync::xml::Limits;

for_each_backend!(
    prune_removes_exactly_the_rows_past_each_horizon_and_a_dry_run_removes_nothing,
    forget_removes_every_row_of_one_pupil_only_records_the_erasure_and_a_reread_brings_it_back,
    rewind_moves_the_watermark_back_only_and_drop_removes_a_source_whole,
    every_table_view_and_column_is_described_in_the_database,
    an_unchanged_data_contract_is_not_rewritten_and_a_changed_one_is,
);

/// A document with one element made invalid (its date does not exist).
fn with_bad_date(records: &[nprov_sync::domain::Provomrade]) -> String {
    doc(records).replace("2026-02-28", "2026-02-30")
}

/// Row counts of the tables retention and erasure touch, and how many quarantine rows still
/// have their raw XML.
async fn counts(db: &Db) -> Vec<String> {
    db.texts(
        "SELECT CAST((SELECT count(*) FROM sync_run) AS TEXT),
                CAST((SELECT count(*) FROM quarantine) AS TEXT),
                CAST((SELECT count(*) FROM quarantine WHERE raw_xml IS NOT NULL) AS TEXT),
                CAST((SELECT count(*) FROM change_log) AS TEXT),
                CAST((SELECT count(*) FROM provomrade) AS TEXT)",
    )
    .await
    .remove(0)
}

/// Commits one window of `records` at `now` as the engine would, recording its sync_run.
async fn commit_window(db: &Db, xml: &str, started: chrono::DateTime<chrono::Utc>) {
    let w = window("2026-03-01T00:00:00Z", "2026-03-01T23:59:00Z");
    let ctx = ApplyContext {
        source: "default".into(),
        document: w.label(),
        now: started,
    };
    let (mut tx, report) = apply_document(
        &*db.store,
        std::io::Cursor::new(xml.as_bytes().to_vec()),
        Limits::default(),
        ctx,
    )
    .await
    .expect("apply");
    let mut run = sync_run(RunKind::Backfill, w, report.summary, None);
    run.started_at = started;
    run.finished_at = started;
    tx.record_window(&run).await.expect("record");
    tx.commit().await.expect("commit");
}

async fn prune_removes_exactly_the_rows_past_each_horizon_and_a_dry_run_removes_nothing(
    b: Backend,
) {
    let db = b.fresh().await;
    // Old (minute 1) and recent (minute 40): each table gets rows on both sides of the cutoff
    // (minute 20). The old window has a broken element, so it quarantines one.
    let old = with_bad_date(&[
        kurs("e1", "MATMAT01a", "GY", vec![pt("2026-02-28", "A", &[])]),
        kurs("e2", "MATMAT01a", "GY", vec![pt("2026-01-01", "B", &[])]),
    ]);
    commit_window(&db, &old, at(1)).await;
    // A second old window that fails: sync_run rows of both outcomes are old.
    db.store
        .record_failed_run(&{
            let mut r = sync_run(
                RunKind::Sync,
                window("2026-03-02T00:00:00Z", "2026-03-02T23:59:00Z"),
                Default::default(),
                None,
            );
            r.started_at = at(2);
            r.finished_at = at(2);
            r.error = Some("HTTP 503".into());
            r
        })
        .await
        .expect("failed run");
    let recent = with_bad_date(&[
        kurs("e3", "MATMAT01a", "GY", vec![pt("2026-02-28", "C", &[])]),
        kurs("e2", "MATMAT01a", "GY", vec![pt("2026-01-02", "C", &[])]),
    ]);
    commit_window(&db, &recent, at(40)).await;
    // sync_run 3 (2 old), quarantine 2 (1 old, both with XML), change_log 2 (1 old), and the one
    // valid key, e2.
    assert_eq!(counts(&db).await, ["3", "2", "2", "2", "1"]);
    let before = db.dump().await;

    let cut = Some(at(20));
    let all = Cutoffs {
        sync_run: cut,
        quarantine_raw_xml: cut,
        quarantine: None,
        change_log: cut,
    };
    let dry = db.store.prune(&all, Mode::DryRun).await.expect("dry run");
    assert_eq!(
        dry.by_table(),
        [
            ("sync_run", 2),
            ("quarantine_raw_xml", 1),
            ("quarantine", 0),
            ("change_log", 1),
            ("prov_pass", 0),
            ("prov_change_log", 0)
        ]
    );
    assert_eq!(
        counts(&db).await,
        ["3", "2", "2", "2", "1"],
        "a dry run removes nothing"
    );

    let done = db.store.prune(&all, Mode::Apply).await.expect("prune");
    assert_eq!(done, dry, "the dry run counted what the prune removes");
    // The old failed run goes; the old committed one too, since a later one of the source is
    // committed; the old quarantine row loses its XML but stays (its horizon is 0: keep).
    assert_eq!(counts(&db).await, ["1", "2", "1", "1", "1"]);
    assert_eq!(db.dump().await, before, "the mirror itself is never pruned");
    let kept = db
        .texts(&format!(
            "SELECT {} FROM quarantine WHERE raw_xml IS NOT NULL",
            db.col("last_seen_at", Col::Timestamp)
        ))
        .await;
    assert_eq!(kept, vec![vec![nprov_sync::store::timestamp(at(40))]]);

    // Now the quarantine rows past the horizon, and again: nothing left to do.
    let rows = Cutoffs {
        quarantine: cut,
        ..Cutoffs::default()
    };
    assert_eq!(
        db.store
            .prune(&rows, Mode::Apply)
            .await
            .expect("prune")
            .quarantine,
        1
    );
    assert_eq!(
        db.store.prune(&all, Mode::Apply).await.expect("prune"),
        Default::default()
    );
    assert_eq!(counts(&db).await, ["1", "1", "1", "1", "1"]);

    // Each source's latest committed window stays, however old: status and readiness read it.
    let everything = Cutoffs {
        sync_run: Some(at(59)),
        ..Cutoffs::default()
    };
    assert_eq!(
        db.store
            .prune(&everything, Mode::Apply)
            .await
            .expect("prune")
            .sync_run,
        0
    );
}

async fn forget_removes_every_row_of_one_pupil_only_records_the_erasure_and_a_reread_brings_it_back(
    b: Backend,
) {
    let db = b.fresh().await;
    // The pupil "Elev-A", another whose id differs only by letter case, and a third; Elev-A
    // also has a quarantined element, and rows in a second source.
    let records = vec![
        amne(
            "Elev-A",
            "MA",
            9,
            "GR",
            vec![pt("2026-01-10", "B", &[("A", "B"), ("B1", "C")])],
        ),
        kurs(
            "Elev-A",
            "MATMAT01a",
            "GY",
            vec![pt("2026-01-11", "C", &[])],
        ),
        amne(
            "elev-a",
            "MA",
            9,
            "GR",
            vec![pt("2026-01-10", "A", &[("A", "A")])],
        ),
        kurs("e3", "MATMAT01a", "GY", vec![pt("2026-01-12", "D", &[])]),
    ];
    let xml = doc(&records);
    import_at(&*db.store, "default", &xml, at(1))
        .await
        .expect("import");
    import_at(&*db.store, "solna", &xml, at(1))
        .await
        .expect("import");
    let broken = with_bad_date(&[amne(
        "Elev-A",
        "SV",
        6,
        "GR",
        vec![pt("2026-02-28", "E", &[])],
    )]);
    import_at(&*db.store, "default", &broken, at(2))
        .await
        .expect("import broken");
    // Elements whose key could not be read claim no pupil but carry an id in their XML: the
    // pupil's goes (quoted either way round), the case-differing id's stays.
    let strays = doc(&[kurs(
        "e3",
        "MATMAT01a",
        "GY",
        vec![pt("2026-01-12", "D", &[])],
    )])
    .replacen(
        "<kursresultat",
        "<okant elev='Elev-A'/><okant elev=\"elev-a\"/><kursresultat",
        1,
    );
    assert_ne!(strays, doc(&[]), "the strays went in");
    import_at(&*db.store, "default", &strays, at(2))
        .await
        .expect("import strays");
    assert_eq!(
        db.texts("SELECT CAST(count(*) AS TEXT) FROM quarantine WHERE elev IS NULL")
            .await,
        [["2"]]
    );
    let full = db.dump().await;
    let others = |rows: &[String]| -> Vec<String> {
        rows.iter()
            .filter(|r| !r.contains("Elev-A"))
            .cloned()
            .collect()
    };
    assert!(full.iter().any(|r| r.contains("Elev-A")));
    assert!(full.iter().any(|r| r.contains("elev-a")));

    // Counted first, nothing removed.
    let erasure = |mode, source| Erasure {
        elev: "Elev-A",
        source,
        reason: Some("DPO-2026-17"),
        now: at(3),
        mode,
    };
    let counted = db
        .store
        .forget(&erasure(Mode::DryRun, Some("default")))
        .await
        .expect("count");
    assert_eq!(
        (
            counted.provomrade,
            counted.provtillfalle,
            counted.delprovsresultat,
            counted.change_log,
            counted.quarantine
        ),
        (2, 2, 2, 2, 2)
    );
    assert_eq!(db.dump().await, full);
    assert_eq!(
        db.texts("SELECT CAST(count(*) AS TEXT) FROM erasure").await,
        [["0"]]
    );

    // One source only: the other source's rows of the same pupil stay.
    let removed = db
        .store
        .forget(&erasure(Mode::Apply, Some("default")))
        .await
        .expect("forget");
    assert_eq!(removed, counted);
    let after = db.dump().await;
    assert!(after
        .iter()
        .any(|r| r.contains("Elev-A") && r.contains("solna")));
    assert!(!after
        .iter()
        .any(|r| r.contains("Elev-A") && r.contains("default")));
    // Every source: the pupil is gone, and nothing else changed (the case-differing id stays).
    db.store
        .forget(&erasure(Mode::Apply, None))
        .await
        .expect("forget all");
    let after = db.dump().await;
    assert_eq!(others(&after), others(&full));
    assert!(after.iter().any(|r| r.contains("elev-a")));
    let quarantine = db.texts("SELECT COALESCE(elev, '-') FROM quarantine").await;
    assert!(
        quarantine.iter().all(|r| r[0] != "Elev-A"),
        "{quarantine:?}"
    );
    let strays_left = db
        .texts("SELECT raw_xml FROM quarantine WHERE elev IS NULL")
        .await;
    assert_eq!(strays_left.len(), 1, "{strays_left:?}");
    assert!(strays_left[0][0].contains("elev-a"), "{strays_left:?}");

    // The audit: when, which source, the reason and the counts; nowhere the id.
    let audit = db
        .texts(&format!(
            "SELECT COALESCE(source, '*'), COALESCE(reason, '-'), {}, {}, {}, {}, {}, {} FROM erasure ORDER BY id",
            db.col("erased_at", Col::Timestamp),
            db.col("provomrade", Col::Int),
            db.col("provtillfalle", Col::Int),
            db.col("delprovsresultat", Col::Int),
            db.col("change_log", Col::Int),
            db.col("quarantine", Col::Int),
        ))
        .await;
    let at3 = nprov_sync::store::timestamp(at(3));
    assert_eq!(
        audit,
        vec![
            vec!["default", "DPO-2026-17", &at3, "2", "2", "2", "2", "2"],
            vec!["*", "DPO-2026-17", &at3, "2", "2", "2", "2", "0"],
        ]
    );
    assert!(!audit.concat().concat().contains("Elev-A"));
    // change_log: an erase entry per removed provområde, the earlier entries about them gone.
    let ops = db
        .texts(&format!(
            "SELECT op, {} FROM change_log ORDER BY seq",
            db.col("at", Col::Timestamp)
        ))
        .await;
    let erases = ops.iter().filter(|r| r[0] == "erase").count();
    assert_eq!(erases, 4, "{ops:?}");
    assert_eq!(
        ops.len(),
        4 + 4,
        "the other pupils' 4 upserts and 4 erase entries: {ops:?}"
    );

    // The platform is the source of truth: sent again, the pupil is back.
    import_at(&*db.store, "default", &xml, at(4))
        .await
        .expect("re-read");
    import_at(&*db.store, "solna", &xml, at(4))
        .await
        .expect("re-read");
    assert_eq!(db.dump().await, full);
}

async fn rewind_moves_the_watermark_back_only_and_drop_removes_a_source_whole(b: Backend) {
    let db = b.fresh().await;
    let xml = doc(&[kurs(
        "e1",
        "MATMAT01a",
        "GY",
        vec![pt("2026-01-01", "A", &[])],
    )]);
    let w = window("2026-03-01T00:00:00Z", "2026-03-01T23:59:00Z");
    let (mut tx, report) = apply_document(
        &*db.store,
        std::io::Cursor::new(xml.into_bytes()),
        Limits::default(),
        ApplyContext {
            source: "default".into(),
            document: w.label(),
            now: at(1),
        },
    )
    .await
    .expect("apply");
    tx.record_window(&sync_run(RunKind::Sync, w, report.summary, None))
        .await
        .expect("record");
    tx.commit().await.expect("commit");
    let mark = db
        .store
        .watermark("default")
        .await
        .expect("read")
        .expect("a watermark");

    // Not forwards, not to where it is.
    let local = |s: &str| nprov_sync::window::parse_local(s).expect("local");
    let later = mark.utc + chrono::Duration::hours(1);
    let e = db
        .store
        .rewind("default", later, local("2026-03-02T02:00"), at(5))
        .await
        .expect_err("forwards");
    assert!(matches!(e, StoreError::Refused(_)), "{e}");
    assert!(e.to_string().contains("moves it back only"), "{e}");
    assert!(matches!(
        db.store
            .rewind("nowhere", later, local("2026-03-02T02:00"), at(5))
            .await,
        Err(StoreError::Refused(_))
    ));
    // Back: the previous one is returned, the new one stored.
    let earlier = mark.utc - chrono::Duration::days(1);
    let before = db
        .store
        .rewind("default", earlier, local("2026-02-28T23:59"), at(5))
        .await
        .expect("rewind");
    assert_eq!(before, mark);
    let now = db
        .store
        .watermark("default")
        .await
        .expect("read")
        .expect("kept");
    assert_eq!((now.utc, now.updated_at), (earlier, at(5)));
    assert_eq!(now.local, local("2026-02-28T23:59"));

    // Drop: counted, then removed whole; another source untouched.
    import_at(
        &*db.store,
        "solna",
        &doc(&[kurs(
            "e9",
            "MATMAT01a",
            "GY",
            vec![pt("2026-01-01", "A", &[])],
        )]),
        at(2),
    )
    .await
    .expect("import solna");
    let sources = db.store.sources().await.expect("sources");
    assert_eq!(
        sources
            .iter()
            .map(|s| (s.source.as_str(), s.provomrade, s.runs))
            .collect::<Vec<_>>(),
        [("default", 1, 1), ("solna", 1, 0)]
    );
    assert!(sources[0].watermark.is_some() && sources[0].last_ok.is_some());
    let counted = db
        .store
        .drop_source("default", at(6), Mode::DryRun)
        .await
        .expect("count");
    assert_eq!(
        (
            counted.provomrade,
            counted.provtillfalle,
            counted.sync_run,
            counted.watermark
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(db.store.sources().await.expect("sources").len(), 2);
    let removed = db
        .store
        .drop_source("default", at(6), Mode::Apply)
        .await
        .expect("drop");
    assert_eq!(removed, counted);
    let left = db.store.sources().await.expect("sources");
    assert_eq!(
        left.iter().map(|s| s.source.as_str()).collect::<Vec<_>>(),
        ["solna"]
    );
    assert!(db.store.watermark("default").await.expect("read").is_none());
    assert!(db.dump().await.iter().all(|r| !r.contains("default")));
    assert_eq!(
        db.texts("SELECT op FROM change_log WHERE op = 'erase'")
            .await
            .len(),
        1
    );
}

async fn every_table_view_and_column_is_described_in_the_database(b: Backend) {
    use nprov_sync::store::contract::OBJECTS;
    let db = b.fresh().await;
    let described: Vec<Vec<String>> = match b {
        Backend::Sqlite => {
            db.texts("SELECT object, COALESCE(column_name, '') FROM data_contract ORDER BY 1, 2")
                .await
        }
        Backend::Postgres => {
            let schema = db.schema().to_owned();
            let mut rows = db
                .texts(&format!(
                    "SELECT c.relname, '' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = '{schema}' AND c.relkind IN ('r', 'v')
                       AND obj_description(c.oid, 'pg_class') IS NOT NULL
                     UNION ALL
                     SELECT c.relname, a.attname FROM pg_attribute a
                     JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = '{schema}' AND c.relkind IN ('r', 'v') AND a.attnum > 0
                       AND NOT a.attisdropped AND col_description(c.oid, a.attnum) IS NOT NULL
                     ORDER BY 1, 2"
                ))
                .await;
            rows.retain(|r| r[0] != "_sqlx_migrations");
            rows
        }
    };
    // What the database has: every table and view, every column.
    let actual: Vec<Vec<String>> = match b {
        Backend::Sqlite => {
            let mut rows = db
                .texts(
                    "SELECT m.name, '' FROM sqlite_master m
                     WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite_%'
                       AND m.name <> '_sqlx_migrations'
                     UNION ALL
                     SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p
                     WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite_%'
                       AND m.name <> '_sqlx_migrations'
                     ORDER BY 1, 2",
                )
                .await;
            rows.sort();
            rows
        }
        Backend::Postgres => {
            let schema = db.schema().to_owned();
            db.texts(&format!(
                "SELECT table_name, '' FROM information_schema.tables
                 WHERE table_schema = '{schema}' AND table_name <> '_sqlx_migrations'
                 UNION ALL
                 SELECT table_name, column_name FROM information_schema.columns
                 WHERE table_schema = '{schema}' AND table_name <> '_sqlx_migrations'
                 ORDER BY 1, 2"
            ))
            .await
        }
    };
    let mut described = described;
    described.sort();
    assert_eq!(
        described, actual,
        "described (left) and present (right) differ"
    );
    // And the contract lists nothing the database lacks (data_contract itself is SQLite's).
    let names: Vec<&str> = OBJECTS
        .iter()
        .map(|o| o.name)
        .filter(|n| *n != "data_contract" || b == Backend::Sqlite)
        .collect();
    let mut present: Vec<&str> = actual
        .iter()
        .filter(|r| r[1].is_empty())
        .map(|r| r[0].as_str())
        .collect();
    present.sort();
    let mut names = names;
    names.sort();
    assert_eq!(names, present);
}

/// A start that finds the data contract as this build describes it writes nothing to it (every
/// `sync --once` from a timer migrates first); one that finds a description changed or missing
/// puts the contract back whole.
async fn an_unchanged_data_contract_is_not_rewritten_and_a_changed_one_is(b: Backend) {
    let db = b.fresh().await;
    // What says the contract was written: on SQLite a trigger's witness rows; on PostgreSQL the
    // transaction ids of the schema's comment rows, which every COMMENT ON replaces.
    let (written, contract, change) = match b {
        Backend::Sqlite => {
            for sql in [
                "CREATE TABLE contract_writes (what TEXT NOT NULL)",
                "CREATE TRIGGER contract_delete AFTER DELETE ON data_contract
                 BEGIN INSERT INTO contract_writes VALUES ('delete'); END",
                "CREATE TRIGGER contract_insert AFTER INSERT ON data_contract
                 BEGIN INSERT INTO contract_writes VALUES ('insert'); END",
            ] {
                db.execute(sql).await.expect(sql);
            }
            (
                "SELECT CAST(count(*) AS TEXT) FROM contract_writes".to_owned(),
                "SELECT object, COALESCE(column_name, ''), description FROM data_contract \
                 ORDER BY 1, 2"
                    .to_owned(),
                vec![
                    "UPDATE data_contract SET description = 'older words' \
                     WHERE object = 'provomrade' AND column_name = 'elev'",
                    "INSERT INTO data_contract VALUES ('gone', NULL, 'a dropped table')",
                ],
            )
        }
        Backend::Postgres => {
            let schema = db.schema().to_owned();
            let of_schema = format!(
                "FROM pg_description d JOIN pg_class c ON c.oid = d.objoid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{schema}'"
            );
            (
                format!("SELECT c.relname || '.' || d.objsubid || ':' || d.xmin::text {of_schema} ORDER BY 1"),
                format!("SELECT c.relname, CAST(d.objsubid AS TEXT), d.description {of_schema} ORDER BY 1, 2"),
                vec!["COMMENT ON COLUMN provomrade.elev IS 'older words'"],
            )
        }
    };
    let before = db.texts(&contract).await;
    let writes_before = db.texts(&written).await;
    db.store.migrate().await.expect("second start");
    assert_eq!(
        db.texts(&written).await,
        writes_before,
        "an unchanged contract was written"
    );
    for sql in change {
        db.execute(sql).await.expect(sql);
    }
    assert_ne!(db.texts(&contract).await, before);
    let writes_changed = db.texts(&written).await;
    db.store.migrate().await.expect("third start");
    assert_eq!(db.texts(&contract).await, before);
    assert_ne!(
        db.texts(&written).await,
        writes_changed,
        "a changed contract was not written"
    );
}

//! The replace semantics of the mirror, step by step, against real SQLite files.

use crate::helpers::*;
use nprov_sync::store::Store;
use sqlx::Row;

#[tokio::test]
async fn a_sequence_of_documents_ends_in_exactly_the_expected_tables_and_change_log() {
    let db = fresh_sqlite().await;
    let s = &db.store;

    // 1. First sight of two keys.
    let r = import_at(
        s,
        "default",
        &doc(&[
            amne(
                "e1",
                "MA",
                9,
                "GR",
                vec![pt("2026-02-01", "B", &[("A", "B"), ("B", "C")])],
            ),
            kurs("e2", "MATMAT01c", "GY", vec![pt("2026-02-01", "C", &[])]),
        ]),
        at(1),
    )
    .await
    .expect("import 1");
    assert_eq!(
        (r.summary.changed, r.summary.unchanged, r.summary.cleared),
        (2, 0, 0)
    );

    // 2. An update of one key; the other is not in the window and must stay as it is.
    let r = import_at(
        s,
        "default",
        &doc(&[amne(
            "e1",
            "MA",
            9,
            "GR",
            vec![pt("2026-02-03", "A", &[("A", "A"), ("B", "C")])],
        )]),
        at(2),
    )
    .await
    .expect("import 2");
    assert_eq!((r.summary.changed, r.summary.unchanged), (1, 0));

    // 3. A second provtillfälle arrives: the element carries the full current list.
    let r = import_at(
        s,
        "default",
        &doc(&[amne(
            "e1",
            "MA",
            9,
            "GR",
            vec![
                pt("2026-02-03", "A", &[("A", "A"), ("B", "C")]),
                pt("2026-02-10", "B", &[("A", "B")]),
            ],
        )]),
        at(3),
    )
    .await
    .expect("import 3");
    assert_eq!(r.summary.changed, 1);
    assert_eq!(
        dump(s).await,
        vec![
            "default e1 amne MA/9 #0 GR 2026-02-03 g=- i=0 s=A [A:resultat:A:-:- B:resultat:C:-:-]",
            "default e1 amne MA/9 #1 GR 2026-02-10 g=- i=0 s=B [A:resultat:B:-:-]",
            "default e2 kurs MATMAT01c #0 GY 2026-02-01 g=- i=0 s=C []",
        ]
    );

    // 4. Cleared: an element with no provtillfälle removes them all; the provområde row stays.
    let clear = doc(&[amne("e1", "MA", 9, "GR", vec![])]);
    let r = import_at(s, "default", &clear, at(4))
        .await
        .expect("import 4");
    assert_eq!((r.summary.changed, r.summary.cleared), (0, 1));
    assert_eq!(
        dump(s).await,
        vec![
            "default e1 amne MA/9 (empty)",
            "default e2 kurs MATMAT01c #0 GY 2026-02-01 g=- i=0 s=C []",
        ]
    );

    // 5. Re-sent unchanged: only synced_at moves, nothing is logged.
    let r = import_at(s, "default", &clear, at(5))
        .await
        .expect("import 5");
    assert_eq!(
        (r.summary.changed, r.summary.cleared, r.summary.unchanged),
        (0, 0, 1)
    );
    let row = sqlx::query("SELECT changed_at, synced_at FROM provomrade WHERE elev = 'e1'")
        .fetch_one(s.pool())
        .await
        .expect("row");
    assert_eq!(row.get::<String, _>(0), "2026-03-01T12:04:00.000000Z");
    assert_eq!(row.get::<String, _>(1), "2026-03-01T12:05:00.000000Z");

    // 6. The same key twice in one document (two skolformer), not adjacent: together they are
    //    the key's set, in document order; the key is counted and logged once.
    let split = doc(&[
        kurs("e2", "MATMAT01c", "GY", vec![pt("2026-02-01", "C", &[])]),
        kurs(
            "e3",
            "SVESVE01",
            "GY",
            vec![pt("2026-02-02", "A", &[("LÄSA", "A")])],
        ),
        kurs("e2", "MATMAT01c", "VUX", vec![pt("2026-03-01", "B", &[])]),
    ]);
    let r = import_at(s, "default", &split, at(6))
        .await
        .expect("import 6");
    assert_eq!(r.summary.records, 3);
    assert_eq!((r.summary.changed, r.summary.unchanged), (2, 0));
    assert_eq!(
        dump(s).await,
        vec![
            "default e1 amne MA/9 (empty)",
            "default e2 kurs MATMAT01c #0 GY 2026-02-01 g=- i=0 s=C []",
            "default e2 kurs MATMAT01c #1 VUX 2026-03-01 g=- i=0 s=B []",
            "default e3 kurs SVESVE01 #0 GY 2026-02-02 g=- i=0 s=A [LÄSA:resultat:A:-:-]",
        ]
    );

    // 7. That document again: nothing changed, although its first e2 element alone differs
    //    from what is stored.
    let before = dump(s).await;
    let r = import_at(s, "default", &split, at(7))
        .await
        .expect("import 7");
    assert_eq!(
        (r.summary.changed, r.summary.unchanged, r.summary.cleared),
        (0, 2, 0)
    );
    assert_eq!(dump(s).await, before);

    assert_eq!(
        change_log(s).await,
        vec![
            "e1 MA/9 upsert",
            "e2 MATMAT01c upsert",
            "e1 MA/9 upsert",
            "e1 MA/9 upsert",
            "e1 MA/9 clear",
            "e2 MATMAT01c upsert",
            "e3 SVESVE01 upsert",
        ]
    );
}

#[tokio::test]
async fn a_repeated_key_far_apart_across_write_batches_is_still_one_set() {
    let db = fresh_sqlite().await;
    let mut records = vec![kurs(
        "far",
        "ENGENG05",
        "GY",
        vec![pt("2026-01-10", "A", &[("TALA", "A")])],
    )];
    // More elements than one write batch holds, so the second "far" element is applied in a
    // later batch than the first.
    for i in 0..2500 {
        records.push(kurs(
            &format!("s{i}"),
            "ENGENG05",
            "GY",
            vec![pt("2026-01-10", "C", &[])],
        ));
    }
    records.push(kurs(
        "far",
        "ENGENG05",
        "VUX",
        vec![pt("2026-01-20", "B", &[("TALA", "B")])],
    ));
    let xml = doc(&records);
    let r = import_at(&db.store, "default", &xml, at(1))
        .await
        .expect("import");
    assert_eq!((r.summary.records, r.summary.changed), (2502, 2501));
    let far: Vec<String> = dump(&db.store)
        .await
        .into_iter()
        .filter(|l| l.contains(" far "))
        .collect();
    assert_eq!(
        far,
        vec![
            "default far kurs ENGENG05 #0 GY 2026-01-10 g=- i=0 s=A [TALA:resultat:A:-:-]",
            "default far kurs ENGENG05 #1 VUX 2026-01-20 g=- i=0 s=B [TALA:resultat:B:-:-]",
        ]
    );
    let r = import_at(&db.store, "default", &xml, at(2))
        .await
        .expect("again");
    assert_eq!((r.summary.changed, r.summary.unchanged), (0, 2501));
    assert_eq!(change_log(&db.store).await.len(), 2501);
}

#[tokio::test]
async fn a_key_found_unchanged_early_in_a_document_still_takes_its_later_elements() {
    // "grow" is stored with one provtillfälle. The next document sends that very element first
    // (unchanged, so far) and, more than a write batch later, a second one: the set grows. Same
    // for a key whose identical element comes twice, and the counts say so.
    let db = fresh_sqlite().await;
    let first = kurs("grow", "ENGENG05", "GY", vec![pt("2026-01-10", "A", &[])]);
    let twice = kurs("twice", "ENGENG05", "GY", vec![pt("2026-01-11", "B", &[])]);
    let mut fillers: Vec<nprov_sync::domain::Provomrade> = (0..2500)
        .map(|i| {
            kurs(
                &format!("s{i}"),
                "ENGENG05",
                "GY",
                vec![pt("2026-01-10", "C", &[])],
            )
        })
        .collect();
    let mut one = vec![first.clone(), twice.clone()];
    one.extend(fillers.iter().cloned());
    import_at(&db.store, "default", &doc(&one), at(1))
        .await
        .expect("first");
    let logged = change_log(&db.store).await.len();

    let mut records = vec![first, twice.clone()];
    records.append(&mut fillers);
    records.push(kurs(
        "grow",
        "ENGENG05",
        "VUX",
        vec![pt("2026-01-20", "B", &[])],
    ));
    records.push(twice);
    let r = import_at(&db.store, "default", &doc(&records), at(2))
        .await
        .expect("second");
    assert_eq!(
        (r.summary.records, r.summary.changed, r.summary.unchanged),
        (2504, 2, 2500)
    );
    let rows: Vec<String> = dump(&db.store)
        .await
        .into_iter()
        .filter(|l| l.contains(" grow ") || l.contains(" twice "))
        .collect();
    assert_eq!(
        rows,
        vec![
            "default grow kurs ENGENG05 #0 GY 2026-01-10 g=- i=0 s=A []",
            "default grow kurs ENGENG05 #1 VUX 2026-01-20 g=- i=0 s=B []",
            "default twice kurs ENGENG05 #0 GY 2026-01-11 g=- i=0 s=B []",
            "default twice kurs ENGENG05 #1 GY 2026-01-11 g=- i=0 s=B []",
        ]
    );
    let log = change_log(&db.store).await;
    assert_eq!(
        log[logged..].to_vec(),
        vec!["grow ENGENG05 upsert", "twice ENGENG05 upsert"]
    );
    // And the same document again: everything unchanged, the repeated keys included.
    let r = import_at(&db.store, "default", &doc(&records), at(3))
        .await
        .expect("third");
    assert_eq!((r.summary.changed, r.summary.unchanged), (0, 2502));
}

#[tokio::test]
async fn documents_with_the_same_timestamp_still_apply_as_separate_documents() {
    // The mirror tells the keys a document already applied by their synced_at; a second
    // document stamped with the same instant (a clock that stepped back) must not look like
    // the first one continued.
    let db = fresh_sqlite().await;
    let a = kurs("e", "ENGENG05", "GY", vec![pt("2026-01-10", "A", &[])]);
    import_at(&db.store, "default", &doc(std::slice::from_ref(&a)), at(5))
        .await
        .expect("first");
    let r = import_at(&db.store, "default", &doc(std::slice::from_ref(&a)), at(5))
        .await
        .expect("same instant");
    assert_eq!((r.summary.changed, r.summary.unchanged), (0, 1));
    let r = import_at(&db.store, "default", &doc(&[a]), at(4))
        .await
        .expect("earlier instant");
    assert_eq!((r.summary.changed, r.summary.unchanged), (0, 1));
    assert_eq!(dump(&db.store).await.len(), 1);
}

#[tokio::test]
async fn a_repeated_key_that_shrinks_to_one_element_loses_the_other_provtillfalle() {
    let db = fresh_sqlite().await;
    let two = doc(&[
        kurs("e", "SFIKUB9", "SFI", vec![pt("2026-01-01", "A", &[])]),
        kurs("e", "SFIKUB9", "VUX", vec![pt("2026-01-02", "B", &[])]),
    ]);
    import_at(&db.store, "default", &two, at(1))
        .await
        .expect("two");
    let one = doc(&[kurs(
        "e",
        "SFIKUB9",
        "SFI",
        vec![pt("2026-01-01", "A", &[])],
    )]);
    let r = import_at(&db.store, "default", &one, at(2))
        .await
        .expect("one");
    assert_eq!(r.summary.changed, 1);
    assert_eq!(
        dump(&db.store).await,
        vec!["default e kurs SFIKUB9 #0 SFI 2026-01-01 g=- i=0 s=A []"]
    );
}

#[tokio::test]
async fn sources_are_separate_mirrors_of_the_same_students() {
    let db = fresh_sqlite().await;
    let a = doc(&[amne("e", "SV", 6, "GR", vec![pt("2026-01-01", "A", &[])])]);
    let b = doc(&[amne("e", "SV", 6, "GR", vec![])]);
    import_at(&db.store, "stockholm", &a, at(1))
        .await
        .expect("a");
    import_at(&db.store, "solna", &b, at(1)).await.expect("b");
    assert_eq!(
        dump(&db.store).await,
        vec![
            "solna e amne SV/6 (empty)",
            "stockholm e amne SV/6 #0 GR 2026-01-01 g=- i=0 s=A []",
        ]
    );
}

#[tokio::test]
async fn the_natural_key_is_enforced_by_the_database_despite_null_parts() {
    let db = fresh_sqlite().await;
    let insert = "INSERT INTO provomrade (source, elev, kind, amne, arskurs, kurs, namespace,
                  content_sha256, changed_at, synced_at) VALUES (?, 'e', ?, ?, ?, ?, 'ns', 'h', 't', 't')";
    for (kind, amne, arskurs, kurs) in [
        ("kurs", None, None, Some("K")),
        ("amne", Some("MA"), Some(9), None),
    ] {
        sqlx::query(insert)
            .bind("s")
            .bind(kind)
            .bind(amne)
            .bind(arskurs)
            .bind(kurs)
            .execute(db.store.pool())
            .await
            .expect("first row");
        let dup = sqlx::query(insert)
            .bind("s")
            .bind(kind)
            .bind(amne)
            .bind(arskurs)
            .bind(kurs)
            .execute(db.store.pool())
            .await;
        assert!(
            dup.is_err(),
            "a second {kind} row with the same key was accepted"
        );
    }
    // A kind whose key parts do not fit it is refused too.
    let wrong = sqlx::query(insert)
        .bind("s")
        .bind("kurs")
        .bind(Some("MA"))
        .bind(None::<i64>)
        .bind(None::<&str>)
        .execute(db.store.pool())
        .await;
    assert!(wrong.is_err());
}

#[tokio::test]
async fn a_document_error_after_good_records_leaves_the_database_exactly_as_it_was() {
    let db = fresh_sqlite().await;
    let first = doc(&[kurs(
        "e1",
        "MATMAT01a",
        "GY",
        vec![pt("2026-01-01", "A", &[])],
    )]);
    import_at(&db.store, "default", &first, at(1))
        .await
        .expect("first");
    let before = dump(&db.store).await;
    let counts_before = db.store.table_counts().await.expect("counts");

    // Valid records (a change to e1, a new e2, a bad record), then the body is cut off.
    let mut broken = doc(&[
        kurs("e1", "MATMAT01a", "GY", vec![]),
        kurs("e2", "MATMAT01b", "GY", vec![pt("2026-01-01", "B", &[])]),
    ]);
    broken.truncate(broken.rfind("</provresultat>").expect("root end") - 5);
    let err = import_at(&db.store, "default", &broken, at(2))
        .await
        .expect_err("truncated");
    assert!(err.to_string().contains("truncated"), "{err}");
    assert_eq!(dump(&db.store).await, before);
    assert_eq!(
        db.store.table_counts().await.expect("counts"),
        counts_before
    );
}

#[tokio::test]
async fn a_record_error_quarantines_that_record_with_its_xml_and_applies_the_rest() {
    let db = fresh_sqlite().await;
    let xml = doc(&[
        kurs("good1", "MATMAT01a", "GY", vec![pt("2026-01-01", "A", &[])]),
        kurs(
            "bad",
            "MATMAT01a",
            "GY",
            vec![pt("2026-01-01", "A", &[("LÄSA", "A")])],
        ),
        kurs("good2", "MATMAT01a", "GY", vec![]),
    ])
    .replace("<betyg>A</betyg>", "<betyg>A</betyg><poäng>7</poäng>");
    let r = import_at(&db.store, "default", &xml, at(1))
        .await
        .expect("import");
    assert_eq!((r.summary.records, r.summary.quarantined), (2, 1));
    let q = sqlx::query(
        "SELECT source, elev, error_code, element, line, raw_xml, reason FROM quarantine",
    )
    .fetch_one(db.store.pool())
    .await
    .expect("one quarantined row");
    assert_eq!(q.get::<String, _>(0), "default");
    assert_eq!(q.get::<String, _>(1), "bad");
    assert_eq!(q.get::<String, _>(2), "both_betyg_and_poang");
    assert_eq!(q.get::<String, _>(3), "delprovsresultat");
    let raw: String = q.get(5);
    assert!(
        raw.starts_with("<kursresultat elev=\"bad\"") && raw.ends_with("</kursresultat>"),
        "{raw}"
    );
    let line = q.get::<i64, _>(4) as usize;
    assert!(
        xml.lines()
            .nth(line - 1)
            .expect("line exists")
            .contains("<poäng>7"),
        "line {line}"
    );
    let elevs: Vec<String> = dump(&db.store).await;
    assert_eq!(
        elevs,
        vec![
            "default good1 kurs MATMAT01a #0 GY 2026-01-01 g=- i=0 s=A []",
            "default good2 kurs MATMAT01a (empty)",
        ]
    );
}

mod sync_bookkeeping {
    use super::*;
    use chrono::{DateTime, Utc};
    use chrono_tz::Europe::Stockholm;
    use nprov_sync::import::apply_document;
    use nprov_sync::store::{ApplyContext, ApplySummary, RunKind, SyncRun};
    use nprov_sync::window::{covering, Window};
    use nprov_sync::xml::Limits;

    fn window(from: &str, tom: &str) -> Window {
        let t = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .expect("time")
                .with_timezone(&Utc)
        };
        covering(Stockholm, t(from), t(tom))
    }

    fn run(
        kind: RunKind,
        w: Window,
        summary: ApplySummary,
        expected_watermark: Option<DateTime<Utc>>,
    ) -> SyncRun {
        SyncRun {
            expected_watermark,
            source: "default".into(),
            kind,
            window: w,
            tz: Stockholm,
            started_at: at(1),
            finished_at: at(2),
            http_status: Some(200),
            bytes: 123,
            summary,
            error: None,
        }
    }

    async fn apply_window(db: &TestDb, kind: RunKind, w: Window, commit: bool) {
        let xml = doc(&[kurs(
            &format!("e-{}", w.tom_param()),
            "MATMAT01a",
            "GY",
            vec![],
        )]);
        let ctx = ApplyContext {
            source: "default".into(),
            namespace: String::new(),
            document: w.label(),
            now: at(3),
        };
        let input = std::io::Cursor::new(xml.into_bytes());
        let expected = db
            .store
            .watermark("default")
            .await
            .expect("watermark")
            .map(|w| w.utc);
        let (mut tx, report) = apply_document(&db.store, input, Limits::default(), ctx)
            .await
            .expect("apply");
        tx.record_window(&run(kind, w, report.summary, expected))
            .await
            .expect("record");
        if commit {
            tx.commit().await.expect("commit");
        } else {
            tx.rollback().await.expect("rollback");
        }
    }

    async fn runs(db: &TestDb) -> Vec<String> {
        sqlx::query(
            "SELECT kind, from_local, tom_local, outcome, records FROM sync_run ORDER BY id",
        )
        .fetch_all(db.store.pool())
        .await
        .expect("runs")
        .iter()
        .map(|r| {
            format!(
                "{} {}..{} {} {}",
                r.get::<String, _>(0),
                r.get::<String, _>(1),
                r.get::<String, _>(2),
                r.get::<String, _>(3),
                r.get::<i64, _>(4)
            )
        })
        .collect()
    }

    #[tokio::test]
    async fn a_windows_data_run_and_watermark_commit_together() {
        let db = fresh_sqlite().await;
        apply_window(
            &db,
            RunKind::Sync,
            window("2026-01-10T08:00:00Z", "2026-01-10T09:59:00Z"),
            true,
        )
        .await;
        let w = db
            .store
            .watermark("default")
            .await
            .expect("read")
            .expect("set");
        assert_eq!(w.utc.to_rfc3339(), "2026-01-10T09:59:00+00:00");
        assert_eq!(w.local.to_string(), "2026-01-10 10:59:00");
        assert_eq!(
            runs(&db).await,
            vec!["sync 2026-01-10T09:00..2026-01-10T10:59 ok 1"]
        );
        assert_eq!(db.store.table_counts().await.expect("counts").provomrade, 1);
    }

    #[tokio::test]
    async fn a_rolled_back_window_leaves_no_data_run_or_watermark() {
        let db = fresh_sqlite().await;
        apply_window(
            &db,
            RunKind::Sync,
            window("2026-01-10T08:00:00Z", "2026-01-10T09:59:00Z"),
            false,
        )
        .await;
        assert_eq!(db.store.watermark("default").await.expect("read"), None);
        assert!(runs(&db).await.is_empty());
        assert_eq!(db.store.table_counts().await.expect("counts").provomrade, 0);
    }

    #[tokio::test]
    async fn the_watermark_never_moves_back_and_backfill_never_moves_it() {
        let db = fresh_sqlite().await;
        apply_window(
            &db,
            RunKind::Sync,
            window("2026-01-10T08:00:00Z", "2026-01-10T09:59:00Z"),
            true,
        )
        .await;
        apply_window(
            &db,
            RunKind::Sync,
            window("2026-01-09T08:00:00Z", "2026-01-09T09:59:00Z"),
            true,
        )
        .await;
        apply_window(
            &db,
            RunKind::Backfill,
            window("2026-02-01T08:00:00Z", "2026-02-01T09:59:00Z"),
            true,
        )
        .await;
        let w = db
            .store
            .watermark("default")
            .await
            .expect("read")
            .expect("set");
        assert_eq!(w.utc.to_rfc3339(), "2026-01-10T09:59:00+00:00");
        assert_eq!(runs(&db).await.len(), 3);
    }

    #[tokio::test]
    async fn a_failed_window_is_recorded_on_its_own() {
        let db = fresh_sqlite().await;
        let mut r = run(
            RunKind::Sync,
            window("2026-01-10T08:00:00Z", "2026-01-10T09:59:00Z"),
            ApplySummary::default(),
            None,
        );
        r.http_status = Some(503);
        r.error = Some("503 Service Unavailable after 5 attempts".into());
        db.store.record_failed_run(&r).await.expect("record");
        assert_eq!(
            runs(&db).await,
            vec!["sync 2026-01-10T09:00..2026-01-10T10:59 failed 0"]
        );
        assert_eq!(db.store.watermark("default").await.expect("read"), None);
    }

    #[tokio::test]
    async fn a_window_planned_from_a_watermark_that_moved_meanwhile_is_rolled_back_whole() {
        // Two writers plan the same window from the same watermark; the first commits. The
        // second must not commit it again: not its data, not its run row, not the watermark.
        let db = fresh_sqlite().await;
        let first = window("2026-01-10T08:00:00Z", "2026-01-10T09:59:00Z");
        apply_window(&db, RunKind::Sync, first, true).await;
        let planned_from = db
            .store
            .watermark("default")
            .await
            .expect("read")
            .map(|w| w.utc);
        let next = window("2026-01-10T09:30:00Z", "2026-01-10T11:59:00Z");
        apply_window(&db, RunKind::Sync, next, true).await;
        let before = (dump(&db.store).await, runs(&db).await);

        let stale = window("2026-01-10T09:30:00Z", "2026-01-10T12:59:00Z");
        let xml = doc(&[kurs("e-stale", "MATMAT01a", "GY", vec![])]);
        let ctx = ApplyContext {
            source: "default".into(),
            namespace: String::new(),
            document: stale.label(),
            now: at(4),
        };
        let input = std::io::Cursor::new(xml.into_bytes());
        let (mut tx, report) = apply_document(&db.store, input, Limits::default(), ctx)
            .await
            .expect("apply");
        let e = tx
            .record_window(&run(RunKind::Sync, stale, report.summary, planned_from))
            .await
            .expect_err("the watermark moved");
        assert!(
            matches!(e, nprov_sync::store::StoreError::WatermarkMoved { .. }),
            "{e}"
        );
        assert!(e.to_string().contains("another instance"), "{e}");
        tx.rollback().await.expect("rollback");
        assert_eq!((dump(&db.store).await, runs(&db).await), before);
        assert_eq!(
            db.store
                .watermark("default")
                .await
                .expect("read")
                .map(|w| w.utc),
            Some(next.tom_utc)
        );
    }

    #[tokio::test]
    async fn a_first_window_is_fenced_too() {
        // Two first syncs (no watermark yet): the second finds one and rolls back.
        let db = fresh_sqlite().await;
        apply_window(
            &db,
            RunKind::Sync,
            window("2026-01-10T08:00:00Z", "2026-01-10T09:59:00Z"),
            true,
        )
        .await;
        let w = window("2026-01-10T08:00:00Z", "2026-01-10T09:59:00Z");
        let ctx = ApplyContext {
            source: "default".into(),
            namespace: String::new(),
            document: w.label(),
            now: at(4),
        };
        let xml = doc(&[kurs("e-second", "MATMAT01a", "GY", vec![])]);
        let (mut tx, report) = apply_document(
            &db.store,
            std::io::Cursor::new(xml.into_bytes()),
            Limits::default(),
            ctx,
        )
        .await
        .expect("apply");
        let e = tx
            .record_window(&run(RunKind::Sync, w, report.summary, None))
            .await
            .expect_err("a watermark exists");
        assert!(e.to_string().contains("expected none"), "{e}");
    }
}

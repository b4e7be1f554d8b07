//! The replace semantics of the mirror, step by step, against each backend: every test here runs
//! once on a SQLite file and once on a PostgreSQL schema of its own (`store::sqlite::…`,
//! `store::postgres::…`), and must end in the same rows.

use crate::helpers::*;

for_each_backend!(
    a_sequence_of_documents_ends_in_exactly_the_expected_tables_and_change_log,
    a_repeated_key_far_apart_across_write_batches_is_still_one_set,
    a_repeated_key_that_shrinks_to_one_element_loses_the_other_provtillfalle,
    sources_are_separate_mirrors_of_the_same_students,
    the_natural_key_is_enforced_by_the_database_despite_null_parts,
    a_document_error_after_good_records_leaves_the_database_exactly_as_it_was,
    a_record_error_quarantines_that_record_with_its_xml_and_applies_the_rest,
    the_views_give_one_row_per_provtillfalle_and_per_delprov_with_all_context,
    a_key_found_unchanged_early_in_a_document_still_takes_its_later_elements,
    documents_with_the_same_timestamp_still_apply_as_separate_documents,
    a_key_with_a_broken_element_keeps_what_is_stored_and_all_its_elements_go_to_quarantine,
    a_key_written_before_its_broken_element_is_put_back_as_committed,
    the_same_broken_element_read_again_is_one_quarantine_row_counted,
);

/// Quarantine rows as "elev error_code kind kurs times_seen" (raw XML present or not).
async fn quarantine_rows(db: &Db) -> Vec<String> {
    db.texts(&format!(
        "SELECT COALESCE(elev, '-'), error_code, COALESCE(kind, '-'), COALESCE(kurs, '-'), {},
                CASE WHEN raw_xml IS NULL THEN 'no-xml' ELSE 'xml' END
         FROM quarantine ORDER BY elev, error_code",
        db.col("times_seen", Col::Int)
    ))
    .await
    .into_iter()
    .map(|r| r.join(" "))
    .collect()
}

/// The XML of a document with one element made invalid: its date does not exist.
fn with_bad_date(records: &[nprov_sync::domain::Provomrade]) -> String {
    doc(records).replace("2026-02-28", "2026-02-30")
}

async fn a_key_with_a_broken_element_keeps_what_is_stored_and_all_its_elements_go_to_quarantine(
    b: Backend,
) {
    let db = b.fresh().await;
    let s = &*db.store;
    let stored = kurs("e1", "MATMAT01a", "GY", vec![pt("2026-01-01", "A", &[])]);
    import_at(s, "default", &doc(&[stored]), at(1))
        .await
        .expect("import 1");
    let before = db.dump().await;
    let log_before = db.change_log().await;
    // A new, valid element of e1 and a broken one of the same key (another skolform), and a
    // new key: e1 keeps what is stored, both its elements are quarantined, e2 is applied.
    let xml = with_bad_date(&[
        kurs("e1", "MATMAT01a", "GY", vec![pt("2026-02-01", "B", &[])]),
        kurs("e1", "MATMAT01a", "GR", vec![pt("2026-02-28", "C", &[])]),
        kurs("e2", "MATMAT01a", "GY", vec![pt("2026-02-01", "C", &[])]),
    ]);
    let r = import_at(s, "default", &xml, at(2))
        .await
        .expect("the window commits");
    assert_eq!((r.summary.records, r.summary.quarantined), (1, 2));
    let mut after = before.clone();
    after.push("default e2 kurs MATMAT01a #0 GY 2026-02-01 g=- i=0 s=C []".into());
    assert_eq!(db.dump().await, after);
    assert_eq!(
        quarantine_rows(&db).await,
        [
            "e1 bad_date kurs MATMAT01a 1 xml",
            "e1 key_held kurs MATMAT01a 1 xml",
        ]
    );
    let mut log = log_before;
    log.push("e2 MATMAT01a upsert".into());
    assert_eq!(db.change_log().await, log);
}

async fn a_key_written_before_its_broken_element_is_put_back_as_committed(b: Backend) {
    let db = b.fresh().await;
    let s = &*db.store;
    let stored = kurs(
        "e1",
        "MATMAT01a",
        "GY",
        vec![pt("2026-01-01", "A", &[("LÄSA", "B")])],
    );
    import_at(s, "default", &doc(&[stored]), at(1))
        .await
        .expect("import 1");
    let before = db.dump().await;
    let changed_at = || async {
        db.texts(&format!(
            "SELECT {} FROM provomrade WHERE elev = 'e1'",
            db.col("changed_at", Col::Timestamp)
        ))
        .await
    };
    let changed_before = changed_at().await;
    // e1 replaced, then more keys than a write batch holds on either backend, then a broken
    // element of e1 and one of a key this document creates: both keys are undone.
    let mut records = vec![
        kurs("e1", "MATMAT01a", "GY", vec![pt("2026-02-01", "B", &[])]),
        kurs("new", "MATMAT01a", "GY", vec![pt("2026-02-01", "B", &[])]),
    ];
    for i in 0..2500 {
        records.push(kurs(&format!("s{i:04}"), "MATMAT01a", "GY", vec![]));
    }
    records.push(kurs(
        "e1",
        "MATMAT01a",
        "GR",
        vec![pt("2026-02-28", "C", &[])],
    ));
    records.push(kurs(
        "new",
        "MATMAT01a",
        "GR",
        vec![pt("2026-02-28", "C", &[])],
    ));
    let r = import_at(s, "default", &with_bad_date(&records), at(2))
        .await
        .expect("the window commits");
    assert_eq!((r.summary.records, r.summary.quarantined), (2500, 4));
    assert_eq!(
        (r.summary.changed, r.summary.cleared, r.summary.unchanged),
        (0, 2500, 0)
    );
    let dump = db.dump().await;
    assert_eq!(dump.len(), 2501, "e1 and the 2500 others");
    assert_eq!(dump[0], before[0], "e1 as committed before");
    assert!(
        !dump.iter().any(|r| r.contains(" new ")),
        "{:?}",
        &dump[..3]
    );
    assert_eq!(changed_at().await, changed_before);
    assert_eq!(
        quarantine_rows(&db).await,
        [
            "e1 bad_date kurs MATMAT01a 1 xml",
            "e1 key_withdrawn kurs MATMAT01a 1 no-xml",
            "new bad_date kurs MATMAT01a 1 xml",
            "new key_withdrawn kurs MATMAT01a 1 no-xml",
        ]
    );
    // Nothing of either key reached change_log.
    let log = db.change_log().await;
    assert!(
        !log.iter()
            .any(|l| l.starts_with("e1 ") && l.ends_with("clear") || l.starts_with("new ")),
        "{log:?}"
    );
}

async fn the_same_broken_element_read_again_is_one_quarantine_row_counted(b: Backend) {
    let db = b.fresh().await;
    let s = &*db.store;
    let xml = with_bad_date(&[kurs(
        "e9",
        "MATMAT01a",
        "GY",
        vec![pt("2026-02-28", "C", &[])],
    )]);
    for minute in [1, 2, 3] {
        import_at(s, "default", &xml, at(minute))
            .await
            .expect("import");
    }
    let rows = db
        .texts(&format!(
            "SELECT {}, {}, {} FROM quarantine",
            db.col("times_seen", Col::Int),
            db.col("first_seen_at", Col::Timestamp),
            db.col("last_seen_at", Col::Timestamp)
        ))
        .await;
    assert_eq!(
        rows,
        [[
            "3",
            "2026-03-01T12:01:00.000000Z",
            "2026-03-01T12:03:00.000000Z"
        ]]
    );
}

async fn a_sequence_of_documents_ends_in_exactly_the_expected_tables_and_change_log(b: Backend) {
    let db = b.fresh().await;
    let s = &*db.store;

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
        db.dump().await,
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
        db.dump().await,
        vec![
            "default e1 amne MA/9 (empty)",
            "default e2 kurs MATMAT01c #0 GY 2026-02-01 g=- i=0 s=C []",
        ]
    );

    // 5. Re-sent unchanged: nothing is written at all, nothing is logged.
    let row = || async {
        db.texts(&format!(
            "SELECT {}, content_sha256, {}, namespace FROM provomrade WHERE elev = 'e1'",
            db.col("changed_at", Col::Timestamp),
            db.col("raw_sha256", Col::Blob)
        ))
        .await
    };
    let before = row().await;
    let log_before = db.change_log().await;
    let r = import_at(s, "default", &clear, at(5))
        .await
        .expect("import 5");
    assert_eq!(
        (r.summary.changed, r.summary.cleared, r.summary.unchanged),
        (0, 0, 1)
    );
    // Skipped by its raw hash: not even built.
    assert_eq!(r.summary.built, 0);
    assert_eq!(row().await, before);
    assert_eq!(before[0][0], "2026-03-01T12:04:00.000000Z");
    assert_eq!(db.change_log().await, log_before);

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
        db.dump().await,
        vec![
            "default e1 amne MA/9 (empty)",
            "default e2 kurs MATMAT01c #0 GY 2026-02-01 g=- i=0 s=C []",
            "default e2 kurs MATMAT01c #1 VUX 2026-03-01 g=- i=0 s=B []",
            "default e3 kurs SVESVE01 #0 GY 2026-02-02 g=- i=0 s=A [LÄSA:resultat:A:-:-]",
        ]
    );

    // 7. That document again: nothing changed, although its first e2 element alone differs
    //    from what is stored.
    let before = db.dump().await;
    let r = import_at(s, "default", &split, at(7))
        .await
        .expect("import 7");
    assert_eq!(
        (r.summary.changed, r.summary.unchanged, r.summary.cleared),
        (0, 2, 0)
    );
    assert_eq!(db.dump().await, before);

    assert_eq!(
        db.change_log().await,
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

async fn a_repeated_key_far_apart_across_write_batches_is_still_one_set(b: Backend) {
    let db = b.fresh().await;
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
    let r = import_at(&*db.store, "default", &xml, at(1))
        .await
        .expect("import");
    assert_eq!((r.summary.records, r.summary.changed), (2502, 2501));
    let far: Vec<String> = db
        .dump()
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
    let r = import_at(&*db.store, "default", &xml, at(2))
        .await
        .expect("again");
    assert_eq!((r.summary.changed, r.summary.unchanged), (0, 2501));
    assert_eq!(db.change_log().await.len(), 2501);
}

async fn a_key_found_unchanged_early_in_a_document_still_takes_its_later_elements(b: Backend) {
    // "grow" is stored with one provtillfälle. The next document sends that very element first
    // (unchanged, so far) and, more than a write batch later, a second one: the set grows. Same
    // for a key whose identical element comes twice, and the counts say so.
    let db = b.fresh().await;
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
    import_at(&*db.store, "default", &doc(&one), at(1))
        .await
        .expect("first");
    let logged = db.change_log().await.len();

    let mut records = vec![first, twice.clone()];
    records.append(&mut fillers);
    records.push(kurs(
        "grow",
        "ENGENG05",
        "VUX",
        vec![pt("2026-01-20", "B", &[])],
    ));
    records.push(twice);
    let r = import_at(&*db.store, "default", &doc(&records), at(2))
        .await
        .expect("second");
    assert_eq!(
        (r.summary.records, r.summary.changed, r.summary.unchanged),
        (2504, 2, 2500)
    );
    let rows: Vec<String> = db
        .dump()
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
    let log = db.change_log().await;
    assert_eq!(
        log[logged..].to_vec(),
        vec!["grow ENGENG05 upsert", "twice ENGENG05 upsert"]
    );
    // And the same document again: everything unchanged, the repeated keys included.
    let r = import_at(&*db.store, "default", &doc(&records), at(3))
        .await
        .expect("third");
    assert_eq!((r.summary.changed, r.summary.unchanged), (0, 2502));
}

async fn documents_with_the_same_timestamp_still_apply_as_separate_documents(b: Backend) {
    // The mirror tells the keys a document already applied by their synced_at; a second
    // document stamped with the same instant (a clock that stepped back) must not look like
    // the first one continued.
    let db = b.fresh().await;
    let a = kurs("e", "ENGENG05", "GY", vec![pt("2026-01-10", "A", &[])]);
    import_at(&*db.store, "default", &doc(std::slice::from_ref(&a)), at(5))
        .await
        .expect("first");
    let r = import_at(&*db.store, "default", &doc(std::slice::from_ref(&a)), at(5))
        .await
        .expect("same instant");
    assert_eq!((r.summary.changed, r.summary.unchanged), (0, 1));
    let r = import_at(&*db.store, "default", &doc(&[a]), at(4))
        .await
        .expect("earlier instant");
    assert_eq!((r.summary.changed, r.summary.unchanged), (0, 1));
    assert_eq!(db.dump().await.len(), 1);
}

async fn a_repeated_key_that_shrinks_to_one_element_loses_the_other_provtillfalle(b: Backend) {
    let db = b.fresh().await;
    let two = doc(&[
        kurs("e", "SFIKUB9", "SFI", vec![pt("2026-01-01", "A", &[])]),
        kurs("e", "SFIKUB9", "VUX", vec![pt("2026-01-02", "B", &[])]),
    ]);
    import_at(&*db.store, "default", &two, at(1))
        .await
        .expect("two");
    let one = doc(&[kurs(
        "e",
        "SFIKUB9",
        "SFI",
        vec![pt("2026-01-01", "A", &[])],
    )]);
    let r = import_at(&*db.store, "default", &one, at(2))
        .await
        .expect("one");
    assert_eq!(r.summary.changed, 1);
    assert_eq!(
        db.dump().await,
        vec!["default e kurs SFIKUB9 #0 SFI 2026-01-01 g=- i=0 s=A []"]
    );
}

async fn sources_are_separate_mirrors_of_the_same_students(b: Backend) {
    let db = b.fresh().await;
    let a = doc(&[amne("e", "SV", 6, "GR", vec![pt("2026-01-01", "A", &[])])]);
    let b = doc(&[amne("e", "SV", 6, "GR", vec![])]);
    import_at(&*db.store, "stockholm", &a, at(1))
        .await
        .expect("a");
    import_at(&*db.store, "solna", &b, at(1)).await.expect("b");
    assert_eq!(
        db.dump().await,
        vec![
            "solna e amne SV/6 (empty)",
            "stockholm e amne SV/6 #0 GR 2026-01-01 g=- i=0 s=A []",
        ]
    );
}

async fn the_natural_key_is_enforced_by_the_database_despite_null_parts(b: Backend) {
    let db = b.fresh().await;
    // Literal values, valid on both backends (the timestamp is also PostgreSQL timestamptz input).
    let insert = |kind: &str, amne: &str, arskurs: &str, kurs: &str| {
        format!(
            "INSERT INTO provomrade (source, elev, kind, amne, arskurs, kurs, namespace,
                 content_sha256, changed_at)
             VALUES ('s', 'e', '{kind}', {amne}, {arskurs}, {kurs}, 'ns', 'h',
                     '2026-01-01T00:00:00.000000Z')"
        )
    };
    for sql in [
        insert("kurs", "NULL", "NULL", "'K'"),
        insert("amne", "'MA'", "9", "NULL"),
    ] {
        db.execute(&sql).await.expect("first row");
        let dup = db.execute(&sql).await;
        assert!(
            dup.is_err(),
            "a second row with the same key was accepted: {sql}"
        );
    }
    // A kind whose key parts do not fit it is refused too.
    let wrong = db.execute(&insert("kurs", "'MA'", "NULL", "NULL")).await;
    assert!(wrong.is_err());
    // So is an årskurs that does not exist.
    let wrong = db.execute(&insert("amne", "'SV'", "7", "NULL")).await;
    assert!(wrong.is_err());
}

async fn a_document_error_after_good_records_leaves_the_database_exactly_as_it_was(b: Backend) {
    let db = b.fresh().await;
    let first = doc(&[kurs(
        "e1",
        "MATMAT01a",
        "GY",
        vec![pt("2026-01-01", "A", &[])],
    )]);
    import_at(&*db.store, "default", &first, at(1))
        .await
        .expect("first");
    let before = db.dump().await;
    let counts_before = db.store.table_counts().await.expect("counts");

    // Valid records (a change to e1, a new e2, a bad record), then the body is cut off.
    let mut broken = doc(&[
        kurs("e1", "MATMAT01a", "GY", vec![]),
        kurs("e2", "MATMAT01b", "GY", vec![pt("2026-01-01", "B", &[])]),
    ]);
    broken.truncate(broken.rfind("</provresultat>").expect("root end") - 5);
    let err = import_at(&*db.store, "default", &broken, at(2))
        .await
        .expect_err("truncated");
    assert!(err.to_string().contains("truncated"), "{err}");
    assert_eq!(db.dump().await, before);
    assert_eq!(
        db.store.table_counts().await.expect("counts"),
        counts_before
    );
}

async fn a_record_error_quarantines_that_record_with_its_xml_and_applies_the_rest(b: Backend) {
    let db = b.fresh().await;
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
    let r = import_at(&*db.store, "default", &xml, at(1))
        .await
        .expect("import");
    assert_eq!((r.summary.records, r.summary.quarantined), (2, 1));
    let rows = db
        .texts(&format!(
            "SELECT source, elev, error_code, element, {}, raw_xml, reason, document, {}, {}, {},
                    kind, kurs
             FROM quarantine",
            db.col("line", Col::Int),
            db.col("first_seen_at", Col::Timestamp),
            db.col("last_seen_at", Col::Timestamp),
            db.col("times_seen", Col::Int)
        ))
        .await;
    let [q] = rows.as_slice() else {
        panic!("one quarantined row, not {rows:?}");
    };
    assert_eq!(
        q[..4],
        ["default", "bad", "both_betyg_and_poang", "delprovsresultat"]
    );
    assert_eq!(
        q[7..],
        [
            "test",
            "2026-03-01T12:01:00.000000Z",
            "2026-03-01T12:01:00.000000Z",
            "1",
            // The key the element claims.
            "kurs",
            "MATMAT01a"
        ]
    );
    assert!(q[6].contains("both"), "{}", q[6]);
    let raw = &q[5];
    assert!(
        raw.starts_with("<kursresultat elev=\"bad\"") && raw.ends_with("</kursresultat>"),
        "{raw}"
    );
    let line: usize = q[4].parse().expect("a line number");
    assert!(
        xml.lines()
            .nth(line - 1)
            .expect("line exists")
            .contains("<poäng>7"),
        "line {line}"
    );
    let elevs: Vec<String> = db.dump().await;
    assert_eq!(
        elevs,
        vec![
            "default good1 kurs MATMAT01a #0 GY 2026-01-01 g=- i=0 s=A []",
            "default good2 kurs MATMAT01a (empty)",
        ]
    );
}

/// A document with every kind of value: genomfört, a provtillfälle the student did not take part
/// in, a delprov with poäng and måluppfyllnad, a course, and a cleared provområde (no rows).
fn views_document() -> String {
    use nprov_sync::domain::{
        Delprovsresultat, Provtillfalle, ProvtillfalleResultat, Utfall, Varde,
    };
    let delprov = |typ: &str, varde: Varde, maluppfyllnad: Option<bool>| Delprovsresultat {
        typ: typ.to_string().into(),
        utfall: Utfall::Resultat {
            varde: Some(varde),
            maluppfyllnad,
        },
    };
    doc(&[
        amne(
            "e1",
            "MA",
            9,
            "GR",
            vec![
                Provtillfalle {
                    uppdaterat: date("2026-02-01"),
                    genomfort: Some(date("2026-01-20")),
                    resultat: ProvtillfalleResultat::Resultat {
                        sammanvagt_provbetyg: Some("B".to_string().into()),
                        delprovsresultat: vec![
                            delprov("A", Varde::Betyg("B".to_string().into()), None),
                            delprov("PROVRESULTAT", Varde::Poang(17), Some(true)),
                        ],
                    },
                },
                Provtillfalle {
                    uppdaterat: date("2026-02-10"),
                    genomfort: None,
                    resultat: ProvtillfalleResultat::Intedeltagit,
                },
            ],
        ),
        kurs("e2", "MATMAT01c", "GY", vec![pt("2026-02-03", "C", &[])]),
        kurs("e3", "SVESVE01", "GY", vec![]),
    ])
}

async fn the_views_give_one_row_per_provtillfalle_and_per_delprov_with_all_context(b: Backend) {
    let db = b.fresh().await;
    let r = import_at(&*db.store, "default", &views_document(), at(1))
        .await
        .expect("import");
    assert_eq!((r.summary.records, r.summary.quarantined), (3, 0));
    // Every row is current as of its source's watermark.
    let w = "2026-03-01T13:00:00.000000Z";
    db.execute(&format!(
        "INSERT INTO sync_watermark (source, watermark_local, watermark_utc, updated_at)
         VALUES ('default', '2026-03-01T14:00', '{w}', '{w}')"
    ))
    .await
    .expect("a watermark");
    let context = [
        ("source", Col::Text),
        ("elev", Col::Text),
        ("kind", Col::Text),
        ("amne", Col::Text),
        ("arskurs", Col::Int),
        ("kurs", Col::Text),
        ("skolform", Col::Text),
        ("uppdaterat", Col::Date),
        ("genomfort", Col::Date),
        ("intedeltagit", Col::Bool),
        ("sammanvagt_provbetyg", Col::Text),
        ("ordinal", Col::Int),
        ("changed_at", Col::Timestamp),
        ("current_as_of", Col::Timestamp),
    ];
    let select = |extra: &[(&str, Col)]| {
        let cols: Vec<String> = context
            .iter()
            .chain(extra)
            .map(|(c, kind)| db.col(&format!("v.{c}"), *kind))
            // provomrade_id must lead to the row's own provområde.
            .chain([
                "(SELECT p.elev || ' ' || COALESCE(p.amne, p.kurs) FROM provomrade p
                      WHERE p.id = v.provomrade_id)"
                    .to_string(),
            ])
            .collect();
        cols.join(", ")
    };
    let t = "2026-03-01T12:01:00.000000Z";
    let rows = db
        .texts(&format!(
            "SELECT {} FROM v_provresultat v ORDER BY v.elev, v.ordinal",
            select(&[])
        ))
        .await;
    assert_eq!(
        rows,
        vec![
            vec![
                "default",
                "e1",
                "amne",
                "MA",
                "9",
                "NULL",
                "GR",
                "2026-02-01",
                "2026-01-20",
                "0",
                "B",
                "0",
                t,
                w,
                "e1 MA"
            ],
            vec![
                "default",
                "e1",
                "amne",
                "MA",
                "9",
                "NULL",
                "GR",
                "2026-02-10",
                "NULL",
                "1",
                "NULL",
                "1",
                t,
                w,
                "e1 MA"
            ],
            vec![
                "default",
                "e2",
                "kurs",
                "NULL",
                "NULL",
                "MATMAT01c",
                "GY",
                "2026-02-03",
                "NULL",
                "0",
                "C",
                "0",
                t,
                w,
                "e2 MATMAT01c"
            ],
        ]
    );
    let delprov = [
        ("delprov_ordinal", Col::Int),
        ("typ", Col::Text),
        ("utfall", Col::Text),
        ("betyg", Col::Text),
        ("poang", Col::Int),
        ("maluppfyllnad", Col::Bool),
    ];
    let rows = db
        .texts(&format!(
            "SELECT {} FROM v_delprovsresultat v ORDER BY v.elev, v.ordinal, v.delprov_ordinal",
            select(&delprov)
        ))
        .await;
    assert_eq!(
        rows,
        vec![
            vec![
                "default",
                "e1",
                "amne",
                "MA",
                "9",
                "NULL",
                "GR",
                "2026-02-01",
                "2026-01-20",
                "0",
                "B",
                "0",
                t,
                w,
                "0",
                "A",
                "resultat",
                "B",
                "NULL",
                "NULL",
                "e1 MA"
            ],
            vec![
                "default",
                "e1",
                "amne",
                "MA",
                "9",
                "NULL",
                "GR",
                "2026-02-01",
                "2026-01-20",
                "0",
                "B",
                "0",
                t,
                w,
                "1",
                "PROVRESULTAT",
                "resultat",
                "NULL",
                "17",
                "1",
                "e1 MA"
            ],
        ]
    );
}

mod sync_bookkeeping {
    use super::*;
    use nprov_sync::import::apply_document;
    use nprov_sync::store::{ApplyContext, ApplySummary, RunKind, StoreError};
    use nprov_sync::window::Window;
    use nprov_sync::xml::Limits;

    async fn apply_window(db: &Db, kind: RunKind, w: Window, commit: bool) {
        let xml = doc(&[kurs(
            &format!("e-{}", w.tom_param()),
            "MATMAT01a",
            "GY",
            vec![],
        )]);
        let ctx = ApplyContext {
            source: "default".into(),
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
        let (mut tx, report) = apply_document(&*db.store, input, Limits::default(), ctx)
            .await
            .expect("apply");
        tx.record_window(&sync_run(kind, w, report.summary, expected))
            .await
            .expect("record");
        if commit {
            tx.commit().await.expect("commit");
        } else {
            tx.rollback().await.expect("rollback");
        }
    }

    for_each_backend!(
        a_windows_data_run_and_watermark_commit_together,
        a_rolled_back_window_leaves_no_data_run_or_watermark,
        the_watermark_never_moves_back_and_backfill_never_moves_it,
        a_failed_window_is_recorded_on_its_own,
        a_window_planned_from_a_watermark_that_moved_meanwhile_is_rolled_back_whole,
        a_first_window_is_fenced_too,
    );

    async fn a_windows_data_run_and_watermark_commit_together(b: Backend) {
        let db = b.fresh().await;
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
            db.runs().await,
            vec!["sync 2026-01-10T09:00..2026-01-10T10:59 ok 1"]
        );
        assert_eq!(db.store.table_counts().await.expect("counts").provomrade, 1);
        let recent = db.store.recent_runs("default", 5).await.expect("recent");
        assert_eq!(
            (
                recent[0].from_local.as_str(),
                recent[0].finished_at.as_str(),
                recent[0].http_status
            ),
            ("2026-01-10T09:00", "2026-03-01T12:02:00.000000Z", Some(200))
        );
        assert_eq!(
            db.store
                .source_rows()
                .await
                .expect("sources")
                .iter()
                .map(|s| s.source.as_str())
                .collect::<Vec<_>>(),
            vec!["default"]
        );
    }

    async fn a_rolled_back_window_leaves_no_data_run_or_watermark(b: Backend) {
        let db = b.fresh().await;
        apply_window(
            &db,
            RunKind::Sync,
            window("2026-01-10T08:00:00Z", "2026-01-10T09:59:00Z"),
            false,
        )
        .await;
        assert_eq!(db.store.watermark("default").await.expect("read"), None);
        assert!(db.runs().await.is_empty());
        assert_eq!(db.store.table_counts().await.expect("counts").provomrade, 0);
    }

    async fn the_watermark_never_moves_back_and_backfill_never_moves_it(b: Backend) {
        let db = b.fresh().await;
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
        assert_eq!(db.runs().await.len(), 3);
    }

    async fn a_failed_window_is_recorded_on_its_own(b: Backend) {
        let db = b.fresh().await;
        let mut r = sync_run(
            RunKind::Sync,
            window("2026-01-10T08:00:00Z", "2026-01-10T09:59:00Z"),
            ApplySummary::default(),
            None,
        );
        r.http_status = Some(503);
        r.error = Some("503 Service Unavailable after 5 attempts".into());
        db.store.record_failed_run(&r).await.expect("record");
        assert_eq!(
            db.runs().await,
            vec!["sync 2026-01-10T09:00..2026-01-10T10:59 failed 0"]
        );
        assert_eq!(db.store.watermark("default").await.expect("read"), None);
        let recent = db.store.recent_runs("default", 5).await.expect("recent");
        assert_eq!(
            recent[0].error.as_deref(),
            Some("503 Service Unavailable after 5 attempts")
        );
    }

    async fn a_window_planned_from_a_watermark_that_moved_meanwhile_is_rolled_back_whole(
        b: Backend,
    ) {
        // Two writers plan the same window from the same watermark; the first commits. The
        // second must not commit it again: not its data, not its run row, not the watermark.
        let db = b.fresh().await;
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
        let before = (db.dump().await, db.runs().await);

        let stale = window("2026-01-10T09:30:00Z", "2026-01-10T12:59:00Z");
        let xml = doc(&[kurs("e-stale", "MATMAT01a", "GY", vec![])]);
        let ctx = ApplyContext {
            source: "default".into(),
            document: stale.label(),
            now: at(4),
        };
        let input = std::io::Cursor::new(xml.into_bytes());
        let (mut tx, report) = apply_document(&*db.store, input, Limits::default(), ctx)
            .await
            .expect("apply");
        let e = tx
            .record_window(&sync_run(
                RunKind::Sync,
                stale,
                report.summary,
                planned_from,
            ))
            .await
            .expect_err("the watermark moved");
        assert!(matches!(e, StoreError::WatermarkMoved { .. }), "{e}");
        assert!(
            e.to_string().contains("another instance")
                && e.to_string()
                    .contains("expected 2026-01-10T09:59:00.000000Z")
                && e.to_string()
                    .contains("moved to 2026-01-10T11:59:00.000000Z"),
            "{e}"
        );
        tx.rollback().await.expect("rollback");
        assert_eq!((db.dump().await, db.runs().await), before);
        assert_eq!(
            db.store
                .watermark("default")
                .await
                .expect("read")
                .map(|w| w.utc),
            Some(next.tom_utc)
        );
    }

    async fn a_first_window_is_fenced_too(b: Backend) {
        // Two first syncs (no watermark yet): the second finds one and rolls back.
        let db = b.fresh().await;
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
            document: w.label(),
            now: at(4),
        };
        let xml = doc(&[kurs("e-second", "MATMAT01a", "GY", vec![])]);
        let (mut tx, report) = apply_document(
            &*db.store,
            std::io::Cursor::new(xml.into_bytes()),
            Limits::default(),
            ctx,
        )
        .await
        .expect("apply");
        let e = tx
            .record_window(&sync_run(RunKind::Sync, w, report.summary, None))
            .await
            .expect_err("a watermark exists");
        assert!(e.to_string().contains("expected none"), "{e}");
    }
}

//! The vendor's example for every published version imports, with exactly the rows it holds, on
//! each backend. The files are read from ../shared/spec (not copied into the repository); without
//! that folder the test says it skipped.

use crate::helpers::*;

for_each_backend!(
    every_vendor_example_imports_with_the_exact_rows_it_holds,
    vendor_example_values_land_in_the_right_columns,
);

/// (version, records, provtillfällen, delprovsresultat) counted by hand from the vendor files.
const EXPECTED: &[(&str, i64, i64, i64)] = &[
    ("v1.1", 9, 11, 26),
    ("v1.2", 9, 11, 26),
    ("v2.0b", 9, 10, 26),
    ("v4.0a", 9, 10, 28),
    ("v12.0", 10, 11, 33),
];

async fn every_vendor_example_imports_with_the_exact_rows_it_holds(b: Backend) {
    let Some(dir) = vendor_spec_dir() else {
        skip(
            "every_vendor_example_imports…",
            "../shared/spec/nationellaprov not found",
        );
        return;
    };
    for (version, records, pts, delprov) in EXPECTED {
        let db = b.fresh().await;
        let xml = std::fs::read_to_string(dir.join(version).join("nationellaprov-exempel.xml"))
            .expect("vendor example");
        let r = import_at(&*db.store, "default", &xml, at(0))
            .await
            .expect(version);
        assert_eq!(r.header.version.label(), *version);
        assert_eq!(r.summary.records as i64, *records, "{version} records");
        assert_eq!(r.summary.quarantined, 0, "{version}");
        assert!(
            r.stats.unknown_values.is_empty(),
            "{version}: {:?}",
            r.stats.unknown_values
        );
        let c = db.store.table_counts().await.expect("counts");
        assert_eq!(
            (
                c.provomrade,
                c.provtillfalle,
                c.delprovsresultat,
                c.change_log
            ),
            (*records, *pts, *delprov, *records),
            "{version}"
        );
        let from_later_than_tom = r
            .stats
            .warnings
            .iter()
            .any(|w| w.message.contains("later than tom"));
        assert_eq!(
            from_later_than_tom,
            ["v1.1", "v1.2", "v2.0b"].contains(version),
            "{version}"
        );
        let ns = db.texts("SELECT DISTINCT namespace FROM provomrade").await;
        assert_eq!(
            ns,
            vec![vec![format!(
                "http://pingpong.se/schemas/nationellaprov/{version}"
            )]]
        );
    }
}

async fn vendor_example_values_land_in_the_right_columns(b: Backend) {
    let Some(dir) = vendor_spec_dir() else {
        skip(
            "vendor_example_values…",
            "../shared/spec/nationellaprov not found",
        );
        return;
    };
    let read = |v: &str| {
        std::fs::read_to_string(dir.join(v).join("nationellaprov-exempel.xml")).expect("file")
    };

    // v1.1: a delprov with only måluppfyllnad, then intedeltagit and borttappat; no sammanvägt.
    let db = b.fresh().await;
    import_at(&*db.store, "default", &read("v1.1"), at(0))
        .await
        .expect("v1.1");
    let lines = db.dump().await;
    assert!(lines.contains(&"default {df324j43-3j13-to03-dfu8-fb0429mu39g8} amne MA/3 #0 GR 2016-09-01 g=- i=0 s=- [ANNAN:resultat:-:-:1 ANNAN:resultat:-:24:1 ANNAN:resultat:-:10:1 ANNAN:resultat:-:10:1 ANNAN:intedeltagit:-:-:- ANNAN:borttappat:-:-:- ANNAN:resultat:-:1:0]".to_string()), "{lines:#?}");
    assert!(lines.contains(&"default {0c23677c-8ddc-12e5-8994-feff819cdc9f} kurs MATMAT01b #0 GY 2016-09-02 g=- i=1 s=- []".to_string()));
    assert!(lines.contains(&"default {0c23677c-8ddc-11e5-8994-feff819cdc9f} kurs SFIKUB9 #1 SFI 2016-09-02 g=- i=0 s=C [LÄSA:resultat:C:-:- TALA:resultat:B:-:- SKRIVA:resultat:E:-:- LYSSNA:resultat:A:-:-]".to_string()));

    // v12.0: genomfört, the SFI scale (G, delprov 0–2) and PROVRESULTAT with poäng.
    let db = b.fresh().await;
    import_at(&*db.store, "default", &read("v12.0"), at(0))
        .await
        .expect("v12.0");
    let lines = db.dump().await;
    assert!(lines.contains(&"default {0c23677c-8ddc-11e5-8994-feff819cdc9f} kurs SFIKUB9 #0 SFI 2022-05-01 g=2022-04-01 i=0 s=G [LÄSA:resultat:2:-:- TALA:resultat:0:-:- SKRIVA:resultat:0:-:- LYSSNA:resultat:2:-:-]".to_string()), "{lines:#?}");
    assert!(lines.contains(&"default {0c23677c-8ddc-11e5-8994-feff819cdc9f} kurs MATMAT01a #0 GY 2018-05-01 g=- i=0 s=A [PROVRESULTAT:resultat:-:72:0]".to_string()));
    let arskurs = db
        .texts(&format!(
            "SELECT DISTINCT {} FROM provomrade WHERE kind = 'amne' ORDER BY 1",
            db.col("arskurs", Col::Int)
        ))
        .await;
    assert_eq!(arskurs, vec![vec!["3"], vec!["6"]]);
}

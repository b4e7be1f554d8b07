//! Our own fixtures: valid documents per version, and a corpus of broken ones whose expected
//! outcome is listed in tests/fixtures/bad/cases.toml.

use crate::helpers::*;
use nprov_sync::import::{parse_document, ImportError};
use nprov_sync::xml::{Item, Limits};
use serde::Deserialize;

// What the corpus does to a database, on each backend.
for_each_backend!(
    broken_documents_leave_the_database_as_it_was_and_broken_records_only_are_quarantined,
    every_good_fixture_imports_without_errors_and_merges_its_repeated_key,
);

#[derive(Debug, Deserialize)]
struct Cases {
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    file: String,
    kind: String,
    code: String,
    line: u64,
    elev: String,
    records: u64,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture("bad/cases.toml")).expect("cases.toml");
    toml::from_str::<Cases>(&text)
        .expect("cases.toml parses")
        .case
}

#[test]
fn every_broken_document_fails_with_its_specific_error_at_its_location() {
    let cases = cases();
    assert!(cases.len() >= 25, "the corpus shrank to {}", cases.len());
    for c in &cases {
        let input = std::io::BufReader::new(
            std::fs::File::open(fixture(&format!("bad/{}", c.file))).expect("file"),
        );
        let mut quarantined = Vec::new();
        let result = parse_document(input, Limits::default(), |item| {
            if let Item::Quarantined(q) = item {
                quarantined.push(q.error.clone());
            }
        });
        match c.kind.as_str() {
            "document" => {
                let e = result
                    .error
                    .unwrap_or_else(|| panic!("{}: no document error", c.file));
                assert_eq!(e.code(), c.code, "{}: {e}", c.file);
                assert_eq!(
                    e.location().map(|l| l.line).unwrap_or(0),
                    c.line,
                    "{}: {e}",
                    c.file
                );
            }
            "record" => {
                if let Some(e) = &result.error {
                    panic!("{}: document error {e}", c.file);
                }
                let stats = result.stats;
                assert_eq!(quarantined.len(), 1, "{}: {quarantined:?}", c.file);
                let e = &quarantined[0];
                assert_eq!(e.kind.code(), c.code, "{}: {e}", c.file);
                assert_eq!(e.location.line, c.line, "{}: {e}", c.file);
                assert_eq!(
                    e.elev.clone().unwrap_or_default(),
                    c.elev,
                    "{}: {e}",
                    c.file
                );
                assert_eq!(stats.records, c.records, "{}", c.file);
            }
            other => panic!("{}: unknown kind {other}", c.file),
        }
    }
}

async fn broken_documents_leave_the_database_as_it_was_and_broken_records_only_are_quarantined(
    b: Backend,
) {
    let db = b.fresh().await;
    let good = std::fs::read_to_string(fixture("good/v12.0.xml")).expect("good fixture");
    import_at(&*db.store, "default", &good, at(0))
        .await
        .expect("good import");
    for c in cases() {
        let bytes = std::fs::read(fixture(&format!("bad/{}", c.file))).expect("file");
        let before = db.dump().await;
        let counts = db.store.table_counts().await.expect("counts");
        let xml = String::from_utf8_lossy(&bytes).into_owned();
        let result = import_at(&*db.store, "corpus", &xml, at(1)).await;
        let after = db.store.table_counts().await.expect("counts");
        match c.kind.as_str() {
            "document" => {
                // The same error as the parser alone reports, wherever in the pipeline (scanner
                // or writer) the element was found broken.
                match result {
                    Err(ImportError::Document(e)) => {
                        assert_eq!(e.code(), c.code, "{}: {e}", c.file);
                        assert_eq!(
                            e.location().map(|l| l.line).unwrap_or(0),
                            c.line,
                            "{}: {e}",
                            c.file
                        );
                    }
                    other => panic!("{}: expected a document error, got {other:?}", c.file),
                }
                assert_eq!(db.dump().await, before, "{}", c.file);
                assert_eq!(after, counts, "{}", c.file);
            }
            _ => {
                let r = result.unwrap_or_else(|e| panic!("{}: {e}", c.file));
                assert_eq!(
                    (r.summary.records, r.summary.quarantined),
                    (c.records, 1),
                    "{}",
                    c.file
                );
                assert_eq!(after.quarantine, counts.quarantine + 1, "{}", c.file);
            }
        }
    }
}

async fn every_good_fixture_imports_without_errors_and_merges_its_repeated_key(b: Backend) {
    for v in ["v1.1", "v1.2", "v2.0b", "v4.0a", "v12.0", "unknown-version"] {
        let db = b.fresh().await;
        let xml = std::fs::read_to_string(fixture(&format!("good/{v}.xml"))).expect("fixture");
        let r = import_at(&*db.store, "default", &xml, at(0))
            .await
            .unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(r.summary.quarantined, 0, "{v}");
        assert_eq!(
            r.header.version.label(),
            if v == "unknown-version" { "unknown" } else { v }
        );
        // Each fixture sends one key in two elements (two skolformer), so it has one key less.
        let c = db.store.table_counts().await.expect("counts");
        assert_eq!(c.provomrade as u64, r.summary.records - 1, "{v}");
        assert_eq!(
            r.summary.changed + r.summary.cleared,
            r.summary.records - 1,
            "{v}"
        );
        if v == "unknown-version" {
            assert!(r
                .stats
                .warnings
                .iter()
                .any(|w| w.message.contains("unknown schema namespace")));
            assert!(r
                .stats
                .unknown_values
                .keys()
                .any(|(_, value)| value == "MUNTLIG"));
        } else {
            assert_eq!(r.stats.warning_count, 0, "{v}: {:?}", r.stats.warnings);
        }
    }
}

/// The good fixtures are valid against the vendor's XSDs (when xmllint and ../shared exist).
#[test]
fn good_fixtures_validate_against_the_vendor_xsd() {
    let Some(spec) = vendor_spec_dir() else {
        skip(
            "good_fixtures_validate…",
            "../shared/spec/nationellaprov not found",
        );
        return;
    };
    if !xmllint_available() {
        skip("good_fixtures_validate…", "xmllint is not installed");
        return;
    }
    for v in ["v1.1", "v1.2", "v2.0b", "v4.0a", "v12.0"] {
        if let Err(report) = xmllint_validate(
            &spec.join(v).join("nationellaprov.xsd"),
            &fixture(&format!("good/{v}.xml")),
        ) {
            panic!("{v}: {report}");
        }
    }
}

//! Shared test plumbing: throwaway databases, documents built from domain values, table dumps.

use chrono::{NaiveDate, TimeZone, Utc};
use nprov_sync::domain::*;
use nprov_sync::import::{import_document, ImportError, ImportReport};
use nprov_sync::simulate::render_to_string;
use nprov_sync::store::{ApplyContext, SqliteStore, Store};
use nprov_sync::xml::version::{newest, VersionRules};
use nprov_sync::xml::Limits;
use sqlx::Row;

/// A migrated SQLite database in its own temporary directory, removed on drop.
pub struct TestDb {
    pub store: SqliteStore,
    _dir: tempfile::TempDir,
}

pub async fn fresh_sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let store = SqliteStore::connect(&url).await.expect("open sqlite");
    store.migrate().await.expect("migrate");
    TestDb { store, _dir: dir }
}

/// Whether this is a CI run, where a missing prerequisite is a failure, never a silent skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Says a test is skipped for a missing prerequisite; under CI that fails the test instead.
pub fn skip(test: &str, why: &str) {
    assert!(!in_ci(), "{test}: {why}, and CI=true requires it");
    eprintln!("SKIP {test}: {why}");
}

/// The vendor's folder, when this checkout has `../shared` beside it.
pub fn vendor_spec_dir() -> Option<std::path::PathBuf> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/spec/nationellaprov");
    p.is_dir().then_some(p)
}

/// Whether `xmllint` (libxml2-utils) can be run.
pub fn xmllint_available() -> bool {
    std::process::Command::new("xmllint")
        .arg("--version")
        .output()
        .is_ok()
}

/// `xmllint --noout --schema XSD FILE`: `Err` with xmllint's report when the file is not valid.
pub fn xmllint_validate(xsd: &std::path::Path, file: &std::path::Path) -> Result<(), String> {
    let out = std::process::Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(xsd)
        .arg(file)
        .output()
        .expect("xmllint runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn fixture(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

pub fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("test date")
}

pub fn amne(
    elev: &str,
    amne: &str,
    arskurs: i64,
    skolform: &str,
    pts: Vec<Provtillfalle>,
) -> Provomrade {
    Provomrade {
        key: ProvomradeKey {
            elev: elev.into(),
            omrade: Omrade::Amne {
                amne: amne.into(),
                arskurs: Arskurs::try_from(arskurs).expect("3, 6 or 9"),
            },
        },
        skolform: skolform.to_string().into(),
        provtillfallen: pts,
    }
}

pub fn kurs(elev: &str, kurs: &str, skolform: &str, pts: Vec<Provtillfalle>) -> Provomrade {
    Provomrade {
        key: ProvomradeKey {
            elev: elev.into(),
            omrade: Omrade::Kurs { kurs: kurs.into() },
        },
        skolform: skolform.to_string().into(),
        provtillfallen: pts,
    }
}

/// A provtillfälle with a sammanvägt provbetyg and one delprov per (typ, betyg).
pub fn pt(uppdaterat: &str, sammanvagt: &str, delprov: &[(&str, &str)]) -> Provtillfalle {
    Provtillfalle {
        uppdaterat: date(uppdaterat),
        genomfort: None,
        resultat: ProvtillfalleResultat::Resultat {
            sammanvagt_provbetyg: Some(sammanvagt.to_string().into()),
            delprovsresultat: delprov
                .iter()
                .map(|(typ, betyg)| Delprovsresultat {
                    typ: typ.to_string().into(),
                    utfall: Utfall::Resultat {
                        varde: Some(Varde::Betyg(betyg.to_string().into())),
                        maluppfyllnad: None,
                    },
                })
                .collect(),
        },
    }
}

pub fn doc(records: &[Provomrade]) -> String {
    doc_in(newest(), records)
}

pub fn doc_in(version: &VersionRules, records: &[Provomrade]) -> String {
    render_to_string(
        version,
        "2026-01-01T00:00:00",
        "2026-01-02T00:00:00",
        records,
    )
}

/// A fixed clock per step, so changed_at/synced_at can be asserted.
pub fn at(minute: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, minute, 0)
        .single()
        .expect("valid time")
}

pub async fn import_at(
    store: &dyn Store,
    source: &str,
    xml: &str,
    now: chrono::DateTime<Utc>,
) -> Result<ImportReport, ImportError> {
    let ctx = ApplyContext {
        source: source.into(),
        namespace: String::new(),
        document: "test".into(),
        now,
    };
    import_document(
        store,
        std::io::Cursor::new(xml.as_bytes().to_vec()),
        Limits::default(),
        ctx,
    )
    .await
}

/// Every row of the mirror as text, keyed by natural keys rather than ids, in a stable order.
pub async fn dump(store: &SqliteStore) -> Vec<String> {
    let rows = sqlx::query(
        "SELECT p.source, p.elev, p.kind, COALESCE(p.amne, ''), COALESCE(p.arskurs, 0),
                COALESCE(p.kurs, ''), t.ordinal, t.skolform, t.uppdaterat,
                COALESCE(t.genomfort, '-'), t.intedeltagit, COALESCE(t.sammanvagt_provbetyg, '-'),
                (SELECT group_concat(d.typ || ':' || d.utfall || ':' || COALESCE(d.betyg, '-') || ':'
                        || COALESCE(d.poang, '-') || ':' || COALESCE(d.maluppfyllnad, '-'), ' ')
                 FROM (SELECT * FROM delprovsresultat WHERE provtillfalle_id = t.id ORDER BY ordinal) d)
         FROM provomrade p LEFT JOIN provtillfalle t ON t.provomrade_id = p.id
         ORDER BY 1, 2, 3, 4, 5, 6, 7",
    )
    .fetch_all(store.pool())
    .await
    .expect("dump");
    rows.iter()
        .map(|r| {
            let ordinal: Option<i64> = r.get(6);
            let head = format!(
                "{} {} {} {}{}{}",
                r.get::<String, _>(0),
                r.get::<String, _>(1),
                r.get::<String, _>(2),
                r.get::<String, _>(3),
                match r.get::<i64, _>(4) {
                    0 => String::new(),
                    n => format!("/{n}"),
                },
                r.get::<String, _>(5)
            );
            match ordinal {
                None => format!("{head} (empty)"),
                Some(o) => format!(
                    "{head} #{o} {} {} g={} i={} s={} [{}]",
                    r.get::<String, _>(7),
                    r.get::<String, _>(8),
                    r.get::<String, _>(9),
                    r.get::<i64, _>(10),
                    r.get::<String, _>(11),
                    r.get::<Option<String>, _>(12).unwrap_or_default()
                ),
            }
        })
        .collect()
}

/// change_log as "elev omrade op" in seq order.
pub async fn change_log(store: &SqliteStore) -> Vec<String> {
    sqlx::query(
        "SELECT p.elev, COALESCE(p.amne || '/' || p.arskurs, p.kurs), c.op
         FROM change_log c JOIN provomrade p ON p.id = c.provomrade_id ORDER BY c.seq",
    )
    .fetch_all(store.pool())
    .await
    .expect("change_log")
    .iter()
    .map(|r| {
        format!(
            "{} {} {}",
            r.get::<String, _>(0),
            r.get::<String, _>(1),
            r.get::<String, _>(2)
        )
    })
    .collect()
}

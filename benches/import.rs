//! `import` end to end (parse + replace into SQLite) beside SQLite's write ceiling: the same rows
//! inserted through SQLite's C API (rusqlite, the same libsqlite3) by prepared statements in one
//! transaction, into the same schema with the same pragmas, and nothing else.
//!
//! Also prints a re-import of the same document (every key unchanged) and the process's peak
//! resident memory after importing a small and a large document, which must not grow with size.

mod common;

use std::collections::HashMap;
use std::time::Instant;

use chrono::Utc;
use nprov_sync::domain::ProvomradeKey;
use nprov_sync::import::import_document;
use nprov_sync::store::{ApplyContext, SqliteStore, Store};
use nprov_sync::xml::{Item, Limits, Parser};

const SMALL: u64 = 20_000;
const LARGE: u64 = 100_000;

struct Figures {
    rows: u64,
    seconds: f64,
}

async fn import(db: &std::path::Path, doc: &std::path::Path) -> Figures {
    let store = SqliteStore::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("open");
    store.migrate().await.expect("migrate");
    let input = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(doc).expect("doc"));
    let ctx = ApplyContext {
        source: "bench".into(),
        document: doc.display().to_string(),
        now: Utc::now(),
    };
    let t = Instant::now();
    let r = import_document(&store, input, Limits::default(), ctx)
        .await
        .expect("import");
    let seconds = t.elapsed().as_secs_f64();
    store.close().await;
    Figures {
        rows: r.summary.rows_written(),
        seconds,
    }
}

/// A provtillfalle row: id, provomrade_id, ordinal, skolform, uppdaterat, genomfort,
/// intedeltagit, sammanvagt_provbetyg.
type PtRow = (
    i64,
    i64,
    i64,
    String,
    String,
    Option<String>,
    bool,
    Option<String>,
);
/// A delprovsresultat row: id, provtillfalle_id, ordinal, typ, utfall, betyg, poang,
/// maluppfyllnad.
type DpRow = (
    i64,
    i64,
    i64,
    String,
    &'static str,
    Option<String>,
    Option<i64>,
    Option<bool>,
);

/// Rows as the mirror stores them, built outside the timed part.
#[derive(Default)]
struct Rows {
    provomrade: Vec<(i64, ProvomradeKey, String)>,
    provtillfalle: Vec<PtRow>,
    delprov: Vec<DpRow>,
}

fn rows_of(doc: &std::path::Path) -> Rows {
    let input = std::io::BufReader::new(std::fs::File::open(doc).expect("doc"));
    let mut parser = Parser::new(input, Limits::default()).expect("root");
    let mut rows = Rows::default();
    let mut ids: HashMap<ProvomradeKey, (i64, i64)> = HashMap::new();
    while let Some(Item::Record(r)) = parser.next_item().expect("parse") {
        let p = r.provomrade;
        let next = ids.len() as i64 + 1;
        let (po, count) = ids.entry(p.key.clone()).or_insert((next, 0));
        if *po == next {
            rows.provomrade.push((next, p.key.clone(), "0".repeat(64)));
        }
        for pt in &p.provtillfallen {
            let pt_id = rows.provtillfalle.len() as i64 + 1;
            rows.provtillfalle.push((
                pt_id,
                *po,
                *count,
                p.skolform.to_string(),
                pt.uppdaterat.to_string(),
                pt.genomfort.map(|d| d.to_string()),
                pt.resultat.intedeltagit(),
                pt.resultat.sammanvagt_provbetyg().map(String::from),
            ));
            *count += 1;
            for (i, d) in pt.resultat.delprovsresultat().iter().enumerate() {
                rows.delprov.push((
                    rows.delprov.len() as i64 + 1,
                    pt_id,
                    i as i64,
                    d.typ.to_string(),
                    d.utfall.as_str(),
                    d.utfall.betyg().map(String::from),
                    d.utfall.poang(),
                    d.utfall.maluppfyllnad(),
                ));
            }
        }
    }
    rows
}

fn ceiling(db: &std::path::Path, rows: &Rows) -> Figures {
    let mut conn = rusqlite::Connection::open(db).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(None, "synchronous", "NORMAL")
        .expect("synchronous");
    conn.pragma_update(None, "foreign_keys", true)
        .expect("foreign keys");
    let mut migrations: Vec<_> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
            .expect("migrations")
            .map(|e| e.expect("entry").path())
            .collect();
    migrations.sort();
    for m in migrations {
        conn.execute_batch(&std::fs::read_to_string(m).expect("sql"))
            .expect("migration");
    }
    let now = "2026-11-23T12:00:00.000000Z";
    let t = Instant::now();
    let tx = conn.transaction().expect("begin");
    {
        let mut po = tx
            .prepare(
                "INSERT INTO provomrade (id, source, elev, kind, amne, arskurs, kurs, namespace,
                 content_sha256, raw_sha256, changed_at)
                 VALUES (?, 'bench', ?, ?, ?, ?, ?, 'ns', ?, ?, ?)",
            )
            .expect("prepare");
        for (id, k, sha) in &rows.provomrade {
            po.execute(rusqlite::params![
                id,
                k.elev,
                k.omrade.kind(),
                k.omrade.amne(),
                k.omrade.arskurs().map(|a| a.get()),
                k.omrade.kurs(),
                sha,
                // The raw hash the engine stores per key: 32 bytes.
                [0u8; 32],
                now
            ])
            .expect("insert provomrade");
        }
        let mut pt = tx
            .prepare(
                "INSERT INTO provtillfalle (id, provomrade_id, ordinal, skolform, uppdaterat,
                 genomfort, intedeltagit, sammanvagt_provbetyg) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .expect("prepare");
        for r in &rows.provtillfalle {
            pt.execute(rusqlite::params![r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7])
                .expect("insert provtillfalle");
        }
        let mut dp = tx
            .prepare(
                "INSERT INTO delprovsresultat (id, provtillfalle_id, ordinal, typ, utfall, betyg,
                 poang, maluppfyllnad) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .expect("prepare");
        for r in &rows.delprov {
            dp.execute(rusqlite::params![r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7])
                .expect("insert delprovsresultat");
        }
    }
    tx.commit().expect("commit");
    Figures {
        rows: (rows.provomrade.len() + rows.provtillfalle.len() + rows.delprov.len()) as u64,
        seconds: t.elapsed().as_secs_f64(),
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing and should not run this.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let small = common::document(SMALL);
    let large = common::document(LARGE);
    let size = |p: &std::path::Path| std::fs::metadata(p).expect("size").len() as f64 / 1e6;

    let f = runtime.block_on(import(&dir.path().join("small.db"), &small));
    let rss_small = common::peak_rss_mib();
    println!(
        "import {SMALL} students ({:.0} MB): {} rows in {:.2} s = {:.0} rows/s; peak RSS so far {rss_small:.0} MiB",
        size(&small),
        f.rows,
        f.seconds,
        f.rows as f64 / f.seconds
    );

    let (mut ours, mut theirs, mut again) = (Vec::new(), Vec::new(), Vec::new());
    let mut rss_large = 0.0;
    let mut rows = 0;
    for run in 0..3 {
        let db = dir.path().join(format!("large-{run}.db"));
        let f = runtime.block_on(import(&db, &large));
        rss_large = common::peak_rss_mib();
        rows = f.rows;
        ours.push(f.rows as f64 / f.seconds);
        // The same document again: every key unchanged.
        let t = Instant::now();
        runtime.block_on(import(&db, &large));
        again.push(t.elapsed().as_secs_f64() / f.seconds);
        std::fs::remove_file(&db).ok();
    }
    println!(
        "import {LARGE} students ({:.0} MB): {rows} rows, median {:.0} rows/s; peak RSS after it {rss_large:.0} MiB",
        size(&large),
        common::median(ours.clone())
    );
    println!(
        "re-import of the unchanged document: median {:.2} of the first import's time",
        common::median(again)
    );

    // The ceiling holds all rows in memory by design; it runs last so the RSS figures above are
    // the importer's.
    let table = rows_of(&large);
    for run in 0..3 {
        let f = ceiling(&dir.path().join(format!("ceiling-{run}.db")), &table);
        assert_eq!(f.rows, rows, "the ceiling must insert the same rows");
        theirs.push(f.rows as f64 / f.seconds);
    }
    let (ours, theirs) = (common::median(ours), common::median(theirs));
    println!(
        "import: {ours:.0} rows/s; SQLite C-API ceiling (prepared statement, one transaction): {theirs:.0} rows/s; ratio {:.0} %",
        100.0 * ours / theirs
    );
}

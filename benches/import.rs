//! `import` end to end (parse + replace into SQLite) beside SQLite's write ceiling: the same rows
//! inserted through SQLite's C API (rusqlite, the same libsqlite3) by prepared statements in one
//! transaction, into the same schema with the same pragmas, and nothing else.
//!
//! Also prints a re-import of the same document (every key unchanged) and the process's peak
//! resident memory after importing a small and a large document, which must not grow with size.

mod common;

use common::floor::{ceiling, rows_of, Figures};

use std::time::Instant;

use chrono::Utc;
use nprov_sync::import::import_document;
use nprov_sync::store::{ApplyContext, SqliteStore, Store};
use nprov_sync::xml::Limits;

const SMALL: u64 = 20_000;
const LARGE: u64 = 100_000;

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

//! `import` end to end (parse + replace into PostgreSQL) beside PostgreSQL's write ceiling: the
//! same rows sent by plain `COPY … FROM STDIN` into empty copies of the tables (a second schema
//! migrated the same way: same indexes, constraints and foreign keys), in one transaction, and
//! nothing else. Also prints a re-import of the same document (every key unchanged).
//!
//! The server is `NPROV_BENCH_POSTGRES_URL` (default: the local one); without one the bench says
//! so and does nothing. Each measurement gets a schema of its own, dropped afterwards.

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Instant;

use chrono::Utc;
use nprov_sync::domain::ProvomradeKey;
use nprov_sync::import::import_document;
use nprov_sync::store::{redact_url, ApplyContext, PostgresStore, Store};
use nprov_sync::xml::{Item, Limits, Parser};
use sqlx::Connection;

const STUDENTS: u64 = 100_000;
const RUNS: usize = 3;

/// A stand-in raw hash of the 32 bytes the engine stores per key, in bytea's hex input form
/// (`field` escapes its backslash for COPY).
const RAW_HASH: &str = "\\x0000000000000000000000000000000000000000000000000000000000000000";

fn url() -> String {
    std::env::var("NPROV_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A migrated, empty schema of its own.
async fn fresh(name: &str) -> PostgresStore {
    drop_schema(name).await;
    let store = PostgresStore::connect(&url(), name).await.expect("connect");
    store.migrate().await.expect("migrate");
    store
}

async fn drop_schema(name: &str) {
    let mut c = sqlx::postgres::PgConnection::connect(&url())
        .await
        .expect("connect");
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
        .execute(&mut c)
        .await
        .expect("drop the bench schema");
    c.close().await.ok();
}

struct Figures {
    rows: u64,
    seconds: f64,
}

async fn import(store: &PostgresStore, doc: &std::path::Path) -> Figures {
    let input = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(doc).expect("doc"));
    let ctx = ApplyContext {
        source: "bench".into(),
        document: doc.display().to_string(),
        now: Utc::now(),
    };
    let t = Instant::now();
    let r = import_document(store, input, Limits::default(), ctx)
        .await
        .expect("import");
    Figures {
        rows: r.summary.rows_written(),
        seconds: t.elapsed().as_secs_f64(),
    }
}

/// The rows the import writes, as `COPY` text, built outside the timed part.
#[derive(Default)]
struct CopyData {
    provomrade: String,
    provtillfalle: String,
    delprovsresultat: String,
    rows: u64,
}

/// A value in `COPY`'s text format.
fn field(out: &mut String, v: Option<&str>) {
    match v {
        None => out.push_str("\\N"),
        Some(s) => {
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
        }
    }
}

fn row(out: &mut String, values: &[Option<&str>]) {
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        field(out, *v);
    }
    out.push('\n');
}

fn rows_of(doc: &std::path::Path) -> CopyData {
    let input = std::io::BufReader::new(std::fs::File::open(doc).expect("doc"));
    let mut parser = Parser::new(input, Limits::default()).expect("root");
    let ns = parser.header().version.namespace.clone();
    let now = "2026-11-23 12:00:00+00";
    let sha = "0".repeat(64);
    let mut out = CopyData::default();
    let mut ids: HashMap<ProvomradeKey, (i64, i64)> = HashMap::new();
    let (mut pt_id, mut dp_id) = (0i64, 0i64);
    let mut buf = String::new();
    let mut s = |v: &dyn std::fmt::Display| {
        buf.clear();
        write!(buf, "{v}").expect("to a string");
        buf.clone()
    };
    while let Some(Item::Record(r)) = parser.next_item().expect("parse") {
        let p = r.provomrade;
        let next = ids.len() as i64 + 1;
        let (po, count) = ids.entry(p.key.clone()).or_insert((next, 0));
        if *po == next {
            let k = &p.key;
            row(
                &mut out.provomrade,
                &[
                    Some(&s(&next)),
                    Some("bench"),
                    Some(&k.elev),
                    Some(k.omrade.kind()),
                    k.omrade.amne(),
                    k.omrade.arskurs().map(|a| s(&a.get())).as_deref(),
                    k.omrade.kurs(),
                    Some(&ns),
                    Some(&sha),
                    Some(RAW_HASH),
                    Some(now),
                ],
            );
            out.rows += 1;
        }
        for pt in &p.provtillfallen {
            pt_id += 1;
            row(
                &mut out.provtillfalle,
                &[
                    Some(&s(&pt_id)),
                    Some(&s(po)),
                    Some(&s(count)),
                    Some(&p.skolform),
                    Some(&s(&pt.uppdaterat)),
                    pt.genomfort.map(|d| s(&d)).as_deref(),
                    Some(if pt.resultat.intedeltagit() { "t" } else { "f" }),
                    pt.resultat.sammanvagt_provbetyg(),
                ],
            );
            *count += 1;
            out.rows += 1;
            for (i, d) in pt.resultat.delprovsresultat().iter().enumerate() {
                dp_id += 1;
                row(
                    &mut out.delprovsresultat,
                    &[
                        Some(&s(&dp_id)),
                        Some(&s(&pt_id)),
                        Some(&s(&i)),
                        Some(&d.typ),
                        Some(d.utfall.as_str()),
                        d.utfall.betyg(),
                        d.utfall.poang().map(|p| s(&p)).as_deref(),
                        d.utfall.maluppfyllnad().map(|m| if m { "t" } else { "f" }),
                    ],
                );
                out.rows += 1;
            }
        }
    }
    out
}

/// The ceiling: the same rows by plain COPY into the empty tables, in one transaction.
async fn ceiling(store: &PostgresStore, data: &CopyData) -> Figures {
    let t = Instant::now();
    let mut tx = store.pool().begin().await.expect("begin");
    for (table, columns, text) in [
        (
            "provomrade",
            "id, source, elev, kind, amne, arskurs, kurs, namespace, content_sha256, raw_sha256, changed_at",
            &data.provomrade,
        ),
        (
            "provtillfalle",
            "id, provomrade_id, ordinal, skolform, uppdaterat, genomfort, intedeltagit, sammanvagt_provbetyg",
            &data.provtillfalle,
        ),
        (
            "delprovsresultat",
            "id, provtillfalle_id, ordinal, typ, utfall, betyg, poang, maluppfyllnad",
            &data.delprovsresultat,
        ),
    ] {
        let mut copy = tx
            .copy_in_raw(&format!("COPY {table} ({columns}) FROM STDIN"))
            .await
            .expect("copy in");
        for chunk in text.as_bytes().chunks(1 << 20) {
            copy.send(chunk).await.expect("copy data");
        }
        copy.finish().await.expect("copy finish");
    }
    tx.commit().await.expect("commit");
    Figures {
        rows: data.rows,
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
    let reachable = runtime.block_on(async {
        let connect = sqlx::postgres::PgConnection::connect(&url());
        match tokio::time::timeout(std::time::Duration::from_secs(5), connect).await {
            Ok(Ok(c)) => c.close().await.map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 5 s".into()),
        }
    });
    if let Err(e) = reachable {
        println!(
            "SKIP postgres bench: PostgreSQL not reachable at {} ({e}); set NPROV_BENCH_POSTGRES_URL",
            redact_url(&url())
        );
        return;
    }
    // NPROV_BENCH_STUDENTS: a smaller document for a quick look.
    let students: u64 = std::env::var("NPROV_BENCH_STUDENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(STUDENTS);
    let doc = common::document(students);
    let mb = std::fs::metadata(&doc).expect("size").len() as f64 / 1e6;
    let data = rows_of(&doc);
    let schema = |what: &str| format!("nprov_bench_{what}_{}", std::process::id());

    let (mut ours, mut theirs, mut again) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        // Alternating, so both see the same server conditions.
        runtime.block_on(async {
            let store = fresh(&schema("import")).await;
            let f = import(&store, &doc).await;
            assert_eq!(f.rows, data.rows, "the ceiling must write the same rows");
            ours.push(f.rows as f64 / f.seconds);
            // The same document again: every key unchanged.
            let r = import(&store, &doc).await;
            again.push(r.seconds / f.seconds);
            store.close().await;
            drop_schema(&schema("import")).await;

            let store = fresh(&schema("copy")).await;
            let f = ceiling(&store, &data).await;
            theirs.push(f.rows as f64 / f.seconds);
            store.close().await;
            drop_schema(&schema("copy")).await;
        });
    }
    let (ours, theirs) = (common::median(ours), common::median(theirs));
    println!(
        "import {students} students ({mb:.0} MB) into PostgreSQL: {} rows, median {ours:.0} rows/s",
        data.rows
    );
    println!(
        "re-import of the unchanged document: median {:.2} of the first import's time",
        common::median(again)
    );
    println!(
        "import: {ours:.0} rows/s; PostgreSQL COPY ceiling (same rows, same tables, one transaction): {theirs:.0} rows/s; ratio {:.0} %",
        100.0 * ours / theirs
    );
}

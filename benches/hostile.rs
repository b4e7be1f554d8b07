//! Hostile documents at growing sizes: the cost of each must grow linearly with its input (issue
//! figures before the fixes: 80 000 identical empty elements of one key 3.8 s and 320 000 about
//! 100 s; 160 000 attributes on one element 22 s; 160 000 `xmlns:` declarations 23 s).
//!
//! Each shape is imported into a fresh SQLite file (parse + replace, as `import` does) at N and
//! 4N; the bench prints both times, the ratio (about 4 when linear, about 16 when quadratic) and
//! the peak resident memory. Nothing here asserts: the figures are for reading.
//!
//! `cargo bench --bench hostile` (NPROV_BENCH_HOSTILE_N sets N, default 80 000).

// Only the memory reading is used here.
#[allow(dead_code)]
mod common;

use std::io::Write;
use std::time::Instant;

use chrono::Utc;
use nprov_sync::import::{import_document, ImportError};
use nprov_sync::store::{ApplyContext, SqliteStore, Store};
use nprov_sync::xml::Limits;

const HEAD: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<provresultat xmlns=\"http://pingpong.se/schemas/nationellaprov/v12.0\" from=\"2026-01-01T00:00:00\" tom=\"2026-12-31T23:59:00\"";

/// A hostile shape: writes a document of scale `n` to `out`.
struct Shape {
    name: &'static str,
    write: fn(n: usize, out: &mut dyn Write) -> std::io::Result<()>,
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "identical empty elements of one key",
        write: |n, out| {
            writeln!(out, "{HEAD}>")?;
            for _ in 0..n {
                writeln!(
                    out,
                    "<kursresultat elev=\"e-1\" kurs=\"MATMAT01a\" skolform=\"GY\"/>"
                )?;
            }
            writeln!(out, "</provresultat>")
        },
    },
    Shape {
        name: "one key repeated with a provtillfälle",
        write: |n, out| {
            writeln!(out, "{HEAD}>")?;
            for i in 0..n {
                writeln!(
                    out,
                    "<kursresultat elev=\"e-1\" kurs=\"MATMAT01a\" skolform=\"GY\"><provtillfälle uppdaterat=\"2026-01-{:02}\"><sammanvägtprovbetyg>A</sammanvägtprovbetyg></provtillfälle></kursresultat>",
                    i % 28 + 1
                )?;
            }
            writeln!(out, "</provresultat>")
        },
    },
    Shape {
        name: "elements of 60 unknown attributes each (n/60 elements)",
        write: |n, out| {
            writeln!(out, "{HEAD}>")?;
            for e in 0..n / 60 {
                write!(
                    out,
                    "<kursresultat elev=\"e-{e}\" kurs=\"MATMAT01a\" skolform=\"GY\""
                )?;
                for a in 0..57 {
                    write!(out, " x{a}=\"v\"")?;
                }
                writeln!(out, "/>")?;
            }
            writeln!(out, "</provresultat>")
        },
    },
    Shape {
        name: "unknown attributes on one element (refused past 64)",
        write: |n, out| {
            writeln!(out, "{HEAD}>")?;
            write!(
                out,
                "<kursresultat elev=\"e-1\" kurs=\"MATMAT01a\" skolform=\"GY\""
            )?;
            for a in 0..n {
                write!(out, " x{a}=\"v\"")?;
            }
            writeln!(out, "/>\n</provresultat>")
        },
    },
    Shape {
        name: "xmlns: declarations on the root (refused past 64)",
        write: |n, out| {
            write!(out, "{HEAD}")?;
            for a in 0..n {
                write!(out, " xmlns:p{a}=\"urn:p{a}\"")?;
            }
            writeln!(out, ">\n</provresultat>")
        },
    },
];

/// Imports a document; the outcome as a word (a refusal is an expected outcome here).
async fn import(doc: &std::path::Path) -> (f64, &'static str) {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteStore::connect(&format!("sqlite://{}", dir.path().join("h.db").display()))
        .await
        .expect("open");
    store.migrate().await.expect("migrate");
    let input = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(doc).expect("doc"));
    let ctx = ApplyContext {
        source: "bench".into(),
        document: "hostile".into(),
        now: Utc::now(),
    };
    let limits = Limits {
        max_document_bytes: Some(4 << 30),
        ..Limits::default()
    };
    let t = Instant::now();
    let outcome = match import_document(&store, input, limits, ctx).await {
        Ok(_) => "applied",
        Err(ImportError::Document(_)) => "document error",
        Err(e) => panic!("{e}"),
    };
    let seconds = t.elapsed().as_secs_f64();
    store.close().await;
    (seconds, outcome)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("NPROV_BENCH_HOSTILE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(80_000);
    let dir = tempfile::tempdir().expect("dir");
    println!("hostile documents, imported into SQLite at n = {n} and 4n (ratio ~4: linear, ~16: quadratic)");
    for shape in SHAPES {
        let mut times = Vec::new();
        for scale in [n, 4 * n] {
            let path = dir.path().join("doc.xml");
            let mut out = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
            (shape.write)(scale, &mut out).expect("write");
            out.flush().expect("flush");
            drop(out);
            let bytes = std::fs::metadata(&path).expect("size").len();
            let (seconds, outcome) = import(&path).await;
            println!(
                "  {:<56} n={scale:>9} {:>8.1} MB {seconds:>8.3} s  {outcome}",
                shape.name,
                bytes as f64 / 1e6
            );
            times.push(seconds);
        }
        println!("  {:<56} 4n/n = {:.1}", "", times[1] / times[0].max(1e-6));
    }
    println!("peak resident memory: {:.1} MiB", common::peak_rss_mib());
}

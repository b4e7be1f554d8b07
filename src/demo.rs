//! `nprov-sync demo`: the whole pipeline on generated data, in a fresh SQLite file.
//!
//! It imports a generated population (one document, as a first sync would receive it), then a
//! later document in which some students' results changed or were removed and others were sent
//! again unchanged, then that same document once more (as an overlapping window re-reads it), and
//! finally runs a few of the queries a warehouse would.

use std::io::{Seek, Write};
use std::path::Path;
use std::time::Instant;

use chrono::Utc;
use sqlx::{Column, Row};

use crate::cli::{print_report, Failure};
use crate::import::import_document;
use crate::simulate::Population;
use crate::store::{ApplyContext, SqliteStore, Store, DEFAULT_SOURCE};
use crate::xml::version::newest;
use crate::xml::Limits;

const SEED: u64 = 2026;

/// A demo step: label, window from, window tom, and which students (at which revision) the
/// document holds.
type Step = (
    &'static str,
    &'static str,
    &'static str,
    Box<dyn Fn(u64) -> Option<u32>>,
);

/// Queries shown to the user, with what they answer.
pub const EXAMPLE_QUERIES: &[(&str, &str)] = &[
    (
        "Sammanvägt provbetyg per subject in årskurs 9",
        "SELECT p.amne, t.sammanvagt_provbetyg AS betyg, COUNT(*) AS elever
         FROM provomrade p JOIN provtillfalle t ON t.provomrade_id = p.id
         WHERE p.kind = 'amne' AND p.arskurs = 9 AND t.sammanvagt_provbetyg IS NOT NULL
           AND p.amne IN ('MA', 'SV', 'EN')
         GROUP BY p.amne, t.sammanvagt_provbetyg ORDER BY p.amne, betyg",
    ),
    (
        "Delprov not taken or lost, per course",
        "SELECT p.kurs, d.utfall, COUNT(*) AS delprov
         FROM provomrade p JOIN provtillfalle t ON t.provomrade_id = p.id
         JOIN delprovsresultat d ON d.provtillfalle_id = t.id
         WHERE p.kind = 'kurs' AND d.utfall <> 'resultat'
         GROUP BY p.kurs, d.utfall ORDER BY delprov DESC LIMIT 6",
    ),
    (
        "What an incremental loader reads: change_log per import",
        "SELECT at, op, COUNT(*) AS changes, MIN(seq) AS first_seq, MAX(seq) AS last_seq
         FROM change_log GROUP BY at, op ORDER BY at, op",
    ),
];

/// Who is in the later window, at which revision: 10 % changed (some of them cleared), 4 % sent
/// again as they were.
fn later_window(i: u64) -> Option<u32> {
    match i % 25 {
        0 | 10 | 20 => Some(1),
        3 => Some(0),
        _ if i % 10 == 5 => Some(1),
        _ => None,
    }
}

pub async fn run(file: &Path, students: u64, out: &mut dyn Write) -> Result<(), Failure> {
    let runtime = |e: anyhow::Error| Failure::Runtime(e);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = file.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(runtime(
                    anyhow::Error::new(e).context("removing the old demo database"),
                ))
            }
        }
    }
    let url = format!("sqlite://{}", file.display());
    let store = SqliteStore::connect(&url)
        .await
        .map_err(|e| runtime(e.into()))?;
    store.migrate().await.map_err(|e| runtime(e.into()))?;
    let population = Population {
        students,
        seed: SEED,
        version: newest(),
        year: 2026,
    };
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(|e| runtime(e.into()));
    w(
        out,
        format!(
            "nprov-sync demo: {students} generated students, schema {}, database {}",
            population.version.name,
            file.display()
        ),
    )?;

    let steps: [Step; 3] = [
        (
            "first sync (everything)",
            "2026-01-01T00:00:00",
            "2026-06-30T23:59:00",
            Box::new(|_| Some(0)),
        ),
        (
            "a later window (10% changed, 4% re-sent unchanged)",
            "2026-07-01T00:00:00",
            "2026-07-01T12:00:00",
            Box::new(later_window),
        ),
        (
            "the same window read again (overlap)",
            "2026-07-01T00:00:00",
            "2026-07-01T12:00:00",
            Box::new(later_window),
        ),
    ];
    for (label, from, tom, pick) in steps {
        let mut doc = tempfile::tempfile().map_err(|e| runtime(e.into()))?;
        {
            let mut writer = std::io::BufWriter::new(&mut doc);
            let members = (0..students).filter(|i| pick(*i).is_some());
            population
                .write_document(&mut writer, from, tom, members, |i| pick(i).unwrap_or(0))
                .map_err(|e| runtime(e.into()))?;
            writer.flush().map_err(|e| runtime(e.into()))?;
        }
        doc.rewind().map_err(|e| runtime(e.into()))?;
        let started = Instant::now();
        let ctx = ApplyContext {
            source: DEFAULT_SOURCE.into(),
            namespace: String::new(),
            document: format!("demo {from}..{tom}"),
            now: Utc::now(),
        };
        let report = import_document(&store, doc, Limits::default(), ctx).await?;
        print_report(out, label, &report, started.elapsed())?;
    }

    let counts = store.table_counts().await.map_err(|e| runtime(e.into()))?;
    w(
        out,
        format!(
            "\ntables: provomrade {}, provtillfalle {}, delprovsresultat {}, change_log {}, quarantine {}",
            counts.provomrade, counts.provtillfalle, counts.delprovsresultat, counts.change_log, counts.quarantine
        ),
    )?;
    for (title, sql) in EXAMPLE_QUERIES {
        w(out, format!("\n-- {title}\n{}", squeeze(sql)))?;
        let rows = sqlx::query(sql)
            .fetch_all(store.pool())
            .await
            .map_err(|e| runtime(e.into()))?;
        if let Some(first) = rows.first() {
            let names: Vec<&str> = first.columns().iter().map(|c| c.name()).collect();
            w(out, format!("   {}", names.join(" | ")))?;
        }
        for r in &rows {
            let cells: Vec<String> = (0..r.len()).map(|i| cell(r, i)).collect();
            w(out, format!("   {}", cells.join(" | ")))?;
        }
    }
    w(
        out,
        format!("\nExplore it yourself: sqlite3 {}", file.display()),
    )?;
    store.close().await;
    Ok(())
}

fn squeeze(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn cell(row: &sqlx::sqlite::SqliteRow, i: usize) -> String {
    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
        return v.map(|v| v.to_string()).unwrap_or_else(|| "NULL".into());
    }
    if let Ok(v) = row.try_get::<Option<String>, _>(i) {
        return v.unwrap_or_else(|| "NULL".into());
    }
    "?".into()
}

//! The floor of this design's work: what reading a document and writing its rows costs with
//! nothing of ours in between. A bare streaming quick-xml pass over the bytes (events read into a
//! buffer from a `BufRead`, as a client that does not hold the document must), and the document's
//! rows inserted through SQLite's C API (rusqlite, the same libsqlite3 as sqlx) by prepared
//! statements in one transaction, into the same schema with the same pragmas.

use std::collections::HashMap;
use std::time::Instant;

use nprov_sync::domain::ProvomradeKey;
use nprov_sync::xml::{Item, Limits, Parser};
use quick_xml::events::Event;

/// Rows inserted and the seconds it took.
pub struct Figures {
    pub rows: u64,
    pub seconds: f64,
}

/// Seconds of one streaming quick-xml pass over a document file that builds nothing.
pub fn bare_pass(doc: &std::path::Path) -> f64 {
    let t = Instant::now();
    let input = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(doc).expect("doc"));
    let mut reader = quick_xml::Reader::from_reader(input);
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        match reader.read_event_into(&mut buf) {
            Ok(Event::Eof) => break,
            Ok(e) => {
                std::hint::black_box(&e);
            }
            Err(e) => panic!("the floor's document is not well-formed: {e}"),
        }
    }
    t.elapsed().as_secs_f64()
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
pub struct Rows {
    pub provomrade: Vec<(i64, ProvomradeKey, String)>,
    pub provtillfalle: Vec<PtRow>,
    pub delprov: Vec<DpRow>,
}

pub fn rows_of(doc: &std::path::Path) -> Rows {
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

pub fn ceiling(db: &std::path::Path, rows: &Rows) -> Figures {
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

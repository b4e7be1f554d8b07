//! The SQLite backend.
//!
//! Layout: the tables of `migrations/sqlite/`. The database runs in WAL mode with foreign keys on
//! and a busy timeout, so readers (a warehouse loader, `status`) never block the writer.
//!
//! One document is one `BEGIN IMMEDIATE` transaction: it takes SQLite's single write lock up front,
//! which makes it safe to hand out row ids from `MAX(id) + 1` for the rows it inserts. That saves a
//! `RETURNING` round trip per batch: every statement through sqlx is a trip to the connection's
//! worker thread, so writes go as multi-row `VALUES` statements of up to `ROWS_PER_STATEMENT` (1 000)
//! rows.
//!
//! A batch holds each key once: a key's later elements in the same batch join it, and it is
//! looked up and hashed as the whole set. Stored keys whose content the document replaces are
//! tracked in the temporary table `doc_touched` (one row per key, with the hash stored before the
//! document and the hash it leaves), which lives in the transaction and spills to disk like any
//! table, so memory does not grow with the document. Two kinds of key need no row there: keys the
//! document creates (their ids, from `first_new_id` on, say so) and unchanged keys, which are
//! marked at once with the document's timestamp in `synced_at` (unique per document, see
//! `mirror_clock`). Either kind that comes again in a later batch gets a row, to have its hash
//! settled in `finish`.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use super::{
    query_err, redact_url, timestamp, ApplyContext, ApplySummary, DocumentTx, Leadership, RunKind,
    RunRow, SoleLeadership, Store, StoreError, SyncRun, TableCounts, Watermark,
};
use crate::domain::{
    content_sha256, Delprovsresultat, Omrade, Provomrade, ProvomradeKey, Provtillfalle,
    ProvtillfalleResultat, StoredProvtillfalle, Utfall, EMPTY_CONTENT_SHA256,
};
use crate::xml::Quarantined;

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// Rows per multi-row INSERT. 1 000 rows of 8 columns stay far below SQLite's 32 766 bound
/// variables and amortise the per-statement round trip.
const ROWS_PER_STATEMENT: usize = 1000;
/// `provomrade` has 11 columns: half as many rows keep its statements in the same bound.
const PROVOMRADE_ROWS_PER_STATEMENT: usize = ROWS_PER_STATEMENT / 2;
/// Records buffered before a flush: bounds memory and keeps statements large.
const BATCH_RECORDS: usize = 1000;
/// Child rows buffered before a flush, whichever limit comes first.
const BATCH_CHILD_ROWS: usize = 8000;
/// Keys per lookup statement (three bound values each).
const KEYS_PER_LOOKUP: usize = 500;

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at a `sqlite://PATH` URL. Migrations are not run.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let connect_err = |source| StoreError::Connect {
            url: redact_url(url),
            source,
        };
        let options = SqliteConnectOptions::from_str(url)
            .map_err(connect_err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode may lose the last commits on power loss but never consistency;
            // a lost commit is re-read from the unchanged watermark.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30))
            // Checkpoint every 64 MiB of WAL rather than 4 MiB: a day's window marks a few
            // thousand rows all over provomrade as synced, and the default checkpointed every
            // few windows, writing the same pages back again and again (measured: 10 % off a
            // catch-up of 317 daily windows, first sync and re-read alike).
            .pragma("wal_autocheckpoint", "16384");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(connect_err)?;
        Ok(SqliteStore { pool })
    }

    /// The pool, for read-only queries in tests and reports.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn begin(&self, ctx: ApplyContext) -> Result<Box<dyn DocumentTx>, StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query_err("starting a transaction"))?;
        sqlx::query(
            "CREATE TEMP TABLE IF NOT EXISTS doc_touched (
                seq           INTEGER PRIMARY KEY,
                provomrade_id INTEGER NOT NULL UNIQUE,
                prev_sha256   TEXT,
                new_sha256    TEXT NOT NULL,
                elements      INTEGER NOT NULL
            )",
        )
        .execute(&mut *tx)
        .await
        .map_err(query_err("creating the temporary table"))?;
        sqlx::query("DELETE FROM temp.doc_touched")
            .execute(&mut *tx)
            .await
            .map_err(query_err("clearing the temporary table"))?;
        // This document's timestamp must be one no earlier document wrote (see mirror_clock):
        // a clock that stepped back, or two documents in one microsecond, get the next free one.
        let last: String = sqlx::query_scalar("SELECT last_synced_at FROM mirror_clock")
            .fetch_one(&mut *tx)
            .await
            .map_err(query_err("reading the mirror clock"))?;
        let mut ctx = ctx;
        let mut now = timestamp(ctx.now);
        if now <= last {
            let previous = chrono::DateTime::parse_from_rfc3339(&last)
                .map_err(|e| StoreError::Corrupt(format!("mirror_clock {last:?}: {e}")))?
                .with_timezone(&chrono::Utc);
            ctx.now = previous + chrono::Duration::microseconds(1);
            now = timestamp(ctx.now);
        }
        sqlx::query("UPDATE mirror_clock SET last_synced_at = ?")
            .bind(&now)
            .execute(&mut *tx)
            .await
            .map_err(query_err("moving the mirror clock"))?;
        let (po, pt, dp): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT COALESCE(MAX(id), 0) FROM provomrade),
                    (SELECT COALESCE(MAX(id), 0) FROM provtillfalle),
                    (SELECT COALESCE(MAX(id), 0) FROM delprovsresultat)",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(query_err("reading the highest row ids"))?;
        Ok(Box::new(SqliteDocumentTx {
            tx,
            now,
            ctx,
            unchanged: 0,
            batch: Vec::with_capacity(BATCH_RECORDS),
            batch_keys: HashMap::with_capacity(BATCH_RECORDS),
            batch_child_rows: 0,
            next_provomrade_id: po + 1,
            first_new_id: po + 1,
            next_provtillfalle_id: pt + 1,
            next_delprov_id: dp + 1,
            summary: ApplySummary::default(),
        }))
    }

    async fn table_counts(&self) -> Result<TableCounts, StoreError> {
        sqlx::query(TableCounts::SQL)
            .fetch_one(&self.pool)
            .await
            .and_then(|row| TableCounts::from_row(&row))
            .map_err(query_err("counting rows"))
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn watermark(&self, source: &str) -> Result<Option<Watermark>, StoreError> {
        let row = sqlx::query(
            "SELECT watermark_utc, watermark_local, updated_at FROM sync_watermark WHERE source = ?",
        )
        .bind(source)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_err("reading the watermark"))?;
        let Some(row) = row else { return Ok(None) };
        let utc: String = row.get(0);
        let local: String = row.get(1);
        let updated: String = row.get(2);
        Ok(Some(Watermark {
            utc: parse_timestamp(&utc)?,
            local: chrono::NaiveDateTime::parse_from_str(&local, crate::window::API_FORMAT)
                .map_err(|e| StoreError::Corrupt(format!("stored watermark {local:?}: {e}")))?,
            updated_at: parse_timestamp(&updated)?,
        }))
    }

    async fn recent_runs(&self, source: &str, limit: u32) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, from_local, tom_local, outcome, finished_at, http_status, records,
                    changed, cleared, quarantined, error
             FROM sync_run WHERE source = ? ORDER BY id DESC LIMIT ?",
        )
        .bind(source)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("reading recent windows"))?;
        Ok(rows
            .iter()
            .map(|r| RunRow {
                kind: r.get(0),
                from_local: r.get(1),
                tom_local: r.get(2),
                outcome: r.get(3),
                finished_at: r.get(4),
                http_status: r.get(5),
                records: r.get(6),
                changed: r.get(7),
                cleared: r.get(8),
                quarantined: r.get(9),
                error: r.get(10),
            })
            .collect())
    }

    async fn known_sources(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT source FROM sync_watermark UNION SELECT DISTINCT source FROM sync_run ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("listing sources"))
    }

    async fn try_lead(&self, _source: &str) -> Result<Option<Box<dyn Leadership>>, StoreError> {
        Ok(Some(Box::new(SoleLeadership)))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(query_err("checking the database"))?;
        Ok(())
    }

    async fn record_failed_run(&self, run: &SyncRun) -> Result<(), StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(query_err("recording a failed window"))?;
        insert_run(&mut conn, run, "failed").await
    }
}

fn parse_timestamp(s: &str) -> Result<chrono::DateTime<chrono::Utc>, StoreError> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| StoreError::Corrupt(format!("stored timestamp {s:?}: {e}")))
}

async fn insert_run(
    conn: &mut sqlx::SqliteConnection,
    run: &SyncRun,
    outcome: &str,
) -> Result<(), StoreError> {
    let s = &run.summary;
    sqlx::query(
        "INSERT INTO sync_run (source, kind, from_local, tom_local, from_utc, tom_utc, started_at,
             finished_at, outcome, http_status, bytes, records, changed, unchanged, cleared,
             quarantined, error)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&run.source)
    .bind(run.kind.as_str())
    .bind(run.window.from_param())
    .bind(run.window.tom_param())
    .bind(timestamp(run.window.from_utc))
    .bind(timestamp(run.window.tom_utc))
    .bind(timestamp(run.started_at))
    .bind(timestamp(run.finished_at))
    .bind(outcome)
    .bind(run.http_status.map(i64::from))
    .bind(run.bytes as i64)
    .bind(s.records as i64)
    .bind(s.changed as i64)
    .bind(s.unchanged as i64)
    .bind(s.cleared as i64)
    .bind(s.quarantined as i64)
    .bind(&run.error)
    .execute(conn)
    .await
    .map_err(query_err("recording a window in sync_run"))?;
    Ok(())
}

/// A buffered key: its first element in this batch, any later ones (split skolformer, merged
/// here so the key is looked up once and hashed as the set it is), and the hash of them all.
struct Pending {
    record: Provomrade,
    more: Vec<Provomrade>,
    sha256: String,
}

impl Pending {
    fn elements(&self) -> impl Iterator<Item = &Provomrade> {
        std::iter::once(&self.record).chain(&self.more)
    }

    fn hash(&self) -> String {
        content_sha256(self.elements().flat_map(|r| {
            r.provtillfallen
                .iter()
                .map(move |pt| (r.skolform.as_ref(), pt))
        }))
    }
}

/// What the database holds for a key at flush time.
struct Existing {
    id: i64,
    /// The stored hash when it differs from the element's; `None` when they are equal.
    stored_sha256: Option<String>,
    /// Elements of this key already applied by this document and tracked in `doc_touched`.
    elements: i64,
    /// Applied by this document as unchanged in an earlier batch (`synced_at` is the document's
    /// timestamp, which no earlier document used).
    marked: bool,
}

struct SqliteDocumentTx {
    tx: Transaction<'static, Sqlite>,
    ctx: ApplyContext,
    now: String,
    batch: Vec<Pending>,
    /// Where each key of the batch is in it.
    batch_keys: HashMap<ProvomradeKey, usize>,
    batch_child_rows: usize,
    next_provomrade_id: i64,
    /// The first id this document hands out: rows from it on were created by the document.
    first_new_id: i64,
    next_provtillfalle_id: i64,
    next_delprov_id: i64,
    /// Keys found unchanged and marked in `flush` (never in `doc_touched`).
    unchanged: u64,
    summary: ApplySummary,
}

/// A provtillfälle row to insert, borrowing from the batch.
struct PtRow<'a> {
    id: i64,
    provomrade_id: i64,
    ordinal: i64,
    skolform: &'a str,
    pt: &'a Provtillfalle,
}

/// A delprovsresultat row to insert.
struct DpRow<'a> {
    id: i64,
    provtillfalle_id: i64,
    ordinal: i64,
    d: &'a Delprovsresultat,
}

/// Values every row of a document shares.
struct Common<'a> {
    source: &'a str,
    namespace: &'a str,
    now: &'a str,
}

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// One multi-row statement of a batch.
enum Stmt<'a> {
    Provomrade(&'a [(i64, &'a Pending)]),
    DeleteDelprov(&'a [i64]),
    DeleteProvtillfalle(&'a [i64]),
    Provtillfalle(&'a [PtRow<'a>]),
    Delprov(&'a [DpRow<'a>]),
    Touch(&'a [Touch<'a>]),
}

impl<'a> Stmt<'a> {
    fn rows(&self) -> usize {
        match self {
            Stmt::Provomrade(r) => r.len(),
            Stmt::DeleteDelprov(r) | Stmt::DeleteProvtillfalle(r) => r.len(),
            Stmt::Provtillfalle(r) => r.len(),
            Stmt::Delprov(r) => r.len(),
            Stmt::Touch(r) => r.len(),
        }
    }

    fn context(&self) -> &'static str {
        match self {
            Stmt::Provomrade(_) => "inserting provområden",
            Stmt::DeleteDelprov(_) => "deleting replaced delprovsresultat",
            Stmt::DeleteProvtillfalle(_) => "deleting replaced provtillfällen",
            Stmt::Provtillfalle(_) => "inserting provtillfällen",
            Stmt::Delprov(_) => "inserting delprovsresultat",
            Stmt::Touch(_) => "recording touched provområden",
        }
    }

    fn sql(&self) -> String {
        let n = self.rows();
        let list = || format!("({})", vec!["?"; n].join(", "));
        match self {
            Stmt::Provomrade(_) => format!(
                "INSERT INTO provomrade (id, source, elev, kind, amne, arskurs, kurs, namespace,
                     content_sha256, changed_at, synced_at) VALUES {}",
                placeholders(n, 11)
            ),
            Stmt::DeleteDelprov(_) => format!(
                "DELETE FROM delprovsresultat WHERE provtillfalle_id IN
                     (SELECT id FROM provtillfalle WHERE provomrade_id IN {})",
                list()
            ),
            Stmt::DeleteProvtillfalle(_) => {
                format!(
                    "DELETE FROM provtillfalle WHERE provomrade_id IN {}",
                    list()
                )
            }
            Stmt::Provtillfalle(_) => format!(
                "INSERT INTO provtillfalle (id, provomrade_id, ordinal, skolform, uppdaterat,
                     genomfort, intedeltagit, sammanvagt_provbetyg) VALUES {}",
                placeholders(n, 8)
            ),
            Stmt::Delprov(_) => format!(
                "INSERT INTO delprovsresultat (id, provtillfalle_id, ordinal, typ, utfall, betyg,
                     poang, maluppfyllnad) VALUES {}",
                placeholders(n, 8)
            ),
            Stmt::Touch(_) => format!(
                "INSERT INTO temp.doc_touched (provomrade_id, prev_sha256, new_sha256, elements)
                 VALUES {}
                 ON CONFLICT (provomrade_id) DO UPDATE SET elements = elements + 1",
                placeholders(n, 4)
            ),
        }
    }

    fn bind<'q>(&'q self, sql: &'q str, c: &Common<'q>) -> SqliteQuery<'q> {
        let mut q = sqlx::query(sql).persistent(is_full(self.rows()));
        match self {
            Stmt::Provomrade(rows) => {
                for (id, p) in rows.iter() {
                    let k = &p.record.key;
                    q = q
                        .bind(*id)
                        .bind(c.source)
                        .bind(k.elev.as_str())
                        .bind(k.omrade.kind())
                        .bind(k.omrade.amne())
                        .bind(k.omrade.arskurs().map(|a| a.get() as i64))
                        .bind(k.omrade.kurs())
                        .bind(c.namespace)
                        .bind(p.sha256.as_str())
                        .bind(c.now)
                        .bind(c.now);
                }
            }
            Stmt::DeleteDelprov(ids) | Stmt::DeleteProvtillfalle(ids) => {
                for id in ids.iter() {
                    q = q.bind(*id);
                }
            }
            Stmt::Provtillfalle(rows) => {
                for r in rows.iter() {
                    q = q
                        .bind(r.id)
                        .bind(r.provomrade_id)
                        .bind(r.ordinal)
                        .bind(r.skolform)
                        .bind(r.pt.uppdaterat.to_string())
                        .bind(r.pt.genomfort.map(|d| d.to_string()))
                        .bind(r.pt.resultat.intedeltagit())
                        .bind(r.pt.resultat.sammanvagt_provbetyg());
                }
            }
            Stmt::Delprov(rows) => {
                for r in rows.iter() {
                    q = q
                        .bind(r.id)
                        .bind(r.provtillfalle_id)
                        .bind(r.ordinal)
                        .bind(r.d.typ.as_ref())
                        .bind(r.d.utfall.as_str())
                        .bind(r.d.utfall.betyg())
                        .bind(r.d.utfall.poang())
                        .bind(r.d.utfall.maluppfyllnad());
                }
            }
            Stmt::Touch(rows) => {
                for t in rows.iter() {
                    q = q
                        .bind(t.provomrade_id)
                        .bind(t.prev)
                        .bind(t.new)
                        .bind(t.elements);
                }
            }
        }
        q
    }
}

/// A touched-key row for `doc_touched`.
struct Touch<'a> {
    provomrade_id: i64,
    /// The hash stored before this document; `None` for a key this document created.
    prev: Option<&'a str>,
    new: &'a str,
    /// Elements of the key so far (added to an existing row's count).
    elements: i64,
}

impl SqliteDocumentTx {
    async fn flush(&mut self) -> Result<(), StoreError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_keys.clear();
        self.batch_child_rows = 0;
        let existing = self.lookup(&batch).await?;

        let mut new_rows: Vec<(i64, &Pending)> = Vec::new();
        let mut replace_ids: Vec<i64> = Vec::new();
        let mut unchanged_ids: Vec<i64> = Vec::new();
        let mut pt_rows: Vec<PtRow<'_>> = Vec::new();
        let mut touches: Vec<Touch<'_>> = Vec::new();
        for (p, found) in batch.iter().zip(&existing) {
            let (id, first_ordinal) = match found {
                None => {
                    // A new key needs no doc_touched row: its id, at or above `first_new_id`,
                    // already says that this document made it.
                    let id = self.next_provomrade_id;
                    self.next_provomrade_id += 1;
                    new_rows.push((id, p));
                    (id, 0)
                }
                Some(e) if e.elements > 0 || e.marked || e.id >= self.first_new_id => {
                    // A later element of a key this document already applied: the stored rows
                    // are the earlier elements' content, so append after them. The hash is
                    // settled in `finish`.
                    let created = e.id >= self.first_new_id;
                    let count: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM provtillfalle WHERE provomrade_id = ?",
                    )
                    .bind(e.id)
                    .fetch_one(&mut *self.tx)
                    .await
                    .map_err(query_err("counting provtillfällen of a repeated key"))?;
                    if e.marked && e.elements == 0 && !created {
                        // Counted unchanged by an earlier batch; its set grows now.
                        self.unchanged -= 1;
                    }
                    touches.push(Touch {
                        provomrade_id: e.id,
                        // The hash stored before this document (unchanged so far).
                        prev: (!created).then(|| e.stored_sha256.as_deref().unwrap_or(&p.sha256)),
                        new: &p.sha256,
                        // A key's first repeat has no row yet: it is its second element.
                        elements: if e.elements == 0 { 2 } else { 1 },
                    });
                    (e.id, count)
                }
                Some(e) => match &e.stored_sha256 {
                    None => {
                        // Unchanged: marked with this document's timestamp, nothing else.
                        unchanged_ids.push(e.id);
                        continue;
                    }
                    Some(stored) => {
                        replace_ids.push(e.id);
                        touches.push(Touch {
                            provomrade_id: e.id,
                            prev: Some(stored),
                            new: &p.sha256,
                            elements: 1,
                        });
                        (e.id, 0)
                    }
                },
            };
            let mut ordinal = first_ordinal;
            for r in p.elements() {
                for pt in &r.provtillfallen {
                    pt_rows.push(PtRow {
                        id: self.next_provtillfalle_id,
                        provomrade_id: id,
                        ordinal,
                        skolform: &r.skolform,
                        pt,
                    });
                    self.next_provtillfalle_id += 1;
                    ordinal += 1;
                }
            }
        }
        for ids in unchanged_ids.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE provomrade SET synced_at = ?, namespace = ? WHERE id IN ({})",
                vec!["?"; ids.len()].join(", ")
            );
            let mut q = sqlx::query(&sql)
                .persistent(is_full(ids.len()))
                .bind(&self.now)
                .bind(&self.ctx.namespace);
            for id in ids {
                q = q.bind(*id);
            }
            q.execute(&mut *self.tx)
                .await
                .map_err(query_err("marking unchanged provområden"))?;
        }
        self.unchanged += unchanged_ids.len() as u64;

        self.write_batch(&new_rows, &replace_ids, &pt_rows, &touches)
            .await?;
        self.summary.records += batch.iter().map(|p| 1 + p.more.len() as u64).sum::<u64>();
        self.summary.provomrade_rows += new_rows.len() as u64;
        Ok(())
    }

    /// Finds the stored rows for the batch's keys (by position in the batch), with whether the
    /// stored hash equals the element's and how this document touched them so far.
    ///
    /// Each chunk of keys comes back as ONE row holding a JSON array of small tuples, hashes
    /// compared in SQL: sqlx hands every result row over from its worker thread separately, and
    /// a row per key cost more than the rest of an unchanged re-read together (measured: 0.8 s
    /// of 1.8 s for 111 000 keys).
    async fn lookup(&mut self, batch: &[Pending]) -> Result<Vec<Option<Existing>>, StoreError> {
        let mut found: Vec<Option<Existing>> = Vec::new();
        found.resize_with(batch.len(), || None);
        let amne: Vec<usize> = (0..batch.len())
            .filter(|&i| matches!(batch[i].record.key.omrade, Omrade::Amne { .. }))
            .collect();
        let kurs: Vec<usize> = (0..batch.len())
            .filter(|&i| matches!(batch[i].record.key.omrade, Omrade::Kurs { .. }))
            .collect();
        const RESULT: &str = "SELECT json_group_array(json_array(k.i, p.id,
                    CASE WHEN p.content_sha256 = k.sha THEN NULL ELSE p.content_sha256 END,
                    COALESCE(t.elements, 0), p.synced_at = ?))";
        for chunk in amne.chunks(KEYS_PER_LOOKUP) {
            let sql = format!(
                "WITH k(i, elev, amne, arskurs, sha) AS (VALUES {})
                 {RESULT}
                 FROM k JOIN provomrade p
                   ON p.source = ? AND p.kind = 'amne' AND p.elev = k.elev
                  AND p.amne = k.amne AND p.arskurs = k.arskurs
                 LEFT JOIN temp.doc_touched t ON t.provomrade_id = p.id",
                placeholders(chunk.len(), 5)
            );
            let mut q = sqlx::query_scalar::<_, String>(&sql).persistent(is_full(chunk.len()));
            for &i in chunk {
                let p = &batch[i];
                let k = &p.record.key;
                q = q
                    .bind(i as i64)
                    .bind(&k.elev)
                    .bind(k.omrade.amne())
                    .bind(k.omrade.arskurs().map(|a| a.get() as i64))
                    .bind(p.sha256.as_str());
            }
            // Plain `?` are numbered in order of appearance: the timestamp, then the source.
            let json = q
                .bind(&self.now)
                .bind(&self.ctx.source)
                .fetch_one(&mut *self.tx)
                .await
                .map_err(query_err("looking up stored provområden"))?;
            fill(&mut found, &json)?;
        }
        for chunk in kurs.chunks(KEYS_PER_LOOKUP) {
            let sql = format!(
                "WITH k(i, elev, kurs, sha) AS (VALUES {})
                 {RESULT}
                 FROM k JOIN provomrade p
                   ON p.source = ? AND p.kind = 'kurs' AND p.elev = k.elev AND p.kurs = k.kurs
                 LEFT JOIN temp.doc_touched t ON t.provomrade_id = p.id",
                placeholders(chunk.len(), 4)
            );
            let mut q = sqlx::query_scalar::<_, String>(&sql).persistent(is_full(chunk.len()));
            for &i in chunk {
                let p = &batch[i];
                q = q
                    .bind(i as i64)
                    .bind(&p.record.key.elev)
                    .bind(p.record.key.omrade.kurs())
                    .bind(p.sha256.as_str());
            }
            let json = q
                .bind(&self.now)
                .bind(&self.ctx.source)
                .fetch_one(&mut *self.tx)
                .await
                .map_err(query_err("looking up stored provområden"))?;
            fill(&mut found, &json)?;
        }
        Ok(found)
    }

    /// Writes one batch: the statements are built one ahead of the one SQLite is executing, so
    /// building (binding thousands of values) overlaps with executing on sqlx's worker thread.
    async fn write_batch(
        &mut self,
        new_rows: &[(i64, &Pending)],
        replace_ids: &[i64],
        pt_rows: &[PtRow<'_>],
        touches: &[Touch<'_>],
    ) -> Result<(), StoreError> {
        let mut dp_rows: Vec<DpRow<'_>> = Vec::new();
        for pt in pt_rows {
            for (i, d) in pt.pt.resultat.delprovsresultat().iter().enumerate() {
                dp_rows.push(DpRow {
                    id: self.next_delprov_id,
                    provtillfalle_id: pt.id,
                    ordinal: i as i64,
                    d,
                });
                self.next_delprov_id += 1;
            }
        }
        // In this order: replaced children go before the new ones are written.
        let mut stmts: Vec<Stmt<'_>> = Vec::new();
        stmts.extend(
            new_rows
                .chunks(PROVOMRADE_ROWS_PER_STATEMENT)
                .map(Stmt::Provomrade),
        );
        for ids in replace_ids.chunks(ROWS_PER_STATEMENT) {
            stmts.push(Stmt::DeleteDelprov(ids));
            stmts.push(Stmt::DeleteProvtillfalle(ids));
        }
        stmts.extend(pt_rows.chunks(ROWS_PER_STATEMENT).map(Stmt::Provtillfalle));
        stmts.extend(dp_rows.chunks(ROWS_PER_STATEMENT).map(Stmt::Delprov));
        stmts.extend(touches.chunks(ROWS_PER_STATEMENT).map(Stmt::Touch));
        let sqls: Vec<String> = stmts.iter().map(Stmt::sql).collect();
        let common = Common {
            source: &self.ctx.source,
            namespace: &self.ctx.namespace,
            now: &self.now,
        };
        let mut queries = stmts
            .iter()
            .zip(&sqls)
            .map(|(stmt, sql)| (stmt.bind(sql, &common), stmt.context()));
        let Some(mut current) = queries.next() else {
            return Ok(());
        };
        loop {
            let (result, next) = tokio::join!(
                biased;
                // Polled first: hands the statement to the worker thread, then waits.
                current.0.execute(&mut *self.tx),
                // Meanwhile, on this thread: bind the next one.
                async { queries.next() },
            );
            result.map_err(query_err(current.1))?;
            match next {
                Some(n) => current = n,
                None => break,
            }
        }
        self.summary.provtillfalle_rows += pt_rows.len() as u64;
        self.summary.delprovsresultat_rows += dp_rows.len() as u64;
        Ok(())
    }

    /// Re-hashes the stored content of keys that came in several elements.
    async fn settle_repeated_keys(&mut self) -> Result<(), StoreError> {
        let mut after = 0i64;
        loop {
            // Paged, so a document full of repeated keys is still handled in bounded memory.
            let ids: Vec<i64> = sqlx::query_scalar(
                "SELECT provomrade_id FROM temp.doc_touched
                 WHERE elements > 1 AND provomrade_id > ? ORDER BY provomrade_id LIMIT 500",
            )
            .bind(after)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(query_err("listing repeated keys"))?;
            let Some(last) = ids.last() else {
                return Ok(());
            };
            after = *last;
            for id in ids {
                let stored = load_provtillfallen(&mut self.tx, id).await?;
                let sha = content_sha256(
                    stored
                        .iter()
                        .map(|s| (s.skolform.as_ref(), &s.provtillfalle)),
                );
                sqlx::query("UPDATE temp.doc_touched SET new_sha256 = ? WHERE provomrade_id = ?")
                    .bind(sha)
                    .bind(id)
                    .execute(&mut *self.tx)
                    .await
                    .map_err(query_err("settling the hash of a repeated key"))?;
            }
        }
    }
}

#[async_trait]
impl DocumentTx for SqliteDocumentTx {
    async fn apply(&mut self, record: Provomrade) -> Result<(), StoreError> {
        self.batch_child_rows += record
            .provtillfallen
            .iter()
            .map(|pt| 1 + pt.resultat.delprovsresultat().len())
            .sum::<usize>();
        if let Some(&i) = self.batch_keys.get(&record.key) {
            // A later element of a key already in this batch (split skolformer): it joins that
            // key, in document order. Flushing instead would cut batches short wherever the
            // platform sends a key's elements next to each other.
            let p = &mut self.batch[i];
            p.more.push(record);
            p.sha256 = p.hash();
        } else {
            let mut p = Pending {
                record,
                more: Vec::new(),
                sha256: String::new(),
            };
            p.sha256 = p.hash();
            self.batch_keys
                .insert(p.record.key.clone(), self.batch.len());
            self.batch.push(p);
        }
        if self.batch.len() >= BATCH_RECORDS || self.batch_child_rows >= BATCH_CHILD_ROWS {
            self.flush().await?;
        }
        Ok(())
    }

    async fn quarantine(&mut self, q: &Quarantined) -> Result<(), StoreError> {
        let e = &q.error;
        sqlx::query(
            "INSERT INTO quarantine (source, elev, reason, error_code, element, location, line,
                 \"column\", document, namespace, raw_xml, quarantined_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&self.ctx.source)
        .bind(&e.elev)
        .bind(e.to_string())
        .bind(e.kind.code())
        .bind(&e.element)
        .bind(e.location.to_string())
        .bind(e.location.line as i64)
        .bind(e.location.column as i64)
        .bind(&self.ctx.document)
        .bind(&self.ctx.namespace)
        .bind(&q.raw)
        .bind(&self.now)
        .execute(&mut *self.tx)
        .await
        .map_err(query_err("quarantining a record"))?;
        self.summary.quarantined += 1;
        Ok(())
    }

    async fn finish(&mut self) -> Result<ApplySummary, StoreError> {
        self.flush().await?;
        self.settle_repeated_keys().await?;
        // Only rows with something to change are written: new rows already carry all of it.
        sqlx::query(
            "UPDATE provomrade SET
                 content_sha256 = t.new_sha256,
                 namespace = ?1,
                 synced_at = ?2,
                 changed_at = CASE WHEN t.prev_sha256 IS t.new_sha256
                                   THEN provomrade.changed_at ELSE ?2 END
             FROM temp.doc_touched AS t
             WHERE provomrade.id = t.provomrade_id
               -- Drives the update from the (few) touched keys instead of scanning the table.
               AND provomrade.id IN (SELECT provomrade_id FROM temp.doc_touched)
               AND (provomrade.content_sha256 IS NOT t.new_sha256
                    OR provomrade.synced_at IS NOT ?2
                    OR provomrade.namespace IS NOT ?1)",
        )
        .bind(&self.ctx.namespace)
        .bind(&self.now)
        .execute(&mut *self.tx)
        .await
        .map_err(query_err("updating synced provområden"))?;
        // Real changes only: keys this document created (ids from `first_new_id` on, hashes
        // settled above) and stored keys whose hash moved. Within one document the entries
        // follow provomrade id order.
        sqlx::query(
            "INSERT INTO change_log (provomrade_id, op, at)
             SELECT id, CASE WHEN sha = ?1 THEN 'clear' ELSE 'upsert' END, ?2 FROM (
                 SELECT id, content_sha256 AS sha FROM provomrade WHERE id >= ?3
                 UNION ALL
                 SELECT provomrade_id, new_sha256 FROM temp.doc_touched
                 WHERE prev_sha256 IS NOT NULL AND prev_sha256 <> new_sha256
             ) ORDER BY id",
        )
        .bind(EMPTY_CONTENT_SHA256)
        .bind(&self.now)
        .bind(self.first_new_id)
        .execute(&mut *self.tx)
        .await
        .map_err(query_err("appending to change_log"))?;
        let (created, created_empty): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(content_sha256 = ?1), 0) FROM provomrade WHERE id >= ?2",
        )
        .bind(EMPTY_CONTENT_SHA256)
        .bind(self.first_new_id)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(query_err("counting created provområden"))?;
        let (unchanged, cleared, changed): (i64, i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(prev_sha256 = new_sha256), 0),
                    COALESCE(SUM(prev_sha256 <> new_sha256 AND new_sha256 = ?1), 0),
                    COALESCE(SUM(prev_sha256 <> new_sha256 AND new_sha256 <> ?1), 0)
             FROM temp.doc_touched WHERE prev_sha256 IS NOT NULL",
        )
        .bind(EMPTY_CONTENT_SHA256)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(query_err("counting changes"))?;
        sqlx::query("DELETE FROM temp.doc_touched")
            .execute(&mut *self.tx)
            .await
            .map_err(query_err("clearing the temporary table"))?;
        self.summary.unchanged = unchanged as u64 + self.unchanged;
        self.summary.cleared = (cleared + created_empty) as u64;
        self.summary.changed = (changed + created - created_empty) as u64;
        Ok(self.summary.clone())
    }

    async fn record_window(&mut self, run: &SyncRun) -> Result<(), StoreError> {
        insert_run(&mut self.tx, run, "ok").await?;
        if run.kind != RunKind::Sync {
            return Ok(());
        }
        // The fence: this transaction holds SQLite's write lock (BEGIN IMMEDIATE), so the
        // watermark read here cannot change before the commit.
        let stored: Option<String> =
            sqlx::query_scalar("SELECT watermark_utc FROM sync_watermark WHERE source = ?")
                .bind(&run.source)
                .fetch_optional(&mut *self.tx)
                .await
                .map_err(query_err("reading the watermark"))?;
        let expected = run.expected_watermark.map(timestamp);
        if stored != expected {
            return Err(StoreError::WatermarkMoved {
                source_name: run.source.clone(),
                expected: expected.unwrap_or_else(|| "none".into()),
                found: stored.unwrap_or_else(|| "none".into()),
            });
        }
        // Text comparison is time order: the timestamps have a fixed width.
        sqlx::query(
            "INSERT INTO sync_watermark (source, watermark_local, watermark_utc, updated_at)
             VALUES (?, ?, ?, ?)
             ON CONFLICT (source) DO UPDATE SET
                 watermark_local = excluded.watermark_local,
                 watermark_utc = excluded.watermark_utc,
                 updated_at = excluded.updated_at
             WHERE excluded.watermark_utc > sync_watermark.watermark_utc",
        )
        .bind(&run.source)
        .bind(
            run.window
                .tom_utc
                .with_timezone(&run.tz)
                .format(crate::window::API_FORMAT)
                .to_string(),
        )
        .bind(timestamp(run.window.tom_utc))
        .bind(&self.now)
        .execute(&mut *self.tx)
        .await
        .map_err(query_err("moving the watermark"))?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx
            .commit()
            .await
            .map_err(query_err("committing the document"))
    }

    async fn rollback(self: Box<Self>) -> Result<(), StoreError> {
        self.tx
            .rollback()
            .await
            .map_err(query_err("rolling back the document"))
    }
}

/// Puts a lookup chunk's JSON rows `[batch index, id, stored hash or null, elements, marked]` in
/// their places.
fn fill(found: &mut [Option<Existing>], json: &str) -> Result<(), StoreError> {
    let rows: Vec<(usize, i64, Option<String>, i64, i64)> = serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("lookup result {json:.80}: {e}")))?;
    for (i, id, stored_sha256, elements, marked) in rows {
        let slot = found
            .get_mut(i)
            .ok_or_else(|| StoreError::Corrupt(format!("lookup returned index {i}")))?;
        *slot = Some(Existing {
            id,
            stored_sha256,
            elements,
            marked: marked != 0,
        });
    }
    Ok(())
}

/// Reads a key's stored provtillfällen back into domain values, in order.
async fn load_provtillfallen(
    tx: &mut Transaction<'static, Sqlite>,
    provomrade_id: i64,
) -> Result<Vec<StoredProvtillfalle>, StoreError> {
    let pts = sqlx::query(
        "SELECT id, skolform, uppdaterat, genomfort, intedeltagit, sammanvagt_provbetyg
         FROM provtillfalle WHERE provomrade_id = ? ORDER BY ordinal",
    )
    .bind(provomrade_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(query_err("reading stored provtillfällen"))?;
    let mut out = Vec::with_capacity(pts.len());
    for r in pts {
        let id: i64 = r.get(0);
        let delprov = sqlx::query(
            "SELECT typ, utfall, betyg, poang, maluppfyllnad FROM delprovsresultat
             WHERE provtillfalle_id = ? ORDER BY ordinal",
        )
        .bind(id)
        .fetch_all(&mut **tx)
        .await
        .map_err(query_err("reading stored delprovsresultat"))?;
        let mut d = Vec::with_capacity(delprov.len());
        for dr in delprov {
            let utfall: String = dr.get(1);
            d.push(Delprovsresultat {
                typ: dr.get::<String, _>(0).into(),
                utfall: Utfall::from_columns(&utfall, dr.get(2), dr.get(3), dr.get(4))
                    .map_err(StoreError::Corrupt)?,
            });
        }
        let date = |s: Option<String>| -> Result<Option<chrono::NaiveDate>, StoreError> {
            s.map(|s| {
                chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                    .map_err(|e| StoreError::Corrupt(format!("stored date {s:?}: {e}")))
            })
            .transpose()
        };
        let uppdaterat = date(Some(r.get(2)))?.expect("Some in, Some out");
        let intedeltagit: bool = r.get(4);
        out.push(StoredProvtillfalle {
            skolform: r.get::<String, _>(1).into(),
            provtillfalle: Provtillfalle {
                uppdaterat,
                genomfort: date(r.get(3))?,
                resultat: if intedeltagit {
                    ProvtillfalleResultat::Intedeltagit
                } else {
                    ProvtillfalleResultat::Resultat {
                        sammanvagt_provbetyg: r.get::<Option<String>, _>(5).map(Into::into),
                        delprovsresultat: d,
                    }
                },
            },
        });
    }
    Ok(out)
}

/// Whether a chunk has a statement size that recurs. Only those are kept in sqlx's per-connection
/// statement cache: each distinct tail size would otherwise cache one more prepared statement with
/// thousands of parameters, and memory would grow with the number of documents seen.
fn is_full(rows: usize) -> bool {
    rows == ROWS_PER_STATEMENT || rows == PROVOMRADE_ROWS_PER_STATEMENT || rows == KEYS_PER_LOOKUP
}

/// `(?, ?, ?), (?, ?, ?)…` for `rows` rows of `cols` values.
///
/// Anonymous `?` on purpose: sqlx asks SQLite for every parameter's name when binding, and for
/// numbered ones (`?7`) SQLite finds the name by a linear scan, which makes a statement with
/// thousands of `?N` quadratic (measured: 90 % of an import's time).
fn placeholders(rows: usize, cols: usize) -> String {
    placeholders_with(rows, cols, "")
}

/// As [`placeholders`], with literal SQL appended inside each row's parentheses.
fn placeholders_with(rows: usize, cols: usize, tail: &str) -> String {
    let mut row = String::with_capacity(cols * 3 + tail.len() + 2);
    row.push('(');
    row.push_str(&vec!["?"; cols].join(", "));
    row.push_str(tail);
    row.push(')');
    vec![row; rows].join(", ")
}

#[cfg(test)]
mod tests {
    use super::{placeholders, placeholders_with};

    #[test]
    fn placeholders_are_anonymous_rows() {
        assert_eq!(placeholders(2, 2), "(?, ?), (?, ?)");
        assert_eq!(placeholders(1, 1), "(?)");
        assert_eq!(placeholders_with(1, 2, ", 1"), "(?, ?, 1)");
    }
}

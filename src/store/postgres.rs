//! The PostgreSQL backend.
//!
//! Layout: the tables of `migrations/postgres/` (those of SQLite, in native types: `timestamptz`,
//! `date`, `boolean`, `bigint` identities), in the connection's default schema or in the
//! configured one, which every pooled connection gets as its `search_path`. Connections carry
//! `application_name=nprov-sync` unless the URL names another, so an operator can find them in
//! `pg_stat_activity`.
//!
//! One document is one transaction, which first takes a transaction-level advisory lock on its
//! source: documents of one source apply one after the other, as SQLite's single writer does, so a
//! second instance that applies the same window waits, then sees the first one's rows and fails on
//! the watermark fence instead of on half-visible keys; other sources write alongside.
//!
//! Writes are set-based, a handful of statements per batch of records whatever its size: keys are
//! looked up by `UNNEST` arrays joined against the natural key, replaced children go in one
//! `DELETE … = ANY($1)` per table, and new rows in one `INSERT … SELECT FROM UNNEST(…)` per table.
//! Several writers (sources, instances) may write at once, so ids come from the identity
//! sequences: the ids a batch needs are reserved in one round trip, which lets children name their
//! parents without `RETURNING` and a client-side join.
//!
//! The keys a document touched live in the temporary table `doc_touched` (`ON COMMIT DROP`), one
//! row per key with the hash stored before the document, the hash it leaves and how many elements
//! it came in; memory stays bounded by one batch. Keys the document created have a row too, with
//! no previous hash. Autovacuum never analyses temporary tables, so the transaction does, as the
//! table grows, to keep the per-key lookups on its index.
//!
//! `change_log` entries are appended under a transaction-level advisory lock taken just before
//! the insert and held to the commit, so that the order of `seq` is the order in which entries
//! become visible: a warehouse that loads "everything above the last seq I saw" never skips an
//! entry that a slower, concurrent writer commits later with a lower seq.
//!
//! The watermark fence takes the watermark row `FOR UPDATE` (or inserts it, for a source's first
//! window) inside the window's transaction, so of two writers that planned a window from the same
//! watermark exactly one commits. Leadership is a session-level advisory lock on a connection of
//! its own, outside the pool: it lasts exactly as long as that session.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Row, Transaction};

use super::{
    query_err, redact_url, timestamp, ApplyContext, ApplySummary, DocumentTx, Leadership, RunKind,
    RunRow, Store, StoreError, SyncRun, TableCounts, Watermark,
};
use crate::domain::{
    content_sha256, Delprovsresultat, Omrade, Provomrade, ProvomradeKey, Provtillfalle,
    ProvtillfalleResultat, StoredProvtillfalle, Utfall, EMPTY_CONTENT_SHA256,
};
use crate::xml::Quarantined;

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// What connections say they are, unless the URL's `application_name` says otherwise.
pub const APPLICATION_NAME: &str = "nprov-sync";

/// Records buffered before a flush. Each flush costs a fixed number of round trips, so batches
/// are larger than SQLite's; memory stays bounded by them.
const BATCH_RECORDS: usize = 2000;
/// Child rows (provtillfällen and delprovsresultat) buffered before a flush.
const BATCH_CHILD_ROWS: usize = 20_000;
/// Quarantined elements buffered before they are written.
const QUARANTINE_ROWS: usize = 500;
/// Raw XML of quarantined elements buffered before they are written (one element may be up to
/// `parser.max_record_bytes`).
const QUARANTINE_BYTES: usize = 8 << 20;
/// Repeated keys re-hashed per round trip in `finish`.
const SETTLE_PAGE: i64 = 500;
/// `doc_touched` is analysed again once it has grown to this many times the rows it had when it
/// was last analysed.
const ANALYZE_GROWTH: u64 = 2;
/// Pooled connections. One document holds one for its transaction; the rest serve `status`,
/// readiness checks and the sync engine's reads.
const MAX_CONNECTIONS: u32 = 8;
/// How long a connection (pooled or for leadership) may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a leadership check may take before the leadership counts as lost.
const LEADERSHIP_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PostgresStore {
    pool: PgPool,
    /// For leadership connections, which live outside the pool.
    options: PgConnectOptions,
    /// Redacted, for errors.
    url: String,
    /// The configured schema; `None` for the connection's default.
    schema: Option<String>,
    /// The schema the tables live in (configured, or the default's name), which scopes the
    /// advisory-lock keys: two deployments in one database never share a lock.
    lock_scope: String,
}

impl PostgresStore {
    /// Connects to the database at a `postgres://` (or `postgresql://`) URL, with the tables in
    /// `schema` (empty: the connection's default). Migrations are not run; [`Store::migrate`]
    /// creates the schema when it is missing.
    ///
    /// # Errors
    /// [`StoreError::InvalidSchema`] for a schema name that is not a plain lower-case identifier;
    /// [`StoreError::Connect`] (with the URL's password hidden) when the server cannot be reached.
    pub async fn connect(url: &str, schema: &str) -> Result<Self, StoreError> {
        super::check_schema(super::Backend::Postgres, schema)?;
        let redacted = redact_url(url);
        let connect_err = |source| StoreError::Connect {
            url: redacted.clone(),
            source,
        };
        let mut options = PgConnectOptions::from_str(url).map_err(connect_err)?;
        if options.get_application_name().is_none() {
            options = options.application_name(APPLICATION_NAME);
        }
        if !schema.is_empty() {
            // A plain identifier (checked above): no quoting needed. Only this schema, so that
            // nothing, not even the migrations table, can land in another one by accident.
            options = options.options([("search_path", schema)]);
        }
        // One direct connection first: it fails at once with the real reason (refused, unknown
        // database, authentication), where the pool would retry a refused connection until its
        // timeout and then report only that. Once running, that patience is what rides out a
        // server restart.
        let mut first = connect_once(&options).await.map_err(connect_err)?;
        let lock_scope = if schema.is_empty() {
            let current: Option<String> = sqlx::query_scalar("SELECT current_schema()")
                .fetch_one(&mut first)
                .await
                .map_err(connect_err)?;
            current.unwrap_or_default()
        } else {
            schema.to_owned()
        };
        first.close().await.ok();
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options.clone());
        Ok(PostgresStore {
            pool,
            options,
            url: redacted,
            schema: (!schema.is_empty()).then(|| schema.to_owned()),
            lock_scope,
        })
    }

    /// The pool, for read-only queries in tests and reports.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema the tables live in.
    pub fn schema(&self) -> &str {
        &self.lock_scope
    }

    /// Creates the configured schema if it does not exist. Checked first, so that a role that
    /// may not create schemas can still use one prepared for it.
    async fn ensure_schema(&self) -> Result<(), StoreError> {
        let Some(schema) = &self.schema else {
            return Ok(());
        };
        let exists = |pool: PgPool| async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            )
            .bind(schema)
            .fetch_one(&pool)
            .await
            .map_err(query_err("looking for the schema"))
        };
        if exists(self.pool.clone()).await? {
            return Ok(());
        }
        let created = sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .persistent(false)
            .execute(&self.pool)
            .await;
        match created {
            Ok(_) => Ok(()),
            // Another instance created it at the same moment.
            Err(_) if exists(self.pool.clone()).await? => Ok(()),
            Err(e) => Err(query_err("creating the schema")(e)),
        }
    }
}

/// One connection outside the pool, given up after [`CONNECT_TIMEOUT`].
async fn connect_once(options: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options))
        .await
        .unwrap_or_else(|_| {
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
            )))
        })
}

/// A 64-bit advisory-lock key: the first 8 bytes of SHA-256 over length-prefixed parts (purpose,
/// schema, source), so that no two different part lists give the same text to hash.
fn lock_key(parts: &[&str]) -> i64 {
    let mut h = Sha256::new();
    h.update(b"nprov-sync\0");
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.ensure_schema().await?;
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn begin(&self, ctx: ApplyContext) -> Result<Box<dyn DocumentTx>, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_err("starting a transaction"))?;
        sqlx::query(
            "CREATE TEMP TABLE doc_touched (
                provomrade_id bigint  PRIMARY KEY,
                prev_sha256   text,
                new_sha256    text    NOT NULL,
                elements      integer NOT NULL
            ) ON COMMIT DROP",
        )
        .persistent(false)
        .execute(&mut *tx)
        .await
        .map_err(query_err("creating the temporary table"))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock_key(&["source", &self.lock_scope, &ctx.source]))
            .execute(&mut *tx)
            .await
            .map_err(query_err("waiting for another writer of the same source"))?;
        Ok(Box::new(PgDocumentTx {
            tx,
            ctx,
            change_log_lock: lock_key(&["change_log", &self.lock_scope]),
            batch: Vec::with_capacity(BATCH_RECORDS),
            batch_keys: HashSet::with_capacity(BATCH_RECORDS),
            batch_child_rows: 0,
            quarantined: Vec::new(),
            quarantined_bytes: 0,
            touched_rows: 0,
            analyzed_rows: 0,
            summary: ApplySummary::default(),
        }))
    }

    async fn table_counts(&self) -> Result<TableCounts, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM provomrade), (SELECT COUNT(*) FROM provtillfalle),
                    (SELECT COUNT(*) FROM delprovsresultat), (SELECT COUNT(*) FROM quarantine),
                    (SELECT COUNT(*) FROM change_log)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(query_err("counting rows"))?;
        Ok(TableCounts {
            provomrade: row.get(0),
            provtillfalle: row.get(1),
            delprovsresultat: row.get(2),
            quarantine: row.get(3),
            change_log: row.get(4),
        })
    }

    async fn watermark(&self, source: &str) -> Result<Option<Watermark>, StoreError> {
        let row = sqlx::query(
            "SELECT watermark_utc, watermark_local, updated_at FROM sync_watermark WHERE source = $1",
        )
        .bind(source)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_err("reading the watermark"))?;
        Ok(row.map(|r| Watermark {
            utc: r.get(0),
            local: r.get(1),
            updated_at: r.get(2),
        }))
    }

    async fn record_failed_run(&self, run: &SyncRun) -> Result<(), StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(query_err("recording a failed window"))?;
        insert_run(&mut conn, run, "failed").await
    }

    async fn recent_runs(&self, source: &str, limit: u32) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, from_local, tom_local, outcome, finished_at, http_status, records,
                    changed, cleared, quarantined, error
             FROM sync_run WHERE source = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(source)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("reading recent windows"))?;
        let local = |t: NaiveDateTime| t.format(crate::window::API_FORMAT).to_string();
        Ok(rows
            .iter()
            .map(|r| RunRow {
                kind: r.get(0),
                from_local: local(r.get(1)),
                tom_local: local(r.get(2)),
                outcome: r.get(3),
                finished_at: timestamp(r.get(4)),
                http_status: r.get::<Option<i32>, _>(5).map(i64::from),
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
            "SELECT source FROM sync_watermark UNION SELECT source FROM sync_run ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("listing sources"))
    }

    async fn try_lead(&self, source: &str) -> Result<Option<Box<dyn Leadership>>, StoreError> {
        let key = lock_key(&["lead", &self.lock_scope, source]);
        // A connection of its own: a session lock on a pooled connection would be handed to
        // whatever borrows it next, and would outlive a leader that gave up.
        let mut conn = connect_once(&self.options)
            .await
            .map_err(|source| StoreError::Connect {
                url: self.url.clone(),
                source,
            })?;
        let granted: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await
            .map_err(query_err("asking for the leadership lock"))?;
        if !granted {
            conn.close().await.ok();
            return Ok(None);
        }
        Ok(Some(Box::new(PgLeadership { conn, key })))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(query_err("checking the database"))?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// A session advisory lock held on a dedicated connection.
struct PgLeadership {
    conn: PgConnection,
    key: i64,
}

#[async_trait]
impl Leadership for PgLeadership {
    async fn still_held(&mut self) -> bool {
        // pg_locks shows a bigint advisory key as two 32-bit halves: classid (high), objid (low),
        // with objsubid 1.
        let check = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (
                 SELECT 1 FROM pg_locks
                 WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
                   AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1)",
        )
        .bind((self.key >> 32) & 0xffff_ffff)
        .bind(self.key & 0xffff_ffff)
        .fetch_one(&mut self.conn);
        matches!(
            tokio::time::timeout(LEADERSHIP_CHECK_TIMEOUT, check).await,
            Ok(Ok(true))
        )
    }

    async fn release(self: Box<Self>) {
        let PgLeadership { mut conn, key } = *self;
        // Closing the session releases the lock anyway; unlocking first makes it immediate even
        // if the close is slow.
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(key)
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
    }
}

async fn insert_run(
    conn: &mut PgConnection,
    run: &SyncRun,
    outcome: &str,
) -> Result<(), StoreError> {
    let s = &run.summary;
    sqlx::query(
        "INSERT INTO sync_run (source, kind, from_local, tom_local, from_utc, tom_utc, started_at,
             finished_at, outcome, http_status, bytes, records, changed, unchanged, cleared,
             quarantined, error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(&run.source)
    .bind(run.kind.as_str())
    .bind(run.window.from_local)
    .bind(run.window.tom_local)
    .bind(run.window.from_utc)
    .bind(run.window.tom_utc)
    .bind(run.started_at)
    .bind(run.finished_at)
    .bind(outcome)
    .bind(run.http_status.map(i32::from))
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

/// PostgreSQL keeps microseconds: an instant read back compares equal to this, not to the
/// original with its nanoseconds.
fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// A buffered record and the hash of its own provtillfällen.
struct Pending {
    record: Provomrade,
    sha256: String,
}

/// What the database holds for a key at flush time.
struct Existing {
    id: i64,
    sha256: String,
    /// Elements of this key already applied by this document (0: not touched yet).
    touched: i32,
    /// Provtillfällen stored for the key (counted only when `touched > 0`).
    stored: i64,
}

/// What a batch does with one element.
#[derive(Clone, Copy)]
enum Fate {
    /// A key the database does not have: a new provomrade row.
    Create,
    /// A later element of a key this document already applied: its provtillfällen go after the
    /// stored ones (the earlier elements' content); the hash is settled in `finish`.
    Append { id: i64, first_ordinal: i64 },
    /// Content already stored: only `synced_at` moves, in `finish`.
    Unchanged { id: i64 },
    /// Different content: the stored provtillfällen are replaced.
    Replace { id: i64 },
}

/// A quarantined element, owned until the next flush writes it.
struct QuarantineRow {
    elev: Option<String>,
    reason: String,
    error_code: &'static str,
    element: String,
    location: String,
    line: i64,
    column: i64,
    raw_xml: String,
}

struct PgDocumentTx {
    tx: Transaction<'static, Postgres>,
    ctx: ApplyContext,
    /// Serialises appends to `change_log` (held to the commit).
    change_log_lock: i64,
    batch: Vec<Pending>,
    batch_keys: HashSet<ProvomradeKey>,
    batch_child_rows: usize,
    quarantined: Vec<QuarantineRow>,
    quarantined_bytes: usize,
    /// Rows written to `doc_touched` so far (an upper bound of its size).
    touched_rows: u64,
    /// `touched_rows` when `doc_touched` was last analysed.
    analyzed_rows: u64,
    summary: ApplySummary,
}

/// The columns of one batch's new provtillfalle rows, as arrays for `UNNEST`.
#[derive(Default)]
struct PtColumns<'a> {
    id: Vec<i64>,
    provomrade_id: Vec<i64>,
    ordinal: Vec<i32>,
    skolform: Vec<&'a str>,
    uppdaterat: Vec<NaiveDate>,
    genomfort: Vec<Option<NaiveDate>>,
    intedeltagit: Vec<bool>,
    sammanvagt_provbetyg: Vec<Option<&'a str>>,
}

/// The columns of one batch's new delprovsresultat rows.
#[derive(Default)]
struct DpColumns<'a> {
    provtillfalle_id: Vec<i64>,
    ordinal: Vec<i32>,
    typ: Vec<&'a str>,
    utfall: Vec<&'static str>,
    betyg: Vec<Option<&'a str>>,
    poang: Vec<Option<i64>>,
    maluppfyllnad: Vec<Option<bool>>,
}

/// The columns of one batch's new provomrade rows.
#[derive(Default)]
struct PoColumns<'a> {
    id: Vec<i64>,
    elev: Vec<&'a str>,
    kind: Vec<&'static str>,
    amne: Vec<Option<&'a str>>,
    arskurs: Vec<Option<i32>>,
    kurs: Vec<Option<&'a str>>,
    sha256: Vec<&'a str>,
}

/// `doc_touched` rows of one batch.
#[derive(Default)]
struct TouchColumns<'a> {
    provomrade_id: Vec<i64>,
    /// `None` for a key this document created.
    prev: Vec<Option<&'a str>>,
    new: Vec<&'a str>,
}

impl<'a> TouchColumns<'a> {
    fn push(&mut self, id: i64, prev: Option<&'a str>, new: &'a str) {
        self.provomrade_id.push(id);
        self.prev.push(prev);
        self.new.push(new);
    }
}

impl PgDocumentTx {
    async fn flush(&mut self) -> Result<(), StoreError> {
        if self.batch.is_empty() {
            return self.flush_quarantine().await;
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_keys.clear();
        self.batch_child_rows = 0;
        let existing = self.lookup(&batch).await?;

        let mut touches = TouchColumns::default();
        let mut replace_ids: Vec<i64> = Vec::new();
        let mut created = 0usize;
        let mut new_pts = 0usize;
        let fates: Vec<Fate> = batch
            .iter()
            .zip(&existing)
            .map(|(p, e)| {
                let fate = match e {
                    None => Fate::Create,
                    Some(e) if e.touched > 0 => Fate::Append {
                        id: e.id,
                        first_ordinal: e.stored,
                    },
                    Some(e) if e.sha256 == p.sha256 => Fate::Unchanged { id: e.id },
                    Some(e) => Fate::Replace { id: e.id },
                };
                match fate {
                    Fate::Create => created += 1,
                    Fate::Replace { id } => replace_ids.push(id),
                    Fate::Append { .. } | Fate::Unchanged { .. } => {}
                }
                if !matches!(fate, Fate::Unchanged { .. }) {
                    new_pts += p.record.provtillfallen.len();
                }
                fate
            })
            .collect();
        let Ids { po, pt } = self.reserve_ids(created, new_pts).await?;
        let (mut po_ids, mut pt_ids) = (po.into_iter(), pt.into_iter());

        let mut po = PoColumns::default();
        let mut pt = PtColumns::default();
        let mut dp = DpColumns::default();
        for ((p, fate), e) in batch.iter().zip(&fates).zip(&existing) {
            let prev = e.as_ref().map(|e| e.sha256.as_str());
            let (id, first_ordinal) = match *fate {
                Fate::Create => {
                    let id = po_ids.next().ok_or_else(|| ids_ran_out("provomrade"))?;
                    let k = &p.record.key;
                    po.id.push(id);
                    po.elev.push(&k.elev);
                    po.kind.push(k.omrade.kind());
                    po.amne.push(k.omrade.amne());
                    po.arskurs
                        .push(k.omrade.arskurs().map(|a| i32::from(a.get())));
                    po.kurs.push(k.omrade.kurs());
                    po.sha256.push(&p.sha256);
                    touches.push(id, None, &p.sha256);
                    (id, 0)
                }
                Fate::Append { id, first_ordinal } => {
                    // The row exists: only its element count goes up.
                    touches.push(id, prev, &p.sha256);
                    (id, first_ordinal)
                }
                Fate::Unchanged { id } => {
                    touches.push(id, prev, &p.sha256);
                    continue;
                }
                Fate::Replace { id } => {
                    touches.push(id, prev, &p.sha256);
                    (id, 0)
                }
            };
            for (i, t) in p.record.provtillfallen.iter().enumerate() {
                let pt_id = pt_ids.next().ok_or_else(|| ids_ran_out("provtillfalle"))?;
                pt.id.push(pt_id);
                pt.provomrade_id.push(id);
                pt.ordinal.push(ordinal(first_ordinal + i as i64)?);
                pt.skolform.push(&p.record.skolform);
                pt.uppdaterat.push(t.uppdaterat);
                pt.genomfort.push(t.genomfort);
                pt.intedeltagit.push(t.resultat.intedeltagit());
                pt.sammanvagt_provbetyg
                    .push(t.resultat.sammanvagt_provbetyg());
                for (j, d) in t.resultat.delprovsresultat().iter().enumerate() {
                    dp.provtillfalle_id.push(pt_id);
                    dp.ordinal.push(ordinal(j as i64)?);
                    dp.typ.push(&d.typ);
                    dp.utfall.push(d.utfall.as_str());
                    dp.betyg.push(d.utfall.betyg());
                    dp.poang.push(d.utfall.poang());
                    dp.maluppfyllnad.push(d.utfall.maluppfyllnad());
                }
            }
        }
        let (pt_rows, dp_rows, po_rows) = (pt.id.len(), dp.provtillfalle_id.len(), po.id.len());
        let touch_rows = touches.provomrade_id.len() as u64;
        self.write_batch(po, &replace_ids, pt, dp, touches).await?;
        self.touched_rows += touch_rows;
        if self.touched_rows >= self.analyzed_rows.max(BATCH_RECORDS as u64 / 2) * ANALYZE_GROWTH {
            self.analyze_touched().await?;
        }
        self.flush_quarantine().await?;
        self.summary.records += batch.len() as u64;
        self.summary.provomrade_rows += po_rows as u64;
        self.summary.provtillfalle_rows += pt_rows as u64;
        self.summary.delprovsresultat_rows += dp_rows as u64;
        Ok(())
    }

    /// Finds the stored rows for the batch's keys, in batch order: `None` for keys the database
    /// does not have.
    ///
    /// Each key is a LATERAL subquery with `LIMIT 1`, which keeps the plan on the natural key's
    /// unique index however the planner sizes the (growing, not yet analysed) tables.
    async fn lookup(&mut self, batch: &[Pending]) -> Result<Vec<Option<Existing>>, StoreError> {
        let mut amne: (Vec<i32>, Vec<&str>, Vec<&str>, Vec<i32>) = Default::default();
        let mut kurs: (Vec<i32>, Vec<&str>, Vec<&str>) = Default::default();
        for (i, p) in batch.iter().enumerate() {
            let k = &p.record.key;
            match &k.omrade {
                Omrade::Amne { amne: a, arskurs } => {
                    amne.0.push(i as i32);
                    amne.1.push(&k.elev);
                    amne.2.push(a);
                    amne.3.push(i32::from(arskurs.get()));
                }
                Omrade::Kurs { kurs: c } => {
                    kurs.0.push(i as i32);
                    kurs.1.push(&k.elev);
                    kurs.2.push(c);
                }
            }
        }
        let rows = sqlx::query(
            "SELECT k.i, p.id, p.content_sha256, COALESCE(t.elements, 0),
                    CASE WHEN t.elements IS NULL THEN 0
                         ELSE (SELECT count(*) FROM provtillfalle x WHERE x.provomrade_id = p.id)
                    END
             FROM UNNEST($2::int4[], $3::text[], $4::text[], $5::int4[]) AS k(i, elev, amne, arskurs)
             CROSS JOIN LATERAL (
                 SELECT p.id, p.content_sha256 FROM provomrade p
                 WHERE p.source = $1 AND p.kind = 'amne' AND p.elev = k.elev
                   AND p.amne = k.amne AND p.arskurs = k.arskurs
                 LIMIT 1) p
             LEFT JOIN LATERAL (
                 SELECT elements FROM doc_touched t WHERE t.provomrade_id = p.id LIMIT 1) t ON true
             UNION ALL
             SELECT k.i, p.id, p.content_sha256, COALESCE(t.elements, 0),
                    CASE WHEN t.elements IS NULL THEN 0
                         ELSE (SELECT count(*) FROM provtillfalle x WHERE x.provomrade_id = p.id)
                    END
             FROM UNNEST($6::int4[], $7::text[], $8::text[]) AS k(i, elev, kurs)
             CROSS JOIN LATERAL (
                 SELECT p.id, p.content_sha256 FROM provomrade p
                 WHERE p.source = $1 AND p.kind = 'kurs' AND p.elev = k.elev AND p.kurs = k.kurs
                 LIMIT 1) p
             LEFT JOIN LATERAL (
                 SELECT elements FROM doc_touched t WHERE t.provomrade_id = p.id LIMIT 1) t ON true",
        )
        .bind(&self.ctx.source)
        .bind(amne.0)
        .bind(amne.1)
        .bind(amne.2)
        .bind(amne.3)
        .bind(kurs.0)
        .bind(kurs.1)
        .bind(kurs.2)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query_err("looking up stored provområden"))?;
        let mut found: Vec<Option<Existing>> = batch.iter().map(|_| None).collect();
        for r in rows {
            let i: i32 = r.get(0);
            let slot = found
                .get_mut(i as usize)
                .ok_or_else(|| StoreError::Corrupt(format!("lookup answered for key {i}")))?;
            *slot = Some(Existing {
                id: r.get(1),
                sha256: r.get(2),
                touched: r.get(3),
                stored: r.get(4),
            });
        }
        Ok(found)
    }

    /// Takes ids for the batch's new provomrade and provtillfalle rows from their identity
    /// sequences, in one round trip.
    async fn reserve_ids(
        &mut self,
        provomrade: usize,
        provtillfalle: usize,
    ) -> Result<Ids, StoreError> {
        if provomrade == 0 && provtillfalle == 0 {
            return Ok(Ids::default());
        }
        let (po, pt): (Vec<i64>, Vec<i64>) = sqlx::query_as(
            // The identity sequences' default names (migrations/postgres).
            "SELECT ARRAY(SELECT nextval('provomrade_id_seq') FROM generate_series(1, $1)),
                    ARRAY(SELECT nextval('provtillfalle_id_seq') FROM generate_series(1, $2))",
        )
        .bind(provomrade as i32)
        .bind(provtillfalle as i32)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(query_err("reserving row ids"))?;
        Ok(Ids { po, pt })
    }

    /// Writes one batch, set-based: replaced children go before the new ones are written.
    async fn write_batch(
        &mut self,
        po: PoColumns<'_>,
        replace_ids: &[i64],
        pt: PtColumns<'_>,
        dp: DpColumns<'_>,
        touches: TouchColumns<'_>,
    ) -> Result<(), StoreError> {
        let now = self.ctx.now;
        if !po.id.is_empty() {
            sqlx::query(
                "INSERT INTO provomrade (id, source, elev, kind, amne, arskurs, kurs, namespace,
                     content_sha256, changed_at, synced_at)
                 OVERRIDING SYSTEM VALUE
                 SELECT u.id, $1, u.elev, u.kind, u.amne, u.arskurs, u.kurs, $2, u.sha, $3, $3
                 FROM UNNEST($4::int8[], $5::text[], $6::text[], $7::text[], $8::int4[],
                             $9::text[], $10::text[]) AS u(id, elev, kind, amne, arskurs, kurs, sha)",
            )
            .bind(&self.ctx.source)
            .bind(&self.ctx.namespace)
            .bind(now)
            .bind(po.id)
            .bind(po.elev)
            .bind(po.kind)
            .bind(po.amne)
            .bind(po.arskurs)
            .bind(po.kurs)
            .bind(po.sha256)
            .execute(&mut *self.tx)
            .await
            .map_err(query_err("inserting provområden"))?;
        }
        if !replace_ids.is_empty() {
            // Delprovsresultat first, in one statement: the foreign key's cascade would otherwise
            // delete them one provtillfälle at a time.
            sqlx::query(
                "DELETE FROM delprovsresultat WHERE provtillfalle_id = ANY(ARRAY(
                     SELECT id FROM provtillfalle WHERE provomrade_id = ANY($1)))",
            )
            .bind(replace_ids)
            .execute(&mut *self.tx)
            .await
            .map_err(query_err("deleting replaced delprovsresultat"))?;
            sqlx::query("DELETE FROM provtillfalle WHERE provomrade_id = ANY($1)")
                .bind(replace_ids)
                .execute(&mut *self.tx)
                .await
                .map_err(query_err("deleting replaced provtillfällen"))?;
        }
        if !pt.id.is_empty() {
            sqlx::query(
                "INSERT INTO provtillfalle (id, provomrade_id, ordinal, skolform, uppdaterat,
                     genomfort, intedeltagit, sammanvagt_provbetyg)
                 OVERRIDING SYSTEM VALUE
                 SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int4[], $4::text[], $5::date[],
                                      $6::date[], $7::bool[], $8::text[])",
            )
            .bind(pt.id)
            .bind(pt.provomrade_id)
            .bind(pt.ordinal)
            .bind(pt.skolform)
            .bind(pt.uppdaterat)
            .bind(pt.genomfort)
            .bind(pt.intedeltagit)
            .bind(pt.sammanvagt_provbetyg)
            .execute(&mut *self.tx)
            .await
            .map_err(query_err("inserting provtillfällen"))?;
        }
        if !dp.provtillfalle_id.is_empty() {
            sqlx::query(
                "INSERT INTO delprovsresultat (provtillfalle_id, ordinal, typ, utfall, betyg, poang,
                     maluppfyllnad)
                 SELECT * FROM UNNEST($1::int8[], $2::int4[], $3::text[], $4::text[], $5::text[],
                                      $6::int8[], $7::bool[])",
            )
            .bind(dp.provtillfalle_id)
            .bind(dp.ordinal)
            .bind(dp.typ)
            .bind(dp.utfall)
            .bind(dp.betyg)
            .bind(dp.poang)
            .bind(dp.maluppfyllnad)
            .execute(&mut *self.tx)
            .await
            .map_err(query_err("inserting delprovsresultat"))?;
        }
        // A key comes once per batch (a repeat flushes first), so one statement never meets the
        // same row twice.
        sqlx::query(
            "INSERT INTO doc_touched (provomrade_id, prev_sha256, new_sha256, elements)
             SELECT u.id, u.prev, u.new, 1
             FROM UNNEST($1::int8[], $2::text[], $3::text[]) AS u(id, prev, new)
             ON CONFLICT (provomrade_id) DO UPDATE SET elements = doc_touched.elements + 1",
        )
        .bind(touches.provomrade_id)
        .bind(touches.prev)
        .bind(touches.new)
        .execute(&mut *self.tx)
        .await
        .map_err(query_err("recording touched provområden"))?;
        Ok(())
    }

    /// Writes the buffered quarantine rows in one statement.
    async fn flush_quarantine(&mut self) -> Result<(), StoreError> {
        if self.quarantined.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.quarantined);
        self.quarantined_bytes = 0;
        let mut elev = Vec::with_capacity(rows.len());
        let mut reason = Vec::with_capacity(rows.len());
        let mut code = Vec::with_capacity(rows.len());
        let mut element = Vec::with_capacity(rows.len());
        let mut location = Vec::with_capacity(rows.len());
        let mut line = Vec::with_capacity(rows.len());
        let mut column = Vec::with_capacity(rows.len());
        let mut raw = Vec::with_capacity(rows.len());
        for q in &rows {
            elev.push(q.elev.as_deref());
            reason.push(q.reason.as_str());
            code.push(q.error_code);
            element.push(q.element.as_str());
            location.push(q.location.as_str());
            line.push(q.line);
            column.push(q.column);
            raw.push(q.raw_xml.as_str());
        }
        sqlx::query(
            "INSERT INTO quarantine (source, elev, reason, error_code, element, location, line,
                 \"column\", document, namespace, raw_xml, quarantined_at)
             SELECT $1, u.elev, u.reason, u.code, u.element, u.location, u.line, u.col, $2, $3,
                    u.raw, $4
             FROM UNNEST($5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::int8[],
                         $11::int8[], $12::text[])
                  WITH ORDINALITY AS u(elev, reason, code, element, location, line, col, raw, n)
             ORDER BY u.n",
        )
        .bind(&self.ctx.source)
        .bind(&self.ctx.document)
        .bind(&self.ctx.namespace)
        .bind(self.ctx.now)
        .bind(elev)
        .bind(reason)
        .bind(code)
        .bind(element)
        .bind(location)
        .bind(line)
        .bind(column)
        .bind(raw)
        .execute(&mut *self.tx)
        .await
        .map_err(query_err("quarantining records"))?;
        Ok(())
    }

    /// Gives the planner `doc_touched`'s real size (autovacuum never sees temporary tables).
    async fn analyze_touched(&mut self) -> Result<(), StoreError> {
        sqlx::query("ANALYZE doc_touched")
            .persistent(false)
            .execute(&mut *self.tx)
            .await
            .map_err(query_err("analysing the temporary table"))?;
        self.analyzed_rows = self.touched_rows;
        Ok(())
    }

    /// Re-hashes the stored content of keys that came in several elements, a page of keys per
    /// round trip.
    async fn settle_repeated_keys(&mut self) -> Result<(), StoreError> {
        let mut after = 0i64;
        loop {
            let ids: Vec<i64> = sqlx::query_scalar(
                "SELECT provomrade_id FROM doc_touched
                 WHERE elements > 1 AND provomrade_id > $1 ORDER BY provomrade_id LIMIT $2",
            )
            .bind(after)
            .bind(SETTLE_PAGE)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(query_err("listing repeated keys"))?;
            let Some(last) = ids.last() else {
                return Ok(());
            };
            after = *last;
            let stored = load_provtillfallen(&mut self.tx, &ids).await?;
            let shas: Vec<String> = ids
                .iter()
                .map(|id| {
                    let pts = stored.get(id).map(Vec::as_slice).unwrap_or_default();
                    content_sha256(pts.iter().map(|s| (s.skolform.as_ref(), &s.provtillfalle)))
                })
                .collect();
            sqlx::query(
                "UPDATE doc_touched t SET new_sha256 = u.sha
                 FROM UNNEST($1::int8[], $2::text[]) AS u(id, sha)
                 WHERE t.provomrade_id = u.id",
            )
            .bind(&ids)
            .bind(shas)
            .execute(&mut *self.tx)
            .await
            .map_err(query_err("settling the hashes of repeated keys"))?;
        }
    }
}

/// Ids reserved for one batch.
#[derive(Default)]
struct Ids {
    po: Vec<i64>,
    pt: Vec<i64>,
}

fn ids_ran_out(table: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "fewer {table} ids were reserved than rows to insert"
    ))
}

fn ordinal(n: i64) -> Result<i32, StoreError> {
    i32::try_from(n).map_err(|_| StoreError::Corrupt(format!("ordinal {n} is out of range")))
}

#[async_trait]
impl DocumentTx for PgDocumentTx {
    async fn apply(&mut self, record: Provomrade) -> Result<(), StoreError> {
        // A key twice in one batch would be looked up before its first element is written; flush
        // first so the second occurrence sees the first (rare: only split skolformer do this).
        if self.batch_keys.contains(&record.key) {
            self.flush().await?;
        }
        let sha256 = content_sha256(
            record
                .provtillfallen
                .iter()
                .map(|pt| (record.skolform.as_ref(), pt)),
        );
        self.batch_child_rows += record
            .provtillfallen
            .iter()
            .map(|pt| 1 + pt.resultat.delprovsresultat().len())
            .sum::<usize>();
        self.batch_keys.insert(record.key.clone());
        self.batch.push(Pending { record, sha256 });
        if self.batch.len() >= BATCH_RECORDS || self.batch_child_rows >= BATCH_CHILD_ROWS {
            self.flush().await?;
        }
        Ok(())
    }

    async fn quarantine(&mut self, q: &Quarantined) -> Result<(), StoreError> {
        let e = &q.error;
        self.quarantined_bytes += q.raw.len();
        self.quarantined.push(QuarantineRow {
            elev: e.elev.clone(),
            reason: e.to_string(),
            error_code: e.kind.code(),
            element: e.element.clone(),
            location: e.location.to_string(),
            line: e.location.line as i64,
            column: e.location.column as i64,
            raw_xml: q.raw.clone(),
        });
        self.summary.quarantined += 1;
        if self.quarantined.len() >= QUARANTINE_ROWS || self.quarantined_bytes >= QUARANTINE_BYTES {
            self.flush_quarantine().await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<ApplySummary, StoreError> {
        self.flush().await?;
        self.flush_quarantine().await?;
        self.settle_repeated_keys().await?;
        self.analyze_touched().await?;
        // Only rows with something to change are written: created rows already carry it all.
        sqlx::query(
            "UPDATE provomrade p SET
                 content_sha256 = t.new_sha256,
                 namespace = $1,
                 synced_at = $2,
                 changed_at = CASE WHEN t.prev_sha256 IS NOT DISTINCT FROM t.new_sha256
                                   THEN p.changed_at ELSE $2 END
             FROM doc_touched t
             WHERE p.id = t.provomrade_id
               AND (p.content_sha256 IS DISTINCT FROM t.new_sha256
                    OR p.synced_at IS DISTINCT FROM $2
                    OR p.namespace IS DISTINCT FROM $1)",
        )
        .bind(&self.ctx.namespace)
        .bind(self.ctx.now)
        .execute(&mut *self.tx)
        .await
        .map_err(query_err("updating synced provområden"))?;
        // Created keys have no previous hash: they are changes (or clears) too.
        let (unchanged, cleared, changed): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE prev_sha256 = new_sha256),
                    count(*) FILTER (WHERE prev_sha256 IS DISTINCT FROM new_sha256
                                       AND new_sha256 = $1),
                    count(*) FILTER (WHERE prev_sha256 IS DISTINCT FROM new_sha256
                                       AND new_sha256 <> $1)
             FROM doc_touched",
        )
        .bind(EMPTY_CONTENT_SHA256)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(query_err("counting changes"))?;
        if cleared + changed > 0 {
            // Held to the commit: entries become visible in seq order (see the module docs).
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(self.change_log_lock)
                .execute(&mut *self.tx)
                .await
                .map_err(query_err("waiting to append to change_log"))?;
            // Within one document the entries follow provomrade id order.
            sqlx::query(
                "INSERT INTO change_log (provomrade_id, op, at)
                 SELECT provomrade_id, CASE WHEN new_sha256 = $1 THEN 'clear' ELSE 'upsert' END, $2
                 FROM doc_touched WHERE prev_sha256 IS DISTINCT FROM new_sha256
                 ORDER BY provomrade_id",
            )
            .bind(EMPTY_CONTENT_SHA256)
            .bind(self.ctx.now)
            .execute(&mut *self.tx)
            .await
            .map_err(query_err("appending to change_log"))?;
        }
        self.summary.unchanged = unchanged as u64;
        self.summary.cleared = cleared as u64;
        self.summary.changed = changed as u64;
        Ok(self.summary.clone())
    }

    async fn record_window(&mut self, run: &SyncRun) -> Result<(), StoreError> {
        insert_run(&mut self.tx, run, "ok").await?;
        if run.kind != RunKind::Sync {
            return Ok(());
        }
        let moved = |found: Option<DateTime<Utc>>| StoreError::WatermarkMoved {
            source_name: run.source.clone(),
            expected: run
                .expected_watermark
                .map(timestamp)
                .unwrap_or_else(|| "none".into()),
            found: found.map(timestamp).unwrap_or_else(|| "none".into()),
        };
        let tom_local = run.window.tom_utc.with_timezone(&run.tz).naive_local();
        let Some(expected) = run.expected_watermark else {
            // The source's first window: there is no row to lock yet, so the insert is the fence.
            // A concurrent first window's insert waits for this one's commit, then does nothing.
            let inserted = sqlx::query(
                "INSERT INTO sync_watermark (source, watermark_local, watermark_utc, updated_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (source) DO NOTHING",
            )
            .bind(&run.source)
            .bind(tom_local)
            .bind(run.window.tom_utc)
            .bind(self.ctx.now)
            .execute(&mut *self.tx)
            .await
            .map_err(query_err("setting the first watermark"))?;
            if inserted.rows_affected() == 1 {
                return Ok(());
            }
            let found: Option<DateTime<Utc>> =
                sqlx::query_scalar("SELECT watermark_utc FROM sync_watermark WHERE source = $1")
                    .bind(&run.source)
                    .fetch_optional(&mut *self.tx)
                    .await
                    .map_err(query_err("reading the watermark"))?;
            return Err(moved(found));
        };
        // Locked to the commit: a concurrent window of the same source waits here, then reads the
        // watermark this one leaves.
        let stored: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT watermark_utc FROM sync_watermark WHERE source = $1 FOR UPDATE",
        )
        .bind(&run.source)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(query_err("reading the watermark"))?;
        if stored != Some(to_micros(expected)) {
            return Err(moved(stored));
        }
        sqlx::query(
            "UPDATE sync_watermark SET watermark_local = $2, watermark_utc = $3, updated_at = $4
             WHERE source = $1 AND watermark_utc < $3",
        )
        .bind(&run.source)
        .bind(tom_local)
        .bind(run.window.tom_utc)
        .bind(self.ctx.now)
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

/// Reads the stored provtillfällen of some keys back into domain values, in order.
async fn load_provtillfallen(
    tx: &mut Transaction<'static, Postgres>,
    provomrade_ids: &[i64],
) -> Result<HashMap<i64, Vec<StoredProvtillfalle>>, StoreError> {
    let pts = sqlx::query(
        "SELECT provomrade_id, id, skolform, uppdaterat, genomfort, intedeltagit,
                sammanvagt_provbetyg
         FROM provtillfalle WHERE provomrade_id = ANY($1) ORDER BY provomrade_id, ordinal",
    )
    .bind(provomrade_ids)
    .fetch_all(&mut **tx)
    .await
    .map_err(query_err("reading stored provtillfällen"))?;
    let pt_ids: Vec<i64> = pts.iter().map(|r| r.get(1)).collect();
    let delprov = sqlx::query(
        "SELECT provtillfalle_id, typ, utfall, betyg, poang, maluppfyllnad FROM delprovsresultat
         WHERE provtillfalle_id = ANY($1) ORDER BY provtillfalle_id, ordinal",
    )
    .bind(&pt_ids)
    .fetch_all(&mut **tx)
    .await
    .map_err(query_err("reading stored delprovsresultat"))?;
    let mut by_pt: HashMap<i64, Vec<Delprovsresultat>> = HashMap::new();
    for d in delprov {
        let utfall: String = d.get(2);
        by_pt.entry(d.get(0)).or_default().push(Delprovsresultat {
            typ: d.get::<String, _>(1).into(),
            utfall: Utfall::from_columns(&utfall, d.get(3), d.get(4), d.get(5))
                .map_err(StoreError::Corrupt)?,
        });
    }
    let mut out: HashMap<i64, Vec<StoredProvtillfalle>> = HashMap::new();
    for r in pts {
        let id: i64 = r.get(1);
        let intedeltagit: bool = r.get(5);
        out.entry(r.get(0)).or_default().push(StoredProvtillfalle {
            skolform: r.get::<String, _>(2).into(),
            provtillfalle: Provtillfalle {
                uppdaterat: r.get(3),
                genomfort: r.get(4),
                resultat: if intedeltagit {
                    ProvtillfalleResultat::Intedeltagit
                } else {
                    ProvtillfalleResultat::Resultat {
                        sammanvagt_provbetyg: r.get::<Option<String>, _>(6).map(Into::into),
                        delprovsresultat: by_pt.remove(&id).unwrap_or_default(),
                    }
                },
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::lock_key;

    #[test]
    fn lock_keys_are_stable_and_separate_purposes_schemas_and_sources() {
        // Stable across releases: instances of two versions must agree on who leads.
        assert_eq!(
            lock_key(&["lead", "public", "default"]),
            lock_key(&["lead", "public", "default"])
        );
        let keys = [
            lock_key(&["lead", "public", "default"]),
            lock_key(&["lead", "nprov", "default"]),
            lock_key(&["lead", "public", "solna"]),
            lock_key(&["change_log", "public"]),
            lock_key(&["lead", "public", "change_log"]),
            // Length prefixes keep "a" + "b\0c" apart from "a\0b" + "c".
            lock_key(&["lead", "a", "b\0c"]),
            lock_key(&["lead", "a\0b", "c"]),
        ];
        let distinct: std::collections::HashSet<i64> = keys.iter().copied().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:?}");
    }
}

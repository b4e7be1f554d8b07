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
//! `DELETE … = ANY($1)` per table, new provområden in one `INSERT … SELECT FROM UNNEST(…)`, and
//! the child tables, which hold nearly all rows, by `COPY … FROM STDIN`. Several writers (sources,
//! instances) may write at once, so ids come from the identity sequences: the ids a batch needs
//! are reserved in one round trip, which lets children name their parents without `RETURNING`
//! and a client-side join. A full batch is written by a task of its own while the next one is
//! gathered, so parsing and building overlap the server's work; memory stays bounded by two
//! batches whatever the document size.
//!
//! The keys a document touched live in the temporary table `doc_touched` (`ON COMMIT DROP`), one
//! row per key with the hash stored before the document, the hash it leaves and how many write
//! batches wrote it. Keys the document created have a row too, with no previous hash. A key's elements within one batch are hashed together as they arrive;
//! only a key whose elements straddle batches has its stored content re-hashed in `finish`.
//!
//! The mirror's sessions run with `jit = off`: the statements are index probes and bulk writes of
//! milliseconds, and JIT compilation (triggered by the large cost estimates of `UNNEST` arrays)
//! took up to a hundred times longer than the statement itself.
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

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Row, Transaction};
use tokio::task::JoinHandle;

use super::{
    query_err, redact_url, timestamp, ApplyContext, ApplySummary, DocumentTx, LeaderInfo,
    Leadership, RunKind, RunRow, Store, StoreError, SyncRun, TableCounts, Watermark,
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
        // Our statements are index probes and bulk writes of a few milliseconds, but UNNEST
        // arrays make their estimated costs large enough for JIT, whose compilation then takes
        // ten to a hundred times longer than the statement (measured: 266 ms of a 328 ms
        // lookup). Only the mirror's own sessions are affected.
        options = options.options([("jit", "off")]);
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

/// This process as other instances and `status` see it: host name and process id.
fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host} pid {}", std::process::id())
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
                batches       integer NOT NULL
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
            tx: Some(tx),
            writing: None,
            doc: Arc::new(Doc {
                source: ctx.source,
                namespace: ctx.namespace,
                document: ctx.document,
                now: ctx.now,
            }),
            change_log_lock: lock_key(&["change_log", &self.lock_scope]),
            batch: Vec::with_capacity(BATCH_RECORDS),
            batch_keys: HashMap::with_capacity(BATCH_RECORDS),
            batch_child_rows: 0,
            quarantined: Vec::new(),
            quarantined_bytes: 0,
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
        // whatever borrows it next, and would outlive a leader that gave up. Its name says which
        // instance holds the lead (see `leader`).
        let name = format!(
            "{} leader {}",
            self.options.get_application_name().unwrap_or("nprov-sync"),
            instance_name()
        );
        let options = self.options.clone().application_name(&name);
        let mut conn = connect_once(&options)
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

    async fn leader(&self, source: &str) -> Result<Option<LeaderInfo>, StoreError> {
        let key = lock_key(&["lead", &self.lock_scope, source]);
        // A bigint advisory key shows in pg_locks as classid (high half), objid (low half) and
        // objsubid 1.
        let row: Option<(String, Option<String>, DateTime<Utc>)> = sqlx::query_as(
            "SELECT a.application_name, host(a.client_addr), a.backend_start
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
               AND l.classid = ((($1::bigint) >> 32) & 4294967295)::oid
               AND l.objid = (($1::bigint) & 4294967295)::oid",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_err("looking up the leader"))?;
        Ok(Some(LeaderInfo {
            holder: row.map(|(name, addr, since)| {
                // "<application_name> leader <host> pid <pid>", see `try_lead`.
                let who = name
                    .split_once(" leader ")
                    .map_or(name.as_str(), |(_, who)| who)
                    .to_owned();
                format!(
                    "{who}{}, since {}",
                    addr.map(|a| format!(" from {a}")).unwrap_or_default(),
                    since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            }),
        }))
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

/// A key's elements in one batch, in document order, and the hash of their provtillfällen
/// together: several elements of one key are one set, so a repeat within the batch joins its key
/// here instead of forcing a flush (split skolformer sit next to each other in real documents).
struct Pending {
    /// Never empty.
    records: Vec<Provomrade>,
    sha256: String,
}

impl Pending {
    fn key(&self) -> &ProvomradeKey {
        &self.records[0].key
    }

    /// Every provtillfälle of the key in this batch, with the skolform of its element.
    fn provtillfallen(&self) -> impl Iterator<Item = (&str, &Provtillfalle)> {
        self.records.iter().flat_map(|r| {
            r.provtillfallen
                .iter()
                .map(move |pt| (r.skolform.as_ref(), pt))
        })
    }

    fn rehash(&mut self) {
        self.sha256 = content_sha256(self.provtillfallen());
    }
}

/// What the database holds for a key at flush time.
struct Existing {
    id: i64,
    sha256: String,
    /// Batches of this document that already wrote the key (0: not touched yet).
    touched: i32,
    /// Provtillfällen stored for the key (counted only when `touched > 0`).
    stored: i64,
}

/// What a batch does with one key's elements.
#[derive(Clone, Copy)]
enum Fate {
    /// A key the database does not have: a new provomrade row.
    Create,
    /// A key an earlier batch of this document wrote: its provtillfällen go after the stored
    /// ones (the earlier elements' content); the hash is settled in `finish`.
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

/// What writing needs besides the connection; shared with the writer task.
struct Doc {
    source: String,
    namespace: String,
    /// Names the document in quarantine rows.
    document: String,
    now: DateTime<Utc>,
}

/// One batch for the writer: keys with their elements, and quarantined elements.
struct Batch {
    records: Vec<Pending>,
    quarantined: Vec<QuarantineRow>,
}

/// What one batch wrote.
#[derive(Default)]
struct Written {
    records: u64,
    provomrade_rows: u64,
    provtillfalle_rows: u64,
    delprovsresultat_rows: u64,
}

/// A batch being written by a task of its own, which hands the transaction back when done.
type Writing = JoinHandle<(Transaction<'static, Postgres>, Result<Written, StoreError>)>;

/// One document's transaction.
///
/// A full batch is written by a task of its own while the next one is gathered (and parsed), so
/// the client's work overlaps the server's instead of adding to it; at most one batch is in
/// flight, and the next is written only after it, so a batch always sees everything written
/// before it. Dropping the transaction while a batch is in flight lets the task finish and then
/// rolls back, as dropping any transaction does.
struct PgDocumentTx {
    /// The transaction, while no batch is being written.
    tx: Option<Transaction<'static, Postgres>>,
    writing: Option<Writing>,
    doc: Arc<Doc>,
    /// Serialises appends to `change_log` (held to the commit).
    change_log_lock: i64,
    batch: Vec<Pending>,
    /// Where each key of the batch is in `batch`.
    batch_keys: HashMap<ProvomradeKey, usize>,
    batch_child_rows: usize,
    quarantined: Vec<QuarantineRow>,
    quarantined_bytes: usize,
    summary: ApplySummary,
}

/// A value of a `COPY` row.
#[derive(Clone, Copy)]
enum Field<'a> {
    Null,
    Text(&'a str),
    Int(i64),
    Date(NaiveDate),
    Bool(bool),
}

impl<'a> From<Option<&'a str>> for Field<'a> {
    fn from(v: Option<&'a str>) -> Self {
        v.map_or(Field::Null, Field::Text)
    }
}

impl From<Option<NaiveDate>> for Field<'_> {
    fn from(v: Option<NaiveDate>) -> Self {
        v.map_or(Field::Null, Field::Date)
    }
}

impl From<Option<i64>> for Field<'_> {
    fn from(v: Option<i64>) -> Self {
        v.map_or(Field::Null, Field::Int)
    }
}

impl From<Option<bool>> for Field<'_> {
    fn from(v: Option<bool>) -> Self {
        v.map_or(Field::Null, Field::Bool)
    }
}

/// Rows in the text format of `COPY … FROM STDIN`: the bulk path for the two child tables, which
/// hold nearly all rows (measured against `INSERT … SELECT FROM UNNEST` of the same rows: 15-20 %
/// less server time).
#[derive(Default)]
struct CopyRows {
    text: String,
    rows: usize,
}

impl CopyRows {
    fn push(&mut self, fields: &[Field<'_>]) {
        use std::fmt::Write as _;
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                self.text.push('\t');
            }
            // Writing to a String cannot fail.
            let _ = match *f {
                Field::Null => {
                    self.text.push_str("\\N");
                    Ok(())
                }
                Field::Text(v) => {
                    for c in v.chars() {
                        match c {
                            '\\' => self.text.push_str("\\\\"),
                            '\t' => self.text.push_str("\\t"),
                            '\n' => self.text.push_str("\\n"),
                            '\r' => self.text.push_str("\\r"),
                            c => self.text.push(c),
                        }
                    }
                    Ok(())
                }
                Field::Int(v) => write!(self.text, "{v}"),
                Field::Date(v) => write!(self.text, "{}", v.format("%Y-%m-%d")),
                Field::Bool(v) => {
                    self.text.push(if v { 't' } else { 'f' });
                    Ok(())
                }
            };
        }
        self.text.push('\n');
        self.rows += 1;
    }
}

/// Sends rows by `COPY … FROM STDIN` on the document's connection.
async fn copy_in(
    conn: &mut PgConnection,
    statement: &str,
    rows: &CopyRows,
) -> Result<(), sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    if let Err(e) = copy.send(rows.text.as_bytes()).await {
        // Leaves the connection usable for the rollback.
        let _ = copy.abort(e.to_string()).await;
        return Err(e);
    }
    copy.finish().await?;
    Ok(())
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

/// Writes one batch: looks its keys up, decides each key's fate, and writes the rows set-based.
async fn write_batch(
    conn: &mut PgConnection,
    doc: &Doc,
    batch: Batch,
) -> Result<Written, StoreError> {
    let mut written = Written::default();
    if !batch.quarantined.is_empty() {
        write_quarantine(conn, doc, &batch.quarantined).await?;
    }
    let batch = batch.records;
    if batch.is_empty() {
        return Ok(written);
    }
    let existing = lookup(conn, &doc.source, &batch).await?;

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
                new_pts += p.provtillfallen().count();
            }
            fate
        })
        .collect();
    let Ids { po, pt } = reserve_ids(conn, created, new_pts).await?;
    let (mut po_ids, mut pt_ids) = (po.into_iter(), pt.into_iter());

    let mut po = PoColumns::default();
    let mut pt = CopyRows::default();
    let mut dp = CopyRows::default();
    for ((p, fate), e) in batch.iter().zip(&fates).zip(&existing) {
        let prev = e.as_ref().map(|e| e.sha256.as_str());
        let (id, first_ordinal) = match *fate {
            Fate::Create => {
                let id = po_ids.next().ok_or_else(|| ids_ran_out("provomrade"))?;
                let k = p.key();
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
        for (i, (skolform, t)) in p.provtillfallen().enumerate() {
            let pt_id = pt_ids.next().ok_or_else(|| ids_ran_out("provtillfalle"))?;
            pt.push(&[
                Field::Int(pt_id),
                Field::Int(id),
                Field::Int(first_ordinal + i as i64),
                Field::Text(skolform),
                Field::Date(t.uppdaterat),
                t.genomfort.into(),
                Field::Bool(t.resultat.intedeltagit()),
                t.resultat.sammanvagt_provbetyg().into(),
            ]);
            for (j, d) in t.resultat.delprovsresultat().iter().enumerate() {
                dp.push(&[
                    Field::Int(pt_id),
                    Field::Int(j as i64),
                    Field::Text(&d.typ),
                    Field::Text(d.utfall.as_str()),
                    d.utfall.betyg().into(),
                    d.utfall.poang().into(),
                    d.utfall.maluppfyllnad().into(),
                ]);
            }
        }
    }
    let (pt_rows, dp_rows, po_rows) = (pt.rows, dp.rows, po.id.len());
    write_rows(conn, doc, po, &replace_ids, pt, dp, touches).await?;
    written.records = batch.iter().map(|p| p.records.len() as u64).sum::<u64>();
    written.provomrade_rows = po_rows as u64;
    written.provtillfalle_rows = pt_rows as u64;
    written.delprovsresultat_rows = dp_rows as u64;
    Ok(written)
}

/// Finds the stored rows for the batch's keys, in batch order: `None` for keys the database
/// does not have.
///
/// Each key is a LATERAL subquery with `LIMIT 1`, which keeps the plan on the natural key's
/// unique index however the planner sizes the (growing, not yet analysed) tables.
async fn lookup(
    conn: &mut PgConnection,
    source: &str,
    batch: &[Pending],
) -> Result<Vec<Option<Existing>>, StoreError> {
    let mut amne: (Vec<i32>, Vec<&str>, Vec<&str>, Vec<i32>) = Default::default();
    let mut kurs: (Vec<i32>, Vec<&str>, Vec<&str>) = Default::default();
    for (i, p) in batch.iter().enumerate() {
        let k = p.key();
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
        "SELECT k.i, p.id, p.content_sha256, COALESCE(t.batches, 0),
                CASE WHEN t.batches IS NULL THEN 0
                     ELSE (SELECT count(*) FROM provtillfalle x WHERE x.provomrade_id = p.id)
                END
         FROM UNNEST($2::int4[], $3::text[], $4::text[], $5::int4[]) AS k(i, elev, amne, arskurs)
         CROSS JOIN LATERAL (
             SELECT p.id, p.content_sha256 FROM provomrade p
             WHERE p.source = $1 AND p.kind = 'amne' AND p.elev = k.elev
               AND p.amne = k.amne AND p.arskurs = k.arskurs
             LIMIT 1) p
         LEFT JOIN LATERAL (
             SELECT batches FROM doc_touched t WHERE t.provomrade_id = p.id LIMIT 1) t ON true
         UNION ALL
         SELECT k.i, p.id, p.content_sha256, COALESCE(t.batches, 0),
                CASE WHEN t.batches IS NULL THEN 0
                     ELSE (SELECT count(*) FROM provtillfalle x WHERE x.provomrade_id = p.id)
                END
         FROM UNNEST($6::int4[], $7::text[], $8::text[]) AS k(i, elev, kurs)
         CROSS JOIN LATERAL (
             SELECT p.id, p.content_sha256 FROM provomrade p
             WHERE p.source = $1 AND p.kind = 'kurs' AND p.elev = k.elev AND p.kurs = k.kurs
             LIMIT 1) p
         LEFT JOIN LATERAL (
             SELECT batches FROM doc_touched t WHERE t.provomrade_id = p.id LIMIT 1) t ON true",
    )
    .bind(source)
    .bind(amne.0)
    .bind(amne.1)
    .bind(amne.2)
    .bind(amne.3)
    .bind(kurs.0)
    .bind(kurs.1)
    .bind(kurs.2)
    .fetch_all(&mut *conn)
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
    conn: &mut PgConnection,
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
    .fetch_one(&mut *conn)
    .await
    .map_err(query_err("reserving row ids"))?;
    Ok(Ids { po, pt })
}

/// Writes one batch's rows, set-based: replaced children go before the new ones are written.
async fn write_rows(
    conn: &mut PgConnection,
    doc: &Doc,
    po: PoColumns<'_>,
    replace_ids: &[i64],
    pt: CopyRows,
    dp: CopyRows,
    touches: TouchColumns<'_>,
) -> Result<(), StoreError> {
    let now = doc.now;
    if !po.id.is_empty() {
        sqlx::query(
            "INSERT INTO provomrade (id, source, elev, kind, amne, arskurs, kurs, namespace,
                 content_sha256, changed_at, synced_at)
             OVERRIDING SYSTEM VALUE
             SELECT u.id, $1, u.elev, u.kind, u.amne, u.arskurs, u.kurs, $2, u.sha, $3, $3
             FROM UNNEST($4::int8[], $5::text[], $6::text[], $7::text[], $8::int4[],
                         $9::text[], $10::text[]) AS u(id, elev, kind, amne, arskurs, kurs, sha)",
        )
        .bind(&doc.source)
        .bind(&doc.namespace)
        .bind(now)
        .bind(po.id)
        .bind(po.elev)
        .bind(po.kind)
        .bind(po.amne)
        .bind(po.arskurs)
        .bind(po.kurs)
        .bind(po.sha256)
        .execute(&mut *conn)
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
        .execute(&mut *conn)
        .await
        .map_err(query_err("deleting replaced delprovsresultat"))?;
        sqlx::query("DELETE FROM provtillfalle WHERE provomrade_id = ANY($1)")
            .bind(replace_ids)
            .execute(&mut *conn)
            .await
            .map_err(query_err("deleting replaced provtillfällen"))?;
    }
    // COPY writes the reserved ids into the identity column as given.
    if pt.rows > 0 {
        copy_in(
            conn,
            "COPY provtillfalle (id, provomrade_id, ordinal, skolform, uppdaterat, genomfort,
                 intedeltagit, sammanvagt_provbetyg) FROM STDIN",
            &pt,
        )
        .await
        .map_err(query_err("inserting provtillfällen"))?;
    }
    if dp.rows > 0 {
        copy_in(
            conn,
            "COPY delprovsresultat (provtillfalle_id, ordinal, typ, utfall, betyg, poang,
                 maluppfyllnad) FROM STDIN",
            &dp,
        )
        .await
        .map_err(query_err("inserting delprovsresultat"))?;
    }
    // A key comes once per batch (its elements are merged), so one statement never meets the
    // same row twice.
    sqlx::query(
        "INSERT INTO doc_touched (provomrade_id, prev_sha256, new_sha256, batches)
         SELECT u.id, u.prev, u.new, 1
         FROM UNNEST($1::int8[], $2::text[], $3::text[]) AS u(id, prev, new)
         ON CONFLICT (provomrade_id) DO UPDATE SET batches = doc_touched.batches + 1",
    )
    .bind(touches.provomrade_id)
    .bind(touches.prev)
    .bind(touches.new)
    .execute(&mut *conn)
    .await
    .map_err(query_err("recording touched provområden"))?;
    Ok(())
}

/// Writes quarantined elements in one statement.
async fn write_quarantine(
    conn: &mut PgConnection,
    doc: &Doc,
    rows: &[QuarantineRow],
) -> Result<(), StoreError> {
    let mut elev = Vec::with_capacity(rows.len());
    let mut reason = Vec::with_capacity(rows.len());
    let mut code = Vec::with_capacity(rows.len());
    let mut element = Vec::with_capacity(rows.len());
    let mut location = Vec::with_capacity(rows.len());
    let mut line = Vec::with_capacity(rows.len());
    let mut column = Vec::with_capacity(rows.len());
    let mut raw = Vec::with_capacity(rows.len());
    for q in rows {
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
    .bind(&doc.source)
    .bind(&doc.document)
    .bind(&doc.namespace)
    .bind(doc.now)
    .bind(elev)
    .bind(reason)
    .bind(code)
    .bind(element)
    .bind(location)
    .bind(line)
    .bind(column)
    .bind(raw)
    .execute(&mut *conn)
    .await
    .map_err(query_err("quarantining records"))?;
    Ok(())
}

/// Re-hashes the stored content of keys that several batches wrote, a page of keys per
/// round trip.
async fn settle_repeated_keys(conn: &mut PgConnection) -> Result<(), StoreError> {
    let mut after = 0i64;
    loop {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT provomrade_id FROM doc_touched
             WHERE batches > 1 AND provomrade_id > $1 ORDER BY provomrade_id LIMIT $2",
        )
        .bind(after)
        .bind(SETTLE_PAGE)
        .fetch_all(&mut *conn)
        .await
        .map_err(query_err("listing repeated keys"))?;
        let Some(last) = ids.last() else {
            return Ok(());
        };
        after = *last;
        let stored = load_provtillfallen(conn, &ids).await?;
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
        .execute(&mut *conn)
        .await
        .map_err(query_err("settling the hashes of repeated keys"))?;
    }
}

impl PgDocumentTx {
    /// Hands the gathered batch (and quarantined elements) to a writer task, once the batch
    /// before it is written.
    async fn flush(&mut self) -> Result<(), StoreError> {
        if self.batch.is_empty() && self.quarantined.is_empty() {
            return Ok(());
        }
        self.settle().await?;
        let mut tx = self.tx.take().ok_or_else(transaction_gone)?;
        let batch = Batch {
            records: std::mem::take(&mut self.batch),
            quarantined: std::mem::take(&mut self.quarantined),
        };
        self.batch_keys.clear();
        self.batch_child_rows = 0;
        self.quarantined_bytes = 0;
        let doc = Arc::clone(&self.doc);
        self.writing = Some(tokio::spawn(async move {
            let written = write_batch(&mut tx, &doc, batch).await;
            (tx, written)
        }));
        Ok(())
    }

    /// Waits for the batch in flight, if any, and returns the transaction.
    async fn settle(&mut self) -> Result<&mut Transaction<'static, Postgres>, StoreError> {
        if let Some(writing) = self.writing.take() {
            let (tx, written) = match writing.await {
                Ok(done) => done,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => return Err(transaction_gone()),
            };
            self.tx = Some(tx);
            let w = written?;
            self.summary.records += w.records;
            self.summary.provomrade_rows += w.provomrade_rows;
            self.summary.provtillfalle_rows += w.provtillfalle_rows;
            self.summary.delprovsresultat_rows += w.delprovsresultat_rows;
        }
        self.tx.as_mut().ok_or_else(transaction_gone)
    }
}

/// The writer task was cancelled with the transaction (only when the runtime shuts down).
fn transaction_gone() -> StoreError {
    StoreError::Cancelled
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

#[async_trait]
impl DocumentTx for PgDocumentTx {
    async fn apply(&mut self, record: Provomrade) -> Result<(), StoreError> {
        self.batch_child_rows += record
            .provtillfallen
            .iter()
            .map(|pt| 1 + pt.resultat.delprovsresultat().len())
            .sum::<usize>();
        match self.batch_keys.get(&record.key) {
            // A later element of a key in this batch: together they are the key's set.
            Some(&i) => {
                let p = &mut self.batch[i];
                p.records.push(record);
                p.rehash();
            }
            None => {
                self.batch_keys.insert(record.key.clone(), self.batch.len());
                let mut p = Pending {
                    records: vec![record],
                    sha256: String::new(),
                };
                p.rehash();
                self.batch.push(p);
            }
        }
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
            self.flush().await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<ApplySummary, StoreError> {
        self.flush().await?;
        let doc = Arc::clone(&self.doc);
        let change_log_lock = self.change_log_lock;
        let tx = self.settle().await?;
        settle_repeated_keys(tx).await?;
        // Only rows with something to change are written. A key one batch created already carries
        // its final hash, times and namespace, so only keys that existed before, or that several
        // batches wrote, are even joined (a first import updates nothing here).
        sqlx::query(
            "UPDATE provomrade p SET
                 content_sha256 = t.new_sha256,
                 namespace = $1,
                 synced_at = $2,
                 changed_at = CASE WHEN t.prev_sha256 IS NOT DISTINCT FROM t.new_sha256
                                   THEN p.changed_at ELSE $2 END
             FROM doc_touched t
             WHERE p.id = t.provomrade_id
               AND (t.prev_sha256 IS NOT NULL OR t.batches > 1)
               AND (p.content_sha256 IS DISTINCT FROM t.new_sha256
                    OR p.synced_at IS DISTINCT FROM $2
                    OR p.namespace IS DISTINCT FROM $1)",
        )
        .bind(&doc.namespace)
        .bind(doc.now)
        .execute(&mut **tx)
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
        .fetch_one(&mut **tx)
        .await
        .map_err(query_err("counting changes"))?;
        if cleared + changed > 0 {
            // Held to the commit: entries become visible in seq order (see the module docs).
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(change_log_lock)
                .execute(&mut **tx)
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
            .bind(doc.now)
            .execute(&mut **tx)
            .await
            .map_err(query_err("appending to change_log"))?;
        }
        self.summary.unchanged = unchanged as u64;
        self.summary.cleared = cleared as u64;
        self.summary.changed = changed as u64;
        Ok(self.summary.clone())
    }

    async fn record_window(&mut self, run: &SyncRun) -> Result<(), StoreError> {
        let now = self.doc.now;
        let tx = self.settle().await?;
        insert_run(tx, run, "ok").await?;
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
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(query_err("setting the first watermark"))?;
            if inserted.rows_affected() == 1 {
                return Ok(());
            }
            let found: Option<DateTime<Utc>> =
                sqlx::query_scalar("SELECT watermark_utc FROM sync_watermark WHERE source = $1")
                    .bind(&run.source)
                    .fetch_optional(&mut **tx)
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
        .fetch_optional(&mut **tx)
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
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(query_err("moving the watermark"))?;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        self.flush().await?;
        self.settle().await?;
        let tx = self.tx.take().ok_or_else(transaction_gone)?;
        tx.commit()
            .await
            .map_err(query_err("committing the document"))
    }

    async fn rollback(mut self: Box<Self>) -> Result<(), StoreError> {
        // A batch that failed is rolled back with the rest: its error was already reported.
        let _ = self.settle().await;
        match self.tx.take() {
            Some(tx) => tx
                .rollback()
                .await
                .map_err(query_err("rolling back the document")),
            None => Ok(()),
        }
    }
}

/// Reads the stored provtillfällen of some keys back into domain values, in order.
async fn load_provtillfallen(
    conn: &mut PgConnection,
    provomrade_ids: &[i64],
) -> Result<HashMap<i64, Vec<StoredProvtillfalle>>, StoreError> {
    let pts = sqlx::query(
        "SELECT provomrade_id, id, skolform, uppdaterat, genomfort, intedeltagit,
                sammanvagt_provbetyg
         FROM provtillfalle WHERE provomrade_id = ANY($1) ORDER BY provomrade_id, ordinal",
    )
    .bind(provomrade_ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(query_err("reading stored provtillfällen"))?;
    let pt_ids: Vec<i64> = pts.iter().map(|r| r.get(1)).collect();
    let delprov = sqlx::query(
        "SELECT provtillfalle_id, typ, utfall, betyg, poang, maluppfyllnad FROM delprovsresultat
         WHERE provtillfalle_id = ANY($1) ORDER BY provtillfalle_id, ordinal",
    )
    .bind(&pt_ids)
    .fetch_all(&mut *conn)
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
    use super::{lock_key, CopyRows, Field};

    #[test]
    fn copy_rows_escape_what_the_text_format_would_misread() {
        let mut rows = CopyRows::default();
        let date = chrono::NaiveDate::from_ymd_opt(2026, 2, 1).expect("a date");
        rows.push(&[
            Field::Int(-7),
            Field::Text("a\tb\nc\\d\re"),
            Field::Null,
            Field::Date(date),
            Field::Bool(true),
            Field::Bool(false),
            Field::Text("\\N"),
        ]);
        rows.push(&[Field::Text("")]);
        assert_eq!(
            rows.text,
            "-7\ta\\tb\\nc\\\\d\\re\t\\N\t2026-02-01\tt\tf\t\\\\N\n\n"
        );
        assert_eq!(rows.rows, 2);
    }

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

//! The SQLite backend: the dialect the replace engine's writes are executed in.
//!
//! Layout: the tables of `migrations/sqlite/`. The database runs in WAL mode with foreign keys on
//! and a busy timeout, so readers (a warehouse loader, `status`) never block the writer.
//!
//! One document is one `BEGIN IMMEDIATE` transaction: it takes SQLite's single write lock up front,
//! which makes it safe to hand out row ids from `MAX(id) + 1` for the rows it inserts. That saves a
//! `RETURNING` round trip per batch: every statement through sqlx is a trip to the connection's
//! worker thread, so writes go as multi-row `VALUES` statements of up to `ROWS_PER_STATEMENT` (1 000)
//! rows, each bound while the one before it executes.
//!
//! What to write is decided in [`super::replace`]; this module only says it in SQLite's SQL. The
//! document's tracking rows live in the temporary tables `doc_tracking` and `doc_held`, which
//! belong to the transaction's connection and spill to disk like any table. A key held back is
//! put back as committed by reading the committed rows on a reader connection: in WAL mode it
//! sees the database as it was before this transaction, which holds the only write lock.
//!
//! Writes go through a pool of one connection and reads through a pool of their own (see
//! [`SqliteStore`]): SQLite has one writer anyway, and one connection keeps one set of caches.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqliteConnection, Transaction};

use super::apply::{Applier, Dialect, DocInfo, Settle, Settled};
use super::governance;
use super::replace::{
    self, BatchLimits, BatchPlan, DocState, Fingerprint, Op, QuarantineRow, Stored, Target,
    Touched, Write,
};
use super::sql::{count, Sql, SqlTx, Value};
use super::{
    query_err, redact_url, timestamp, ApplyContext, DocumentTx, Leadership, RunKind, RunOutcome,
    RunRow, SoleLeadership, Store, StoreError, TableCounts, Watermark,
};
use crate::domain::{
    ContentHash, Delprovsresultat, Omrade, ProvomradeKey, Provtillfalle, ProvtillfalleResultat,
    StoredProvtillfalle, Utfall,
};
use crate::xml::{DocContext, RawHash};

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// Rows per multi-row INSERT. 1 000 rows of 8 columns stay far below SQLite's 32 766 bound
/// variables and amortise the per-statement round trip.
const ROWS_PER_STATEMENT: usize = 1000;
/// `provomrade` has 11 columns: half as many rows keep its statements in the same bound.
const PROVOMRADE_ROWS_PER_STATEMENT: usize = ROWS_PER_STATEMENT / 2;
/// Quarantine rows have 19 columns, and are rare.
const QUARANTINE_ROWS_PER_STATEMENT: usize = 100;
/// Keys per lookup statement (five bound values each).
const KEYS_PER_LOOKUP: usize = 500;
/// Statements of fewer rows are prepared each time they run (cheap at that size) rather than
/// kept; see [`statement_sizes`].
const MIN_CACHED_ROWS: usize = 16;
/// Prepared statements kept per connection: the recurring sizes of every statement kind
/// ([`is_cached`]: about 90) and the lookups' (16), with room for the rest; sqlx's default of
/// 100 would evict some of them on every document.
const STATEMENT_CACHE: usize = 256;
/// Prepared statements kept per reader connection: reads are few kinds of small statements.
const READER_STATEMENT_CACHE: usize = 32;
/// The writer's page cache, in KiB (SQLite's negative `cache_size`; its default is 2 MiB). A
/// first sync inserts all over three tables and their indexes, and with 2 MiB it read evicted
/// pages back (`pread64`): 8 MiB took a tenth off the CPU of a 200 000-pupil year for 7 MiB
/// more peak memory (61 MiB); with one writer connection there is one such cache.
const WRITER_CACHE_KIB: &str = "-8192";
/// The temporary tables of a document's transaction (see the module docs).
const TRACKING_TABLES: [&str; 2] = [
    "CREATE TEMP TABLE IF NOT EXISTS doc_tracking (
        provomrade_id INTEGER PRIMARY KEY,
        written       INTEGER NOT NULL,
        prev_content  TEXT,
        raw           BLOB,
        children      INTEGER NOT NULL,
        elements      INTEGER NOT NULL,
        settle        INTEGER NOT NULL,
        op            TEXT
    )",
    "CREATE TEMP TABLE IF NOT EXISTS doc_held (fp BLOB PRIMARY KEY) WITHOUT ROWID",
];
/// Reader connections at most: `status`, `/readyz`, a restore and a loader's report at once.
const READERS: u32 = 4;
/// A batch: as many keys as one lookup pair and a provomrade statement pair take; elements and
/// raw bytes capped so that a key repeated many times, or large elements, still flush.
const BATCH: BatchLimits = BatchLimits {
    keys: 1000,
    elements: 4000,
    bytes: 2 << 20,
};

// ---- Connecting: pragmas, WAL, file mode --------------------------------------------------------

/// Two pools on one file. `writer` holds one connection, and every transaction (documents,
/// `begin_sql`, migrations) takes it: SQLite lets one connection write at a time anyway, so a
/// second writer connection would only wait in SQLite's busy handler, and each one that ever
/// wrote keeps its own statement cache (the large multi-row INSERTs) and page cache filled.
/// With a pool of four, document transactions rotated over two or three connections and the
/// peak memory of a first sync varied with their number (measured: 59-63 MiB with two, 71-73
/// with three). `reader` serves every read outside a transaction, among them a document's
/// restores, which must not wait for the writer that their own transaction holds.
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// The scanner's advice, kept across documents (see [`Applier::new`]).
    build_ahead: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SqliteStore {
    /// Opens (creating if missing, readable by its owner only) the database at a
    /// `sqlite://PATH` URL. Migrations are not run.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_mode(url, DEFAULT_FILE_MODE).await
    }

    /// As [`SqliteStore::connect`], creating a missing file with permission bits `file_mode`
    /// (SQLite gives its `-wal` and `-shm` files the database file's mode). An existing file
    /// keeps the mode it has.
    pub async fn connect_with_mode(url: &str, file_mode: u32) -> Result<Self, StoreError> {
        Self::connect_with(url, file_mode, DEFAULT_BUSY_TIMEOUT).await
    }

    /// As [`SqliteStore::connect_with_mode`], with how long a statement waits for another
    /// process's lock before it fails with `SQLITE_BUSY`.
    pub async fn connect_with(
        url: &str,
        file_mode: u32,
        busy_timeout: Duration,
    ) -> Result<Self, StoreError> {
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
            .busy_timeout(busy_timeout)
            // Checkpoint every 64 MiB of WAL rather than 4 MiB: a day's window marks a few
            // thousand rows all over provomrade as synced, and the default checkpointed every
            // few windows, writing the same pages back again and again (measured: 10 % off a
            // catch-up of 317 daily windows, first sync and re-read alike).
            .pragma("wal_autocheckpoint", "16384");
        create_with_mode(options.get_filename(), file_mode).map_err(|e| StoreError::Connect {
            url: redact_url(url),
            source: sqlx::Error::Io(e),
        })?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // Waiting for the writer connection is waiting for SQLite's write lock, held by
            // this process: as long as waiting for another process's lock may take.
            .acquire_timeout(busy_timeout)
            // A connection whose transaction is still open when it comes back is closed, not
            // reused. A COMMIT that fails with SQLITE_FULL makes SQLite roll the transaction
            // back by itself; sqlx's ROLLBACK on drop then fails and its count of open
            // transactions stays at one, so every later `begin` on that connection would fail
            // ("non-zero transaction depth") and a daemon on a disk that was full would never
            // write again, whatever room it got. (A rollback on drop still in flight also closes
            // the connection: a reconnect is cheap, and such drops are failed windows.)
            .after_release(|conn, _| {
                Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) })
            })
            // A document's tracking tables, made once per connection rather than in every
            // document's transaction (two statements, each a trip to the connection's worker
            // thread, in every window of an unchanged re-read). They outlive transactions, and
            // every document leaves them empty (rolled back, or cleared in `finish`).
            .after_connect(|conn, _| {
                Box::pin(async move {
                    for sql in TRACKING_TABLES {
                        sqlx::query(sql).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(
                options
                    .clone()
                    .statement_cache_capacity(STATEMENT_CACHE)
                    .pragma("cache_size", WRITER_CACHE_KIB),
            )
            .await
            .map_err(connect_err)?;
        // Opened when first read through (a restore is rare; `status` and `/readyz` read).
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(busy_timeout)
            .connect_lazy_with(options.statement_cache_capacity(READER_STATEMENT_CACHE));
        Ok(SqliteStore {
            writer,
            reader,
            build_ahead: Default::default(),
        })
    }

    /// The readers' pool, for read-only queries in tests and reports.
    pub fn pool(&self) -> &SqlitePool {
        &self.reader
    }
}

/// How long a statement waits for another process's lock unless `database.busy_timeout` says
/// otherwise: longer than any of our own transactions holds it, short enough that a window
/// meeting a long backup fails and is retried after the daemon's back-off.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Who may read a database file nprov-sync creates, unless `database.file_mode` says otherwise:
/// it holds pupils' results, so its owner only.
pub const DEFAULT_FILE_MODE: u32 = 0o600;

/// Creates the database file with `mode` if it does not exist yet, so that it is never readable
/// by others even for a moment (SQLite would create it with 0644 less the umask). An in-memory
/// database has no file.
fn create_with_mode(path: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if path.as_os_str().is_empty() || path == std::path::Path::new(":memory:") {
        return Ok(());
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        // The umask may have taken bits the configuration asked for (0640 under umask 077):
        // the configured mode is what the user means.
        Ok(file) => file.set_permissions(std::fs::Permissions::from_mode(mode)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

// ---- The store: what commands and the daemon ask of the database --------------------------------

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // Before anything is written: a file a newer build migrated is left as it is.
        self.schema_state().await?.check()?;
        MIGRATOR.run(&self.writer).await?;
        // The data contract, rewritten whole when it differs: a changed description reaches an
        // existing file, and a start that changes nothing writes nothing (every `sync --once`
        // from a timer migrates first; the contract is 354 rows).
        let context = "writing the data contract";
        let mut wanted: Vec<(String, Option<String>, String)> = super::contract::described()
            .map(|d| (d.object.to_owned(), d.column.map(str::to_owned), d.text))
            .collect();
        wanted.sort();
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query_err(context))?;
        let mut stored: Vec<(String, Option<String>, String)> =
            sqlx::query_as("SELECT object, column_name, description FROM data_contract")
                .fetch_all(&mut *tx)
                .await
                .map_err(query_err(context))?;
        // Sorted here, the same way as `wanted`: no SQL ordering to keep in step with Rust's.
        stored.sort();
        if stored == wanted {
            // Awaited rather than dropped: a connection that comes back inside a transaction is
            // closed (see `after_release`), and this is the writer's only one.
            tx.rollback().await.map_err(query_err(context))?;
            return Ok(());
        }
        sqlx::query("DELETE FROM data_contract")
            .execute(&mut *tx)
            .await
            .map_err(query_err(context))?;
        for (object, column, about) in &wanted {
            sqlx::query(
                "INSERT INTO data_contract (object, column_name, description) VALUES (?, ?, ?)",
            )
            .bind(object)
            .bind(column)
            .bind(about)
            .execute(&mut *tx)
            .await
            .map_err(query_err(context))?;
        }
        tx.commit()
            .await
            .map_err(query_err("writing the data contract"))?;
        Ok(())
    }

    async fn applied_migrations(&self) -> Result<Vec<i64>, StoreError> {
        let context = "reading the applied migrations";
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
        )
        .fetch_one(&self.reader)
        .await
        .map_err(query_err(context))?;
        if !exists {
            return Ok(Vec::new());
        }
        sqlx::query_scalar(super::APPLIED_VERSIONS_SQL)
            .fetch_all(&self.reader)
            .await
            .map_err(query_err(context))
    }

    fn migrator(&self) -> &'static Migrator {
        &MIGRATOR
    }

    async fn begin_sql(&self, context: &'static str) -> Result<Box<dyn SqlTx>, StoreError> {
        // IMMEDIATE: the write lock now, so the operation never interleaves with a window (and
        // never fails half way for want of it).
        let tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query_err(context))?;
        Ok(Box::new(tx))
    }

    async fn source_rows(&self) -> Result<Vec<governance::SourceState>, StoreError> {
        let rows = sqlx::query(governance::SOURCES_SQL)
            .fetch_all(&self.reader)
            .await
            .map_err(query_err("listing sources"))?;
        Ok(rows
            .iter()
            .map(|r| governance::SourceState {
                source: r.get(0),
                watermark: None,
                provomrade: count(r.get(1)),
                runs: count(r.get(2)),
                last_ok: r.get(3),
            })
            .collect())
    }

    async fn begin(
        &self,
        ctx: ApplyContext,
        doc: std::sync::Arc<DocContext>,
    ) -> Result<Box<dyn DocumentTx>, StoreError> {
        let tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query_err("starting a transaction"))?;
        let info = DocInfo {
            source: ctx.source,
            namespace: doc.namespace.clone(),
            document: ctx.document,
            now: ctx.now,
        };
        let dialect = SqliteDialect {
            tx,
            source: info.source.clone(),
            reader: self.reader.clone(),
            now: timestamp(ctx.now),
            ids: None,
            tracked: false,
        };
        Ok(Box::new(Applier::new(
            Box::new(dialect),
            doc,
            info,
            BATCH,
            DocState::default(),
            self.build_ahead.clone(),
        )))
    }

    async fn table_counts(&self) -> Result<TableCounts, StoreError> {
        sqlx::query(TableCounts::SQL)
            .fetch_one(&self.reader)
            .await
            .and_then(|row| TableCounts::from_row(&row))
            .map_err(query_err("counting rows"))
    }

    async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    async fn watermark(&self, source: &str) -> Result<Option<Watermark>, StoreError> {
        let mut conn = self
            .reader
            .acquire()
            .await
            .map_err(query_err("reading the watermark"))?;
        read_watermark(&mut conn, source).await
    }

    async fn read_texts(
        &self,
        sql: &str,
        values: &[Value<'_>],
        context: &'static str,
    ) -> Result<Vec<Vec<Option<String>>>, StoreError> {
        let rows = bind_values(sqlx::query(sql), values)
            .fetch_all(&self.reader)
            .await
            .map_err(query_err(context))?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| row.try_get::<Option<String>, _>(i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()
            .map_err(query_err(context))
    }

    async fn recent_runs(&self, source: &str, limit: u32) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(super::sql::RECENT_RUNS_SQL)
            .bind(source)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(query_err("reading recent windows"))?;
        rows.iter()
            .map(|r| {
                Ok(RunRow {
                    kind: RunKind::parse(r.get(0))?,
                    from_local: r.get(1),
                    tom_local: r.get(2),
                    outcome: RunOutcome::parse(r.get(3))?,
                    finished_at: r.get(4),
                    http_status: r.get(5),
                    records: r.get(6),
                    changed: r.get(7),
                    cleared: r.get(8),
                    quarantined: r.get(9),
                    error: r.get(10),
                })
            })
            .collect()
    }

    async fn try_lead(&self, _source: &str) -> Result<Option<Box<dyn Leadership>>, StoreError> {
        Ok(Some(Box::new(SoleLeadership)))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(query_err("checking the database"))?;
        Ok(())
    }
}

// ---- Store-core SQL on SQLite (sql::Sql) --------------------------------------------------------

pub(crate) fn parse_timestamp(s: &str) -> Result<chrono::DateTime<chrono::Utc>, StoreError> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| StoreError::Corrupt(format!("stored timestamp {s:?}: {e}")))
}

/// A source's watermark as this file keeps it (instants as RFC 3339 text, the local time as the
/// API's text).
async fn read_watermark(
    conn: &mut SqliteConnection,
    source: &str,
) -> Result<Option<Watermark>, StoreError> {
    let row: Option<(String, String, String)> = sqlx::query_as(
        "SELECT watermark_utc, watermark_local, updated_at FROM sync_watermark WHERE source = $1",
    )
    .bind(source)
    .fetch_optional(conn)
    .await
    .map_err(query_err("reading the watermark"))?;
    let Some((utc, local, updated)) = row else {
        return Ok(None);
    };
    Ok(Some(Watermark {
        utc: parse_timestamp(&utc)?,
        local: chrono::NaiveDateTime::parse_from_str(&local, crate::window::API_FORMAT)
            .map_err(|e| StoreError::Corrupt(format!("stored watermark {local:?}: {e}")))?,
        updated_at: parse_timestamp(&updated)?,
    }))
}

/// Store-core SQL on this backend: a store-core operation's transaction (begun `IMMEDIATE`)
/// and a document's alike.
#[async_trait]
impl Sql for Transaction<'static, Sqlite> {
    async fn execute(
        &mut self,
        sql: &str,
        values: &[Value<'_>],
        context: &'static str,
    ) -> Result<u64, StoreError> {
        bind_values(sqlx::query(sql), values)
            .execute(&mut **self)
            .await
            .map(|r| r.rows_affected())
            .map_err(query_err(context))
    }

    async fn counts(
        &mut self,
        sql: &str,
        values: &[Value<'_>],
        context: &'static str,
    ) -> Result<Vec<u64>, StoreError> {
        let row = bind_values(sqlx::query(sql), values)
            .fetch_one(&mut **self)
            .await
            .map_err(query_err(context))?;
        (0..row.len())
            .map(|i| row.try_get::<i64, _>(i).map(count))
            .collect::<Result<_, _>>()
            .map_err(query_err(context))
    }

    async fn texts(
        &mut self,
        sql: &str,
        values: &[Value<'_>],
        context: &'static str,
    ) -> Result<Vec<Vec<Option<String>>>, StoreError> {
        let rows = bind_values(sqlx::query(sql), values)
            .fetch_all(&mut **self)
            .await
            .map_err(query_err(context))?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| row.try_get::<Option<String>, _>(i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()
            .map_err(query_err(context))
    }

    async fn lock_writers(&mut self, _sql: &str, _values: &[Value<'_>]) -> Result<(), StoreError> {
        // BEGIN IMMEDIATE took the database's only write lock: no window is being written.
        Ok(())
    }

    async fn watermark(&mut self, source: &str) -> Result<Option<Watermark>, StoreError> {
        read_watermark(self, source).await
    }
}

#[async_trait]
impl SqlTx for Transaction<'static, Sqlite> {
    async fn commit(self: Box<Self>, context: &'static str) -> Result<(), StoreError> {
        Transaction::commit(*self).await.map_err(query_err(context))
    }
}

/// Binds the store core's values the way this file keeps them: instants as fixed-width
/// RFC 3339 text (which sorts as time), local times as the API's text.
fn bind_values<'q>(
    mut query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    values: &[Value<'q>],
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    for value in values {
        query = match *value {
            Value::Text(t) => query.bind(t),
            Value::OptText(t) => query.bind(t),
            Value::Int(n) => query.bind(n),
            Value::OptInt32(n) => query.bind(n.map(i64::from)),
            Value::Instant(t) => query.bind(timestamp(t)),
            Value::OptInstant(t) => query.bind(t.map(timestamp)),
            Value::Bool(b) => query.bind(b),
            Value::OptBool(b) => query.bind(b),
            Value::Local(t) => query.bind(t.format(crate::window::API_FORMAT).to_string()),
        };
    }
    query
}

// ---- A document's transaction: multi-row statements ---------------------------------------------

/// One document's transaction, as the replace engine drives it.
struct SqliteDialect {
    tx: Transaction<'static, Sqlite>,
    /// The document's source, for lookups.
    source: String,
    /// For reading the committed state, which the transaction's own connection no longer sees.
    reader: SqlitePool,
    /// The document's timestamp in the stored form.
    now: String,
    /// The next free row ids, read when the document first inserts (an unchanged re-read never
    /// does).
    ids: Option<NextIds>,
    /// Whether a row went into the tracking tables: a document that wrote none (an unchanged
    /// re-read's) has nothing to log or clear in `finish`.
    tracked: bool,
}

/// The next row id of each table this transaction inserts into.
#[derive(Clone, Copy)]
struct NextIds {
    provomrade: i64,
    provtillfalle: i64,
    delprov: i64,
}

/// A provtillfälle row to insert, borrowing from the plan.
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

/// A tracking row to write.
struct TrackRow<'a> {
    id: i64,
    t: &'a Touched,
}

/// Values every statement of a document may need.
struct Common<'a> {
    source: &'a str,
    namespace: &'a str,
    document: &'a str,
    now: &'a str,
}

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// One multi-row statement of a batch.
enum Stmt<'a> {
    Untrack(&'a [i64]),
    DeleteDelprov(&'a [i64]),
    DeleteProvtillfalle(&'a [i64]),
    /// New keys, and the id of the first.
    Provomrade(&'a [replace::NewKey], i64),
    /// Replaced keys' new hashes.
    Replaced(&'a [(i64, ContentHash, RawHash)]),
    Provtillfalle(&'a [PtRow<'a>]),
    Delprov(&'a [DpRow<'a>]),
    Track(&'a [TrackRow<'a>]),
    SpillUnchanged(&'a [i64]),
    Rehash(&'a [(i64, RawHash)]),
    SpillHeld(&'a [[u8; 16]]),
    Quarantine(&'a [QuarantineRow]),
}

/// What a [`Stmt`] is, without its rows: with a row count, the key of its SQL text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum StmtKind {
    Untrack,
    DeleteDelprov,
    DeleteProvtillfalle,
    Provomrade,
    Replaced,
    Provtillfalle,
    Delprov,
    Track,
    SpillUnchanged,
    Rehash,
    SpillHeld,
    Quarantine,
}

/// SQL texts of the recurring statement sizes ([`is_cached`]), each built once per process: a
/// statement of 1 000 rows is 1 000 copies of its row's placeholders joined, and building them
/// for every statement was about 2 % of a first sync's CPU. Bounded: a text per statement kind
/// and recurring size, about a megabyte in all.
static SQL_TEXTS: std::sync::LazyLock<std::sync::Mutex<SqlTexts>> =
    std::sync::LazyLock::new(Default::default);

type SqlTexts = HashMap<(StmtKind, usize), std::sync::Arc<str>>;

/// A statement's SQL text, from [`SQL_TEXTS`] when its size recurs.
fn sql_text(stmt: &Stmt<'_>) -> std::sync::Arc<str> {
    let rows = stmt.rows();
    if !is_cached(rows) {
        return stmt.sql().into();
    }
    // A poisoned lock only means another thread panicked while inserting a pure function's
    // value: what is there is still right.
    let mut texts = SQL_TEXTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    texts
        .entry((stmt.kind(), rows))
        .or_insert_with(|| stmt.sql().into())
        .clone()
}

impl Stmt<'_> {
    fn kind(&self) -> StmtKind {
        match self {
            Stmt::Untrack(_) => StmtKind::Untrack,
            Stmt::DeleteDelprov(_) => StmtKind::DeleteDelprov,
            Stmt::DeleteProvtillfalle(_) => StmtKind::DeleteProvtillfalle,
            Stmt::Provomrade(..) => StmtKind::Provomrade,
            Stmt::Replaced(_) => StmtKind::Replaced,
            Stmt::Provtillfalle(_) => StmtKind::Provtillfalle,
            Stmt::Delprov(_) => StmtKind::Delprov,
            Stmt::Track(_) => StmtKind::Track,
            Stmt::SpillUnchanged(_) => StmtKind::SpillUnchanged,
            Stmt::Rehash(_) => StmtKind::Rehash,
            Stmt::SpillHeld(_) => StmtKind::SpillHeld,
            Stmt::Quarantine(_) => StmtKind::Quarantine,
        }
    }

    /// Whether the statement puts rows into the document's tracking tables.
    fn tracks(&self) -> bool {
        match self {
            Stmt::Track(_) | Stmt::SpillUnchanged(_) | Stmt::SpillHeld(_) => true,
            Stmt::Untrack(_)
            | Stmt::DeleteDelprov(_)
            | Stmt::DeleteProvtillfalle(_)
            | Stmt::Provomrade(..)
            | Stmt::Replaced(_)
            | Stmt::Provtillfalle(_)
            | Stmt::Delprov(_)
            | Stmt::Rehash(_)
            | Stmt::Quarantine(_) => false,
        }
    }

    fn rows(&self) -> usize {
        match self {
            Stmt::Untrack(r)
            | Stmt::DeleteDelprov(r)
            | Stmt::DeleteProvtillfalle(r)
            | Stmt::SpillUnchanged(r) => r.len(),
            Stmt::Provomrade(r, _) => r.len(),
            Stmt::Replaced(r) => r.len(),
            Stmt::Provtillfalle(r) => r.len(),
            Stmt::Delprov(r) => r.len(),
            Stmt::Track(r) => r.len(),
            Stmt::Rehash(r) => r.len(),
            Stmt::SpillHeld(r) => r.len(),
            Stmt::Quarantine(r) => r.len(),
        }
    }

    fn context(&self) -> &'static str {
        match self {
            Stmt::Untrack(_) => "dropping tracking rows of held keys",
            Stmt::DeleteDelprov(_) => "deleting replaced delprovsresultat",
            Stmt::DeleteProvtillfalle(_) => "deleting replaced provtillfällen",
            Stmt::Provomrade(..) => "inserting provområden",
            Stmt::Replaced(_) => "updating replaced provområden",
            Stmt::Provtillfalle(_) => "inserting provtillfällen",
            Stmt::Delprov(_) => "inserting delprovsresultat",
            Stmt::Track(_) | Stmt::SpillUnchanged(_) => "tracking the document's keys",
            Stmt::Rehash(_) => "writing raw hashes of keys unchanged by content",
            Stmt::SpillHeld(_) => "tracking held keys",
            Stmt::Quarantine(_) => "quarantining elements",
        }
    }

    fn sql(&self) -> String {
        let n = self.rows();
        let list = || format!("({})", vec!["?"; n].join(", "));
        match self {
            Stmt::Untrack(_) => format!(
                "DELETE FROM temp.doc_tracking WHERE provomrade_id IN {}",
                list()
            ),
            Stmt::DeleteDelprov(_) => format!(
                "DELETE FROM delprovsresultat WHERE provtillfalle_id IN
                     (SELECT id FROM provtillfalle WHERE provomrade_id IN {})",
                list()
            ),
            Stmt::DeleteProvtillfalle(_) => format!(
                "DELETE FROM provtillfalle WHERE provomrade_id IN {}",
                list()
            ),
            Stmt::Provomrade(..) => format!(
                "INSERT INTO provomrade (id, source, elev, kind, amne, arskurs, kurs, namespace,
                     content_sha256, raw_sha256, changed_at) VALUES {}",
                placeholders(n, 11)
            ),
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
            Stmt::Replaced(_) => format!(
                "UPDATE provomrade SET content_sha256 = v.column2, raw_sha256 = v.column3,
                     changed_at = ?, namespace = ?
                 FROM (VALUES {}) AS v WHERE provomrade.id = v.column1",
                placeholders(n, 3)
            ),
            Stmt::Track(_) => format!(
                "INSERT INTO temp.doc_tracking (provomrade_id, written, prev_content, raw,
                     children, elements, settle, op) VALUES {}
                 ON CONFLICT (provomrade_id) DO UPDATE SET
                     written = excluded.written, prev_content = excluded.prev_content,
                     raw = excluded.raw, children = excluded.children,
                     elements = excluded.elements, settle = excluded.settle, op = excluded.op",
                placeholders(n, 8)
            ),
            Stmt::SpillUnchanged(_) => format!(
                "INSERT INTO temp.doc_tracking (provomrade_id, written, children, elements, settle)
                 VALUES {} ON CONFLICT (provomrade_id) DO NOTHING",
                placeholders_with(n, 1, ", 0, 0, 0, 0")
            ),
            Stmt::Rehash(_) => format!(
                "UPDATE provomrade SET raw_sha256 = v.column2, namespace = ?
                 FROM (VALUES {}) AS v WHERE provomrade.id = v.column1",
                placeholders(n, 2)
            ),
            Stmt::SpillHeld(_) => format!(
                "INSERT OR IGNORE INTO temp.doc_held (fp) VALUES {}",
                placeholders(n, 1)
            ),
            Stmt::Quarantine(_) => format!(
                "INSERT INTO quarantine (source, elev, kind, amne, arskurs, kurs, element_sha256,
                     reason, error_code, element, location, line, \"column\", document, namespace,
                     raw_xml, first_seen_at, last_seen_at, times_seen) VALUES {}
                 ON CONFLICT (source, element_sha256) DO UPDATE SET
                     reason = excluded.reason, error_code = excluded.error_code,
                     element = excluded.element, location = excluded.location,
                     line = excluded.line, \"column\" = excluded.\"column\",
                     document = excluded.document, namespace = excluded.namespace,
                     raw_xml = COALESCE(excluded.raw_xml, quarantine.raw_xml),
                     last_seen_at = excluded.last_seen_at,
                     times_seen = quarantine.times_seen + excluded.times_seen",
                placeholders(n, 19)
            ),
        }
    }

    fn bind<'q>(&'q self, sql: &'q str, c: &Common<'q>) -> SqliteQuery<'q> {
        let mut q = sqlx::query(sql).persistent(is_cached(self.rows()));
        match self {
            Stmt::Untrack(ids)
            | Stmt::DeleteDelprov(ids)
            | Stmt::DeleteProvtillfalle(ids)
            | Stmt::SpillUnchanged(ids) => {
                for id in ids.iter() {
                    q = q.bind(*id);
                }
            }
            Stmt::Provomrade(keys, first_id) => {
                for (i, k) in keys.iter().enumerate() {
                    q = q
                        .bind(first_id + i as i64)
                        .bind(c.source)
                        .bind(k.key.elev.as_str())
                        .bind(k.key.omrade.kind())
                        .bind(k.key.omrade.amne())
                        .bind(k.key.omrade.arskurs().map(|a| a.get() as i64))
                        .bind(k.key.omrade.kurs())
                        .bind(c.namespace)
                        .bind(k.content.as_str())
                        .bind(&k.raw[..])
                        .bind(c.now);
                }
            }
            Stmt::Replaced(rows) => {
                // The SET clause's values come first in the text.
                q = q.bind(c.now).bind(c.namespace);
                for (id, content, raw) in rows.iter() {
                    q = q.bind(*id).bind(content.as_str()).bind(&raw[..]);
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
            Stmt::Track(rows) => {
                for r in rows.iter() {
                    q = q
                        .bind(r.id)
                        .bind(r.t.written)
                        .bind(r.t.prev_content.as_deref())
                        .bind(r.t.raw.as_ref().map(|r| &r[..]))
                        .bind(r.t.children)
                        .bind(r.t.elements)
                        .bind(r.t.settle)
                        .bind(r.t.op.map(Op::as_str));
                }
            }
            Stmt::Rehash(rows) => {
                q = q.bind(c.namespace);
                for (id, raw) in rows.iter() {
                    q = q.bind(*id).bind(&raw[..]);
                }
            }
            Stmt::SpillHeld(fps) => {
                for fp in fps.iter() {
                    q = q.bind(&fp[..]);
                }
            }
            Stmt::Quarantine(rows) => {
                for r in rows.iter() {
                    let key = r.key.as_ref();
                    q = q
                        .bind(c.source)
                        .bind(r.elev.as_deref())
                        .bind(key.map(|k| k.omrade.kind()))
                        .bind(key.and_then(|k| k.omrade.amne()))
                        .bind(key.and_then(|k| k.omrade.arskurs()).map(|a| a.get() as i64))
                        .bind(key.and_then(|k| k.omrade.kurs()))
                        .bind(crate::domain::hex32(&r.raw_sha256))
                        .bind(r.reason.as_str())
                        .bind(r.error_code)
                        .bind(r.element.as_str())
                        .bind(r.location.to_string())
                        .bind(r.location.line as i64)
                        .bind(r.location.column as i64)
                        .bind(c.document)
                        .bind(c.namespace)
                        .bind(r.raw_xml.as_deref())
                        .bind(c.now)
                        .bind(c.now)
                        .bind(r.times as i64);
                }
            }
        }
        q
    }
}

/// A lookup chunk's JSON row for a key that is not simply unchanged: batch index, id, raw hash
/// equal, stored content and raw hash (hex), then the tracking row's columns (all null when
/// untracked).
type LookupRow = (
    usize,
    i64,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

// ---- Lookup results -----------------------------------------------------------------------------

/// A raw hash as the lookup's JSON carries it (hex; JSON has no blobs).
fn raw_from_hex(text: Option<&str>) -> Option<RawHash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text?, &mut out).ok().map(|()| out)
}

/// Puts a lookup chunk's unchanged keys, `index,id,index,id…`, in their places: raw hash equal,
/// and nothing else needed (the content is that of the batch's elements).
fn fill_unchanged(found: &mut [Option<Stored>], list: &str) -> Result<(), StoreError> {
    let corrupt = || StoreError::Corrupt(format!("lookup result {list:.80}: not index,id pairs"));
    let mut numbers = list.split(',').filter(|n| !n.is_empty());
    while let Some(i) = numbers.next() {
        let i: usize = i.parse().map_err(|_| corrupt())?;
        let id: i64 = numbers
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(corrupt)?;
        let slot = found
            .get_mut(i)
            .ok_or_else(|| StoreError::Corrupt(format!("lookup returned index {i}")))?;
        *slot = Some(Stored {
            id,
            raw_matches: true,
            content: None,
            raw: None,
            touched: None,
        });
    }
    Ok(())
}

/// Puts a lookup chunk's other rows in their places.
fn fill(found: &mut [Option<Stored>], json: &str) -> Result<(), StoreError> {
    let rows: Vec<LookupRow> = serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("lookup result {json:.80}: {e}")))?;
    for (i, id, eq, content, raw, written, prev, t_raw, children, elements, settle, op) in rows {
        let slot = found
            .get_mut(i)
            .ok_or_else(|| StoreError::Corrupt(format!("lookup returned index {i}")))?;
        *slot = Some(Stored {
            id,
            raw_matches: eq != 0,
            content,
            raw: raw_from_hex(raw.as_deref()),
            touched: written.map(|w| Touched {
                written: w != 0,
                prev_content: prev,
                raw: raw_from_hex(t_raw.as_deref()),
                children: children.unwrap_or(0),
                elements: elements.unwrap_or(0),
                settle: settle.unwrap_or(0) != 0,
                op: op.as_deref().and_then(Op::parse),
            }),
        });
    }
    Ok(())
}

// ---- A document's transaction: ids, the statement pipeline, restores ----------------------------

impl SqliteDialect {
    /// The next free ids. The transaction holds SQLite's only write lock (BEGIN IMMEDIATE), so
    /// `MAX(id) + 1` stays free until it commits.
    async fn ids(&mut self) -> Result<NextIds, StoreError> {
        if let Some(ids) = self.ids {
            return Ok(ids);
        }
        let (po, pt, dp): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT COALESCE(MAX(id), 0) FROM provomrade),
                    (SELECT COALESCE(MAX(id), 0) FROM provtillfalle),
                    (SELECT COALESCE(MAX(id), 0) FROM delprovsresultat)",
        )
        .fetch_one(&mut *self.tx)
        .await
        .map_err(query_err("reading the highest row ids"))?;
        let ids = NextIds {
            provomrade: po + 1,
            provtillfalle: pt + 1,
            delprov: dp + 1,
        };
        self.ids = Some(ids);
        Ok(ids)
    }

    /// Runs statements in order, each bound while the one before it executes on sqlx's worker
    /// thread (binding thousands of values is real work).
    async fn run(&mut self, stmts: &[Stmt<'_>], c: &Common<'_>) -> Result<(), StoreError> {
        // Set before they run: a statement that fails half way fails the document anyway.
        self.tracked |= stmts.iter().any(Stmt::tracks);
        let sqls: Vec<std::sync::Arc<str>> = stmts.iter().map(sql_text).collect();
        let mut queries = stmts
            .iter()
            .zip(&sqls)
            .map(|(stmt, sql)| (stmt.bind(sql, c), stmt.context()));
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
                None => return Ok(()),
            }
        }
    }

    /// Puts a key back as committed before this document: read on another connection, which
    /// still sees the database without this transaction's writes.
    async fn restore(&mut self, id: i64, doc: &DocInfo) -> Result<(), StoreError> {
        let mut conn = self
            .reader
            .acquire()
            .await
            .map_err(query_err("reading a held key as committed"))?;
        let committed: Option<(String, Option<Vec<u8>>, String, String)> = sqlx::query_as(
            "SELECT content_sha256, raw_sha256, changed_at, namespace FROM provomrade WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(query_err("reading a held key as committed"))?;
        let children = load_children(&mut conn, id, 0, i64::MAX).await?;
        drop(conn);
        for sql in [
            "DELETE FROM provtillfalle WHERE provomrade_id = ?",
            "DELETE FROM temp.doc_tracking WHERE provomrade_id = ?",
        ] {
            sqlx::query(sql)
                .bind(id)
                .execute(&mut *self.tx)
                .await
                .map_err(query_err("undoing a held key"))?;
        }
        let Some((content, raw, changed_at, namespace)) = committed else {
            // Created by this document: it goes.
            sqlx::query("DELETE FROM provomrade WHERE id = ?")
                .bind(id)
                .execute(&mut *self.tx)
                .await
                .map_err(query_err("undoing a held key"))?;
            return Ok(());
        };
        sqlx::query(
            "UPDATE provomrade SET content_sha256 = ?, raw_sha256 = ?, changed_at = ?,
                 namespace = ? WHERE id = ?",
        )
        .bind(content)
        .bind(raw)
        .bind(changed_at)
        .bind(namespace)
        .bind(id)
        .execute(&mut *self.tx)
        .await
        .map_err(query_err("undoing a held key"))?;
        let mut next = self.ids().await?;
        let mut pt_rows = Vec::new();
        for (ordinal, s) in children.iter().enumerate() {
            pt_rows.push(PtRow {
                id: next.provtillfalle,
                provomrade_id: id,
                ordinal: ordinal as i64,
                skolform: &s.skolform,
                pt: &s.provtillfalle,
            });
            next.provtillfalle += 1;
        }
        let dp_rows = delprov_rows(&mut next, &pt_rows);
        self.ids = Some(next);
        let mut stmts = Vec::new();
        stmts.extend(chunked(&pt_rows, ROWS_PER_STATEMENT, Stmt::Provtillfalle));
        stmts.extend(chunked(&dp_rows, ROWS_PER_STATEMENT, Stmt::Delprov));
        let now = self.now.clone();
        let common = Common {
            source: &doc.source,
            namespace: &doc.namespace,
            document: &doc.document,
            now: &now,
        };
        self.run(&stmts, &common).await
    }
}

/// The row id a plan's target names, given the id of the plan's first new key.
fn id_of(first_new: i64, t: Target) -> i64 {
    match t {
        Target::New(i) => first_new + i as i64,
        Target::Id(id) => id,
    }
}

/// One statement per `n` rows, the rest in statements of the sizes [`statement_sizes`] gives.
fn chunked<'a, T>(rows: &'a [T], n: usize, stmt: fn(&'a [T]) -> Stmt<'a>) -> Vec<Stmt<'a>> {
    split(rows, n).map(|(_, chunk)| stmt(chunk)).collect()
}

/// `rows` in consecutive chunks of the sizes [`statement_sizes`] gives, each with its offset.
fn split<T>(rows: &[T], n: usize) -> impl Iterator<Item = (usize, &[T])> {
    statement_sizes(rows.len(), n).scan(0, move |at, size| {
        let start = *at;
        *at += size;
        Some((start, &rows[start..start + size]))
    })
}

/// The statement sizes `len` rows go in: as many of `n` as fit, then the rest in decreasing
/// powers of two down to [`MIN_CACHED_ROWS`], then what is left. Every size but the last small
/// one recurs from batch to batch, so its statement is prepared once per connection and kept
/// ([`is_cached`]); a batch's tail of any size used to be prepared anew each time (measured:
/// SQLite's parser was 2 % of a first sync's CPU).
fn statement_sizes(len: usize, n: usize) -> impl Iterator<Item = usize> {
    let full = len / n.max(1);
    let mut rest = len - full * n.max(1);
    std::iter::repeat(n)
        .take(full)
        .chain(std::iter::from_fn(move || {
            if rest == 0 {
                return None;
            }
            let size = if rest >= MIN_CACHED_ROWS {
                1 << rest.ilog2()
            } else {
                rest
            };
            rest -= size;
            Some(size)
        }))
}

/// The delprovsresultat rows of some provtillfalle rows, with ids from `next`.
fn delprov_rows<'a>(next: &mut NextIds, pts: &[PtRow<'a>]) -> Vec<DpRow<'a>> {
    let mut out = Vec::new();
    for pt in pts {
        for (i, d) in pt.pt.resultat.delprovsresultat().iter().enumerate() {
            out.push(DpRow {
                id: next.delprov,
                provtillfalle_id: pt.id,
                ordinal: i as i64,
                d,
            });
            next.delprov += 1;
        }
    }
    out
}

// ---- A document's transaction: lookups, the plan's writes, settling, change_log -----------------

#[async_trait]
impl Dialect for SqliteDialect {
    /// Each chunk of keys comes back as ONE row holding a JSON array of small tuples, raw hashes
    /// compared in SQL (so an unchanged key sends no hash back): sqlx hands every result row over
    /// from its worker thread separately, and a row per key cost more than the rest of an
    /// unchanged re-read together (measured: 0.8 s of 1.8 s for 111 000 keys). Chunks come in a
    /// few fixed sizes, the last one padded: a statement of a size seen before is not prepared
    /// again (preparing lookups of every odd size was 17 % of a re-read of daily windows).
    async fn lookup(
        &mut self,
        keys: &[&ProvomradeKey],
        raws: &[RawHash],
    ) -> Result<Vec<Option<Stored>>, StoreError> {
        let mut found: Vec<Option<Stored>> = vec![None; keys.len()];
        // An unchanged key (raw hash equal, not yet touched by this document) needs only its
        // index and id: those come as a plain list, the rest as JSON tuples (so a re-read's
        // keys, nearly all unchanged, cost neither a 12-element JSON array nor its parse).
        // Each key lands in exactly one of the two: both sides of the condition are 0 or 1.
        macro_rules! unchanged {
            () => {
                "p.raw_sha256 IS k.raw AND t.provomrade_id IS NULL"
            };
        }
        const RESULT: &str = concat!(
            "SELECT group_concat(k.i || ',' || p.id) FILTER (WHERE ",
            unchanged!(),
            "), json_group_array(json_array(k.i, p.id, p.raw_sha256 IS k.raw,
                    p.content_sha256, hex(p.raw_sha256), t.written, t.prev_content, hex(t.raw),
                    t.children, t.elements, t.settle, t.op)) FILTER (WHERE NOT (",
            unchanged!(),
            "))"
        );
        let amne: Vec<usize> = (0..keys.len())
            .filter(|&i| matches!(keys[i].omrade, Omrade::Amne { .. }))
            .collect();
        let kurs: Vec<usize> = (0..keys.len())
            .filter(|&i| matches!(keys[i].omrade, Omrade::Kurs { .. }))
            .collect();
        for (indices, is_amne) in [(amne, true), (kurs, false)] {
            for (chunk, size) in lookup_chunks(&indices) {
                let sql = if is_amne {
                    format!(
                        "WITH k(i, elev, amne, arskurs, raw) AS (VALUES {})
                         {RESULT}
                         FROM k JOIN provomrade p
                           ON p.source = ? AND p.kind = 'amne' AND p.elev = k.elev
                          AND p.amne = k.amne AND p.arskurs = k.arskurs
                         LEFT JOIN temp.doc_tracking t ON t.provomrade_id = p.id",
                        placeholders(size, 5)
                    )
                } else {
                    format!(
                        "WITH k(i, elev, kurs, raw) AS (VALUES {})
                         {RESULT}
                         FROM k JOIN provomrade p
                           ON p.source = ? AND p.kind = 'kurs' AND p.elev = k.elev
                          AND p.kurs = k.kurs
                         LEFT JOIN temp.doc_tracking t ON t.provomrade_id = p.id",
                        placeholders(size, 4)
                    )
                };
                // Every size recurs, so every statement is prepared once per connection.
                let mut q = sqlx::query_as::<_, (Option<String>, String)>(&sql).persistent(true);
                for &i in chunk {
                    let k = keys[i];
                    q = q.bind(i as i64).bind(&k.elev);
                    q = if is_amne {
                        q.bind(k.omrade.amne())
                            .bind(k.omrade.arskurs().map(|a| a.get() as i64))
                    } else {
                        q.bind(k.omrade.kurs())
                    };
                    q = q.bind(&raws[i][..]);
                }
                // Padding: keys that match nothing (NULL never equals anything).
                for _ in chunk.len()..size {
                    q = q.bind(-1i64).bind(None::<&str>).bind(None::<&str>);
                    if is_amne {
                        q = q.bind(None::<i64>);
                    }
                    q = q.bind(None::<&[u8]>);
                }
                let (unchanged, json) = q
                    .bind(&self.source)
                    .fetch_one(&mut *self.tx)
                    .await
                    .map_err(query_err("looking up stored provområden"))?;
                fill_unchanged(&mut found, unchanged.as_deref().unwrap_or(""))?;
                fill(&mut found, &json)?;
            }
        }
        Ok(found)
    }

    async fn held(&mut self, fps: &[Fingerprint]) -> Result<HashSet<Fingerprint>, StoreError> {
        let mut out = HashSet::new();
        for chunk in fps.chunks(KEYS_PER_LOOKUP) {
            let sql = format!(
                "SELECT fp FROM temp.doc_held WHERE fp IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut q = sqlx::query_scalar::<_, Vec<u8>>(&sql).persistent(false);
            for fp in chunk {
                q = q.bind(fp.to_le_bytes().to_vec());
            }
            for blob in q
                .fetch_all(&mut *self.tx)
                .await
                .map_err(query_err("looking up held keys"))?
            {
                if let Ok(b) = <[u8; 16]>::try_from(blob.as_slice()) {
                    out.insert(u128::from_le_bytes(b));
                }
            }
        }
        Ok(out)
    }

    async fn children_counts(&mut self, ids: &[i64]) -> Result<HashMap<i64, i64>, StoreError> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(KEYS_PER_LOOKUP) {
            let sql = format!(
                "SELECT provomrade_id, COUNT(*) FROM provtillfalle
                 WHERE provomrade_id IN ({}) GROUP BY provomrade_id",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut q = sqlx::query_as::<_, (i64, i64)>(&sql).persistent(false);
            for id in chunk {
                q = q.bind(*id);
            }
            out.extend(
                q.fetch_all(&mut *self.tx)
                    .await
                    .map_err(query_err("counting stored provtillfällen"))?,
            );
        }
        Ok(out)
    }

    async fn write(&mut self, plan: &BatchPlan, doc: &DocInfo) -> Result<(), StoreError> {
        let now = self.now.clone();
        let common = Common {
            source: &doc.source,
            namespace: &doc.namespace,
            document: &doc.document,
            now: &now,
        };
        // The id of the first key the plan inserts, once its InsertKeys ran (which comes before
        // any write that names a new key).
        let mut first_new = 0;
        for w in &plan.writes {
            match w {
                Write::Restore(ids) => {
                    for id in ids {
                        self.restore(*id, doc).await?;
                    }
                }
                Write::Untrack(ids) => {
                    self.run(&chunked(ids, ROWS_PER_STATEMENT, Stmt::Untrack), &common)
                        .await?;
                }
                Write::DeleteChildren(ids) => {
                    // Delprovsresultat first: the foreign key's cascade would delete them one
                    // provtillfälle at a time.
                    let mut stmts = Vec::new();
                    for (_, chunk) in split(ids, ROWS_PER_STATEMENT) {
                        stmts.push(Stmt::DeleteDelprov(chunk));
                        stmts.push(Stmt::DeleteProvtillfalle(chunk));
                    }
                    self.run(&stmts, &common).await?;
                }
                Write::InsertKeys(keys) => {
                    let mut next = self.ids().await?;
                    first_new = next.provomrade;
                    next.provomrade += keys.len() as i64;
                    self.ids = Some(next);
                    let stmts: Vec<Stmt<'_>> = split(keys, PROVOMRADE_ROWS_PER_STATEMENT)
                        .map(|(at, chunk)| Stmt::Provomrade(chunk, first_new + at as i64))
                        .collect();
                    self.run(&stmts, &common).await?;
                }
                Write::InsertChildren(children) => {
                    if children.iter().all(|c| c.rows.is_empty()) {
                        // Cleared sets only: nothing goes in, no ids are read.
                        continue;
                    }
                    let mut next = self.ids().await?;
                    let mut pt_rows: Vec<PtRow<'_>> = Vec::new();
                    for c in children {
                        let provomrade_id = id_of(first_new, c.target);
                        for (k, (skolform, pt)) in c.rows.iter().enumerate() {
                            pt_rows.push(PtRow {
                                id: next.provtillfalle,
                                provomrade_id,
                                ordinal: c.first_ordinal + k as i64,
                                skolform,
                                pt,
                            });
                            next.provtillfalle += 1;
                        }
                    }
                    let dp_rows = delprov_rows(&mut next, &pt_rows);
                    self.ids = Some(next);
                    let mut stmts = chunked(&pt_rows, ROWS_PER_STATEMENT, Stmt::Provtillfalle);
                    stmts.extend(chunked(&dp_rows, ROWS_PER_STATEMENT, Stmt::Delprov));
                    self.run(&stmts, &common).await?;
                }
                Write::Replace(rows) => {
                    let stmts = chunked(rows, PROVOMRADE_ROWS_PER_STATEMENT, Stmt::Replaced);
                    self.run(&stmts, &common).await?;
                }
                Write::Track(tracks) => {
                    let rows: Vec<TrackRow<'_>> = tracks
                        .iter()
                        .map(|t| TrackRow {
                            id: id_of(first_new, t.target),
                            t: &t.touched,
                        })
                        .collect();
                    self.run(&chunked(&rows, ROWS_PER_STATEMENT, Stmt::Track), &common)
                        .await?;
                }
                Write::TrackUnchanged(ids) => {
                    let stmts = chunked(ids, ROWS_PER_STATEMENT, Stmt::SpillUnchanged);
                    self.run(&stmts, &common).await?;
                }
                Write::Rehash(rows) => {
                    self.run(&chunked(rows, ROWS_PER_STATEMENT, Stmt::Rehash), &common)
                        .await?;
                }
                Write::TrackHeld(fps) => {
                    let held: Vec<[u8; 16]> = fps.iter().map(|fp| fp.to_le_bytes()).collect();
                    self.run(
                        &chunked(&held, ROWS_PER_STATEMENT, Stmt::SpillHeld),
                        &common,
                    )
                    .await?;
                }
                Write::Quarantine(rows) => {
                    let stmts = chunked(rows, QUARANTINE_ROWS_PER_STATEMENT, Stmt::Quarantine);
                    self.run(&stmts, &common).await?;
                }
            }
        }
        Ok(())
    }

    async fn to_settle(&mut self, after: i64, limit: i64) -> Result<Vec<Settle>, StoreError> {
        let rows: Vec<(i64, Option<String>, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT provomrade_id, prev_content, raw FROM temp.doc_tracking
             WHERE written = 1 AND settle = 1 AND provomrade_id > ?
             ORDER BY provomrade_id LIMIT ?",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query_err("listing keys to settle"))?;
        Ok(rows.into_iter().map(Settle::from_row).collect())
    }

    async fn children(
        &mut self,
        id: i64,
        ordinal: i64,
        limit: i64,
    ) -> Result<Vec<StoredProvtillfalle>, StoreError> {
        load_children(&mut self.tx, id, ordinal, limit).await
    }

    async fn settled(&mut self, rows: &[Settled], doc: &DocInfo) -> Result<(), StoreError> {
        // Rare (keys whose elements straddle batches): a statement pair per key.
        for r in rows {
            sqlx::query(
                "UPDATE provomrade SET content_sha256 = ?, raw_sha256 = ?, namespace = ?,
                     changed_at = CASE WHEN ? THEN ? ELSE changed_at END
                 WHERE id = ?",
            )
            .bind(&r.content)
            .bind(r.raw.as_ref().map(|r| &r[..]))
            .bind(&doc.namespace)
            .bind(r.op.is_some())
            .bind(&self.now)
            .bind(r.id)
            .execute(&mut *self.tx)
            .await
            .map_err(query_err("settling a key"))?;
            sqlx::query("UPDATE temp.doc_tracking SET op = ?, settle = 0 WHERE provomrade_id = ?")
                .bind(r.op.map(Op::as_str))
                .bind(r.id)
                .execute(&mut *self.tx)
                .await
                .map_err(query_err("settling a key"))?;
        }
        Ok(())
    }

    async fn finish(&mut self, _doc: &DocInfo) -> Result<(), StoreError> {
        if !self.tracked {
            // Nothing tracked, so nothing changed and the tables are empty: three statements
            // fewer in every window of an unchanged re-read.
            return Ok(());
        }
        // Real changes only, decided by the replace core; within one document in provomrade id
        // order.
        sqlx::query(
            "INSERT INTO change_log (provomrade_id, op, at)
             SELECT provomrade_id, op, ? FROM temp.doc_tracking
             WHERE written = 1 AND op IS NOT NULL ORDER BY provomrade_id",
        )
        .bind(&self.now)
        .execute(&mut *self.tx)
        .await
        .map_err(query_err("appending to change_log"))?;
        for sql in ["DELETE FROM temp.doc_tracking", "DELETE FROM temp.doc_held"] {
            sqlx::query(sql)
                .execute(&mut *self.tx)
                .await
                .map_err(query_err("clearing the document's tracking tables"))?;
        }
        Ok(())
    }

    fn sql(&mut self) -> &mut dyn Sql {
        &mut self.tx
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

// ---- Stored children, and statement sizes -------------------------------------------------------

/// Reads a page of a key's stored provtillfällen back into domain values, in order.
async fn load_children(
    conn: &mut SqliteConnection,
    provomrade_id: i64,
    from_ordinal: i64,
    limit: i64,
) -> Result<Vec<StoredProvtillfalle>, StoreError> {
    let pts = sqlx::query(
        "SELECT id, skolform, uppdaterat, genomfort, intedeltagit, sammanvagt_provbetyg
         FROM provtillfalle WHERE provomrade_id = ? AND ordinal >= ? ORDER BY ordinal LIMIT ?",
    )
    .bind(provomrade_id)
    .bind(from_ordinal)
    .bind(limit)
    .fetch_all(&mut *conn)
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
        .fetch_all(&mut *conn)
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
        let date = |s: String| -> Result<chrono::NaiveDate, StoreError> {
            chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                .map_err(|e| StoreError::Corrupt(format!("stored date {s:?}: {e}")))
        };
        let intedeltagit: bool = r.get(4);
        out.push(StoredProvtillfalle {
            skolform: r.get::<String, _>(1).into(),
            provtillfalle: Provtillfalle {
                uppdaterat: date(r.get(2))?,
                genomfort: r.get::<Option<String>, _>(3).map(date).transpose()?,
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

/// Lookup statement sizes: a batch's keys go in chunks of the largest, the rest in one chunk of
/// the smallest size that holds it (padded), so a lookup costs few round trips and at most twice
/// the keys' work, with a statement cached for each size.
const LOOKUP_SIZES: [usize; 8] = [KEYS_PER_LOOKUP, 256, 128, 64, 32, 16, 8, 4];

/// A lookup's chunks of key indices, each with the statement size it goes in.
fn lookup_chunks(indices: &[usize]) -> Vec<(&[usize], usize)> {
    indices
        .chunks(KEYS_PER_LOOKUP)
        .map(|c| {
            let size = LOOKUP_SIZES
                .iter()
                .rev()
                .copied()
                .find(|&s| s >= c.len())
                .unwrap_or(KEYS_PER_LOOKUP);
            (c, size)
        })
        .collect()
}

/// Whether a chunk has a statement size that recurs ([`statement_sizes`]). Only those are kept in
/// sqlx's per-connection statement cache: each distinct tail size would otherwise cache one more
/// prepared statement with thousands of parameters, and memory would grow with the number of
/// documents seen. The recurring ones are bounded: per statement kind the full size and about
/// as many rows again in powers of two.
fn is_cached(rows: usize) -> bool {
    rows == ROWS_PER_STATEMENT
        || rows == PROVOMRADE_ROWS_PER_STATEMENT
        || rows == KEYS_PER_LOOKUP
        || (rows >= MIN_CACHED_ROWS && rows.is_power_of_two())
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
    fn unchanged_keys_come_as_index_id_pairs() {
        let mut found = vec![None; 4];
        super::fill_unchanged(&mut found, "2,17,0,5").expect("pairs");
        let ids: Vec<Option<i64>> = found.iter().map(|s| s.as_ref().map(|s| s.id)).collect();
        assert_eq!(ids, [Some(5), None, Some(17), None]);
        let unchanged = found[2].as_ref().expect("filled");
        assert!(
            unchanged.raw_matches && unchanged.content.is_none() && unchanged.touched.is_none()
        );
        // No unchanged key at all (SQLite's group_concat of no rows is NULL, read as "").
        super::fill_unchanged(&mut found, "").expect("empty");
        // Anything but pairs of numbers naming a key of the chunk is a corrupt result.
        for bad in ["1", "1,x", "9,1", "1,2,3", "-1,4"] {
            assert!(
                matches!(
                    super::fill_unchanged(&mut found, bad),
                    Err(super::StoreError::Corrupt(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn lookup_chunks_come_in_fixed_sizes_that_hold_them() {
        let keys: Vec<usize> = (0..1130).collect();
        let sizes: Vec<(usize, usize)> = super::lookup_chunks(&keys)
            .into_iter()
            .map(|(c, s)| (c.len(), s))
            .collect();
        assert_eq!(sizes, [(500, 500), (500, 500), (130, 256)]);
        assert_eq!(super::lookup_chunks(&[7]).first().map(|c| c.1), Some(4));
        assert!(super::lookup_chunks(&[]).is_empty());
    }

    #[test]
    fn statement_sizes_recur_except_a_small_last_one() {
        let sizes = |len, n| super::statement_sizes(len, n).collect::<Vec<_>>();
        assert_eq!(sizes(2999, 1000), [1000, 1000, 512, 256, 128, 64, 32, 7]);
        assert_eq!(sizes(1000, 1000), [1000]);
        assert_eq!(sizes(16, 1000), [16]);
        assert_eq!(sizes(15, 1000), [15]);
        assert_eq!(sizes(0, 1000), Vec::<usize>::new());
        for len in 0..2100 {
            let s = sizes(len, 500);
            assert_eq!(s.iter().sum::<usize>(), len, "{len}");
            // Every size but a last one under the minimum is kept, and there are few.
            let kept = s.iter().filter(|&&n| super::is_cached(n)).count();
            assert!(kept + 1 >= s.len(), "{len}: {s:?}");
            assert!(s.len() <= len / 500 + 7, "{len}: {s:?}");
        }
        let rows: Vec<u32> = (0..45).collect();
        let chunks: Vec<(usize, usize)> = super::split(&rows, 20)
            .map(|(at, c)| (at, c.len()))
            .collect();
        assert_eq!(chunks, [(0, 20), (20, 20), (40, 5)]);
    }

    #[test]
    fn placeholders_are_anonymous_rows() {
        assert_eq!(placeholders(2, 2), "(?, ?), (?, ?)");
        assert_eq!(placeholders(1, 1), "(?)");
        assert_eq!(placeholders_with(1, 2, ", 1"), "(?, ?, 1)");
    }
}

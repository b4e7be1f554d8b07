//! The mirror: one storage interface, one replace engine, one dialect module per backend.
//!
//! Everything the importer (and the sync engine) writes goes through [`Store`] and the
//! per-document transaction [`DocumentTx`] it opens. The rules are written once, in the pure
//! replace core ([`replace`]), and driven the same way for every backend ([`apply`]); a backend
//! ([`sqlite`], [`postgres`]) only executes the writes the core plans ([`replace::Write`], in
//! the plan's order), in its own bulk SQL. Operations that are not a document's bulk writes
//! (`sync_run` rows, retention, erasure, a source's state) are written once, in [`sql`]'s `$N`
//! SQL over [`sql::Value`]s, and a backend only runs them ([`sql::SqlTx`]). The rules:
//!
//! * every provområde element replaces all provtillfällen held for its key (source, elev,
//!   provområde); an element without provtillfällen clears them and the `provomrade` row stays;
//! * several elements with the same key in one document are, together and in document order, the
//!   key's current set, wherever in the document they stand;
//! * a key whose elements have the raw hash stored for it is not built, checked or written; one
//!   whose content hash equals the stored one writes nothing but its new raw hash;
//! * a key with an element that breaks the XSD keeps what is stored: all its elements in the
//!   document go to quarantine;
//! * only real changes are appended to `change_log` (`upsert`, or `clear` when the set is empty);
//! * everything from one document commits in one transaction or not at all, together with the
//!   window's `sync_run` row and the watermark.
//!
//! Memory stays bounded by one batch of elements whatever the document size: the keys a
//! document wrote are tracked in a temporary table of the transaction, and keys it found
//! unchanged in memory up to a cap (then in that table too).
//!
//! [`connect`] picks the backend from the URL: `sqlite://…` ([`SqliteStore`]) or `postgres://…` /
//! `postgresql://…` ([`PostgresStore`]). Errors never carry a password (see [`redact_url`]), and
//! [`StoreError::is_transient`] tells a lost connection (worth another attempt) from a fault in
//! the data or the schema.

pub mod apply;
pub mod contract;
pub mod governance;
pub mod postgres;
pub mod replace;
pub mod sql;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::window::Window;
use crate::xml::{DocContext, DocumentError, Element, ParseStats, Quarantined};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// The default database: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://nprov.db";

/// The `source` used when none is configured.
pub const DEFAULT_SOURCE: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0}: use sqlite://PATH or postgres://USER@HOST/DATABASE")]
    UnsupportedUrl(String),
    #[error("database schema {schema:?}: {reason}")]
    InvalidSchema {
        schema: String,
        reason: &'static str,
    },
    #[error("cannot open the database {url}: {source}")]
    Connect {
        /// Redacted: never carries a password.
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database holds migrations this build does not have: a newer nprov-sync wrote it.
    /// Nothing was written: running this build's migrations (or its queries) over a schema it
    /// does not know could damage it.
    #[error(
        "the database was written by a newer nprov-sync: its schema is at migration {found}, \
         this build knows up to {known}. Run the newer version, or restore a backup of the \
         database made before it was upgraded"
    )]
    NewerSchema { found: i64, known: i64 },
    #[error("database error while {context}: {source}")]
    Query {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// A state command that would do the wrong thing (a rewind forwards, a role that does not
    /// exist); nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// An element the scanner delimited turned out malformed when it was built: the scanner
    /// only delimits elements below the root (building is what checks them), so this is bad
    /// input, reported like any other document error.
    #[error(transparent)]
    Document(DocumentError),
    /// The task writing a document was cancelled (the runtime is shutting down); the
    /// transaction went with it, so nothing of the document was committed.
    #[error("the document's database writer was cancelled; nothing of it was committed")]
    Cancelled,
    /// Another writer moved the source's watermark since this window was planned: committing
    /// would apply the window twice. Nothing was written; plan again from the stored watermark.
    #[error("source {source_name}: the watermark moved to {found} while this window was in flight (expected {expected}); another instance is syncing this source, so this window was rolled back")]
    WatermarkMoved {
        source_name: String,
        expected: String,
        found: String,
    },
}

impl StoreError {
    /// The driver's error under this one, when there is one (a connection, a query, or a
    /// migration's statement).
    fn driver_error(&self) -> Option<&sqlx::Error> {
        match self {
            StoreError::Connect { source, .. } | StoreError::Query { source, .. } => Some(source),
            // Migrations take the database's write lock (SQLite) or their advisory lock
            // (PostgreSQL), and a lost connection can interrupt them like any query. sqlx's
            // MigrateError is not ours (and is `non_exhaustive`): its other variants are about
            // the migrations themselves, not the database's state.
            StoreError::Migrate(m) => match m {
                sqlx::migrate::MigrateError::Execute(e)
                | sqlx::migrate::MigrateError::ExecuteMigration(e, _) => Some(e),
                _ => None,
            },
            StoreError::UnsupportedUrl(_)
            | StoreError::InvalidSchema { .. }
            | StoreError::NewerSchema { .. }
            | StoreError::Corrupt(_)
            | StoreError::Refused(_)
            | StoreError::Document(_)
            | StoreError::Cancelled
            | StoreError::WatermarkMoved { .. } => None,
        }
    }

    /// Whether trying again later may help (a lost connection, a busy or locked database, a
    /// server that is restarting), as opposed to a fault in the data, the schema or the
    /// configuration.
    pub fn is_transient(&self) -> bool {
        self.driver_error().is_some_and(is_transient_sqlx)
    }

    /// Whether another process holds the lock this one needs (SQLite's `SQLITE_BUSY` and
    /// `SQLITE_LOCKED`, after the busy timeout): transient, and what a backup or an open write
    /// transaction causes.
    pub fn is_locked(&self) -> bool {
        self.driver_error()
            .and_then(|e| e.as_database_error())
            .and_then(|db| db.code())
            .is_some_and(|c| SQLITE_LOCK_CODES.contains(&c.as_ref()))
    }
}

/// Whether a driver error is one that goes away by itself. sqlx's enum is not ours (and is
/// `non_exhaustive`): what is not named here is not transient.
fn is_transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => is_transient_code(&db.code().unwrap_or_default()),
        _ => false,
    }
}

/// The versions sqlx recorded as applied, oldest first; the same table on both backends.
pub(crate) const APPLIED_VERSIONS_SQL: &str =
    "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version";

/// How a database's schema stands against this build, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SchemaState {
    /// The newest migration applied (`None`: none yet).
    pub applied: Option<i64>,
    /// The newest migration this build has.
    pub known: i64,
    /// This build's migrations not applied yet.
    pub pending: usize,
}

impl SchemaState {
    pub(crate) fn of(applied: &[i64], migrator: &sqlx::migrate::Migrator) -> SchemaState {
        SchemaState {
            applied: applied.iter().copied().max(),
            known: migrator.iter().map(|m| m.version).max().unwrap_or(0),
            pending: migrator
                .iter()
                .filter(|m| !applied.contains(&m.version))
                .count(),
        }
    }

    /// Whether a newer build wrote the database.
    pub fn newer(&self) -> bool {
        self.applied.is_some_and(|a| a > self.known)
    }

    /// Refuses a database whose applied migrations go past the newest this build knows: every
    /// command checks this before it writes (migrations) or reads (status, source list).
    ///
    /// # Errors
    /// [`StoreError::NewerSchema`], naming both versions.
    pub fn check(&self) -> Result<(), StoreError> {
        match self.applied {
            Some(found) if found > self.known => Err(StoreError::NewerSchema {
                found,
                known: self.known,
            }),
            Some(_) | None => Ok(()),
        }
    }
}

/// SQLite's "another connection holds the lock": SQLITE_BUSY (5) and SQLITE_LOCKED (6), and
/// their extended codes (BUSY_RECOVERY 261, LOCKED_SHAREDCACHE 262, BUSY_SNAPSHOT 517,
/// BUSY_TIMEOUT 773).
const SQLITE_LOCK_CODES: &[&str] = &["5", "6", "261", "262", "517", "773"];

/// Database error codes worth another attempt.
fn is_transient_code(code: &str) -> bool {
    SQLITE_LOCK_CODES.contains(&code)
        // PostgreSQL: class 08 (connection exception); admin shutdown, crash shutdown, cannot
        // connect now (57P01-03: a restart or pg_terminate_backend); serialization failure and
        // deadlock (40001, 40P01: the transaction was rolled back and may simply be repeated);
        // too many connections (53300).
        || (code.len() == 5 && code.starts_with("08"))
        || matches!(code, "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "53300")
}

/// Shorthand for wrapping a sqlx error with what we were doing.
pub(crate) fn query_err(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { context, source }
}

/// What one document is applied as.
#[derive(Clone, Debug)]
pub struct ApplyContext {
    /// The configured source name (the `source` column).
    pub source: String,
    /// Names the document in quarantine rows: a file name, or a window.
    pub document: String,
    /// The time written to `changed_at`, `change_log.at` and the quarantine's `last_seen_at`.
    pub now: DateTime<Utc>,
}

/// What applying one document did. Keys are counted once however many elements they came in.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ApplySummary {
    /// Provområde elements applied (not counting quarantined ones).
    pub records: u64,
    /// Keys whose content really changed to a non-empty set (logged `upsert`).
    pub changed: u64,
    /// Keys received with the content already stored (nothing written for them).
    pub unchanged: u64,
    /// Keys whose content changed to the empty set (logged `clear`).
    pub cleared: u64,
    /// Elements sent to quarantine.
    pub quarantined: u64,
    /// Rows written to `provtillfalle` and `delprovsresultat` (for throughput figures).
    pub provtillfalle_rows: u64,
    pub delprovsresultat_rows: u64,
    /// `provomrade` rows created.
    pub provomrade_rows: u64,
    /// Elements built into values; the rest were skipped by their raw hash.
    pub built: u64,
}

impl ApplySummary {
    pub fn rows_written(&self) -> u64 {
        self.provomrade_rows + self.provtillfalle_rows + self.delprovsresultat_rows
    }

    pub fn add(&mut self, other: &ApplySummary) {
        self.records += other.records;
        self.changed += other.changed;
        self.unchanged += other.unchanged;
        self.cleared += other.cleared;
        self.quarantined += other.quarantined;
        self.provtillfalle_rows += other.provtillfalle_rows;
        self.delprovsresultat_rows += other.delprovsresultat_rows;
        self.provomrade_rows += other.provomrade_rows;
        self.built += other.built;
    }
}

/// Row counts of the mirror's tables.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableCounts {
    pub provomrade: i64,
    pub provtillfalle: i64,
    pub delprovsresultat: i64,
    pub quarantine: i64,
    pub change_log: i64,
}

impl TableCounts {
    /// One row of the five counts, the same SQL on every backend.
    pub(crate) const SQL: &'static str =
        "SELECT (SELECT COUNT(*) FROM provomrade), (SELECT COUNT(*) FROM provtillfalle),
                (SELECT COUNT(*) FROM delprovsresultat), (SELECT COUNT(*) FROM quarantine),
                (SELECT COUNT(*) FROM change_log)";

    /// Reads the row [`TableCounts::SQL`] returns, whichever backend returned it.
    pub(crate) fn from_row<R>(row: &R) -> Result<Self, sqlx::Error>
    where
        R: sqlx::Row,
        usize: sqlx::ColumnIndex<R>,
        i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(TableCounts {
            provomrade: row.try_get(0)?,
            provtillfalle: row.try_get(1)?,
            delprovsresultat: row.try_get(2)?,
            quarantine: row.try_get(3)?,
            change_log: row.try_get(4)?,
        })
    }
}

/// The end of the last window fully committed for a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watermark {
    /// Authoritative: local wall-clock time repeats in autumn.
    pub utc: DateTime<Utc>,
    /// The same moment as local text, for people.
    pub local: chrono::NaiveDateTime,
    pub updated_at: DateTime<Utc>,
}

/// Why a window was read; stored as `sync_run.kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// The normal forward sync; commits move the watermark.
    Sync,
    /// Re-reading a historic range; never moves the watermark.
    Backfill,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Sync => "sync",
            RunKind::Backfill => "backfill",
        }
    }

    /// Reads the column back.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for text no migration allows (the column has a CHECK).
    pub fn parse(s: &str) -> Result<RunKind, StoreError> {
        match s {
            "sync" => Ok(RunKind::Sync),
            "backfill" => Ok(RunKind::Backfill),
            other => Err(StoreError::Corrupt(format!("sync_run.kind {other:?}"))),
        }
    }
}

impl std::fmt::Display for RunKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a window attempt ended; stored as `sync_run.outcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    /// Committed, with its data (and, for a sync, the watermark).
    Ok,
    /// Rolled back; the row is recorded in a transaction of its own.
    Failed,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Ok => "ok",
            RunOutcome::Failed => "failed",
        }
    }

    /// Reads the column back.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for text no migration allows (the column has a CHECK).
    pub fn parse(s: &str) -> Result<RunOutcome, StoreError> {
        match s {
            "ok" => Ok(RunOutcome::Ok),
            "failed" => Ok(RunOutcome::Failed),
            other => Err(StoreError::Corrupt(format!("sync_run.outcome {other:?}"))),
        }
    }
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One window attempt, as `sync_run` records it.
#[derive(Clone, Debug)]
pub struct SyncRun {
    pub source: String,
    pub kind: RunKind,
    pub window: Window,
    /// The source's time zone, for the watermark's local text.
    pub tz: chrono_tz::Tz,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// `None` when the request never got a response.
    pub http_status: Option<u16>,
    pub bytes: u64,
    pub summary: ApplySummary,
    /// `None` for a window that committed; the error text (free of secrets) otherwise.
    pub error: Option<String>,
    /// For a [`RunKind::Sync`] run: the watermark the window was planned from (`None` before the
    /// first window). [`DocumentTx::record_window`] commits only if the stored watermark is still
    /// this one, which fences off a second instance (or a second `sync --once`) that synced the
    /// same source meanwhile: no window is ever committed twice.
    pub expected_watermark: Option<DateTime<Utc>>,
}

/// A `sync_run` row as `status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunRow {
    pub kind: RunKind,
    pub from_local: String,
    pub tom_local: String,
    pub outcome: RunOutcome,
    pub finished_at: String,
    pub http_status: Option<i64>,
    pub records: i64,
    pub changed: i64,
    pub cleared: i64,
    pub quarantined: i64,
    pub error: Option<String>,
}

/// A database the mirror lives in.
#[async_trait]
pub trait Store: Send + Sync {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Applies the pending migrations, after refusing ([`StoreError::NewerSchema`]) a database
    /// that a newer build migrated further, before anything is written.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// The migrations applied to the database (none when it is new); reads only, so it needs
    /// no write lock and creates nothing.
    async fn applied_migrations(&self) -> Result<Vec<i64>, StoreError>;

    /// This build's migrations for the backend.
    fn migrator(&self) -> &'static sqlx::migrate::Migrator;

    /// How the database's schema stands against this build; reads only.
    async fn schema_state(&self) -> Result<SchemaState, StoreError> {
        Ok(SchemaState::of(
            &self.applied_migrations().await?,
            self.migrator(),
        ))
    }

    /// Opens the transaction one document is applied in; `doc` says what its elements mean.
    async fn begin(
        &self,
        ctx: ApplyContext,
        doc: Arc<DocContext>,
    ) -> Result<Box<dyn DocumentTx>, StoreError>;

    async fn table_counts(&self) -> Result<TableCounts, StoreError>;

    /// The source's watermark, if it has synced anything.
    async fn watermark(&self, source: &str) -> Result<Option<Watermark>, StoreError>;

    /// Records a window that failed, in a transaction of its own (its data was rolled back).
    async fn record_failed_run(&self, run: &SyncRun) -> Result<(), StoreError> {
        let mut tx = self.begin_sql("recording a failed window").await?;
        sql::insert_run(&mut *tx, run, RunOutcome::Failed).await?;
        tx.commit("recording a failed window").await
    }

    /// The latest window attempts of a source, newest first.
    async fn recent_runs(&self, source: &str, limit: u32) -> Result<Vec<RunRow>, StoreError>;

    /// Tries to become the one instance that syncs `source` among all instances sharing this
    /// database. `Ok(None)`: another instance leads it; try again later. The returned handle holds
    /// the leadership until it is dropped or released, or until [`Leadership::still_held`] finds
    /// it lost (PostgreSQL: a session advisory lock on a dedicated connection).
    async fn try_lead(&self, source: &str) -> Result<Option<Box<dyn Leadership>>, StoreError>;

    /// Whether the database answers (for readiness checks).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Removes (or, in a dry run, counts) the rows older than the cutoffs; one transaction.
    async fn prune(
        &self,
        cutoffs: &governance::Cutoffs,
        mode: governance::Mode,
    ) -> Result<governance::Pruned, StoreError> {
        let tx = self.begin_sql("starting a prune").await?;
        governance::prune(tx, cutoffs, mode).await
    }

    /// Removes every row of one pupil, appends `erase` entries for the removed provområden and
    /// records the erasure (not the id) in `erasure`; one transaction. A dry run only counts.
    async fn forget(
        &self,
        erasure: &governance::Erasure<'_>,
    ) -> Result<governance::Removed, StoreError> {
        let tx = self.begin_sql("starting an erasure").await?;
        governance::forget(tx, erasure).await
    }

    /// Removes a source's rows, runs and watermark (or, in a dry run, counts them).
    async fn drop_source(
        &self,
        source: &str,
        now: DateTime<Utc>,
        mode: governance::Mode,
    ) -> Result<governance::Removed, StoreError> {
        let tx = self.begin_sql("starting to drop a source").await?;
        governance::drop_source(tx, source, now, mode).await
    }

    /// Moves a source's watermark back to `to_utc` (refused unless earlier); returns the one it
    /// replaced.
    async fn rewind(
        &self,
        source: &str,
        to_utc: DateTime<Utc>,
        to_local: chrono::NaiveDateTime,
        now: DateTime<Utc>,
    ) -> Result<Watermark, StoreError> {
        let tx = self.begin_sql("starting a rewind").await?;
        governance::rewind(tx, source, to_utc, to_local, now).await
    }

    /// Runs a read-only query whose every column is text (as [`sql::Sql::texts`]) on the pool,
    /// outside any transaction: no write lock is taken, so a reader (`status`) never waits for
    /// or blocks a writer.
    async fn read_texts(
        &self,
        sql: &str,
        values: &[sql::Value<'_>],
        context: &'static str,
    ) -> Result<Vec<Vec<Option<String>>>, StoreError>;

    /// A transaction for an operation the store core writes once for both backends
    /// ([`sql::SqlTx`]); it takes the write lock where the backend has one to take at the start.
    async fn begin_sql(&self, context: &'static str) -> Result<Box<dyn sql::SqlTx>, StoreError>;

    /// Every source the database has rows of, with counts; watermarks not filled in.
    async fn source_rows(&self) -> Result<Vec<governance::SourceState>, StoreError>;

    /// Every source the database has rows of, with counts and watermarks.
    async fn sources(&self) -> Result<Vec<governance::SourceState>, StoreError> {
        let mut sources = self.source_rows().await?;
        for s in &mut sources {
            s.watermark = self.watermark(&s.source).await?;
        }
        Ok(sources)
    }

    /// Lets `role` read every table and view, including ones later migrations add
    /// (PostgreSQL); refused on SQLite, whose readers are given the file (`file_mode`).
    async fn grant_reader(&self, role: &str) -> Result<(), StoreError> {
        Err(StoreError::Refused(format!(
            "database.reader_role ({role:?}) is for PostgreSQL; give SQLite readers the file \
             (database.file_mode, see the README)"
        )))
    }

    /// Who leads `source` among the instances sharing this database, as `status` shows it:
    /// `None` where the backend has no other instances to coordinate with.
    async fn leader(&self, _source: &str) -> Result<Option<LeaderInfo>, StoreError> {
        Ok(None)
    }

    /// Closes the connections cleanly (flushes SQLite's WAL).
    async fn close(&self);
}

/// The instance holding a source's lead, as the database sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LeaderInfo {
    /// `None`: no instance leads the source right now.
    pub holder: Option<String>,
}

/// The right to sync one source, held until dropped.
///
/// Leadership is advisory: correctness does not rest on it. Even if two instances believed they
/// led the same source, [`SyncRun::expected_watermark`] makes the second commit of a window fail.
#[async_trait]
pub trait Leadership: Send + Sync {
    /// Whether the leadership is still held: `false` once the connection that holds it is lost
    /// (the database then lets another instance take over).
    async fn still_held(&mut self) -> bool;

    /// Gives the leadership up at once (dropping does too, as soon as the connection closes).
    async fn release(self: Box<Self>);
}

/// Leadership where the database has no other instances to coordinate with: a SQLite file is
/// written by the processes of one machine, and the watermark fence keeps them from committing a
/// window twice.
pub struct SoleLeadership;

#[async_trait]
impl Leadership for SoleLeadership {
    async fn still_held(&mut self) -> bool {
        true
    }

    async fn release(self: Box<Self>) {}
}

/// One document's transaction. Dropping it without [`DocumentTx::commit`] rolls everything back.
#[async_trait]
pub trait DocumentTx: Send {
    /// Applies one top-level element. Writes are batched; a batch is written when it is full.
    async fn element(&mut self, element: Element) -> Result<(), StoreError>;

    /// Keeps an element the scanner found broken before it could name its key.
    async fn quarantine(&mut self, q: Quarantined) -> Result<(), StoreError>;

    /// Whether the scanner should build elements as it reads them (most need building) or leave
    /// that to the writer (most are skipped by their raw hash); it reads this before each one.
    fn build_ahead(&self) -> Arc<std::sync::atomic::AtomicBool>;

    /// What building the applied elements noticed: warnings, unknown enumeration values.
    fn parse_stats(&self) -> &ParseStats;

    /// Writes the last batch, settles keys that came in several batches, writes `changed_at`
    /// and `change_log`, and reports. Further writes of the same transaction (the sync engine's
    /// watermark) may follow before [`DocumentTx::commit`].
    async fn finish(&mut self) -> Result<ApplySummary, StoreError>;

    /// Records the window this document answered, in the same transaction, and for a
    /// [`RunKind::Sync`] run moves the source's watermark to the window's end (never backwards).
    /// Call after [`DocumentTx::finish`].
    ///
    /// # Errors
    /// [`StoreError::WatermarkMoved`] when the stored watermark is no longer
    /// [`SyncRun::expected_watermark`]; roll back then.
    async fn record_window(&mut self, run: &SyncRun) -> Result<(), StoreError>;

    /// Commits. Call [`DocumentTx::finish`] first.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;

    /// Rolls back explicitly (dropping does too, but this reports errors).
    async fn rollback(self: Box<Self>) -> Result<(), StoreError>;
}

/// The backend a database URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `sqlite:…` or `postgres:…`/`postgresql:…`; `None` for anything else.
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// Checks a `schema` setting for the backend it goes with: empty, or (PostgreSQL only) a plain
/// lower-case identifier, which needs no quoting anywhere it is written.
///
/// # Errors
/// [`StoreError::InvalidSchema`] saying what is wrong.
pub fn check_schema(backend: Backend, schema: &str) -> Result<(), StoreError> {
    let invalid = |reason| {
        Err(StoreError::InvalidSchema {
            schema: schema.to_owned(),
            reason,
        })
    };
    if schema.is_empty() {
        return Ok(());
    }
    if backend == Backend::Sqlite {
        return invalid("SQLite has no schemas; leave it empty for a sqlite:// database");
    }
    let mut chars = schema.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok || schema.len() > 63 || schema.starts_with("pg_") {
        return invalid(
            "use lower-case letters, digits and _, starting with a letter or _ (at most 63 characters, not pg_…)",
        );
    }
    Ok(())
}

/// How to open a database, beside its URL.
#[derive(Clone, Copy, Debug)]
pub struct ConnectOptions<'a> {
    /// PostgreSQL: the schema the tables live in (empty: the connection's default, normally
    /// `public`).
    pub schema: &'a str,
    /// SQLite: the permission bits of a file created here.
    pub file_mode: u32,
    /// SQLite: how long a statement waits for another process's lock before it fails.
    pub busy_timeout: std::time::Duration,
}

impl Default for ConnectOptions<'_> {
    fn default() -> Self {
        ConnectOptions {
            schema: "",
            file_mode: sqlite::DEFAULT_FILE_MODE,
            busy_timeout: sqlite::DEFAULT_BUSY_TIMEOUT,
        }
    }
}

/// Opens the database a URL names. Migrations are not run.
pub async fn connect(url: &str, options: ConnectOptions<'_>) -> Result<Arc<dyn Store>, StoreError> {
    let Some(backend) = Backend::of_url(url) else {
        return Err(StoreError::UnsupportedUrl(redact_url(url)));
    };
    check_schema(backend, options.schema)?;
    Ok(match backend {
        Backend::Sqlite => {
            Arc::new(SqliteStore::connect_with(url, options.file_mode, options.busy_timeout).await?)
        }
        Backend::Postgres => Arc::new(PostgresStore::connect(url, options.schema).await?),
    })
}

/// A URL with any password replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    // scheme://user:password@host… → scheme://user:***@host…
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let mut out = url.to_owned();
    if let Some(at) = authority.rfind('@') {
        if let Some(colon) = authority[..at].find(':') {
            let start = scheme_end + 3 + colon + 1;
            let end = scheme_end + 3 + at;
            out.replace_range(start..end, "***");
        }
    }
    // Passwords can also ride in the query string (…?password=…).
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{head}{}", redacted.join("&"));
    }
    out
}

/// An instant as the databases keep it: to the microsecond.
pub(crate) fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// The watermark fence, decided: a [`RunKind::Sync`] window commits only if the stored
/// watermark is still the one it was planned from (`expected`, `None` before the first window),
/// compared at the stored precision. Each backend reads `stored` under its own lock.
///
/// # Errors
/// [`StoreError::WatermarkMoved`] naming both.
pub(crate) fn fence(
    source: &str,
    expected: Option<DateTime<Utc>>,
    stored: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    if stored == expected.map(to_micros) {
        Ok(())
    } else {
        Err(watermark_moved(source, expected, stored))
    }
}

/// The error of a window whose planned watermark is no longer the stored one.
pub(crate) fn watermark_moved(
    source: &str,
    expected: Option<DateTime<Utc>>,
    found: Option<DateTime<Utc>>,
) -> StoreError {
    let text = |t: Option<DateTime<Utc>>| t.map(timestamp).unwrap_or_else(|| "none".into());
    StoreError::WatermarkMoved {
        source_name: source.to_owned(),
        expected: text(expected),
        found: text(found),
    }
}

/// The one text form of timestamps in the mirror: RFC 3339, UTC, microseconds, `Z`.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_passwords_wherever_they_are() {
        assert_eq!(
            redact_url("postgres://nprov:s3cret@db.example:5432/wh"),
            "postgres://nprov:***@db.example:5432/wh"
        );
        assert_eq!(
            redact_url("postgres://db/wh?user=a&password=s3cret"),
            "postgres://db/wh?user=a&password=***"
        );
        assert_eq!(redact_url("sqlite://nprov.db"), "sqlite://nprov.db");
    }

    #[test]
    fn backends_are_chosen_by_url_scheme() {
        assert_eq!(Backend::of_url("sqlite://nprov.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::of_url("postgres://h/db"), Some(Backend::Postgres));
        assert_eq!(
            Backend::of_url("postgresql://h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::of_url("mysql://h/db"), None);
    }

    #[test]
    fn schema_names_are_plain_identifiers_and_only_for_postgres() {
        assert!(check_schema(Backend::Postgres, "").is_ok());
        assert!(check_schema(Backend::Postgres, "nprov_2026").is_ok());
        assert!(check_schema(Backend::Postgres, "_x").is_ok());
        for bad in [
            "Nprov",
            "1x",
            "a-b",
            "a b",
            "x\"; DROP",
            "pg_temp",
            &"x".repeat(64),
        ] {
            assert!(check_schema(Backend::Postgres, bad).is_err(), "{bad}");
        }
        let e = check_schema(Backend::Sqlite, "nprov").expect_err("sqlite has no schemas");
        assert!(e.to_string().contains("SQLite has no schemas"), "{e}");
    }

    #[test]
    fn lost_connections_and_restarts_are_transient_and_data_faults_are_not() {
        for code in [
            "08006", "08001", "57P01", "57P02", "57P03", "40001", "40P01", "5", "517",
        ] {
            assert!(is_transient_code(code), "{code}");
        }
        for code in ["23505", "23514", "42P01", "28P01", "08", "2067"] {
            assert!(!is_transient_code(code), "{code}");
        }
    }

    #[test]
    fn the_fence_lets_a_window_commit_only_on_the_watermark_it_was_planned_from() {
        let t = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .expect("time")
                .with_timezone(&Utc)
        };
        let a = t("2026-01-10T09:59:00Z");
        let b = t("2026-01-10T11:59:00Z");
        assert!(fence("s", None, None).is_ok());
        assert!(fence("s", Some(a), Some(a)).is_ok());
        // Stored to the microsecond: a planned instant with nanoseconds still matches.
        let finer = a + chrono::Duration::nanoseconds(300);
        assert!(fence("s", Some(finer), Some(a)).is_ok());
        for (expected, stored) in [(None, Some(a)), (Some(a), None), (Some(a), Some(b))] {
            match fence("s", expected, stored) {
                Err(StoreError::WatermarkMoved {
                    source_name,
                    expected: e,
                    found,
                }) => {
                    assert_eq!(source_name, "s");
                    assert_eq!(e, expected.map(timestamp).unwrap_or_else(|| "none".into()));
                    assert_eq!(
                        found,
                        stored.map(timestamp).unwrap_or_else(|| "none".into())
                    );
                }
                other => panic!("{expected:?} {stored:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn timestamps_have_fixed_width_and_sort() {
        let a = timestamp(DateTime::from_timestamp(1_700_000_000, 0).expect("valid"));
        assert_eq!(a, "2023-11-14T22:13:20.000000Z");
    }
}

//! The PostgreSQL backend: the dialect the replace engine's writes are executed in.
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
//! What to write is decided in [`super::replace`]; this module only says it in PostgreSQL's SQL,
//! set-based, a handful of statements per batch whatever its size: keys are looked up by `UNNEST`
//! arrays joined against the natural key (raw hashes compared on the server, so an unchanged key
//! sends no hash back), replaced children go in one `DELETE … = ANY($1)` per table, new
//! provområden in one `INSERT … SELECT FROM UNNEST(…)`, and the child tables, which hold nearly
//! all rows, by `COPY … FROM STDIN`. Several writers (sources, instances) may write at once, so
//! ids come from the identity sequences: the ids a batch needs are reserved in one round trip,
//! which lets children name their parents without `RETURNING`. The document's tracking rows live
//! in the temporary table `doc_tracking` (`ON COMMIT DROP`). A key held back is put back as
//! committed by reading it on another pooled connection, which (read committed) sees the rows
//! without this transaction's writes; the source's lock keeps anyone else from changing them.
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

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Row, Transaction};

use super::apply::{Applier, Dialect, DocInfo, Settle, Settled};
use super::replace::{
    self, BatchLimits, BatchPlan, DocState, Fingerprint, Op, Stored, Target, Write,
};
use super::{
    query_err, redact_url, timestamp, ApplyContext, DocumentTx, LeaderInfo, Leadership, RunKind,
    RunOutcome, RunRow, Store, StoreError, TableCounts, Watermark,
};
use crate::domain::{
    ContentHash, Delprovsresultat, Omrade, ProvomradeKey, Provtillfalle, ProvtillfalleResultat,
    StoredProvtillfalle, Utfall,
};
use crate::xml::{DocContext, RawHash};

use super::governance;
use super::sql::{count, Sql, SqlTx, Value};

/// An identifier in double quotes, any quote in it doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// What connections say they are, unless the URL's `application_name` says otherwise.
pub const APPLICATION_NAME: &str = "nprov-sync";

/// A batch: each flush costs a fixed number of round trips, so batches are larger than
/// SQLite's; elements and raw bytes are capped so memory stays bounded by them.
const BATCH: BatchLimits = BatchLimits {
    keys: 2000,
    elements: 8000,
    bytes: 4 << 20,
};

/// Pooled connections. One document holds one for its transaction; the rest serve `status`,
/// readiness checks and the sync engine's reads.
const MAX_CONNECTIONS: u32 = 8;
/// How long a connection (pooled or for leadership) may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a leadership check may take before the leadership counts as lost.
const LEADERSHIP_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

// ---- Connecting ---------------------------------------------------------------------------------

pub struct PostgresStore {
    pool: PgPool,
    /// The scanner's advice, kept across documents (see [`Applier::new`]).
    build_ahead: Arc<std::sync::atomic::AtomicBool>,
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
            build_ahead: Default::default(),
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
pub(super) fn lock_key(parts: &[&str]) -> i64 {
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

// ---- The store: what commands and the daemon ask of the database --------------------------------

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // Before anything is created: a schema a newer build migrated is left as it is.
        self.schema_state().await?.check()?;
        self.ensure_schema().await?;
        MIGRATOR.run(&self.pool).await?;
        // The data contract as comments, written when the schema's differ from this build's: a
        // changed description reaches an existing database on the next start, and a start that
        // changes nothing writes nothing (no catalogue rows, no WAL, no lock on every table).
        let described = super::contract::postgres_described();
        let stored: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT c.relname::text, NULL::text, obj_description(c.oid, 'pg_class')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v')
             UNION ALL
             SELECT c.relname::text, a.attname::text, col_description(c.oid, a.attnum)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid
             WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v')
               AND a.attnum > 0 AND NOT a.attisdropped",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("reading the data contract"))?;
        let stored: HashMap<(String, Option<String>), Option<String>> = stored
            .into_iter()
            .map(|(object, column, text)| ((object, column), text))
            .collect();
        let current = |c: &super::contract::Description| {
            stored
                .get(&(c.object.to_owned(), c.column.map(str::to_owned)))
                .is_some_and(|text| text.as_deref() == Some(c.text.as_str()))
        };
        if described.iter().all(current) {
            return Ok(());
        }
        // One simple-protocol query: one round trip (the database may be across a network), and
        // PostgreSQL runs a multi-statement query as one implicit transaction.
        let comments = described
            .iter()
            .map(super::contract::Description::statement)
            .collect::<Vec<_>>()
            .join(";\n");
        sqlx::raw_sql(&comments)
            .execute(&self.pool)
            .await
            .map_err(query_err("writing the data contract"))?;
        Ok(())
    }

    async fn applied_migrations(&self) -> Result<Vec<i64>, StoreError> {
        let context = "reading the applied migrations";
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(query_err(context))?;
        if !exists {
            return Ok(Vec::new());
        }
        sqlx::query_scalar(super::APPLIED_VERSIONS_SQL)
            .fetch_all(&self.pool)
            .await
            .map_err(query_err(context))
    }

    fn migrator(&self) -> &'static Migrator {
        &MIGRATOR
    }

    async fn grant_reader(&self, role: &str) -> Result<(), StoreError> {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(role)
                .fetch_one(&self.pool)
                .await
                .map_err(query_err("looking up the reader role"))?;
        if !exists {
            return Err(StoreError::Refused(format!(
                "database.reader_role: there is no role {role:?}; create it first \
                 (CREATE ROLE {} NOLOGIN, then GRANT it to the warehouse's users)",
                quote_ident(role)
            )));
        }
        let (role, schema) = (quote_ident(role), quote_ident(&self.lock_scope));
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_err("granting the reader role"))?;
        // Default privileges cover what later migrations create (as this role, which runs
        // them); the explicit grant covers what exists, views included.
        for statement in [
            format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
            format!("GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}"),
            format!("ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT ON TABLES TO {role}"),
        ] {
            sqlx::query(&statement)
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(query_err("granting the reader role"))?;
        }
        tx.commit()
            .await
            .map_err(query_err("granting the reader role"))
    }

    async fn begin_sql(&self, context: &'static str) -> Result<Box<dyn SqlTx>, StoreError> {
        let tx = self.pool.begin().await.map_err(query_err(context))?;
        Ok(Box::new(PgSql {
            tx,
            scope: self.lock_scope.clone(),
        }))
    }

    async fn source_rows(&self) -> Result<Vec<governance::SourceState>, StoreError> {
        let rows = sqlx::query(governance::SOURCES_SQL)
            .fetch_all(&self.pool)
            .await
            .map_err(query_err("listing sources"))?;
        Ok(rows
            .iter()
            .map(|r| governance::SourceState {
                source: r.get(0),
                watermark: None,
                provomrade: count(r.get(1)),
                runs: count(r.get(2)),
                last_ok: r.get::<Option<DateTime<Utc>>, _>(3).map(timestamp),
            })
            .collect())
    }

    async fn begin(
        &self,
        ctx: ApplyContext,
        doc: Arc<DocContext>,
    ) -> Result<Box<dyn DocumentTx>, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_err("starting a transaction"))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock_key(&["source", &self.lock_scope, &ctx.source]))
            .execute(&mut *tx)
            .await
            .map_err(query_err("waiting for another writer of the same source"))?;
        let info = DocInfo {
            source: ctx.source,
            namespace: doc.namespace.clone(),
            document: ctx.document,
            now: ctx.now,
        };
        let dialect = PgDialect {
            sql: PgSql {
                tx,
                scope: self.lock_scope.clone(),
            },
            pool: self.pool.clone(),
            source: info.source.clone(),
            change_log_lock: lock_key(&["change_log", &self.lock_scope]),
            held_table: false,
            tracking_table: false,
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
            .fetch_one(&self.pool)
            .await
            .and_then(|row| TableCounts::from_row(&row))
            .map_err(query_err("counting rows"))
    }

    async fn watermark(&self, source: &str) -> Result<Option<Watermark>, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(query_err("reading the watermark"))?;
        read_watermark(&mut conn, source, "").await
    }

    async fn read_texts(
        &self,
        sql: &str,
        values: &[Value<'_>],
        context: &'static str,
    ) -> Result<Vec<Vec<Option<String>>>, StoreError> {
        let rows = bind_values(sqlx::query(sql), values)
            .fetch_all(&self.pool)
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
            .fetch_all(&self.pool)
            .await
            .map_err(query_err("reading recent windows"))?;
        let local = |t: NaiveDateTime| t.format(crate::window::API_FORMAT).to_string();
        rows.iter()
            .map(|r| {
                Ok(RunRow {
                    kind: RunKind::parse(r.get(0))?,
                    from_local: local(r.get(1)),
                    tom_local: local(r.get(2)),
                    outcome: RunOutcome::parse(r.get(3))?,
                    finished_at: timestamp(r.get(4)),
                    http_status: r.get::<Option<i32>, _>(5).map(i64::from),
                    records: r.get(6),
                    changed: r.get(7),
                    cleared: r.get(8),
                    quarantined: r.get(9),
                    error: r.get(10),
                })
            })
            .collect()
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

// ---- Leadership: one instance syncs a source ----------------------------------------------------

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

// ---- Store-core SQL on PostgreSQL (sql::Sql) ----------------------------------------------------

/// A source's watermark; `suffix` is `FOR UPDATE` inside a transaction that moves it.
async fn read_watermark(
    conn: &mut PgConnection,
    source: &str,
    suffix: &str,
) -> Result<Option<Watermark>, StoreError> {
    let sql = format!(
        "SELECT watermark_utc, watermark_local, updated_at FROM sync_watermark WHERE source = $1 \
         {suffix}"
    );
    let row: Option<(DateTime<Utc>, NaiveDateTime, DateTime<Utc>)> = sqlx::query_as(&sql)
        .bind(source)
        .fetch_optional(conn)
        .await
        .map_err(query_err("reading the watermark"))?;
    Ok(row.map(|(utc, local, updated_at)| Watermark {
        utc,
        local,
        updated_at,
    }))
}

/// A store-core operation's transaction, with the lock scope (schema) of the writers it may
/// wait for.
struct PgSql {
    tx: Transaction<'static, Postgres>,
    scope: String,
}

#[async_trait]
impl Sql for PgSql {
    async fn execute(
        &mut self,
        sql: &str,
        values: &[Value<'_>],
        context: &'static str,
    ) -> Result<u64, StoreError> {
        bind_values(sqlx::query(sql), values)
            .execute(&mut *self.tx)
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
            .fetch_one(&mut *self.tx)
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
            .fetch_all(&mut *self.tx)
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

    /// Takes the writers' lock of every source (sorted, so two callers cannot deadlock), then
    /// the change_log lock: the order a window's writer takes them in.
    async fn lock_writers(&mut self, sql: &str, values: &[Value<'_>]) -> Result<(), StoreError> {
        let mut sources: Vec<String> = bind_values(sqlx::query(sql), values)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(query_err("finding the sources' writers"))?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()
            .map_err(query_err("finding the sources' writers"))?;
        sources.sort();
        sources.dedup();
        for source in &sources {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(lock_key(&["source", &self.scope, source]))
                .execute(&mut *self.tx)
                .await
                .map_err(query_err("waiting for the source's writer"))?;
        }
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock_key(&["change_log", &self.scope]))
            .execute(&mut *self.tx)
            .await
            .map_err(query_err("waiting to append to change_log"))?;
        Ok(())
    }

    async fn watermark(&mut self, source: &str) -> Result<Option<Watermark>, StoreError> {
        read_watermark(&mut self.tx, source, "FOR UPDATE").await
    }
}

#[async_trait]
impl SqlTx for PgSql {
    async fn commit(self: Box<Self>, context: &'static str) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(query_err(context))
    }
}

/// Binds the store core's values in this database's own types: `timestamptz` for instants,
/// `timestamp` for local times.
fn bind_values<'q>(
    mut query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    values: &[Value<'q>],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    for value in values {
        query = match *value {
            Value::Text(t) => query.bind(t),
            Value::OptText(t) => query.bind(t),
            Value::Int(n) => query.bind(n),
            Value::OptInt32(n) => query.bind(n),
            Value::Instant(t) => query.bind(t),
            Value::OptInstant(t) => query.bind(t),
            Value::Bool(b) => query.bind(b),
            Value::OptBool(b) => query.bind(b),
            Value::Local(t) => query.bind(t),
        };
    }
    query
}

// ---- COPY text ----------------------------------------------------------------------------------

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

// ---- A document's transaction: the plan's writes ------------------------------------------------

/// One document's transaction, as the replace engine drives it.
struct PgDialect {
    /// The document's transaction, with the lock scope its store-core SQL waits in.
    sql: PgSql,
    /// For reading the committed state of held keys.
    pool: PgPool,
    source: String,
    /// Serialises appends to `change_log` (held to the commit).
    change_log_lock: i64,
    /// Whether `doc_held` exists yet (it is made only when held keys spill).
    held_table: bool,
    /// Whether `doc_tracking` exists yet: it is made on the document's first tracked write, so
    /// a document that changes nothing creates no table (a temporary table's catalog rows are
    /// WAL too, and were most of an unchanged daily re-read's).
    tracking_table: bool,
}

/// A stored key read back as committed: its hashes, `changed_at` and namespace.
type CommittedRow = (String, Option<Vec<u8>>, DateTime<Utc>, String);

impl PgDialect {
    /// Puts keys back as committed before this document, read on another connection.
    async fn restore(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(query_err("reading held keys as committed"))?;
        let mut committed: HashMap<i64, (CommittedRow, Vec<StoredProvtillfalle>)> = HashMap::new();
        for &id in ids {
            let row: Option<CommittedRow> = sqlx::query_as(
                "SELECT content_sha256, raw_sha256, changed_at, namespace FROM provomrade
                 WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(query_err("reading held keys as committed"))?;
            if let Some(row) = row {
                let children = load_children(&mut conn, id, 0, i64::MAX).await?;
                committed.insert(id, (row, children));
            }
        }
        drop(conn);
        let mut undo = vec![
            "DELETE FROM delprovsresultat WHERE provtillfalle_id = ANY(ARRAY(
                 SELECT id FROM provtillfalle WHERE provomrade_id = ANY($1)))",
            "DELETE FROM provtillfalle WHERE provomrade_id = ANY($1)",
        ];
        if self.tracking_table {
            undo.push("DELETE FROM doc_tracking WHERE provomrade_id = ANY($1)");
        }
        for sql in undo {
            sqlx::query(sql)
                .bind(ids)
                .execute(&mut *self.sql.tx)
                .await
                .map_err(query_err("undoing held keys"))?;
        }
        let created: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !committed.contains_key(id))
            .collect();
        sqlx::query("DELETE FROM provomrade WHERE id = ANY($1)")
            .bind(&created)
            .execute(&mut *self.sql.tx)
            .await
            .map_err(query_err("undoing held keys"))?;
        let total: usize = committed.values().map(|(_, c)| c.len()).sum();
        let ids_pt = reserve_ids(&mut self.sql.tx, 0, total).await?.pt;
        let mut pt_ids = ids_pt.into_iter();
        let (mut pt, mut dp) = (CopyRows::default(), CopyRows::default());
        for (id, ((content, raw, changed_at, namespace), children)) in &committed {
            sqlx::query(
                "UPDATE provomrade SET content_sha256 = $2, raw_sha256 = $3, changed_at = $4,
                     namespace = $5 WHERE id = $1",
            )
            .bind(id)
            .bind(content)
            .bind(raw)
            .bind(changed_at)
            .bind(namespace)
            .execute(&mut *self.sql.tx)
            .await
            .map_err(query_err("undoing held keys"))?;
            for (ordinal, s) in children.iter().enumerate() {
                let pt_id = pt_ids.next().ok_or_else(|| ids_ran_out("provtillfalle"))?;
                push_children(
                    &mut pt,
                    &mut dp,
                    pt_id,
                    *id,
                    ordinal as i64,
                    &s.skolform,
                    &s.provtillfalle,
                );
            }
        }
        self.copy_children(&pt, &dp).await
    }

    async fn untrack(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        if !self.tracking_table {
            return Ok(());
        }
        sqlx::query("DELETE FROM doc_tracking WHERE provomrade_id = ANY($1)")
            .bind(ids)
            .execute(&mut *self.sql.tx)
            .await
            .map_err(query_err("dropping tracking rows of held keys"))?;
        Ok(())
    }

    async fn delete_children(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        // Delprovsresultat first, in one statement: the foreign key's cascade would otherwise
        // delete them one provtillfälle at a time.
        sqlx::query(
            "DELETE FROM delprovsresultat WHERE provtillfalle_id = ANY(ARRAY(
                 SELECT id FROM provtillfalle WHERE provomrade_id = ANY($1)))",
        )
        .bind(ids)
        .execute(&mut *self.sql.tx)
        .await
        .map_err(query_err("deleting replaced delprovsresultat"))?;
        sqlx::query("DELETE FROM provtillfalle WHERE provomrade_id = ANY($1)")
            .bind(ids)
            .execute(&mut *self.sql.tx)
            .await
            .map_err(query_err("deleting replaced provtillfällen"))?;
        Ok(())
    }

    /// New provområden with the ids reserved for them (`po`, in plan order).
    async fn insert_keys(
        &mut self,
        keys: &[replace::NewKey],
        po: &[i64],
        doc: &DocInfo,
    ) -> Result<(), StoreError> {
        let n = keys.len();
        let ids = po.get(..n).ok_or_else(|| ids_ran_out("provomrade"))?;
        let k = |i: usize| &keys[i].key;
        sqlx::query(
            "INSERT INTO provomrade (id, source, elev, kind, amne, arskurs, kurs, namespace,
                 content_sha256, raw_sha256, changed_at)
             OVERRIDING SYSTEM VALUE
             SELECT u.id, $1, u.elev, u.kind, u.amne, u.arskurs, u.kurs, $2, u.sha, u.raw, $3
             FROM UNNEST($4::int8[], $5::text[], $6::text[], $7::text[], $8::int4[],
                         $9::text[], $10::text[], $11::bytea[])
                  AS u(id, elev, kind, amne, arskurs, kurs, sha, raw)",
        )
        .bind(&doc.source)
        .bind(&doc.namespace)
        .bind(doc.now)
        .bind(ids)
        .bind((0..n).map(|i| k(i).elev.as_str()).collect::<Vec<_>>())
        .bind((0..n).map(|i| k(i).omrade.kind()).collect::<Vec<_>>())
        .bind((0..n).map(|i| k(i).omrade.amne()).collect::<Vec<_>>())
        .bind(
            (0..n)
                .map(|i| k(i).omrade.arskurs().map(|a| i32::from(a.get())))
                .collect::<Vec<_>>(),
        )
        .bind((0..n).map(|i| k(i).omrade.kurs()).collect::<Vec<_>>())
        .bind(keys.iter().map(|c| c.content.as_str()).collect::<Vec<_>>())
        .bind(keys.iter().map(|c| &c.raw[..]).collect::<Vec<_>>())
        .execute(&mut *self.sql.tx)
        .await
        .map_err(query_err("inserting provområden"))?;
        Ok(())
    }

    /// Provtillfällen and their delprovsresultat by two streamed COPYs, with the reserved
    /// provtillfälle ids `pt` taken in plan order; returns how many it took.
    async fn insert_children(
        &mut self,
        children: &[replace::Children],
        po: &[i64],
        pt: &[i64],
    ) -> Result<usize, StoreError> {
        let total: usize = children.iter().map(|c| c.rows.len()).sum();
        if total == 0 {
            return Ok(0);
        }
        if pt.len() < total {
            return Err(ids_ran_out("provtillfalle"));
        }
        let targets: Vec<i64> = children
            .iter()
            .map(|c| target_id(po, c.target))
            .collect::<Result<_, _>>()?;
        // Plain index cursors rather than iterator chains: the rows are written a chunk at a
        // time across awaits, and (child, row, delprov) positions say where to resume.
        let mut at = RowCursor::default();
        copy_stream(
            &mut self.sql.tx,
            "COPY provtillfalle (id, provomrade_id, ordinal, skolform, uppdaterat, genomfort,
                 intedeltagit, sammanvagt_provbetyg) FROM STDIN",
            |buf| {
                while let Some(c) = children.get(at.child) {
                    let Some((skolform, t)) = c.rows.get(at.row) else {
                        at.child += 1;
                        at.row = 0;
                        continue;
                    };
                    let ordinal = c.first_ordinal + at.row as i64;
                    push_provtillfalle(buf, pt[at.flat], targets[at.child], ordinal, skolform, t);
                    at.row += 1;
                    at.flat += 1;
                    if buf.text.len() >= COPY_CHUNK {
                        return true;
                    }
                }
                false
            },
        )
        .await
        .map_err(query_err("inserting provtillfällen"))?;
        let mut at = RowCursor::default();
        copy_stream(
            &mut self.sql.tx,
            "COPY delprovsresultat (provtillfalle_id, ordinal, typ, utfall, betyg, poang,
                 maluppfyllnad) FROM STDIN",
            |buf| {
                while let Some(c) = children.get(at.child) {
                    let Some((_, t)) = c.rows.get(at.row) else {
                        at.child += 1;
                        at.row = 0;
                        continue;
                    };
                    let Some(d) = t.resultat.delprovsresultat().get(at.delprov) else {
                        at.row += 1;
                        at.flat += 1;
                        at.delprov = 0;
                        continue;
                    };
                    push_delprov(buf, pt[at.flat], at.delprov as i64, d);
                    at.delprov += 1;
                    if buf.text.len() >= COPY_CHUNK {
                        return true;
                    }
                }
                false
            },
        )
        .await
        .map_err(query_err("inserting delprovsresultat"))?;
        Ok(total)
    }

    async fn replace(
        &mut self,
        rows: &[(i64, ContentHash, RawHash)],
        doc: &DocInfo,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE provomrade p SET content_sha256 = u.sha, raw_sha256 = u.raw,
                 changed_at = $1, namespace = $2
             FROM UNNEST($3::int8[], $4::text[], $5::bytea[]) AS u(id, sha, raw)
             WHERE p.id = u.id",
        )
        .bind(doc.now)
        .bind(&doc.namespace)
        .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| &r.2[..]).collect::<Vec<_>>())
        .execute(&mut *self.sql.tx)
        .await
        .map_err(query_err("updating replaced provområden"))?;
        Ok(())
    }

    async fn track(&mut self, tracks: &[replace::Track], po: &[i64]) -> Result<(), StoreError> {
        self.ensure_tracking_table().await?;
        let ids: Vec<i64> = tracks
            .iter()
            .map(|t| target_id(po, t.target))
            .collect::<Result<_, _>>()?;
        let col = |f: &dyn Fn(&replace::Touched) -> Option<String>| -> Vec<Option<String>> {
            tracks.iter().map(|x| f(&x.touched)).collect()
        };
        sqlx::query(
            "INSERT INTO doc_tracking (provomrade_id, written, prev_content, raw, children,
                 elements, settle, op)
             SELECT * FROM UNNEST($1::int8[], $2::bool[], $3::text[], $4::bytea[],
                                  $5::int8[], $6::int8[], $7::bool[], $8::text[])
             ON CONFLICT (provomrade_id) DO UPDATE SET
                 written = excluded.written, prev_content = excluded.prev_content,
                 raw = excluded.raw, children = excluded.children,
                 elements = excluded.elements, settle = excluded.settle, op = excluded.op",
        )
        .bind(ids)
        .bind(tracks.iter().map(|x| x.touched.written).collect::<Vec<_>>())
        .bind(col(&|x| x.prev_content.clone()))
        .bind(
            tracks
                .iter()
                .map(|x| x.touched.raw.as_ref().map(|r| &r[..]))
                .collect::<Vec<_>>(),
        )
        .bind(
            tracks
                .iter()
                .map(|x| x.touched.children)
                .collect::<Vec<_>>(),
        )
        .bind(
            tracks
                .iter()
                .map(|x| x.touched.elements)
                .collect::<Vec<_>>(),
        )
        .bind(tracks.iter().map(|x| x.touched.settle).collect::<Vec<_>>())
        .bind(col(&|x| x.op.map(|o| o.as_str().to_owned())))
        .execute(&mut *self.sql.tx)
        .await
        .map_err(query_err("tracking the document's keys"))?;
        Ok(())
    }

    async fn track_unchanged(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        self.ensure_tracking_table().await?;
        sqlx::query(
            "INSERT INTO doc_tracking (provomrade_id, written, children, elements, settle)
             SELECT u, false, 0, 0, false FROM UNNEST($1::int8[]) AS u
             ON CONFLICT (provomrade_id) DO NOTHING",
        )
        .bind(ids)
        .execute(&mut *self.sql.tx)
        .await
        .map_err(query_err("tracking the document's keys"))?;
        Ok(())
    }

    async fn rehash(&mut self, rows: &[(i64, RawHash)], doc: &DocInfo) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE provomrade p SET raw_sha256 = u.raw, namespace = $1
             FROM UNNEST($2::int8[], $3::bytea[]) AS u(id, raw) WHERE p.id = u.id",
        )
        .bind(&doc.namespace)
        .bind(rows.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, raw)| &raw[..]).collect::<Vec<_>>())
        .execute(&mut *self.sql.tx)
        .await
        .map_err(query_err("writing raw hashes of keys unchanged by content"))?;
        Ok(())
    }

    async fn track_held(&mut self, fps: &[Fingerprint]) -> Result<(), StoreError> {
        self.ensure_held_table().await?;
        sqlx::query(
            "INSERT INTO doc_held SELECT * FROM UNNEST($1::bytea[]) ON CONFLICT DO NOTHING",
        )
        .bind(
            fps.iter()
                .map(|fp| fp.to_le_bytes().to_vec())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *self.sql.tx)
        .await
        .map_err(query_err("tracking held keys"))?;
        Ok(())
    }

    async fn copy_children(&mut self, pt: &CopyRows, dp: &CopyRows) -> Result<(), StoreError> {
        // COPY writes the reserved ids into the identity column as given.
        if pt.rows > 0 {
            copy_in(
                &mut self.sql.tx,
                "COPY provtillfalle (id, provomrade_id, ordinal, skolform, uppdaterat, genomfort,
                     intedeltagit, sammanvagt_provbetyg) FROM STDIN",
                pt,
            )
            .await
            .map_err(query_err("inserting provtillfällen"))?;
        }
        if dp.rows > 0 {
            copy_in(
                &mut self.sql.tx,
                "COPY delprovsresultat (provtillfalle_id, ordinal, typ, utfall, betyg, poang,
                     maluppfyllnad) FROM STDIN",
                dp,
            )
            .await
            .map_err(query_err("inserting delprovsresultat"))?;
        }
        Ok(())
    }

    async fn ensure_tracking_table(&mut self) -> Result<(), StoreError> {
        if !self.tracking_table {
            sqlx::query(
                "CREATE TEMP TABLE IF NOT EXISTS doc_tracking (
                    provomrade_id bigint  PRIMARY KEY,
                    written       boolean NOT NULL,
                    prev_content  text,
                    raw           bytea,
                    children      bigint  NOT NULL,
                    elements      bigint  NOT NULL,
                    settle        boolean NOT NULL,
                    op            text
                ) ON COMMIT DROP",
            )
            .persistent(false)
            .execute(&mut *self.sql.tx)
            .await
            .map_err(query_err("creating the document's tracking table"))?;
            self.tracking_table = true;
        }
        Ok(())
    }

    async fn ensure_held_table(&mut self) -> Result<(), StoreError> {
        if !self.held_table {
            sqlx::query(
                "CREATE TEMP TABLE IF NOT EXISTS doc_held (fp bytea PRIMARY KEY) ON COMMIT DROP",
            )
            .persistent(false)
            .execute(&mut *self.sql.tx)
            .await
            .map_err(query_err("creating the held keys' table"))?;
            self.held_table = true;
        }
        Ok(())
    }
}

// ---- Children as COPY rows, and the ids they take -----------------------------------------------

/// One provtillfälle and its delprovsresultat as COPY rows.
fn push_children(
    pt: &mut CopyRows,
    dp: &mut CopyRows,
    pt_id: i64,
    provomrade_id: i64,
    ordinal: i64,
    skolform: &str,
    t: &Provtillfalle,
) {
    push_provtillfalle(pt, pt_id, provomrade_id, ordinal, skolform, t);
    for (j, d) in t.resultat.delprovsresultat().iter().enumerate() {
        push_delprov(dp, pt_id, j as i64, d);
    }
}

fn push_provtillfalle(
    pt: &mut CopyRows,
    pt_id: i64,
    provomrade_id: i64,
    ordinal: i64,
    skolform: &str,
    t: &Provtillfalle,
) {
    pt.push(&[
        Field::Int(pt_id),
        Field::Int(provomrade_id),
        Field::Int(ordinal),
        Field::Text(skolform),
        Field::Date(t.uppdaterat),
        t.genomfort.into(),
        Field::Bool(t.resultat.intedeltagit()),
        t.resultat.sammanvagt_provbetyg().into(),
    ]);
}

fn push_delprov(dp: &mut CopyRows, pt_id: i64, ordinal: i64, d: &Delprovsresultat) {
    dp.push(&[
        Field::Int(pt_id),
        Field::Int(ordinal),
        Field::Text(&d.typ),
        Field::Text(d.utfall.as_str()),
        d.utfall.betyg().into(),
        d.utfall.poang().into(),
        d.utfall.maluppfyllnad().into(),
    ]);
}

/// Where a chunked COPY of a batch's children resumes: the child group, the provtillfälle
/// within it, its flat index (into the reserved ids) and the delprovsresultat within it.
#[derive(Default)]
struct RowCursor {
    child: usize,
    row: usize,
    flat: usize,
    delprov: usize,
}

/// Bytes of COPY text sent at a time: the server works on one chunk while the next is written.
const COPY_CHUNK: usize = 256 << 10;

/// `COPY … FROM STDIN` with rows written a chunk at a time by `fill` (which returns whether
/// more follow), each chunk sent before the next is written.
async fn copy_stream(
    conn: &mut PgConnection,
    statement: &str,
    mut fill: impl FnMut(&mut CopyRows) -> bool,
) -> Result<(), sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    let mut buf = CopyRows::default();
    loop {
        let more = fill(&mut buf);
        if !buf.text.is_empty() {
            if let Err(e) = copy.send(buf.text.as_bytes()).await {
                // Leaves the connection usable for the rollback.
                let _ = copy.abort(e.to_string()).await;
                return Err(e);
            }
            buf.text.clear();
            buf.rows = 0;
        }
        if !more {
            break;
        }
    }
    copy.finish().await?;
    Ok(())
}

/// Ids reserved for one batch.
#[derive(Default)]
struct Ids {
    po: Vec<i64>,
    pt: Vec<i64>,
}

/// The row id a plan's target names, with the plan's reserved provområde ids.
fn target_id(po: &[i64], t: Target) -> Result<i64, StoreError> {
    match t {
        Target::New(i) => po.get(i).copied().ok_or_else(|| ids_ran_out("provomrade")),
        Target::Id(id) => Ok(id),
    }
}

fn ids_ran_out(table: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "fewer {table} ids were reserved than rows to insert"
    ))
}

/// Takes ids for a batch's new provomrade and provtillfalle rows from their identity
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

// ---- A document's transaction: lookups, settling, change_log ------------------------------------

#[async_trait]
impl Dialect for PgDialect {
    /// Each key is a LATERAL subquery with `LIMIT 1`, which keeps the plan on the natural key's
    /// unique index however the planner sizes the (growing, not yet analysed) tables.
    async fn lookup(
        &mut self,
        keys: &[&ProvomradeKey],
        raws: &[RawHash],
    ) -> Result<Vec<Option<Stored>>, StoreError> {
        let mut amne: (Vec<i32>, Vec<&str>, Vec<&str>, Vec<i32>, Vec<&[u8]>) = Default::default();
        let mut kurs: (Vec<i32>, Vec<&str>, Vec<&str>, Vec<&[u8]>) = Default::default();
        for (i, k) in keys.iter().enumerate() {
            match &k.omrade {
                Omrade::Amne { amne: a, arskurs } => {
                    amne.0.push(i as i32);
                    amne.1.push(&k.elev);
                    amne.2.push(a);
                    amne.3.push(i32::from(arskurs.get()));
                    amne.4.push(&raws[i][..]);
                }
                Omrade::Kurs { kurs: c } => {
                    kurs.0.push(i as i32);
                    kurs.1.push(&k.elev);
                    kurs.2.push(c);
                    kurs.3.push(&raws[i][..]);
                }
            }
        }
        // Hashes travel back only where the raw hash differs or the document tracks the key.
        const COLUMNS: &str = "k.i, p.id, p.raw_sha256 IS NOT DISTINCT FROM k.raw,
                CASE WHEN p.raw_sha256 IS NOT DISTINCT FROM k.raw AND t.provomrade_id IS NULL
                     THEN NULL ELSE p.content_sha256 END,
                CASE WHEN p.raw_sha256 IS NOT DISTINCT FROM k.raw AND t.provomrade_id IS NULL
                     THEN NULL ELSE p.raw_sha256 END,
                t.written, t.prev_content, t.raw, t.children, t.elements, t.settle, t.op";
        // Until the document tracks a key there is no table to join: an empty row of its shape
        // stands in, so both forms answer alike.
        let tracking = if self.tracking_table {
            "SELECT * FROM doc_tracking t WHERE t.provomrade_id = p.id LIMIT 1"
        } else {
            "SELECT NULL::bigint AS provomrade_id, NULL::boolean AS written,
                    NULL::text AS prev_content, NULL::bytea AS raw, NULL::bigint AS children,
                    NULL::bigint AS elements, NULL::boolean AS settle, NULL::text AS op
             WHERE false"
        };
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS}
             FROM UNNEST($2::int4[], $3::text[], $4::text[], $5::int4[], $6::bytea[])
                  AS k(i, elev, amne, arskurs, raw)
             CROSS JOIN LATERAL (
                 SELECT p.id, p.content_sha256, p.raw_sha256 FROM provomrade p
                 WHERE p.source = $1 AND p.kind = 'amne' AND p.elev = k.elev
                   AND p.amne = k.amne AND p.arskurs = k.arskurs
                 LIMIT 1) p
             LEFT JOIN LATERAL ({tracking}) t ON true
             UNION ALL
             SELECT {COLUMNS}
             FROM UNNEST($7::int4[], $8::text[], $9::text[], $10::bytea[]) AS k(i, elev, kurs, raw)
             CROSS JOIN LATERAL (
                 SELECT p.id, p.content_sha256, p.raw_sha256 FROM provomrade p
                 WHERE p.source = $1 AND p.kind = 'kurs' AND p.elev = k.elev AND p.kurs = k.kurs
                 LIMIT 1) p
             LEFT JOIN LATERAL ({tracking}) t ON true"
        ))
        .bind(&self.source)
        .bind(amne.0)
        .bind(amne.1)
        .bind(amne.2)
        .bind(amne.3)
        .bind(amne.4)
        .bind(kurs.0)
        .bind(kurs.1)
        .bind(kurs.2)
        .bind(kurs.3)
        .fetch_all(&mut *self.sql.tx)
        .await
        .map_err(query_err("looking up stored provområden"))?;
        let mut found: Vec<Option<Stored>> = vec![None; keys.len()];
        for r in rows {
            let i: i32 = r.get(0);
            let slot = found
                .get_mut(i as usize)
                .ok_or_else(|| StoreError::Corrupt(format!("lookup answered for key {i}")))?;
            let written: Option<bool> = r.get(5);
            *slot = Some(Stored {
                id: r.get(1),
                raw_matches: r.get(2),
                content: r.get(3),
                raw: r
                    .get::<Option<Vec<u8>>, _>(4)
                    .as_deref()
                    .and_then(replace::raw_from_bytes),
                touched: written.map(|written| replace::Touched {
                    written,
                    prev_content: r.get(6),
                    raw: r
                        .get::<Option<Vec<u8>>, _>(7)
                        .as_deref()
                        .and_then(replace::raw_from_bytes),
                    children: r.get::<Option<i64>, _>(8).unwrap_or(0),
                    elements: r.get::<Option<i64>, _>(9).unwrap_or(0),
                    settle: r.get::<Option<bool>, _>(10).unwrap_or(false),
                    op: r
                        .get::<Option<String>, _>(11)
                        .as_deref()
                        .and_then(Op::parse),
                }),
            });
        }
        Ok(found)
    }

    async fn held(&mut self, fps: &[Fingerprint]) -> Result<HashSet<Fingerprint>, StoreError> {
        self.ensure_held_table().await?;
        let blobs: Vec<Vec<u8>> = fps.iter().map(|fp| fp.to_le_bytes().to_vec()).collect();
        let found: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT fp FROM doc_held WHERE fp = ANY($1::bytea[])")
                .bind(blobs)
                .fetch_all(&mut *self.sql.tx)
                .await
                .map_err(query_err("looking up held keys"))?;
        Ok(found
            .iter()
            .filter_map(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
            .map(u128::from_le_bytes)
            .collect())
    }

    async fn children_counts(&mut self, ids: &[i64]) -> Result<HashMap<i64, i64>, StoreError> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT provomrade_id, count(*) FROM provtillfalle
             WHERE provomrade_id = ANY($1) GROUP BY provomrade_id",
        )
        .bind(ids)
        .fetch_all(&mut *self.sql.tx)
        .await
        .map_err(query_err("counting stored provtillfällen"))?;
        Ok(rows.into_iter().collect())
    }

    async fn write(&mut self, plan: &BatchPlan, doc: &DocInfo) -> Result<(), StoreError> {
        // Ids for the whole plan in one round trip: sequences are outside the transaction, so
        // taking them before the restores changes nothing the restores see.
        let (pt_total, _) = plan.child_rows;
        let ids = reserve_ids(&mut self.sql.tx, plan.new_keys, pt_total as usize).await?;
        // How many reserved provtillfälle ids the writes so far used.
        let mut pt_used = 0;
        for w in &plan.writes {
            match w {
                Write::Restore(ids) => self.restore(ids).await?,
                Write::Untrack(ids) => self.untrack(ids).await?,
                Write::DeleteChildren(ids) => self.delete_children(ids).await?,
                Write::InsertKeys(keys) => self.insert_keys(keys, &ids.po, doc).await?,
                Write::InsertChildren(children) => {
                    let pt = ids.pt.get(pt_used..).unwrap_or_default();
                    pt_used += self.insert_children(children, &ids.po, pt).await?;
                }
                Write::Replace(rows) => self.replace(rows, doc).await?,
                Write::Track(tracks) => self.track(tracks, &ids.po).await?,
                Write::TrackUnchanged(ids) => self.track_unchanged(ids).await?,
                Write::Rehash(rows) => self.rehash(rows, doc).await?,
                Write::TrackHeld(fps) => self.track_held(fps).await?,
                Write::Quarantine(rows) => write_quarantine(&mut self.sql.tx, doc, rows).await?,
            }
        }
        Ok(())
    }

    async fn to_settle(&mut self, after: i64, limit: i64) -> Result<Vec<Settle>, StoreError> {
        if !self.tracking_table {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, Option<String>, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT provomrade_id, prev_content, raw FROM doc_tracking
             WHERE written AND settle AND provomrade_id > $1
             ORDER BY provomrade_id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *self.sql.tx)
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
        load_children(&mut self.sql.tx, id, ordinal, limit).await
    }

    async fn settled(&mut self, rows: &[Settled], doc: &DocInfo) -> Result<(), StoreError> {
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let ops: Vec<Option<&str>> = rows.iter().map(|r| r.op.map(Op::as_str)).collect();
        sqlx::query(
            "UPDATE provomrade p SET content_sha256 = u.sha, raw_sha256 = u.raw, namespace = $1,
                 changed_at = CASE WHEN u.op IS NOT NULL THEN $2 ELSE p.changed_at END
             FROM UNNEST($3::int8[], $4::text[], $5::bytea[], $6::text[]) AS u(id, sha, raw, op)
             WHERE p.id = u.id",
        )
        .bind(&doc.namespace)
        .bind(doc.now)
        .bind(&ids)
        .bind(rows.iter().map(|r| r.content.as_str()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.raw.as_ref().map(|r| &r[..]))
                .collect::<Vec<_>>(),
        )
        .bind(&ops)
        .execute(&mut *self.sql.tx)
        .await
        .map_err(query_err("settling keys"))?;
        sqlx::query(
            "UPDATE doc_tracking t SET op = u.op, settle = false
             FROM UNNEST($1::int8[], $2::text[]) AS u(id, op) WHERE t.provomrade_id = u.id",
        )
        .bind(&ids)
        .bind(&ops)
        .execute(&mut *self.sql.tx)
        .await
        .map_err(query_err("settling keys"))?;
        Ok(())
    }

    async fn finish(&mut self, doc: &DocInfo) -> Result<(), StoreError> {
        if !self.tracking_table {
            // Nothing was written, so nothing changed.
            return Ok(());
        }
        let changes: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM doc_tracking WHERE written AND op IS NOT NULL)",
        )
        .fetch_one(&mut *self.sql.tx)
        .await
        .map_err(query_err("looking for changes"))?;
        if changes {
            // Held to the commit: entries become visible in seq order (see the module docs).
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(self.change_log_lock)
                .execute(&mut *self.sql.tx)
                .await
                .map_err(query_err("waiting to append to change_log"))?;
            // Real changes only, decided by the replace core; within one document in
            // provomrade id order.
            sqlx::query(
                "INSERT INTO change_log (provomrade_id, op, at)
                 SELECT provomrade_id, op, $1 FROM doc_tracking
                 WHERE written AND op IS NOT NULL ORDER BY provomrade_id",
            )
            .bind(doc.now)
            .execute(&mut *self.sql.tx)
            .await
            .map_err(query_err("appending to change_log"))?;
        }
        Ok(())
    }

    fn sql(&mut self) -> &mut dyn Sql {
        &mut self.sql
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.sql
            .tx
            .commit()
            .await
            .map_err(query_err("committing the document"))
    }

    async fn rollback(self: Box<Self>) -> Result<(), StoreError> {
        self.sql
            .tx
            .rollback()
            .await
            .map_err(query_err("rolling back the document"))
    }
}

// ---- Quarantine and stored children -------------------------------------------------------------

/// Writes a batch's quarantine rows in one statement: one row per distinct element, counted.
async fn write_quarantine(
    conn: &mut PgConnection,
    doc: &DocInfo,
    rows: &[replace::QuarantineRow],
) -> Result<(), StoreError> {
    let key = |q: &replace::QuarantineRow| q.key.clone();
    let keys: Vec<Option<ProvomradeKey>> = rows.iter().map(key).collect();
    sqlx::query(
        "INSERT INTO quarantine (source, elev, kind, amne, arskurs, kurs, element_sha256, reason,
             error_code, element, location, line, \"column\", document, namespace, raw_xml,
             first_seen_at, last_seen_at, times_seen)
         SELECT $1, u.elev, u.kind, u.amne, u.arskurs, u.kurs, u.sha, u.reason, u.code, u.element,
                u.location, u.line, u.col, $2, $3, u.raw, $4, $4, u.times
         FROM UNNEST($5::text[], $6::text[], $7::text[], $8::int4[], $9::text[], $10::text[],
                     $11::text[], $12::text[], $13::text[], $14::text[], $15::int8[],
                     $16::int8[], $17::text[], $18::int8[])
              WITH ORDINALITY AS u(elev, kind, amne, arskurs, kurs, sha, reason, code, element,
                                   location, line, col, raw, times, n)
         ORDER BY u.n
         ON CONFLICT (source, element_sha256) DO UPDATE SET
             reason = excluded.reason, error_code = excluded.error_code,
             element = excluded.element, location = excluded.location, line = excluded.line,
             \"column\" = excluded.\"column\", document = excluded.document,
             namespace = excluded.namespace,
             raw_xml = COALESCE(excluded.raw_xml, quarantine.raw_xml),
             last_seen_at = excluded.last_seen_at,
             times_seen = quarantine.times_seen + excluded.times_seen",
    )
    .bind(&doc.source)
    .bind(&doc.document)
    .bind(&doc.namespace)
    .bind(doc.now)
    .bind(rows.iter().map(|q| q.elev.as_deref()).collect::<Vec<_>>())
    .bind(
        keys.iter()
            .map(|k| k.as_ref().map(|k| k.omrade.kind()))
            .collect::<Vec<_>>(),
    )
    .bind(
        keys.iter()
            .map(|k| k.as_ref().and_then(|k| k.omrade.amne()))
            .collect::<Vec<_>>(),
    )
    .bind(
        keys.iter()
            .map(|k| {
                k.as_ref()
                    .and_then(|k| k.omrade.arskurs())
                    .map(|a| i32::from(a.get()))
            })
            .collect::<Vec<_>>(),
    )
    .bind(
        keys.iter()
            .map(|k| k.as_ref().and_then(|k| k.omrade.kurs()))
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|q| crate::domain::hex32(&q.raw_sha256))
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|q| q.reason.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|q| q.error_code).collect::<Vec<_>>())
    .bind(rows.iter().map(|q| q.element.as_str()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|q| q.location.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|q| q.location.line as i64)
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|q| q.location.column as i64)
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|q| q.raw_xml.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|q| q.times as i64).collect::<Vec<_>>())
    .execute(conn)
    .await
    .map_err(query_err("quarantining elements"))?;
    Ok(())
}

/// Reads a page of a key's stored provtillfällen back into domain values, in order.
async fn load_children(
    conn: &mut PgConnection,
    provomrade_id: i64,
    from_ordinal: i64,
    limit: i64,
) -> Result<Vec<StoredProvtillfalle>, StoreError> {
    let pts = sqlx::query(
        "SELECT id, skolform, uppdaterat, genomfort, intedeltagit, sammanvagt_provbetyg
         FROM provtillfalle WHERE provomrade_id = $1 AND ordinal >= $2
         ORDER BY ordinal LIMIT $3",
    )
    .bind(provomrade_id)
    .bind(from_ordinal)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
    .map_err(query_err("reading stored provtillfällen"))?;
    let pt_ids: Vec<i64> = pts.iter().map(|r| r.get(0)).collect();
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
    let mut out = Vec::with_capacity(pts.len());
    for r in pts {
        let id: i64 = r.get(0);
        let intedeltagit: bool = r.get(4);
        out.push(StoredProvtillfalle {
            skolform: r.get::<String, _>(1).into(),
            provtillfalle: Provtillfalle {
                uppdaterat: r.get(2),
                genomfort: r.get(3),
                resultat: if intedeltagit {
                    ProvtillfalleResultat::Intedeltagit
                } else {
                    ProvtillfalleResultat::Resultat {
                        sammanvagt_provbetyg: r.get::<Option<String>, _>(5).map(Into::into),
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

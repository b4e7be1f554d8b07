//! The store core's one way of writing an operation once for both backends: SQL with `$N`
//! placeholders (which SQLite and PostgreSQL both read) and functions both databases have,
//! bound from [`Value`]s and run by a backend's [`SqlTx`]. A backend says only how it binds a
//! value (SQLite keeps instants as fixed-width RFC 3339 text and local times as text; PostgreSQL
//! as `timestamptz` and `timestamp`), how it reads a watermark back, and which locks an
//! operation waits for. `sync_run` rows, retention, erasure and a source's state go this way;
//! a document's bulk writes do not (each backend has its own bulk path: multi-row `VALUES` on
//! SQLite, `UNNEST` and `COPY` on PostgreSQL).

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};

use super::{RunKind, RunOutcome, StoreError, SyncRun, Watermark};

/// SQL run on a backend's connection inside a transaction: a store-core operation's own
/// ([`SqlTx`]) or a document's.
#[async_trait]
pub trait Sql: Send {
    /// Runs a statement; returns the rows it changed.
    async fn execute(
        &mut self,
        sql: &str,
        values: &[Value<'_>],
        context: &'static str,
    ) -> Result<u64, StoreError>;

    /// Runs a query of one row whose every column is a count (`count(*)`).
    async fn counts(
        &mut self,
        sql: &str,
        values: &[Value<'_>],
        context: &'static str,
    ) -> Result<Vec<u64>, StoreError>;

    /// Runs a query whose every column is text (or NULL; cast others with `CAST(… AS TEXT)`):
    /// its rows, for the few reads the store core makes (bounded by the query's `LIMIT`).
    async fn texts(
        &mut self,
        sql: &str,
        values: &[Value<'_>],
        context: &'static str,
    ) -> Result<Vec<Vec<Option<String>>>, StoreError>;

    /// Waits until no window of the sources `sources_sql` names (a query of one text column,
    /// bound to `values`) is being written, and holds them off until the transaction ends.
    /// PostgreSQL takes the writers' advisory locks (several processes may write); SQLite has
    /// nothing to do and runs no query (its `BEGIN IMMEDIATE` holds the only write lock).
    async fn lock_writers(
        &mut self,
        sources_sql: &str,
        values: &[Value<'_>],
    ) -> Result<(), StoreError>;

    /// The source's watermark, held against other writers until the transaction ends
    /// (PostgreSQL: `FOR UPDATE`; SQLite: the transaction holds the write lock).
    async fn watermark(&mut self, source: &str) -> Result<Option<Watermark>, StoreError>;
}

/// The transaction of one store-core operation; it rolls back when dropped without
/// [`SqlTx::commit`].
#[async_trait]
pub trait SqlTx: Sql {
    async fn commit(self: Box<Self>, context: &'static str) -> Result<(), StoreError>;
}

/// Records a window attempt in `sync_run`.
pub(crate) async fn insert_run(
    tx: &mut dyn Sql,
    run: &SyncRun,
    outcome: RunOutcome,
) -> Result<(), StoreError> {
    let values = run_values(run, outcome);
    tx.execute(INSERT_RUN_SQL, &values, "recording a window in sync_run")
        .await?;
    Ok(())
}

/// A committed window's bookkeeping in its document's transaction: its `sync_run` row and, for a
/// [`RunKind::Sync`] window, the watermark moved to its end behind the fence ([`super::fence`]):
/// the window commits only if the stored watermark is still the one it was planned from.
pub(crate) async fn record_window(
    tx: &mut dyn Sql,
    run: &SyncRun,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    insert_run(tx, run, RunOutcome::Ok).await?;
    match run.kind {
        RunKind::Sync => {}
        RunKind::Backfill => return Ok(()),
    }
    let tom_local = run.window.tom_utc.with_timezone(&run.tz).naive_local();
    let values = [
        Value::Text(&run.source),
        Value::Local(tom_local),
        Value::Instant(run.window.tom_utc),
        Value::Instant(now),
    ];
    let Some(expected) = run.expected_watermark else {
        // The source's first window: there is no row to lock yet, so the insert is the fence. A
        // concurrent first window's insert (PostgreSQL) waits for this one's commit, then does
        // nothing.
        let inserted = tx
            .execute(
                "INSERT INTO sync_watermark (source, watermark_local, watermark_utc, updated_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (source) DO NOTHING",
                &values,
                "setting the first watermark",
            )
            .await?;
        if inserted == 1 {
            return Ok(());
        }
        let found = tx.watermark(&run.source).await?.map(|w| w.utc);
        return Err(super::watermark_moved(&run.source, None, found));
    };
    // Held to the commit: a concurrent window of the same source waits, then reads the watermark
    // this one leaves.
    let stored = tx.watermark(&run.source).await?.map(|w| w.utc);
    super::fence(&run.source, Some(expected), stored)?;
    // SQLite compares its fixed-width text as time.
    tx.execute(
        "UPDATE sync_watermark SET watermark_local = $2, watermark_utc = $3, updated_at = $4
         WHERE source = $1 AND watermark_utc < $3",
        &values,
        "moving the watermark",
    )
    .await?;
    Ok(())
}

/// A count as both databases return it (`bigint`), as the store core counts (never negative).
pub(crate) fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// One bound value, as the store core hands it to a backend.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
    /// An `integer` column (PostgreSQL's int4).
    OptInt32(Option<i32>),
    /// An instant (`*_utc`, `*_at`).
    Instant(DateTime<Utc>),
    OptInstant(Option<DateTime<Utc>>),
    /// A `boolean` column (SQLite: integer 0 or 1).
    Bool(bool),
    OptBool(Option<bool>),
    /// A local wall-clock time (`*_local`).
    Local(NaiveDateTime),
}

/// Records a window attempt.
pub(crate) const INSERT_RUN_SQL: &str =
    "INSERT INTO sync_run (source, kind, from_local, tom_local, from_utc, tom_utc, started_at,
         finished_at, outcome, http_status, bytes, records, changed, unchanged, cleared,
         quarantined, error)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";

/// The values of [`INSERT_RUN_SQL`], in its order.
pub(crate) fn run_values(run: &SyncRun, outcome: RunOutcome) -> [Value<'_>; 17] {
    let s = &run.summary;
    // Counts are u64 in memory and BIGINT in both databases; no count comes near 2^63.
    let count = |n: u64| Value::Int(n as i64);
    [
        Value::Text(&run.source),
        Value::Text(run.kind.as_str()),
        Value::Local(run.window.from_local),
        Value::Local(run.window.tom_local),
        Value::Instant(run.window.from_utc),
        Value::Instant(run.window.tom_utc),
        Value::Instant(run.started_at),
        Value::Instant(run.finished_at),
        Value::Text(outcome.as_str()),
        Value::OptInt32(run.http_status.map(i32::from)),
        count(run.bytes),
        count(s.records),
        count(s.changed),
        count(s.unchanged),
        count(s.cleared),
        count(s.quarantined),
        Value::OptText(run.error.as_deref()),
    ]
}

/// The latest window attempts of a source, newest first: `$1` the source, `$2` how many.
pub(crate) const RECENT_RUNS_SQL: &str =
    "SELECT kind, from_local, tom_local, outcome, finished_at, http_status, records, changed,
            cleared, quarantined, error
     FROM sync_run WHERE source = $1 ORDER BY id DESC LIMIT $2";

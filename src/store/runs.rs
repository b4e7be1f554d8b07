//! `sync_run` rows, written once for both backends: the SQL (with `$N` placeholders, which
//! SQLite and PostgreSQL both read) and the values in column order. A backend only says how it
//! binds a [`Value`] (SQLite keeps instants as fixed-width RFC 3339 text and local times as
//! text; PostgreSQL as `timestamptz` and `timestamp`).

use chrono::{DateTime, NaiveDateTime, Utc};

use super::{RunOutcome, SyncRun};

/// One bound value, as the store core hands it to a backend.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Value<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
    /// An `integer` column (PostgreSQL's int4).
    OptInt32(Option<i32>),
    /// An instant (`*_utc`, `*_at`).
    Instant(DateTime<Utc>),
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

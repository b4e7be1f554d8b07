//! Personal data and state, as a data protection officer and an operator need them: retention
//! (prune by age), erasure of one pupil (`forget`), and a source's state (list, rewind, drop).
//!
//! Each operation is one transaction, so it happens whole or not at all, and each takes the same
//! per-source lock a window's writer takes (PostgreSQL; SQLite's `BEGIN IMMEDIATE` serialises all
//! writers), so it never interleaves with a window being applied. A provområde removed by
//! `forget` or `drop` leaves an `erase` entry in `change_log` naming its id, so a warehouse that
//! loads incrementally deletes it too; the entries that described its earlier changes go with it.
//! Nothing here logs or returns a pupil's id.

use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::{PgPool, Row, SqlitePool};

use super::{query_err, timestamp, StoreError, Watermark};

/// The oldest instant each kind of row may have and stay; `None` keeps them all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cutoffs {
    /// `sync_run` rows started before this go (each source's latest committed window stays).
    pub sync_run: Option<DateTime<Utc>>,
    /// `quarantine.raw_xml` of rows last received before this is cleared.
    pub quarantine_raw_xml: Option<DateTime<Utc>>,
    /// `quarantine` rows last received before this go.
    pub quarantine: Option<DateTime<Utc>>,
    /// `change_log` entries made before this go.
    pub change_log: Option<DateTime<Utc>>,
}

/// What a prune removed (or, in a dry run, would remove).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub sync_run: u64,
    pub quarantine_raw_xml: u64,
    pub quarantine: u64,
    pub change_log: u64,
}

impl Pruned {
    /// One log line with the count per table (the daemon's daily prune and `nprov-sync prune`).
    pub fn log(&self) {
        let [(_, sync_run), (_, quarantine_raw_xml), (_, quarantine), (_, change_log)] =
            self.by_table();
        tracing::info!(
            sync_run,
            quarantine_raw_xml,
            quarantine,
            change_log,
            "pruned rows past retention"
        );
    }

    /// (label, count) pairs, as metrics and logs name them.
    pub fn by_table(&self) -> [(&'static str, u64); 4] {
        [
            ("sync_run", self.sync_run),
            ("quarantine_raw_xml", self.quarantine_raw_xml),
            ("quarantine", self.quarantine),
            ("change_log", self.change_log),
        ]
    }
}

/// The rows of one pupil (`forget`) or one source (`drop`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub provomrade: u64,
    pub provtillfalle: u64,
    pub delprovsresultat: u64,
    /// Entries about the removed provområden (their `erase` entries not counted).
    pub change_log: u64,
    pub quarantine: u64,
    /// `drop` only.
    pub sync_run: u64,
    /// `drop` only: 1 if the source had a watermark.
    pub watermark: u64,
}

impl Removed {
    pub fn total(&self) -> u64 {
        self.provomrade
            + self.provtillfalle
            + self.delprovsresultat
            + self.change_log
            + self.quarantine
            + self.sync_run
            + self.watermark
    }
}

/// Whether a governance command changes the database or only counts what it would change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Count only: nothing is removed and no audit row is written.
    DryRun,
    /// Remove (and audit), in one transaction.
    Apply,
}

impl Mode {
    /// What a command without `--yes` does: count only.
    pub fn unless_confirmed(yes: bool) -> Mode {
        if yes {
            Mode::Apply
        } else {
            Mode::DryRun
        }
    }

    pub(crate) fn dry_run(self) -> bool {
        match self {
            Mode::DryRun => true,
            Mode::Apply => false,
        }
    }
}

/// Whose rows `forget` removes.
#[derive(Clone, Copy, Debug)]
pub struct Erasure<'a> {
    /// The pupil's id, matched exactly (case and all).
    pub elev: &'a str,
    /// Only this source's rows; all sources when `None`.
    pub source: Option<&'a str>,
    /// Recorded in the audit row (a case number, say); never the id.
    pub reason: Option<&'a str>,
    pub now: DateTime<Utc>,
    /// Count only, or remove.
    pub mode: Mode,
}

/// One source as the database knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceState {
    pub source: String,
    pub watermark: Option<Watermark>,
    pub provomrade: u64,
    pub runs: u64,
    /// `finished_at` of the latest committed window, RFC 3339.
    pub last_ok: Option<String>,
}

/// Why a state command did nothing.
pub fn refused(message: String) -> StoreError {
    StoreError::Refused(message)
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// quarantine rows that are the pupil's: those claiming the id, and those whose key could not be
/// read but whose raw XML carries it as a quoted value (the `elev` attribute). The first
/// parameter is the id, the second the source or NULL for all.
const QUARANTINE_OF_SQLITE: &str = "(elev = ?1 OR (elev IS NULL AND raw_xml IS NOT NULL \
     AND (instr(raw_xml, '\"' || ?1 || '\"') > 0 OR instr(raw_xml, '''' || ?1 || '''') > 0))) \
     AND (?2 IS NULL OR source = ?2)";
const QUARANTINE_OF_POSTGRES: &str = "(elev = $1 OR (elev IS NULL AND raw_xml IS NOT NULL \
     AND (strpos(raw_xml, '\"' || $1 || '\"') > 0 OR strpos(raw_xml, '''' || $1 || '''') > 0))) \
     AND ($2::text IS NULL OR source = $2)";

/// (the rows' predicate with the cutoff as `$1`, whether pruning clears raw_xml instead of
/// deleting), in the order of [`Pruned::by_table`]; `$N` is a numbered parameter on both
/// backends.
const PRUNE_STEPS: [(&str, bool); 4] = [
    (
        "FROM sync_run WHERE started_at < $1 AND id NOT IN          (SELECT max(id) FROM sync_run WHERE outcome = 'ok' GROUP BY source)",
        false,
    ),
    (
        "FROM quarantine WHERE raw_xml IS NOT NULL AND last_seen_at < $1",
        true,
    ),
    ("FROM quarantine WHERE last_seen_at < $1", false),
    ("FROM change_log WHERE at < $1", false),
];

fn prune_sql(rows: &str, clears_raw: bool, dry_run: bool) -> String {
    if dry_run {
        format!("SELECT count(*) {rows}")
    } else if clears_raw {
        format!("UPDATE quarantine SET raw_xml = NULL WHERE id IN (SELECT id {rows})")
    } else {
        format!("DELETE {rows}")
    }
}

impl Cutoffs {
    /// The cutoffs in the order of [`Pruned::by_table`].
    pub fn in_order(&self) -> [Option<DateTime<Utc>>; 4] {
        [
            self.sync_run,
            self.quarantine_raw_xml,
            self.quarantine,
            self.change_log,
        ]
    }
}

fn pruned(counts: [u64; 4]) -> Pruned {
    Pruned {
        sync_run: counts[0],
        quarantine_raw_xml: counts[1],
        quarantine: counts[2],
        change_log: counts[3],
    }
}

/// Counts (dry run) or deletes a source's rows in the tables `source drop` empties besides the
/// mirror, into `removed`; the same on both backends but for the placeholder.
macro_rules! drop_source_rows {
    ($tx:ident, $placeholder:literal, $source:ident, $dry_run:ident, $removed:ident) => {
        // Each table with the count it fills: no table name is matched as a string.
        let tables: [(&str, fn(&mut Removed) -> &mut u64); 3] = [
            ("quarantine", |r| &mut r.quarantine),
            ("sync_run", |r| &mut r.sync_run),
            ("sync_watermark", |r| &mut r.watermark),
        ];
        for (table, field) in tables {
            let sql = if $dry_run {
                format!(
                    "SELECT count(*) FROM {table} WHERE source = {}",
                    $placeholder
                )
            } else {
                format!("DELETE FROM {table} WHERE source = {}", $placeholder)
            };
            let q = sqlx::query(&sql).bind($source);
            let n = if $dry_run {
                let row = q
                    .fetch_one(&mut *$tx)
                    .await
                    .map_err(query_err("counting a source's rows"))?;
                count(row.get(0))
            } else {
                q.execute(&mut *$tx)
                    .await
                    .map_err(query_err("removing a source's rows"))?
                    .rows_affected()
            };
            *field(&mut $removed) = n;
        }
    };
}

pub(super) mod sqlite {
    use super::*;
    use sqlx::SqliteConnection;

    pub async fn prune(
        pool: &SqlitePool,
        cutoffs: &Cutoffs,
        dry_run: bool,
    ) -> Result<Pruned, StoreError> {
        let mut tx = pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query_err("starting a prune"))?;
        let mut counts = [0u64; 4];
        for (i, ((rows, clears_raw), cutoff)) in
            PRUNE_STEPS.iter().zip(cutoffs.in_order()).enumerate()
        {
            let Some(cutoff) = cutoff else { continue };
            let sql = prune_sql(rows, *clears_raw, dry_run);
            let q = sqlx::query(&sql).bind(timestamp(cutoff));
            counts[i] = if dry_run {
                let row = q
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(query_err("counting rows past retention"))?;
                count(row.get(0))
            } else {
                q.execute(&mut *tx)
                    .await
                    .map_err(query_err("pruning rows past retention"))?
                    .rows_affected()
            };
        }
        tx.commit().await.map_err(query_err("committing a prune"))?;
        Ok(pruned(counts))
    }

    /// Removes the provområden `ids_sql` selects (binding `binds` in order) with their children
    /// and change_log entries, appending an `erase` entry for each; returns the counts
    /// (quarantine not included).
    async fn remove_provomraden(
        tx: &mut SqliteConnection,
        ids_sql: &str,
        binds: &[Option<&str>],
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<Removed, StoreError> {
        sqlx::query("CREATE TEMP TABLE IF NOT EXISTS removing (id INTEGER PRIMARY KEY)")
            .execute(&mut *tx)
            .await
            .map_err(query_err("preparing a removal"))?;
        sqlx::query("DELETE FROM temp.removing")
            .execute(&mut *tx)
            .await
            .map_err(query_err("preparing a removal"))?;
        let fill = format!("INSERT INTO temp.removing (id) {ids_sql}");
        let mut q = sqlx::query(&fill);
        for b in binds {
            q = q.bind(*b);
        }
        q.execute(&mut *tx)
            .await
            .map_err(query_err("preparing a removal"))?;
        let row = sqlx::query(
            "SELECT
               (SELECT count(*) FROM temp.removing),
               (SELECT count(*) FROM provtillfalle WHERE provomrade_id IN
                  (SELECT id FROM temp.removing)),
               (SELECT count(*) FROM delprovsresultat d JOIN provtillfalle t
                  ON t.id = d.provtillfalle_id
                  WHERE t.provomrade_id IN (SELECT id FROM temp.removing)),
               (SELECT count(*) FROM change_log WHERE provomrade_id IN
                  (SELECT id FROM temp.removing))",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(query_err("counting the rows to remove"))?;
        let removed = Removed {
            provomrade: count(row.get(0)),
            provtillfalle: count(row.get(1)),
            delprovsresultat: count(row.get(2)),
            change_log: count(row.get(3)),
            ..Removed::default()
        };
        if !dry_run && removed.provomrade > 0 {
            // Children first: SQLite enforces the references only when a connection turns
            // foreign keys on, so the order does not rely on the cascade.
            for sql in [
                "DELETE FROM change_log WHERE provomrade_id IN (SELECT id FROM temp.removing)",
                "DELETE FROM delprovsresultat WHERE provtillfalle_id IN (SELECT id FROM                  provtillfalle WHERE provomrade_id IN (SELECT id FROM temp.removing))",
                "DELETE FROM provtillfalle WHERE provomrade_id IN (SELECT id FROM temp.removing)",
                "DELETE FROM provomrade WHERE id IN (SELECT id FROM temp.removing)",
            ] {
                sqlx::query(sql)
                    .execute(&mut *tx)
                    .await
                    .map_err(query_err("removing rows"))?;
            }
            // In id order, as a document's entries are.
            sqlx::query(
                "INSERT INTO change_log (provomrade_id, op, at)
                 SELECT id, 'erase', ? FROM temp.removing ORDER BY id",
            )
            .bind(timestamp(now))
            .execute(&mut *tx)
            .await
            .map_err(query_err("appending to change_log"))?;
        }
        sqlx::query("DELETE FROM temp.removing")
            .execute(&mut *tx)
            .await
            .map_err(query_err("removing rows"))?;
        Ok(removed)
    }

    pub async fn forget(pool: &SqlitePool, e: &Erasure<'_>) -> Result<Removed, StoreError> {
        let mut tx = pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query_err("starting an erasure"))?;
        let binds = [Some(e.elev), e.source];
        let mut removed = remove_provomraden(
            &mut tx,
            "SELECT id FROM provomrade WHERE elev = ?1 AND (?2 IS NULL OR source = ?2)",
            &binds,
            e.now,
            e.mode.dry_run(),
        )
        .await?;
        let sql = if e.mode.dry_run() {
            format!("SELECT count(*) FROM quarantine WHERE {QUARANTINE_OF_SQLITE}")
        } else {
            format!("DELETE FROM quarantine WHERE {QUARANTINE_OF_SQLITE}")
        };
        let q = sqlx::query(&sql).bind(e.elev).bind(e.source);
        if e.mode.dry_run() {
            let row = q
                .fetch_one(&mut *tx)
                .await
                .map_err(query_err("counting quarantined elements"))?;
            removed.quarantine = count(row.get(0));
            return Ok(removed);
        }
        removed.quarantine = q
            .execute(&mut *tx)
            .await
            .map_err(query_err("removing quarantined elements"))?
            .rows_affected();
        sqlx::query(
            "INSERT INTO erasure (erased_at, source, reason, provomrade, provtillfalle,
                                  delprovsresultat, change_log, quarantine)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(timestamp(e.now))
        .bind(e.source)
        .bind(e.reason)
        .bind(signed(removed.provomrade))
        .bind(signed(removed.provtillfalle))
        .bind(signed(removed.delprovsresultat))
        .bind(signed(removed.change_log))
        .bind(signed(removed.quarantine))
        .execute(&mut *tx)
        .await
        .map_err(query_err("recording the erasure"))?;
        tx.commit()
            .await
            .map_err(query_err("committing an erasure"))?;
        Ok(removed)
    }

    pub async fn drop_source(
        pool: &SqlitePool,
        source: &str,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<Removed, StoreError> {
        let mut tx = pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query_err("starting to drop a source"))?;
        let mut removed = remove_provomraden(
            &mut tx,
            "SELECT id FROM provomrade WHERE source = ?1",
            &[Some(source)],
            now,
            dry_run,
        )
        .await?;
        drop_source_rows!(tx, "?", source, dry_run, removed);
        if !dry_run {
            tx.commit()
                .await
                .map_err(query_err("committing a dropped source"))?;
        }
        Ok(removed)
    }

    pub async fn rewind(
        pool: &SqlitePool,
        source: &str,
        to_utc: DateTime<Utc>,
        to_local: NaiveDateTime,
        now: DateTime<Utc>,
    ) -> Result<Watermark, StoreError> {
        let mut tx = pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query_err("starting a rewind"))?;
        let row: Option<(String, String, String)> = sqlx::query_as(
            "SELECT watermark_utc, watermark_local, updated_at FROM sync_watermark WHERE source = ?",
        )
        .bind(source)
        .fetch_optional(&mut *tx)
        .await
        .map_err(query_err("reading the watermark"))?;
        let Some((utc, local, updated)) = row else {
            return Err(no_watermark(source));
        };
        let before = Watermark {
            utc: crate::store::sqlite::parse_timestamp(&utc)?,
            local: NaiveDateTime::parse_from_str(&local, crate::window::API_FORMAT)
                .map_err(|e| StoreError::Corrupt(format!("stored watermark {local:?}: {e}")))?,
            updated_at: crate::store::sqlite::parse_timestamp(&updated)?,
        };
        check_rewind(source, &before, to_utc)?;
        sqlx::query(
            "UPDATE sync_watermark SET watermark_utc = ?, watermark_local = ?, updated_at = ?
             WHERE source = ?",
        )
        .bind(timestamp(to_utc))
        .bind(to_local.format(crate::window::API_FORMAT).to_string())
        .bind(timestamp(now))
        .bind(source)
        .execute(&mut *tx)
        .await
        .map_err(query_err("moving the watermark"))?;
        tx.commit()
            .await
            .map_err(query_err("committing a rewind"))?;
        Ok(before)
    }

    pub async fn sources(pool: &SqlitePool) -> Result<Vec<SourceState>, StoreError> {
        let rows = sqlx::query(SOURCES_SQL)
            .fetch_all(pool)
            .await
            .map_err(query_err("listing sources"))?;
        Ok(rows
            .iter()
            .map(|r| SourceState {
                source: r.get(0),
                watermark: None,
                provomrade: count(r.get(1)),
                runs: count(r.get(2)),
                last_ok: r.get(3),
            })
            .collect())
    }
}

/// Every source the database has anything of, with its row and run counts and its latest
/// committed window.
const SOURCES_SQL: &str = "WITH s(source) AS (SELECT source FROM sync_watermark
                        UNION SELECT source FROM sync_run UNION SELECT source FROM provomrade)
     SELECT s.source,
            (SELECT count(*) FROM provomrade p WHERE p.source = s.source),
            (SELECT count(*) FROM sync_run r WHERE r.source = s.source),
            (SELECT max(finished_at) FROM sync_run r WHERE r.source = s.source AND r.outcome = 'ok')
     FROM s ORDER BY s.source";

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn no_watermark(source: &str) -> StoreError {
    refused(format!(
        "source {source} has no watermark: nothing to rewind (its first sync starts at its          configured start)"
    ))
}

pub(super) mod postgres {
    use super::*;
    use sqlx::{PgConnection, Postgres, Transaction};

    pub async fn prune(
        pool: &PgPool,
        cutoffs: &Cutoffs,
        dry_run: bool,
    ) -> Result<Pruned, StoreError> {
        let mut tx = pool.begin().await.map_err(query_err("starting a prune"))?;
        let mut counts = [0u64; 4];
        for (i, ((rows, clears_raw), cutoff)) in
            PRUNE_STEPS.iter().zip(cutoffs.in_order()).enumerate()
        {
            let Some(cutoff) = cutoff else { continue };
            let sql = prune_sql(rows, *clears_raw, dry_run);
            let q = sqlx::query(&sql).bind(cutoff);
            counts[i] = if dry_run {
                let row = q
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(query_err("counting rows past retention"))?;
                count(row.get(0))
            } else {
                q.execute(&mut *tx)
                    .await
                    .map_err(query_err("pruning rows past retention"))?
                    .rows_affected()
            };
        }
        tx.commit().await.map_err(query_err("committing a prune"))?;
        Ok(pruned(counts))
    }

    /// Takes the writers' lock of every source in `sources` (sorted, so two callers cannot
    /// deadlock), then the change_log lock: the order a window's writer takes them in.
    async fn lock(
        tx: &mut Transaction<'static, Postgres>,
        scope: &str,
        sources: &[String],
        key: fn(&[&str]) -> i64,
    ) -> Result<(), StoreError> {
        let mut sorted: Vec<&String> = sources.iter().collect();
        sorted.sort();
        sorted.dedup();
        for source in sorted {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(key(&["source", scope, source]))
                .execute(&mut **tx)
                .await
                .map_err(query_err("waiting for the source's writer"))?;
        }
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key(&["change_log", scope]))
            .execute(&mut **tx)
            .await
            .map_err(query_err("waiting to append to change_log"))?;
        Ok(())
    }

    async fn remove_provomraden(
        tx: &mut PgConnection,
        ids: &[i64],
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<Removed, StoreError> {
        let row = sqlx::query(
            "SELECT
               (SELECT count(*) FROM provtillfalle WHERE provomrade_id = ANY($1)),
               (SELECT count(*) FROM delprovsresultat d JOIN provtillfalle t
                  ON t.id = d.provtillfalle_id WHERE t.provomrade_id = ANY($1)),
               (SELECT count(*) FROM change_log WHERE provomrade_id = ANY($1))",
        )
        .bind(ids)
        .fetch_one(&mut *tx)
        .await
        .map_err(query_err("counting the rows to remove"))?;
        let removed = Removed {
            provomrade: ids.len() as u64,
            provtillfalle: count(row.get(0)),
            delprovsresultat: count(row.get(1)),
            change_log: count(row.get(2)),
            ..Removed::default()
        };
        if dry_run || ids.is_empty() {
            return Ok(removed);
        }
        // provtillfalle and delprovsresultat go by ON DELETE CASCADE.
        for sql in [
            "DELETE FROM change_log WHERE provomrade_id = ANY($1)",
            "DELETE FROM provomrade WHERE id = ANY($1)",
        ] {
            sqlx::query(sql)
                .bind(ids)
                .execute(&mut *tx)
                .await
                .map_err(query_err("removing rows"))?;
        }
        // In id order, as a document's entries are.
        sqlx::query(
            "INSERT INTO change_log (provomrade_id, op, at)
             SELECT id, 'erase', $2 FROM unnest($1::bigint[]) AS id ORDER BY id",
        )
        .bind(ids)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(query_err("appending to change_log"))?;
        Ok(removed)
    }

    pub async fn forget(
        pool: &PgPool,
        scope: &str,
        key: fn(&[&str]) -> i64,
        e: &Erasure<'_>,
    ) -> Result<Removed, StoreError> {
        let mut tx = pool
            .begin()
            .await
            .map_err(query_err("starting an erasure"))?;
        if !e.mode.dry_run() {
            // The sources the pupil has rows in: their writers must not be mid-window meanwhile.
            let find = format!(
                "SELECT source FROM provomrade WHERE elev = $1 AND ($2::text IS NULL OR source = $2)
                 UNION SELECT source FROM quarantine WHERE {QUARANTINE_OF_POSTGRES}"
            );
            let sources: Vec<String> = sqlx::query_scalar(&find)
                .bind(e.elev)
                .bind(e.source)
                .fetch_all(&mut *tx)
                .await
                .map_err(query_err("finding the pupil's sources"))?;
            lock(&mut tx, scope, &sources, key).await?;
        }
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM provomrade WHERE elev = $1 AND ($2::text IS NULL OR source = $2)
             ORDER BY id",
        )
        .bind(e.elev)
        .bind(e.source)
        .fetch_all(&mut *tx)
        .await
        .map_err(query_err("finding the pupil's provområden"))?;
        let mut removed = remove_provomraden(&mut tx, &ids, e.now, e.mode.dry_run()).await?;
        if e.mode.dry_run() {
            let sql = format!("SELECT count(*) FROM quarantine WHERE {QUARANTINE_OF_POSTGRES}");
            let n: i64 = sqlx::query_scalar(&sql)
                .bind(e.elev)
                .bind(e.source)
                .fetch_one(&mut *tx)
                .await
                .map_err(query_err("counting quarantined elements"))?;
            removed.quarantine = count(n);
            return Ok(removed);
        }
        let sql = format!("DELETE FROM quarantine WHERE {QUARANTINE_OF_POSTGRES}");
        removed.quarantine = sqlx::query(&sql)
            .bind(e.elev)
            .bind(e.source)
            .execute(&mut *tx)
            .await
            .map_err(query_err("removing quarantined elements"))?
            .rows_affected();
        sqlx::query(
            "INSERT INTO erasure (erased_at, source, reason, provomrade, provtillfalle,
                                  delprovsresultat, change_log, quarantine)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(e.now)
        .bind(e.source)
        .bind(e.reason)
        .bind(signed(removed.provomrade))
        .bind(signed(removed.provtillfalle))
        .bind(signed(removed.delprovsresultat))
        .bind(signed(removed.change_log))
        .bind(signed(removed.quarantine))
        .execute(&mut *tx)
        .await
        .map_err(query_err("recording the erasure"))?;
        tx.commit()
            .await
            .map_err(query_err("committing an erasure"))?;
        Ok(removed)
    }

    pub async fn drop_source(
        pool: &PgPool,
        scope: &str,
        key: fn(&[&str]) -> i64,
        source: &str,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<Removed, StoreError> {
        let mut tx = pool
            .begin()
            .await
            .map_err(query_err("starting to drop a source"))?;
        if !dry_run {
            lock(&mut tx, scope, &[source.to_owned()], key).await?;
        }
        let ids: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM provomrade WHERE source = $1 ORDER BY id")
                .bind(source)
                .fetch_all(&mut *tx)
                .await
                .map_err(query_err("finding the source's provområden"))?;
        let mut removed = remove_provomraden(&mut tx, &ids, now, dry_run).await?;
        drop_source_rows!(tx, "$1", source, dry_run, removed);
        if !dry_run {
            tx.commit()
                .await
                .map_err(query_err("committing a dropped source"))?;
        }
        Ok(removed)
    }

    pub async fn rewind(
        pool: &PgPool,
        source: &str,
        to_utc: DateTime<Utc>,
        to_local: NaiveDateTime,
        now: DateTime<Utc>,
    ) -> Result<Watermark, StoreError> {
        let mut tx = pool.begin().await.map_err(query_err("starting a rewind"))?;
        let row: Option<(DateTime<Utc>, NaiveDateTime, DateTime<Utc>)> = sqlx::query_as(
            "SELECT watermark_utc, watermark_local, updated_at FROM sync_watermark
             WHERE source = $1 FOR UPDATE",
        )
        .bind(source)
        .fetch_optional(&mut *tx)
        .await
        .map_err(query_err("reading the watermark"))?;
        let Some((utc, local, updated_at)) = row else {
            return Err(no_watermark(source));
        };
        let before = Watermark {
            utc,
            local,
            updated_at,
        };
        check_rewind(source, &before, to_utc)?;
        sqlx::query(
            "UPDATE sync_watermark SET watermark_utc = $1, watermark_local = $2, updated_at = $3
             WHERE source = $4",
        )
        .bind(to_utc)
        .bind(to_local)
        .bind(now)
        .bind(source)
        .execute(&mut *tx)
        .await
        .map_err(query_err("moving the watermark"))?;
        tx.commit()
            .await
            .map_err(query_err("committing a rewind"))?;
        Ok(before)
    }

    pub async fn sources(pool: &PgPool) -> Result<Vec<SourceState>, StoreError> {
        let rows = sqlx::query(SOURCES_SQL)
            .fetch_all(pool)
            .await
            .map_err(query_err("listing sources"))?;
        Ok(rows
            .iter()
            .map(|r| SourceState {
                source: r.get(0),
                watermark: None,
                provomrade: count(r.get(1)),
                runs: count(r.get(2)),
                last_ok: r.get::<Option<DateTime<Utc>>, _>(3).map(timestamp),
            })
            .collect())
    }
}

/// The watermark moves back only: a rewind to or past it would skip windows never read.
fn check_rewind(source: &str, before: &Watermark, to: DateTime<Utc>) -> Result<(), StoreError> {
    if to >= before.utc {
        return Err(refused(format!(
            "source {source}: the watermark is {} ({}); a rewind moves it back only, so --to must \
             be earlier",
            before.local.format(crate::window::API_FORMAT),
            timestamp(before.utc)
        )));
    }
    Ok(())
}

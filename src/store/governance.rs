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

use super::sql::{Sql, SqlTx, Value};
use super::{timestamp, StoreError, Watermark};

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
    /// `prov_pass` rows, by the `sync_run` horizon (each source's latest complete pass stays).
    pub prov_pass: u64,
    /// `prov_change_log` entries, by the `change_log` horizon.
    pub prov_change_log: u64,
}

impl Pruned {
    /// One log line with the count per table (the daemon's daily prune and `nprov-sync prune`).
    pub fn log(&self) {
        let [(_, sync_run), (_, quarantine_raw_xml), (_, quarantine), (_, change_log), (_, prov_pass), (_, prov_change_log)] =
            self.by_table();
        tracing::info!(
            sync_run,
            quarantine_raw_xml,
            quarantine,
            change_log,
            prov_pass,
            prov_change_log,
            "pruned rows past retention"
        );
    }

    /// (label, count) pairs, as metrics and logs name them.
    pub fn by_table(&self) -> [(&'static str, u64); 6] {
        [
            ("sync_run", self.sync_run),
            ("quarantine_raw_xml", self.quarantine_raw_xml),
            ("quarantine", self.quarantine),
            ("change_log", self.change_log),
            ("prov_pass", self.prov_pass),
            ("prov_change_log", self.prov_change_log),
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
    /// Rows of the provisioning mirror (`prov_*`): a person's record, lists, memberships and
    /// duties and their change-log entries (`forget`), or all of a provisioning source's
    /// (`drop`).
    pub provisioning: u64,
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
            + self.provisioning
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

/// Quarantine rows that are the pupil's: those claiming the id, and those whose key could not be
/// read but whose raw XML carries it as a quoted value (the `elev` attribute). `$1` is the id,
/// `$2` the source or NULL for all. A substring test both databases run the same way (SQLite's
/// `instr` and PostgreSQL's `strpos` are each missing from the other; `LIKE` would read `_` and
/// `%` in an id, and ignores case on SQLite): the text is shorter once the quoted id is replaced.
const QUARANTINE_OF: &str = "(elev = $1 OR (elev IS NULL AND raw_xml IS NOT NULL \
     AND (length(replace(raw_xml, '\"' || $1 || '\"', '')) < length(raw_xml) \
          OR length(replace(raw_xml, '''' || $1 || '''', '')) < length(raw_xml)))) \
     AND (CAST($2 AS TEXT) IS NULL OR source = $2)";

/// The pupil's provområden: `$1` the id, `$2` the source or NULL for all.
const PUPIL_PROVOMRADEN: &str = "elev = $1 AND (CAST($2 AS TEXT) IS NULL OR source = $2)";

/// (the rows' predicate with the cutoff as `$1`, whether pruning clears raw_xml instead of
/// deleting), in the order of [`Pruned::by_table`].
const PRUNE_STEPS: [(&str, bool); 6] = [
    (
        "FROM sync_run WHERE started_at < $1 AND id NOT IN \
         (SELECT max(id) FROM sync_run WHERE outcome = 'ok' GROUP BY source)",
        false,
    ),
    (
        "FROM quarantine WHERE raw_xml IS NOT NULL AND last_seen_at < $1",
        true,
    ),
    ("FROM quarantine WHERE last_seen_at < $1", false),
    ("FROM change_log WHERE at < $1", false),
    (
        "FROM prov_pass WHERE started_at < $1 AND id NOT IN \
         (SELECT max(id) FROM prov_pass WHERE outcome = 'complete' GROUP BY source)",
        false,
    ),
    ("FROM prov_change_log WHERE at < $1", false),
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
    pub fn in_order(&self) -> [Option<DateTime<Utc>>; 6] {
        [
            self.sync_run,
            self.quarantine_raw_xml,
            self.quarantine,
            self.change_log,
            self.sync_run,
            self.change_log,
        ]
    }
}

/// Counts (dry run) or removes the rows `from` selects (`from` starts at `FROM`).
async fn count_or_delete(
    tx: &mut dyn Sql,
    from: &str,
    values: &[Value<'_>],
    mode: Mode,
) -> Result<u64, StoreError> {
    match mode {
        Mode::DryRun => {
            let sql = format!("SELECT count(*) {from}");
            Ok(first(tx.counts(&sql, values, "counting rows").await?))
        }
        Mode::Apply => {
            let sql = format!("DELETE {from}");
            tx.execute(&sql, values, "removing rows").await
        }
    }
}

fn first(counts: Vec<u64>) -> u64 {
    counts.first().copied().unwrap_or(0)
}

/// Retention: the rows past each cutoff, removed (or counted), in one transaction.
pub async fn prune(
    mut tx: Box<dyn SqlTx>,
    cutoffs: &Cutoffs,
    mode: Mode,
) -> Result<Pruned, StoreError> {
    let mut counts = [0u64; 6];
    for (i, ((rows, clears_raw), cutoff)) in PRUNE_STEPS.iter().zip(cutoffs.in_order()).enumerate()
    {
        let Some(cutoff) = cutoff else { continue };
        let sql = prune_sql(rows, *clears_raw, mode.dry_run());
        let values = [Value::Instant(cutoff)];
        counts[i] = match mode {
            Mode::DryRun => first(
                tx.counts(&sql, &values, "counting rows past retention")
                    .await?,
            ),
            Mode::Apply => {
                tx.execute(&sql, &values, "pruning rows past retention")
                    .await?
            }
        };
    }
    tx.commit("committing a prune").await?;
    Ok(Pruned {
        sync_run: counts[0],
        quarantine_raw_xml: counts[1],
        quarantine: counts[2],
        change_log: counts[3],
        prov_pass: counts[4],
        prov_change_log: counts[5],
    })
}

/// Removes the provområden `pred` selects (a `WHERE` condition over `provomrade`, its values
/// `values`) with their children and change_log entries, appending an `erase` entry for each;
/// returns the counts (quarantine not included).
async fn remove_provomraden(
    tx: &mut dyn Sql,
    pred: &str,
    values: &[Value<'_>],
    now: DateTime<Utc>,
    mode: Mode,
) -> Result<Removed, StoreError> {
    let ids = format!("SELECT id FROM provomrade WHERE {pred}");
    let counted = tx
        .counts(
            &format!(
                "SELECT
                   (SELECT count(*) FROM provomrade WHERE {pred}),
                   (SELECT count(*) FROM provtillfalle WHERE provomrade_id IN ({ids})),
                   (SELECT count(*) FROM delprovsresultat d JOIN provtillfalle t
                      ON t.id = d.provtillfalle_id WHERE t.provomrade_id IN ({ids})),
                   (SELECT count(*) FROM change_log WHERE provomrade_id IN ({ids}))"
            ),
            values,
            "counting the rows to remove",
        )
        .await?;
    let at = |i: usize| counted.get(i).copied().unwrap_or(0);
    let removed = Removed {
        provomrade: at(0),
        provtillfalle: at(1),
        delprovsresultat: at(2),
        change_log: at(3),
        ..Removed::default()
    };
    if mode.dry_run() || removed.provomrade == 0 {
        return Ok(removed);
    }
    // The entries that described the rows go, then one `erase` entry per provområde in id order
    // (as a document's entries are), made while the rows still say which they are; then the
    // rows, children first (SQLite enforces references only where a connection turns foreign
    // keys on, and PostgreSQL's cascade would delete them one provtillfälle at a time).
    tx.execute(
        &format!("DELETE FROM change_log WHERE provomrade_id IN ({ids})"),
        values,
        "removing rows",
    )
    .await?;
    let mut with_now = values.to_vec();
    with_now.push(Value::Instant(now));
    tx.execute(
        &format!(
            "INSERT INTO change_log (provomrade_id, op, at)
             SELECT id, 'erase', ${} FROM provomrade WHERE {pred} ORDER BY id",
            with_now.len()
        ),
        &with_now,
        "appending to change_log",
    )
    .await?;
    for sql in [
        format!(
            "DELETE FROM delprovsresultat WHERE provtillfalle_id IN
                 (SELECT id FROM provtillfalle WHERE provomrade_id IN ({ids}))"
        ),
        format!("DELETE FROM provtillfalle WHERE provomrade_id IN ({ids})"),
        format!("DELETE FROM provomrade WHERE {pred}"),
    ] {
        tx.execute(&sql, values, "removing rows").await?;
    }
    Ok(removed)
}

/// Erasure of one pupil, in one transaction: their rows, quarantined elements and change_log
/// entries go, `erase` entries and an `erasure` audit row (without the id) are written.
pub async fn forget(mut tx: Box<dyn SqlTx>, e: &Erasure<'_>) -> Result<Removed, StoreError> {
    let who = [Value::Text(e.elev), Value::OptText(e.source)];
    if !e.mode.dry_run() {
        // The sources the pupil has rows in: their writers must not be mid-window meanwhile.
        let sources = format!(
            "SELECT source FROM provomrade WHERE {PUPIL_PROVOMRADEN}
             UNION SELECT source FROM quarantine WHERE {QUARANTINE_OF}"
        );
        tx.lock_writers(&sources, &who).await?;
    }
    let mut removed = remove_provomraden(&mut *tx, PUPIL_PROVOMRADEN, &who, e.now, e.mode).await?;
    removed.quarantine = count_or_delete(
        &mut *tx,
        &format!("FROM quarantine WHERE {QUARANTINE_OF}"),
        &who,
        e.mode,
    )
    .await?;
    removed.provisioning = forget_registered(&mut *tx, e).await?;
    match e.mode {
        Mode::DryRun => return Ok(removed),
        Mode::Apply => {}
    }
    let n = |v: u64| Value::Int(signed(v));
    tx.execute(
        "INSERT INTO erasure (erased_at, source, reason, provomrade, provtillfalle,
                              delprovsresultat, change_log, quarantine, provisioning)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            Value::Instant(e.now),
            Value::OptText(e.source),
            Value::OptText(e.reason),
            n(removed.provomrade),
            n(removed.provtillfalle),
            n(removed.delprovsresultat),
            n(removed.change_log),
            n(removed.quarantine),
            n(removed.provisioning),
        ],
        "recording the erasure",
    )
    .await?;
    tx.commit("committing an erasure").await?;
    Ok(removed)
}

/// The registered persons that are the pupil: `$1` the id as the results know it (braces and
/// case ignored, as the join views match), against a person's id or external identifier; `$2`
/// the provisioning source or NULL for all.
const REGISTERED_PERSON: &str = "(CAST($2 AS TEXT) IS NULL OR p.source = $2) AND (
       p.id = lower(replace(replace($1, '{', ''), '}', ''))
       OR EXISTS (SELECT 1 FROM prov_person_external_id x
                  WHERE x.source = p.source AND x.person_id = p.id
                    AND lower(replace(replace(x.value, '{', ''), '}', ''))
                        = lower(replace(replace($1, '{', ''), '}', ''))))";

/// The provisioning rows of a pupil (`forget`), removed (or counted): the person, their lists,
/// memberships and duties (with the activities' links to those duties) and the change-log
/// entries about them, an `erase` entry appended for each person and duty removed.
async fn forget_registered(tx: &mut dyn Sql, e: &Erasure<'_>) -> Result<u64, StoreError> {
    // The persons first: their external identifiers, by which some are found, go with them.
    let found = tx
        .texts(
            &format!("SELECT p.source, p.id FROM prov_person p WHERE {REGISTERED_PERSON}"),
            &[Value::Text(e.elev), Value::OptText(e.source)],
            "finding the pupil's registrations",
        )
        .await?;
    let keys: Vec<(String, String)> = found
        .into_iter()
        .filter_map(|r| {
            let mut c = r.into_iter().flatten();
            Some((c.next()?, c.next()?))
        })
        .collect();
    let mut total = 0;
    for (source, person) in &keys {
        let who = [Value::Text(source), Value::Text(person)];
        let duties = "SELECT id FROM prov_duty WHERE source = $1 AND person_id = $2";
        if !e.mode.dry_run() {
            // The erase entries, while the rows still say which they are.
            let now = [
                Value::Text(source),
                Value::Text(person),
                Value::Instant(e.now),
            ];
            for rows in [
                "SELECT 'duty' AS k, id AS i FROM prov_duty WHERE source = $1 AND person_id = $2",
                "SELECT 'person' AS k, CAST($2 AS TEXT) AS i",
            ] {
                tx.execute(
                    &format!(
                        "INSERT INTO prov_change_log (source, kind, id, op, at)
                         SELECT $1, r.k, r.i, 'erase', $3 FROM ({rows}) AS r"
                    ),
                    &now,
                    "appending erase entries to prov_change_log",
                )
                .await?;
            }
        }
        // (table, the pupil's rows in it); the erase entries just written are kept.
        let steps: [(&str, String); 8] = [
            (
                "prov_change_log",
                format!(
                    "source = $1 AND op <> 'erase' AND ((kind = 'person' AND id = $2)
                     OR (kind = 'duty' AND id IN ({duties})))"
                ),
            ),
            (
                "prov_activity_teacher",
                format!("source = $1 AND duty_id IN ({duties})"),
            ),
            (
                "prov_group_membership",
                "source = $1 AND person_id = $2".into(),
            ),
            (
                "prov_person_enrolment",
                "source = $1 AND person_id = $2".into(),
            ),
            ("prov_person_email", "source = $1 AND person_id = $2".into()),
            (
                "prov_person_external_id",
                "source = $1 AND person_id = $2".into(),
            ),
            ("prov_duty", "source = $1 AND person_id = $2".into()),
            ("prov_person", "source = $1 AND id = $2".into()),
        ];
        for (table, pred) in &steps {
            let from = format!("FROM {table} WHERE {pred}");
            total += count_or_delete(tx, &from, &who, e.mode).await?;
        }
    }
    Ok(total)
}

/// Which count of [`Removed`] a table's rows go to.
type CountOf = fn(&mut Removed) -> &mut u64;

/// A source's rows, quarantine, runs and watermark removed (or counted), in one transaction.
pub async fn drop_source(
    mut tx: Box<dyn SqlTx>,
    source: &str,
    now: DateTime<Utc>,
    mode: Mode,
) -> Result<Removed, StoreError> {
    if !mode.dry_run() {
        tx.lock_writers("SELECT $1", &[Value::Text(source)]).await?;
    }
    let this = [Value::Text(source)];
    let mut removed = remove_provomraden(&mut *tx, "source = $1", &this, now, mode).await?;
    // Each table with the count it fills: no table name is matched as a string.
    let tables: [(&str, CountOf); 3] = [
        ("quarantine", |r| &mut r.quarantine),
        ("sync_run", |r| &mut r.sync_run),
        ("sync_watermark", |r| &mut r.watermark),
    ];
    for (table, field) in tables {
        let from = format!("FROM {table} WHERE source = $1");
        *field(&mut removed) = count_or_delete(&mut *tx, &from, &this, mode).await?;
    }
    // A provisioning source of that name: every row of its mirror (lists first), its passes,
    // its change log and its state.
    for table in PROV_TABLES {
        let from = format!("FROM {table} WHERE source = $1");
        removed.provisioning += count_or_delete(&mut *tx, &from, &this, mode).await?;
    }
    match mode {
        Mode::DryRun => {}
        Mode::Apply => tx.commit("committing a dropped source").await?,
    }
    Ok(removed)
}

/// The provisioning mirror's tables, each list before the record it belongs to.
const PROV_TABLES: [&str; 13] = [
    "prov_person_enrolment",
    "prov_person_email",
    "prov_person_external_id",
    "prov_group_membership",
    "prov_activity_group",
    "prov_activity_teacher",
    "prov_person",
    "prov_duty",
    "prov_group",
    "prov_activity",
    "prov_pass",
    "prov_change_log",
    "prov_state",
];

/// Moves a source's watermark back; returns the one it replaced.
pub async fn rewind(
    mut tx: Box<dyn SqlTx>,
    source: &str,
    to_utc: DateTime<Utc>,
    to_local: NaiveDateTime,
    now: DateTime<Utc>,
) -> Result<Watermark, StoreError> {
    let Some(before) = tx.watermark(source).await? else {
        return Err(refused(format!(
            "source {source} has no watermark: nothing to rewind (its first sync starts at its \
             configured start)"
        )));
    };
    check_rewind(source, &before, to_utc)?;
    tx.execute(
        "UPDATE sync_watermark SET watermark_utc = $1, watermark_local = $2, updated_at = $3
         WHERE source = $4",
        &[
            Value::Instant(to_utc),
            Value::Local(to_local),
            Value::Instant(now),
            Value::Text(source),
        ],
        "moving the watermark",
    )
    .await?;
    tx.commit("committing a rewind").await?;
    Ok(before)
}

/// Every source the database has anything of, with its row and run counts and its latest
/// committed window.
pub(super) const SOURCES_SQL: &str = "WITH s(source) AS (SELECT source FROM sync_watermark
                        UNION SELECT source FROM sync_run UNION SELECT source FROM provomrade
                        UNION SELECT source FROM prov_state)
     SELECT s.source,
            (SELECT count(*) FROM provomrade p WHERE p.source = s.source),
            (SELECT count(*) FROM sync_run r WHERE r.source = s.source),
            (SELECT max(finished_at) FROM sync_run r WHERE r.source = s.source AND r.outcome = 'ok')
     FROM s ORDER BY s.source";

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
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

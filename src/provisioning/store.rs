//! The provisioning mirror's reads and writes, written once for both backends in the store
//! core's `$N` SQL ([`crate::store::sql`]). A pass's writes are small (a page of at most 100
//! records at a time, at 10 requests a second), so they go statement by statement; a page's
//! records commit together, and a pass's removals, its `prov_pass` row and the source's state
//! commit together at its end.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::model::{ActivityRecord, DutyRecord, GroupRecord, PersonRecord, Record};
use super::Kind;
use crate::store::sql::{Sql, Value};
use crate::store::{Store, StoreError};

/// Ids bound per `IN (…)` list: far under either database's limit on parameters.
pub const IDS_PER_STATEMENT: usize = 500;

/// What the mirror holds of a record, to compare a pass's with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    /// `list_sha256` for a person (what the list shows), `content_sha256` for the others.
    pub compared: String,
    pub content_sha256: String,
    pub removed: bool,
}

/// `$2, $3, …` for `n` ids after `first - 1` other values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the mirror holds of `ids` (at most [`IDS_PER_STATEMENT`] per query). A read outside
/// any transaction ([`Store::read_texts`]): it takes no write lock, so preparing a page never
/// waits for a window being written, nor holds one off. The page's own write transaction
/// follows; nothing else writes a pass's records meanwhile.
pub async fn known(
    store: &dyn Store,
    source: &str,
    kind: Kind,
    ids: &[String],
) -> Result<HashMap<String, Known>, StoreError> {
    let compared = match kind {
        Kind::Person => "list_sha256",
        Kind::Duty | Kind::Group | Kind::Activity => "content_sha256",
    };
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        let sql = format!(
            "SELECT id, {compared}, content_sha256,
                    CASE WHEN removed_at IS NULL THEN 'live' ELSE 'removed' END
             FROM {} WHERE source = $1 AND id IN ({})",
            kind.table(),
            placeholders(2, chunk.len())
        );
        let mut values = vec![Value::Text(source)];
        values.extend(chunk.iter().map(|id| Value::Text(id)));
        for row in store
            .read_texts(&sql, &values, "reading the provisioning mirror")
            .await?
        {
            let mut cols = row.into_iter().map(Option::unwrap_or_default);
            let (Some(id), Some(compared), Some(content), Some(state)) =
                (cols.next(), cols.next(), cols.next(), cols.next())
            else {
                continue;
            };
            out.insert(
                id,
                Known {
                    compared,
                    content_sha256: content,
                    removed: state == "removed",
                },
            );
        }
    }
    Ok(out)
}

/// How a record's write changed the mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// New, or back after a removal.
    Added,
    /// Its content changed.
    Changed,
    /// Only what the list shows of it changed (a person's list hash), not its content.
    Refreshed,
}

/// Writes one record (upsert, its lists replaced) and, unless only refreshed, its
/// `prov_change_log` entry.
pub async fn write(
    tx: &mut dyn Sql,
    source: &str,
    record: &Record,
    content_sha256: &str,
    known: Option<&Known>,
    now: DateTime<Utc>,
) -> Result<Written, StoreError> {
    let written = match known {
        None => Written::Added,
        Some(k) if k.removed => Written::Added,
        Some(k) if k.content_sha256 != content_sha256 => Written::Changed,
        Some(_) => Written::Refreshed,
    };
    // A record the mirror has never held has no lists to replace: its deletes are skipped
    // (a first pass writes a third fewer statements).
    let held = known.is_some();
    let (kind, id) = match record {
        Record::Person {
            record,
            list_sha256,
        } => {
            person(tx, source, record, list_sha256, content_sha256, now, held).await?;
            (Kind::Person, &record.id)
        }
        Record::Duty(r) => {
            duty(tx, source, r, content_sha256, now).await?;
            (Kind::Duty, &r.id)
        }
        Record::Group(r) => {
            group(tx, source, r, content_sha256, now, held).await?;
            (Kind::Group, &r.id)
        }
        Record::Activity(r) => {
            activity(tx, source, r, content_sha256, now, held).await?;
            (Kind::Activity, &r.id)
        }
    };
    match written {
        Written::Added | Written::Changed => {
            log(tx, source, kind, id, "upsert", now).await?;
        }
        Written::Refreshed => {}
    }
    Ok(written)
}

/// The upsert's tail shared by every kind: `first_seen` kept, `changed_at` moved only when the
/// content changed, a removed record back.
fn upsert_tail(table: &str, set: &str) -> String {
    format!(
        "ON CONFLICT (source, id) DO UPDATE SET {set}, last_seen = excluded.last_seen,
             changed_at = CASE WHEN {table}.content_sha256 = excluded.content_sha256
                               AND {table}.removed_at IS NULL
                          THEN {table}.changed_at ELSE excluded.changed_at END,
             content_sha256 = excluded.content_sha256, removed_at = NULL"
    )
}

async fn person(
    tx: &mut dyn Sql,
    source: &str,
    r: &PersonRecord,
    list_sha256: &str,
    content_sha256: &str,
    now: DateTime<Utc>,
    held: bool,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO prov_person (source, id, created, modified, given_name, middle_name,
             family_name, eppn, civic_no_hmac, civic_no_nationality, security_marking, protected,
             provisioning_status, list_sha256, content_sha256, first_seen, last_seen, changed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16, $16)
         {}",
        upsert_tail(
            "prov_person",
            "created = excluded.created, modified = excluded.modified,
             given_name = excluded.given_name, middle_name = excluded.middle_name,
             family_name = excluded.family_name, eppn = excluded.eppn,
             civic_no_hmac = excluded.civic_no_hmac,
             civic_no_nationality = excluded.civic_no_nationality,
             security_marking = excluded.security_marking, protected = excluded.protected,
             provisioning_status = excluded.provisioning_status,
             list_sha256 = excluded.list_sha256"
        )
    );
    tx.execute(
        &sql,
        &[
            Value::Text(source),
            Value::Text(&r.id),
            Value::OptInstant(r.created),
            Value::OptInstant(r.modified),
            Value::OptText(r.given_name.as_deref()),
            Value::OptText(r.middle_name.as_deref()),
            Value::OptText(r.family_name.as_deref()),
            Value::OptText(r.eppn.as_deref()),
            Value::OptText(r.civic_no_hmac.as_deref()),
            Value::OptText(r.civic_no_nationality.as_deref()),
            Value::OptText(r.security_marking.as_deref()),
            Value::Bool(r.protected),
            Value::OptBool(r.provisioning_status),
            Value::Text(list_sha256),
            Value::Text(content_sha256),
            Value::Instant(now),
        ],
        "writing a provisioned person",
    )
    .await?;
    let key = [Value::Text(source), Value::Text(&r.id)];
    let lists: &[&str] = if held {
        &[
            "prov_person_enrolment",
            "prov_person_email",
            "prov_person_external_id",
        ]
    } else {
        &[]
    };
    for table in lists {
        tx.execute(
            &format!("DELETE FROM {table} WHERE source = $1 AND person_id = $2"),
            &key,
            "replacing a person's lists",
        )
        .await?;
    }
    for (i, e) in r.enrolments.iter().enumerate() {
        tx.execute(
            "INSERT INTO prov_person_enrolment (source, person_id, ordinal, enroled_at,
                 school_year, school_type, cancelled, education_code)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                Value::Text(source),
                Value::Text(&r.id),
                Value::Int(i as i64),
                Value::Text(&e.enroled_at),
                Value::OptInt32(e.school_year),
                Value::Text(&e.school_type),
                Value::Bool(e.cancelled),
                Value::OptText(e.education_code.as_deref()),
            ],
            "writing a person's enrolments",
        )
        .await?;
    }
    for (i, e) in r.emails.iter().enumerate() {
        tx.execute(
            "INSERT INTO prov_person_email (source, person_id, ordinal, value, type)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                Value::Text(source),
                Value::Text(&r.id),
                Value::Int(i as i64),
                Value::Text(&e.value),
                Value::OptText(e.kind.as_deref()),
            ],
            "writing a person's e-mail addresses",
        )
        .await?;
    }
    for (i, x) in r.external_ids.iter().enumerate() {
        tx.execute(
            "INSERT INTO prov_person_external_id (source, person_id, ordinal, value, context,
                 globally_unique)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                Value::Text(source),
                Value::Text(&r.id),
                Value::Int(i as i64),
                Value::Text(&x.value),
                Value::Text(&x.context),
                Value::OptBool(x.globally_unique),
            ],
            "writing a person's external identifiers",
        )
        .await?;
    }
    Ok(())
}

async fn duty(
    tx: &mut dyn Sql,
    source: &str,
    r: &DutyRecord,
    content_sha256: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO prov_duty (source, id, created, modified, person_id, duty_at, duty_role,
             provisioning_status, content_sha256, first_seen, last_seen, changed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $10)
         {}",
        upsert_tail(
            "prov_duty",
            "created = excluded.created, modified = excluded.modified,
             person_id = excluded.person_id, duty_at = excluded.duty_at,
             duty_role = excluded.duty_role, provisioning_status = excluded.provisioning_status"
        )
    );
    tx.execute(
        &sql,
        &[
            Value::Text(source),
            Value::Text(&r.id),
            Value::OptInstant(r.created),
            Value::OptInstant(r.modified),
            Value::Text(&r.person_id),
            Value::Text(&r.duty_at),
            Value::Text(&r.duty_role),
            Value::OptBool(r.provisioning_status),
            Value::Text(content_sha256),
            Value::Instant(now),
        ],
        "writing a provisioned duty",
    )
    .await?;
    Ok(())
}

async fn group(
    tx: &mut dyn Sql,
    source: &str,
    r: &GroupRecord,
    content_sha256: &str,
    now: DateTime<Utc>,
    held: bool,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO prov_group (source, id, created, modified, display_name, group_type,
             school_type, organisation, provisioning_status, content_sha256, first_seen,
             last_seen, changed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $11)
         {}",
        upsert_tail(
            "prov_group",
            "created = excluded.created, modified = excluded.modified,
             display_name = excluded.display_name, group_type = excluded.group_type,
             school_type = excluded.school_type, organisation = excluded.organisation,
             provisioning_status = excluded.provisioning_status"
        )
    );
    tx.execute(
        &sql,
        &[
            Value::Text(source),
            Value::Text(&r.id),
            Value::OptInstant(r.created),
            Value::OptInstant(r.modified),
            Value::Text(&r.display_name),
            Value::Text(&r.group_type),
            Value::Text(&r.school_type),
            Value::Text(&r.organisation),
            Value::OptBool(r.provisioning_status),
            Value::Text(content_sha256),
            Value::Instant(now),
        ],
        "writing a provisioned group",
    )
    .await?;
    if held {
        tx.execute(
            "DELETE FROM prov_group_membership WHERE source = $1 AND group_id = $2",
            &[Value::Text(source), Value::Text(&r.id)],
            "replacing a group's members",
        )
        .await?;
    }
    for (i, m) in r.members.iter().enumerate() {
        tx.execute(
            "INSERT INTO prov_group_membership (source, group_id, ordinal, person_id,
                 start_date, end_date)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                Value::Text(source),
                Value::Text(&r.id),
                Value::Int(i as i64),
                Value::Text(&m.person_id),
                Value::OptText(m.start_date.as_deref()),
                Value::OptText(m.end_date.as_deref()),
            ],
            "writing a group's members",
        )
        .await?;
    }
    Ok(())
}

async fn activity(
    tx: &mut dyn Sql,
    source: &str,
    r: &ActivityRecord,
    content_sha256: &str,
    now: DateTime<Utc>,
    held: bool,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO prov_activity (source, id, created, modified, display_name, activity_type,
             organisation, parent_activity, provisioning_status, content_sha256, first_seen,
             last_seen, changed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $11)
         {}",
        upsert_tail(
            "prov_activity",
            "created = excluded.created, modified = excluded.modified,
             display_name = excluded.display_name, activity_type = excluded.activity_type,
             organisation = excluded.organisation, parent_activity = excluded.parent_activity,
             provisioning_status = excluded.provisioning_status"
        )
    );
    tx.execute(
        &sql,
        &[
            Value::Text(source),
            Value::Text(&r.id),
            Value::OptInstant(r.created),
            Value::OptInstant(r.modified),
            Value::Text(&r.display_name),
            Value::Text(&r.activity_type),
            Value::Text(&r.organisation),
            Value::Text(&r.parent_activity),
            Value::OptBool(r.provisioning_status),
            Value::Text(content_sha256),
            Value::Instant(now),
        ],
        "writing a provisioned activity",
    )
    .await?;
    let key = [Value::Text(source), Value::Text(&r.id)];
    let lists: &[&str] = if held {
        &["prov_activity_group", "prov_activity_teacher"]
    } else {
        &[]
    };
    for table in lists {
        tx.execute(
            &format!("DELETE FROM {table} WHERE source = $1 AND activity_id = $2"),
            &key,
            "replacing an activity's groups and teachers",
        )
        .await?;
    }
    for (table, column, ids) in [
        ("prov_activity_group", "group_id", &r.groups),
        ("prov_activity_teacher", "duty_id", &r.teachers),
    ] {
        for (i, id) in ids.iter().enumerate() {
            tx.execute(
                &format!(
                    "INSERT INTO {table} (source, activity_id, ordinal, {column})
                     VALUES ($1, $2, $3, $4)"
                ),
                &[
                    Value::Text(source),
                    Value::Text(&r.id),
                    Value::Int(i as i64),
                    Value::Text(id),
                ],
                "writing an activity's groups and teachers",
            )
            .await?;
        }
    }
    Ok(())
}

async fn log(
    tx: &mut dyn Sql,
    source: &str,
    kind: Kind,
    id: &str,
    op: &'static str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO prov_change_log (source, kind, id, op, at) VALUES ($1, $2, $3, $4, $5)",
        &[
            Value::Text(source),
            Value::Text(kind.as_str()),
            Value::Text(id),
            Value::Text(op),
            Value::Instant(now),
        ],
        "writing the provisioning change log",
    )
    .await?;
    Ok(())
}

/// Live ids of a kind after `after` (in id order), at most `limit`: the pass walks them to find
/// the ones it did not see, a bounded batch at a time.
pub async fn live_ids_after(
    tx: &mut dyn Sql,
    source: &str,
    kind: Kind,
    after: &str,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    let sql = format!(
        "SELECT id FROM {} WHERE source = $1 AND removed_at IS NULL AND id > $2
         ORDER BY id LIMIT $3",
        kind.table()
    );
    Ok(tx
        .texts(
            &sql,
            &[Value::Text(source), Value::Text(after), Value::Int(limit)],
            "reading the provisioning mirror's live ids",
        )
        .await?
        .into_iter()
        .filter_map(|row| row.into_iter().next().flatten())
        .collect())
}

/// Marks `ids` removed (a complete pass did not see them) and logs each removal. `last_seen`
/// becomes the last complete pass before this one, which did see them.
pub async fn mark_removed(
    tx: &mut dyn Sql,
    source: &str,
    kind: Kind,
    ids: &[String],
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let mut removed = 0;
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        let mut values = vec![Value::Text(source), Value::Instant(now)];
        values.extend(chunk.iter().map(|id| Value::Text(id)));
        let list = placeholders(3, chunk.len());
        tx.execute(
            &format!(
                "INSERT INTO prov_change_log (source, kind, id, op, at)
                 SELECT source, '{}', id, 'remove', $2 FROM {}
                 WHERE source = $1 AND removed_at IS NULL AND id IN ({list})",
                kind.as_str(),
                kind.table()
            ),
            &values,
            "logging removals",
        )
        .await?;
        removed += tx
            .execute(
                &format!(
                    "UPDATE {table} SET removed_at = $2,
                         last_seen = COALESCE((SELECT last_complete_started FROM prov_state
                                               WHERE prov_state.source = $1), {table}.last_seen)
                     WHERE source = $1 AND removed_at IS NULL AND id IN ({list})",
                    table = kind.table()
                ),
                &values,
                "marking records removed",
            )
            .await?;
    }
    Ok(removed)
}

/// A source's pass state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub accept_removals: bool,
    pub refused: Vec<Kind>,
}

pub async fn state(tx: &mut dyn Sql, source: &str) -> Result<State, StoreError> {
    let rows = tx
        .texts(
            "SELECT CASE WHEN accept_removals THEN 'yes' ELSE 'no' END, refused_kinds
             FROM prov_state WHERE source = $1",
            &[Value::Text(source)],
            "reading a provisioning source's state",
        )
        .await?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(State::default());
    };
    let mut cols = row.into_iter();
    let accept = cols.next().flatten().is_some_and(|v| v == "yes");
    let refused = cols
        .next()
        .flatten()
        .unwrap_or_default()
        .split(',')
        .filter_map(Kind::parse)
        .collect();
    Ok(State {
        accept_removals: accept,
        refused,
    })
}

/// Sets `accept_removals` for the next pass; returns whether the source has a state row to set
/// it on (a source never passed has nothing to confirm).
pub async fn accept_removals(tx: &mut dyn Sql, source: &str) -> Result<bool, StoreError> {
    Ok(tx
        .execute(
            "UPDATE prov_state SET accept_removals = $2 WHERE source = $1",
            &[Value::Text(source), Value::Bool(true)],
            "accepting a provisioning source's removals",
        )
        .await?
        == 1)
}

/// A pass's row, as [`record_pass`] writes it.
pub struct PassRow<'a> {
    pub source: &'a str,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: &'static str,
    pub requests: u64,
    /// seen, added, changed, removed, per kind in [`Kind::ALL`]'s order.
    pub counts: [[u64; 4]; 4],
    pub error: Option<&'a str>,
}

/// Writes a pass's row and, for a pass that was complete (`refused` too: it saw every record),
/// the source's state: its last complete pass, `accept_removals` used up, the kinds refused.
pub async fn record_pass(
    tx: &mut dyn Sql,
    row: &PassRow<'_>,
    complete: Option<&[Kind]>,
) -> Result<(), StoreError> {
    let duration_ms = (row.finished_at - row.started_at).num_milliseconds().max(0);
    let mut values = vec![
        Value::Text(row.source),
        Value::Instant(row.started_at),
        Value::Instant(row.finished_at),
        Value::Text(row.outcome),
        Value::Int(row.requests as i64),
        Value::Int(duration_ms),
    ];
    for kind in row.counts {
        values.extend(kind.iter().map(|&n| Value::Int(n as i64)));
    }
    values.push(Value::OptText(row.error));
    tx.execute(
        "INSERT INTO prov_pass (source, started_at, finished_at, outcome, requests, duration_ms,
             person_seen, person_added, person_changed, person_removed,
             duty_seen, duty_added, duty_changed, duty_removed,
             group_seen, group_added, group_changed, group_removed,
             activity_seen, activity_added, activity_changed, activity_removed, error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                 $19, $20, $21, $22, $23)",
        &values,
        "recording a provisioning pass",
    )
    .await?;
    let Some(refused) = complete else {
        return Ok(());
    };
    let refused_text = refused
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let refused_value = (!refused.is_empty()).then_some(refused_text.as_str());
    // The last complete pass moves only when every kind's removals were applied: a refused
    // kind's unseen records are still live, and were not seen by this pass.
    let complete_started = refused.is_empty().then_some(row.started_at);
    let complete_finished = refused.is_empty().then_some(row.finished_at);
    tx.execute(
        "INSERT INTO prov_state (source, last_complete_started, last_complete_finished,
             accept_removals, refused_kinds)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (source) DO UPDATE SET
             last_complete_started = COALESCE(excluded.last_complete_started,
                                              prov_state.last_complete_started),
             last_complete_finished = COALESCE(excluded.last_complete_finished,
                                               prov_state.last_complete_finished),
             accept_removals = excluded.accept_removals,
             refused_kinds = excluded.refused_kinds",
        &[
            Value::Text(row.source),
            Value::OptInstant(complete_started),
            Value::OptInstant(complete_finished),
            Value::Bool(false),
            Value::OptText(refused_value),
        ],
        "recording a provisioning source's state",
    )
    .await?;
    Ok(())
}

/// When the source's last complete pass ended, if it had one: read outside any transaction,
/// without the write lock.
pub async fn last_complete(
    store: &dyn Store,
    source: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let rows = store
        .read_texts(
            "SELECT CAST(last_complete_finished AS TEXT) FROM prov_state WHERE source = $1",
            &[Value::Text(source)],
            "reading a provisioning source's last complete pass",
        )
        .await?;
    let Some(text) = rows
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
    else {
        return Ok(None);
    };
    Ok(parse_instant(&text))
}

/// An instant as either database gives it as text: SQLite's stored RFC 3339, PostgreSQL's
/// `timestamptz` output (`2026-12-07 01:02:03.123456+00`).
pub fn parse_instant(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

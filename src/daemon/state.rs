//! What the daemon keeps about each source, and the decisions it makes from it as pure functions:
//! how long to back off after failures, whether the instance is ready, and the one-line status.
//!
//! Leadership lives here in one place: the lock handle (held by the run, in [`Slot`]) and the
//! role everyone else reads ([`Role`]) change together, only through [`SourceState`]'s methods,
//! which also set the `nprov_leader` gauge.

use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;

use crate::metrics::SourceMetrics;
use crate::store::Leadership;

/// The first back-off after a failed run; it doubles with every further failure.
pub(super) const FIRST_BACKOFF: Duration = Duration::from_secs(60);

/// How long a source waits after `consecutive_failures` failed runs in a row (at least one):
/// one minute, doubling, never more than `max`.
pub(super) fn backoff(consecutive_failures: u32, max: Duration) -> Duration {
    let doublings = consecutive_failures.max(1) - 1;
    FIRST_BACKOFF
        .saturating_mul(1u32 << doublings.min(16))
        .min(max)
}

/// Whether this instance leads a source, and since when it has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Role {
    pub leader: bool,
    /// When this instance last took the lead (readiness counts from there).
    pub since: Option<DateTime<Utc>>,
}

impl Role {
    /// The role after becoming leader or standby at `now`, and whether that is a change. Taking
    /// the lead again restarts `since`; standing by keeps it (readiness ignores it then).
    pub(super) fn become_(self, leader: bool, now: DateTime<Utc>) -> (Role, bool) {
        if self.leader == leader {
            return (self, false);
        }
        let since = if leader { Some(now) } else { self.since };
        (Role { leader, since }, true)
    }
}

/// What a run holds while it goes: the overlap guard's contents.
#[derive(Default)]
pub(super) struct Slot {
    leadership: Option<Box<dyn Leadership>>,
    pub backoff_until: Option<Instant>,
}

/// What the daemon keeps about a source across reloads.
pub(super) struct SourceState {
    /// Held for the whole of a run: the overlap guard.
    pub slot: Arc<Mutex<Slot>>,
    pub metrics: SourceMetrics,
    role: StdMutex<Role>,
}

impl SourceState {
    pub(super) fn new(metrics: SourceMetrics) -> SourceState {
        SourceState {
            slot: Arc::new(Mutex::new(Slot::default())),
            metrics,
            role: StdMutex::new(Role::default()),
        }
    }

    pub(super) fn role(&self) -> Role {
        *self.role.lock().expect("role lock")
    }

    /// Sets the role (and the gauge); whether it changed.
    fn become_(&self, leader: bool) -> bool {
        let mut role = self.role.lock().expect("role lock");
        let (next, changed) = role.become_(leader, Utc::now());
        *role = next;
        self.metrics.set_leader(leader);
        changed
    }

    /// The lock handle this instance holds, if any.
    pub(super) fn handle<'a>(&self, slot: &'a mut Slot) -> Option<&'a mut Box<dyn Leadership>> {
        slot.leadership.as_mut()
    }

    /// This instance now leads: it holds `handle`. Whether that is a change.
    pub(super) fn hold(&self, slot: &mut Slot, handle: Box<dyn Leadership>) -> bool {
        slot.leadership = Some(handle);
        self.become_(true)
    }

    /// This instance does not lead (another does, or the connection holding the lock is gone):
    /// whatever handle it had is dropped unreleased. Whether that is a change.
    pub(super) fn stand_by(&self, slot: &mut Slot) -> bool {
        slot.leadership = None;
        self.become_(false)
    }

    /// Gives the lead up on purpose (shutdown, a source removed, another instance's commit
    /// seen): the lock is released so a standby can take it at once. Whether that is a change.
    pub(super) async fn release(&self, slot: &mut Slot) -> bool {
        if let Some(l) = slot.leadership.take() {
            l.release().await;
        }
        self.become_(false)
    }

    /// Stands by while a run still holds the slot (shutdown after the grace period): the
    /// handle goes with the run.
    pub(super) fn stand_by_without_slot(&self) -> bool {
        self.become_(false)
    }

    /// What readiness and the status line need, read at `started_at`-independent moments.
    pub(super) fn snapshot(&self, name: &str) -> SourceSnapshot {
        let last = self.metrics.last_success();
        SourceSnapshot {
            name: name.to_owned(),
            role: self.role(),
            last_success: (last > 0.0)
                .then(|| DateTime::from_timestamp(last as i64, 0))
                .flatten(),
            consecutive_failures: self.metrics.consecutive_failures(),
        }
    }
}

/// One source as readiness and the status line see it.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceSnapshot {
    pub name: String,
    pub role: Role,
    pub last_success: Option<DateTime<Utc>>,
    pub consecutive_failures: i64,
}

/// `/readyz`'s verdict and body.
#[derive(Debug)]
pub struct Readiness {
    pub ready: bool,
    pub body: serde_json::Value,
}

/// Ready when the database answered and every source this instance leads committed a window
/// within `max_age`, counted from the latest of its last success, taking the lead and start-up
/// (a fresh leader has had no chance yet). Standby sources are always ready. `status` applies the
/// same rule to the database's view of every configured source.
pub fn readiness(
    database: &Result<(), String>,
    sources: &[SourceSnapshot],
    now: DateTime<Utc>,
    started_at: DateTime<Utc>,
    max_age: Duration,
) -> Readiness {
    let mut ready = database.is_ok();
    let mut out = Vec::new();
    for s in sources {
        let reason = not_ready(s, now, started_at, max_age);
        ready &= reason.is_none();
        out.push(serde_json::json!({
            "source": s.name,
            "role": if s.role.leader { "leader" } else { "standby" },
            "last_success": s.last_success.map(|t| t.to_rfc3339()),
            "consecutive_failures": s.consecutive_failures,
            "ready": reason.is_none(),
            "reason": reason,
        }));
    }
    let body = serde_json::json!({
        "ready": ready,
        "database": match database { Ok(()) => "ok".to_owned(), Err(e) => e.clone() },
        "sources": out,
    });
    Readiness { ready, body }
}

/// Why one source is not ready by [`readiness`]'s rule, or `None` when it is.
pub fn not_ready(
    s: &SourceSnapshot,
    now: DateTime<Utc>,
    started_at: DateTime<Utc>,
    max_age: Duration,
) -> Option<String> {
    let reference = [s.last_success, s.role.since, Some(started_at)]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(started_at);
    let age = (now - reference).to_std().unwrap_or_default();
    (s.role.leader && age > max_age).then(|| {
        format!(
            "no window committed for {} (bound {})",
            humantime::format_duration(Duration::from_secs(age.as_secs())),
            humantime::format_duration(max_age)
        )
    })
}

/// One line for `systemctl status`.
pub(super) fn status_line(sources: &[SourceSnapshot], now: DateTime<Utc>) -> String {
    let parts: Vec<String> = sources
        .iter()
        .map(|s| {
            if !s.role.leader {
                return format!("{} standby", s.name);
            }
            let age = match s.last_success {
                Some(last) => format!(
                    "last success {} ago",
                    humantime::format_duration(Duration::from_secs(
                        (now - last).num_seconds().max(0) as u64
                    ))
                ),
                None => "no success yet".to_owned(),
            };
            if s.consecutive_failures > 0 {
                format!(
                    "{} failing ({} in a row, {age})",
                    s.name, s.consecutive_failures
                )
            } else {
                format!("{} ok ({age})", s.name)
            }
        })
        .collect();
    format!("{} source(s): {}", sources.len(), parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    fn snapshot(leader: bool, since: Option<&str>, last: Option<&str>) -> SourceSnapshot {
        SourceSnapshot {
            name: "solna".into(),
            role: Role {
                leader,
                since: since.map(t),
            },
            last_success: last.map(t),
            consecutive_failures: 0,
        }
    }

    #[test]
    fn back_off_starts_at_a_minute_doubles_and_stops_at_the_bound() {
        let max = Duration::from_secs(3600);
        let minutes = |n: u32| backoff(n, max).as_secs() / 60;
        assert_eq!(
            (1..=8).map(minutes).collect::<Vec<_>>(),
            [1, 2, 4, 8, 16, 32, 60, 60]
        );
        // Zero failures is read as one (the call follows a failure), and a count that would
        // overflow any shift stays at the bound.
        assert_eq!(backoff(0, max), FIRST_BACKOFF);
        assert_eq!(backoff(u32::MAX, max), max);
        assert_eq!(backoff(3, Duration::from_secs(90)), Duration::from_secs(90));
    }

    #[test]
    fn leadership_changes_once_per_transition_and_counts_from_taking_the_lead() {
        let (start, later) = (t("2026-01-05T10:00:00Z"), t("2026-01-05T11:00:00Z"));
        let standby = Role::default();
        let (leader, changed) = standby.become_(true, start);
        assert!(changed);
        assert_eq!(leader.since, Some(start));
        // Told again that it leads: nothing changes, `since` stays.
        assert_eq!(leader.become_(true, later), (leader, false));
        let (back, changed) = leader.become_(false, later);
        assert!(changed && !back.leader);
        assert_eq!(back.become_(false, later), (back, false));
        // Taking the lead again counts from then.
        assert_eq!(back.become_(true, later).0.since, Some(later));
    }

    #[test]
    fn readiness_holds_leaders_to_the_bound_and_never_standbys() {
        let started = t("2026-01-05T06:00:00Z");
        let now = t("2026-01-05T10:00:00Z");
        let hour = Duration::from_secs(3600);
        let fresh = snapshot(
            true,
            Some("2026-01-05T06:00:00Z"),
            Some("2026-01-05T09:30:00Z"),
        );
        let stale = snapshot(
            true,
            Some("2026-01-05T06:00:00Z"),
            Some("2026-01-05T08:00:00Z"),
        );
        let new_leader = snapshot(true, Some("2026-01-05T09:45:00Z"), None);
        let standby = snapshot(false, None, None);
        let ok = Ok(());
        let verdict = |s: &[SourceSnapshot], db: &Result<(), String>| {
            readiness(db, s, now, started, hour).ready
        };
        assert!(verdict(&[fresh.clone(), new_leader, standby.clone()], &ok));
        assert!(!verdict(&[fresh.clone(), stale.clone()], &ok));
        assert!(!verdict(&[fresh], &Err("no answer".into())));
        let r = readiness(&ok, &[stale], now, started, hour);
        assert_eq!(r.body["sources"][0]["ready"], false);
        assert_eq!(
            r.body["sources"][0]["reason"],
            "no window committed for 2h (bound 1h)"
        );
        // Without any success, a leader counts from start-up.
        let never = snapshot(true, None, None);
        assert!(!readiness(&ok, std::slice::from_ref(&never), now, started, hour).ready);
        assert!(readiness(&ok, &[never], now, started, 5 * hour).ready);
        assert_eq!(
            readiness(&ok, &[standby], now, started, hour).body["sources"][0]["role"],
            "standby"
        );
    }

    #[test]
    fn the_status_line_names_each_source_and_how_it_is() {
        let now = t("2026-01-05T10:00:00Z");
        let mut failing = snapshot(true, None, Some("2026-01-05T09:50:00Z"));
        failing.name = "kista".into();
        failing.consecutive_failures = 3;
        let line = status_line(
            &[
                snapshot(true, None, Some("2026-01-05T09:55:00Z")),
                failing,
                SourceSnapshot {
                    name: "nacka".into(),
                    ..snapshot(false, None, None)
                },
                SourceSnapshot {
                    name: "taby".into(),
                    ..snapshot(true, None, None)
                },
            ],
            now,
        );
        assert_eq!(
            line,
            "4 source(s): solna ok (last success 5m ago); kista failing (3 in a row, last \
             success 10m ago); nacka standby; taby ok (no success yet)"
        );
    }
}

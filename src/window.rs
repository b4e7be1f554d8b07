//! Window planning: which `from`/`tom` to ask for next. Pure: no clock, no I/O.
//!
//! The API takes `from` and `tom` as local wall-clock minutes (`yyyy-MM-ddTHH:mm`, both
//! inclusive) and does not say how it reads them around daylight-saving transitions. Two readings
//! are possible, and the plan must be right under both:
//!
//! * **naive**: changes are stamped with local wall-clock time and compared as text. In the autumn
//!   hour that happens twice, a change in the second occurrence carries a stamp *earlier* than
//!   changes made an hour before it.
//! * **instant**: `from`/`tom` are turned into instants, resolving an ambiguous local time to either
//!   of its occurrences (the vendor's choice is unknown).
//!
//! The rule that covers both: the watermark is kept as an instant (UTC). A window covers the
//! instants `[from_utc, tom_utc + 1 min)`; it asks for the *smallest* and the *largest* local
//! reading of any instant in that span — across an autumn transition the smallest is the start of
//! the repeated hour, not the reading of `from_utc` — and if either end is itself an ambiguous
//! local time it is widened to the nearest unambiguous minute outside the repeated hour, so that
//! either resolution covers the span. Spring transitions need nothing: local time only jumps
//! forward, and we never ask for a local time that does not exist because we only ever ask for
//! readings of real instants.
//!
//! Windows are capped at `max_window`, never include the current minute, and start `overlap`
//! before the watermark: a change can become visible after the minute it is stamped with, and
//! re-reading unchanged content is cheap.

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// The API's parameter format.
pub const API_FORMAT: &str = "%Y-%m-%dT%H:%M";

/// One request window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// What to send as `from` and `tom`.
    pub from_local: NaiveDateTime,
    pub tom_local: NaiveDateTime,
    /// The instants the window is meant to cover: `[from_utc, tom_utc + 1 min)`. `tom_utc` is
    /// what the watermark becomes when the window commits.
    pub from_utc: DateTime<Utc>,
    pub tom_utc: DateTime<Utc>,
}

impl Window {
    pub fn from_param(&self) -> String {
        self.from_local.format(API_FORMAT).to_string()
    }

    pub fn tom_param(&self) -> String {
        self.tom_local.format(API_FORMAT).to_string()
    }

    /// The window as one would write it in a log line.
    pub fn label(&self) -> String {
        format!("{}..{}", self.from_param(), self.tom_param())
    }

    /// The two halves of this window, for a response too large to take at once; `None` when it
    /// is a single minute already.
    pub fn split(&self, tz: Tz) -> Option<(Window, Window)> {
        let minutes = (self.tom_utc - self.from_utc).num_minutes();
        if minutes < 1 {
            return None;
        }
        let mid = self.from_utc + Duration::minutes(minutes / 2);
        Some((
            covering(tz, self.from_utc, mid),
            covering(tz, mid + Duration::minutes(1), self.tom_utc),
        ))
    }
}

/// How windows are planned for one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub tz: Tz,
    pub overlap: Duration,
    pub safety_lag: Duration,
    pub max_window: Duration,
}

impl Plan {
    /// The next window to sync after `watermark` (the `tom_utc` of the last committed window),
    /// or from `start` (local) when nothing was synced yet; `None` when there is nothing to ask
    /// for yet.
    pub fn next(
        &self,
        watermark: Option<DateTime<Utc>>,
        start: NaiveDateTime,
        now: DateTime<Utc>,
    ) -> Option<Window> {
        let from = match watermark {
            Some(w) => floor_minute(w - self.overlap),
            None => earliest_instant(self.tz, floor_naive_minute(start)),
        };
        let window = self.window_from(from, now)?;
        // A window must reach past the watermark: re-reading the overlap alone finds nothing
        // new, and a watermark that does not advance would plan the same window forever.
        match watermark {
            Some(w) if window.tom_utc <= w => None,
            _ => Some(window),
        }
    }

    /// Checks the settings can make progress.
    ///
    /// # Errors
    /// A message naming the setting when they cannot.
    pub fn validate(&self) -> Result<(), String> {
        // A window is [watermark − overlap, that + max_window − 1 min]: it passes the watermark
        // only if max_window exceeds overlap by more than a minute.
        if self.max_window <= self.overlap + Duration::minutes(1) {
            return Err(format!(
                "max_window ({} min) must be more than a minute longer than overlap ({} min), or a window could not reach past the watermark",
                self.max_window.num_minutes(),
                self.overlap.num_minutes()
            ));
        }
        if self.overlap < Duration::zero() || self.safety_lag < Duration::zero() {
            return Err("overlap and safety_lag cannot be negative".into());
        }
        Ok(())
    }

    /// The window starting at `from` (an instant), capped by `max_window` and by now − lag.
    pub fn window_from(&self, from: DateTime<Utc>, now: DateTime<Utc>) -> Option<Window> {
        let from = floor_minute(from);
        // Never the current minute, whatever the lag is set to.
        let newest =
            floor_minute(now - self.safety_lag).min(floor_minute(now) - Duration::minutes(1));
        let tom = newest.min(from + self.max_window - Duration::minutes(1));
        (tom >= from).then(|| covering(self.tz, from, tom))
    }

    /// Windows for a historic range given in local time (backfill), in order.
    pub fn backfill(&self, from: NaiveDateTime, to: NaiveDateTime) -> Vec<Window> {
        let end = latest_instant(self.tz, floor_naive_minute(to));
        let mut at = earliest_instant(self.tz, floor_naive_minute(from));
        let mut out = Vec::new();
        while at <= end {
            let tom = end.min(at + self.max_window - Duration::minutes(1));
            out.push(covering(self.tz, at, tom));
            at = tom + Duration::minutes(1);
        }
        out
    }
}

/// The window whose local `from`/`tom` cover the instants `[from, tom + 1 min)` under either
/// reading of local time (see the module docs).
pub fn covering(tz: Tz, from: DateTime<Utc>, tom: DateTime<Utc>) -> Window {
    let local = |t: DateTime<Utc>| t.with_timezone(&tz).naive_local();
    let mut lo = local(from);
    let mut hi = local(tom);
    // Each autumn transition inside the span makes local time jump back: the repeated hour's
    // first minute may be the smallest reading, the minute before the jump the largest.
    for t in fall_back_instants(tz, from, tom) {
        lo = lo.min(local(t));
        hi = hi.max(local(t - Duration::minutes(1)));
    }
    Window {
        from_local: widen_down(tz, lo),
        tom_local: widen_up(tz, hi),
        from_utc: from,
        tom_utc: tom,
    }
}

/// First instants after each backward offset change in `(from, tom]`.
fn fall_back_instants(tz: Tz, from: DateTime<Utc>, tom: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let offset = |t: DateTime<Utc>| t.with_timezone(&tz).offset().fix().local_minus_utc();
    let mut out = Vec::new();
    // Transitions are months apart and on whole minutes: step by hours, then narrow to the minute.
    let step = Duration::hours(1);
    let mut a = from;
    while a < tom {
        let b = (a + step).min(tom);
        if offset(b) < offset(a) {
            let (mut lo, mut hi) = (a, b);
            while hi - lo > Duration::minutes(1) {
                let mid = floor_minute(lo + (hi - lo) / 2);
                if mid <= lo {
                    break;
                }
                if offset(mid) == offset(a) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            out.push(hi);
        }
        a = b;
    }
    out
}

/// A local `from` that is ambiguous is moved to the minute before the repeated hour, so that
/// resolving it to either occurrence starts no later than intended.
fn widen_down(tz: Tz, mut t: NaiveDateTime) -> NaiveDateTime {
    while matches!(tz.from_local_datetime(&t), LocalResult::Ambiguous(..)) {
        t -= Duration::minutes(1);
    }
    t
}

/// A local `tom` that is ambiguous is moved to the first minute after the repeated hour.
fn widen_up(tz: Tz, mut t: NaiveDateTime) -> NaiveDateTime {
    while matches!(tz.from_local_datetime(&t), LocalResult::Ambiguous(..)) {
        t += Duration::minutes(1);
    }
    t
}

/// The earliest instant with this local reading; for a reading in a spring gap, the first instant
/// after the gap.
pub fn earliest_instant(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let mut t = local;
    loop {
        match tz.from_local_datetime(&t) {
            LocalResult::Single(x) => return x.with_timezone(&Utc),
            LocalResult::Ambiguous(a, b) => return a.min(b).with_timezone(&Utc),
            LocalResult::None => t += Duration::minutes(1),
        }
    }
}

/// The latest instant with this local reading; for a reading in a spring gap, the last instant
/// before the gap.
pub fn latest_instant(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let mut t = local;
    loop {
        match tz.from_local_datetime(&t) {
            LocalResult::Single(x) => return x.with_timezone(&Utc),
            LocalResult::Ambiguous(a, b) => return a.max(b).with_timezone(&Utc),
            LocalResult::None => t -= Duration::minutes(1),
        }
    }
}

pub fn floor_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .expect("zero seconds exist")
}

fn floor_naive_minute(t: NaiveDateTime) -> NaiveDateTime {
    t.with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .expect("zero seconds exist")
}

/// Parses the API's `yyyy-MM-ddTHH:mm` (as used on the command line).
pub fn parse_local(s: &str) -> Result<NaiveDateTime, String> {
    NaiveDateTime::parse_from_str(s.trim(), API_FORMAT)
        .map_err(|e| format!("{s:?} is not a local time in the form yyyy-MM-ddTHH:mm: {e}"))
}

use chrono::Offset;

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Europe::Stockholm;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    fn local(s: &str) -> NaiveDateTime {
        parse_local(s).expect("local")
    }

    fn plan() -> Plan {
        Plan {
            tz: Stockholm,
            overlap: Duration::minutes(30),
            safety_lag: Duration::minutes(2),
            max_window: Duration::days(1),
        }
    }

    /// (case, watermark, now, expected from/tom as sent, or None)
    type Case = (
        &'static str,
        Option<&'static str>,
        &'static str,
        Option<(&'static str, &'static str)>,
    );

    #[test]
    fn next_window_cases() {
        let cases: &[Case] = &[
            (
                "first run starts at the configured start, one day at most",
                None,
                "2026-03-10T12:00:00Z",
                Some(("2026-03-01T00:00", "2026-03-01T23:59")),
            ),
            (
                "catching up stops two minutes before now, never the current minute",
                Some("2026-03-10T10:00:00Z"),
                "2026-03-10T10:20:30Z",
                Some(("2026-03-10T10:30", "2026-03-10T11:18")),
            ),
            (
                "nothing to ask for when the watermark is ahead of now minus the lag",
                Some("2026-03-10T10:20:00Z"),
                "2026-03-10T09:40:00Z",
                None,
            ),
            (
                "spring: a window across the gap asks for readings of real instants only",
                Some("2026-03-29T00:40:00Z"),
                "2026-03-29T01:40:00Z",
                Some(("2026-03-29T01:10", "2026-03-29T03:38")),
            ),
            (
                "autumn: watermark in the first 02:xx, now in the second: from is before the repeated hour",
                Some("2026-10-25T00:50:00Z"),
                "2026-10-25T01:20:00Z",
                Some(("2026-10-25T01:59", "2026-10-25T03:00")),
            ),
            (
                "autumn: a window that ends in the first occurrence widens tom past the repeated hour",
                Some("2026-10-24T23:40:00Z"),
                "2026-10-25T00:15:00Z",
                Some(("2026-10-25T01:10", "2026-10-25T03:00")),
            ),
            (
                "autumn: a window that starts in the second occurrence widens from before it",
                Some("2026-10-25T01:40:00Z"),
                "2026-10-25T02:30:00Z",
                Some(("2026-10-25T01:59", "2026-10-25T03:28")),
            ),
        ];
        for (name, watermark, now, expected) in cases {
            let got = plan()
                .next(watermark.map(utc), local("2026-03-01T00:00"), utc(now))
                .map(|w| (w.from_param(), w.tom_param()));
            let expected = expected.map(|(f, t)| (f.to_string(), t.to_string()));
            assert_eq!(got, expected, "{name}");
        }
    }

    /// Every change made at any minute of a DST weekend is inside some window of a catch-up run,
    /// whether the platform compares local wall-clock stamps, or resolves our local bounds to
    /// instants by either occurrence of an ambiguous time.
    #[test]
    fn no_change_is_missed_across_either_transition_under_any_reading() {
        for (start, end) in [
            ("2026-03-28T22:00", "2026-03-29T06:00"),
            ("2026-10-24T22:00", "2026-10-25T06:00"),
        ] {
            // Without overlap the rule alone must cover the repeated hour; with it, re-reading
            // must not hide a gap either.
            for overlap in [0, 5, 30] {
                for max_window in [overlap + 2, 45, 240, 1440] {
                    for poll_every in [1, 7, 45] {
                        check_catch_up(local(start), local(end), overlap, max_window, poll_every);
                    }
                }
            }
        }
    }

    fn check_catch_up(
        start: NaiveDateTime,
        end: NaiveDateTime,
        overlap: i64,
        max_window: i64,
        poll_every: i64,
    ) {
        let p = Plan {
            overlap: Duration::minutes(overlap),
            max_window: Duration::minutes(max_window),
            ..plan()
        };
        p.validate().expect("valid test plan");
        let first = earliest_instant(Stockholm, start);
        let last = latest_instant(Stockholm, end);
        // Poll as a daemon would: every `poll_every` minutes, sync windows until caught up.
        let mut windows = Vec::new();
        let mut watermark = None;
        let mut now = first + Duration::minutes(3);
        while now <= last + Duration::minutes(40) {
            while let Some(w) = p.next(watermark, start, now) {
                windows.push((w, now));
                watermark = Some(w.tom_utc);
            }
            now += Duration::minutes(poll_every);
        }
        let resolve = |t: NaiveDateTime, later: bool| match Stockholm.from_local_datetime(&t) {
            LocalResult::Single(x) => x.with_timezone(&Utc),
            LocalResult::Ambiguous(a, b) => {
                if later { a.max(b) } else { a.min(b) }.with_timezone(&Utc)
            }
            LocalResult::None => panic!("asked for a local time that does not exist: {t}"),
        };
        let mut change = first;
        while change <= last - Duration::minutes(40) {
            let stamp = floor_naive_minute(change.with_timezone(&Stockholm).naive_local());
            // Only a window asked for after the change was made can return it.
            let asked_after = |ran: &DateTime<Utc>| *ran > change;
            let naive = windows
                .iter()
                .any(|(w, ran)| asked_after(ran) && w.from_local <= stamp && stamp <= w.tom_local);
            let instant = |later: bool| {
                windows.iter().any(|(w, ran)| {
                    asked_after(ran)
                        && resolve(w.from_local, later) <= change
                        && change < resolve(w.tom_local, later) + Duration::minutes(1)
                })
            };
            assert!(
                naive && instant(false) && instant(true),
                "change at {change} (stamped {stamp}) missed: naive {naive}, earlier {}, later {} \
                 (overlap {overlap}, max_window {max_window}, poll every {poll_every})",
                instant(false),
                instant(true)
            );
            change += Duration::minutes(1);
        }
    }

    #[test]
    fn split_halves_cover_the_window_and_stop_at_one_minute() {
        let w = covering(
            Stockholm,
            utc("2026-10-25T00:00:00Z"),
            utc("2026-10-25T01:59:00Z"),
        );
        let (a, b) = w.split(Stockholm).expect("splittable");
        assert_eq!(a.from_utc, w.from_utc);
        assert_eq!(b.tom_utc, w.tom_utc);
        assert_eq!(a.tom_utc + Duration::minutes(1), b.from_utc);
        let one = covering(
            Stockholm,
            utc("2026-01-01T00:00:00Z"),
            utc("2026-01-01T00:00:00Z"),
        );
        assert!(one.split(Stockholm).is_none());
    }

    #[test]
    fn settings_that_cannot_advance_are_refused() {
        let p = Plan {
            max_window: Duration::minutes(31),
            ..plan()
        };
        assert!(p
            .validate()
            .expect_err("no progress")
            .contains("max_window"));
        assert!(Plan {
            max_window: Duration::minutes(32),
            ..plan()
        }
        .validate()
        .is_ok());
        assert!(plan().validate().is_ok());
        // And the planner itself never plans a window that does not pass the watermark.
        let w = utc("2026-01-01T12:00:00Z");
        assert!(p
            .next(
                Some(w),
                local("2026-01-01T00:00"),
                utc("2026-01-02T00:00:00Z")
            )
            .is_none());
    }

    #[test]
    fn backfill_is_a_sequence_of_adjacent_windows() {
        let p = Plan {
            max_window: Duration::hours(10),
            ..plan()
        };
        let ws = p.backfill(local("2026-01-01T00:00"), local("2026-01-02T00:00"));
        assert_eq!(ws.len(), 3);
        assert_eq!(ws[0].from_param(), "2026-01-01T00:00");
        assert_eq!(ws[2].tom_param(), "2026-01-02T00:00");
        for pair in ws.windows(2) {
            assert_eq!(pair[0].tom_utc + Duration::minutes(1), pair[1].from_utc);
        }
    }
}

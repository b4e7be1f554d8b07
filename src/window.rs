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
//!
//! How long each window is within that cap is the [`Pacer`]'s decision: a catch-up asks for
//! windows sized by what the platform answered for the last ones (bytes per minute of window,
//! and how long it took), aiming at `target_response_bytes` per response. A request costs the
//! platform a round trip whatever its size, so a year asked for in one-day windows spends most of
//! its time waiting for 365 round trips; a quiet summer month is one request, a busy week a few.
//! After a window proves too large (413, a timeout, `max_response_bytes`) the next ones aim at
//! the size that worked and grow back by a quarter each time, never again near the size that
//! was refused, so a busy period costs a refusal or two, not one per window. Near now the window
//! is cut by the safety lag anyway, as it always was.

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

    /// How long the window is, as instants: `[from_utc, tom_utc + 1 min)`.
    pub fn span(&self) -> Duration {
        self.tom_utc - self.from_utc + Duration::minutes(1)
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
        self.next_sized(watermark, start, now, self.max_window)
    }

    /// As [`Plan::next`], for a window at most `span` long (and never more than `max_window`).
    pub fn next_sized(
        &self,
        watermark: Option<DateTime<Utc>>,
        start: NaiveDateTime,
        now: DateTime<Utc>,
        span: Duration,
    ) -> Option<Window> {
        let from = match watermark {
            Some(w) => floor_minute(w - self.overlap),
            None => earliest_instant(self.tz, floor_naive_minute(start)),
        };
        let window = self.window_sized(from, now, span)?;
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

    /// The window starting at `from` (an instant), `span` long at most (within `max_window`)
    /// and capped by now − lag.
    fn window_sized(
        &self,
        from: DateTime<Utc>,
        now: DateTime<Utc>,
        span: Duration,
    ) -> Option<Window> {
        let from = floor_minute(from);
        // Never the current minute, whatever the lag is set to.
        let newest =
            floor_minute(now - self.safety_lag).min(floor_minute(now) - Duration::minutes(1));
        let tom = newest.min(from + self.span(span) - Duration::minutes(1));
        (tom >= from).then(|| covering(self.tz, from, tom))
    }

    /// `span` within [1 minute, `max_window`].
    fn span(&self, span: Duration) -> Duration {
        span.clamp(Duration::minutes(1), self.max_window)
    }

    /// Windows for a historic range given in local time (backfill), in order.
    pub fn backfill(&self, from: NaiveDateTime, to: NaiveDateTime) -> Vec<Window> {
        let (mut at, end) = self.backfill_range(from, to);
        let mut out = Vec::new();
        while let Some(w) = self.backfill_window(at, end, self.max_window) {
            at = w.tom_utc + Duration::minutes(1);
            out.push(w);
        }
        out
    }

    /// The instants a backfill of a local range covers: its first, and its last minute.
    pub fn backfill_range(
        &self,
        from: NaiveDateTime,
        to: NaiveDateTime,
    ) -> (DateTime<Utc>, DateTime<Utc>) {
        (
            earliest_instant(self.tz, floor_naive_minute(from)),
            latest_instant(self.tz, floor_naive_minute(to)),
        )
    }

    /// The backfill window starting at `at`, at most `span` long, ending by `end`; `None` past
    /// the end. The next one starts a minute after its `tom_utc`.
    pub fn backfill_window(
        &self,
        at: DateTime<Utc>,
        end: DateTime<Utc>,
        span: Duration,
    ) -> Option<Window> {
        (at <= end).then(|| {
            let tom = end.min(at + self.span(span) - Duration::minutes(1));
            covering(self.tz, at, tom)
        })
    }
}

/// What a catch-up window's response is sized for, unless a source says otherwise. Measured on
/// the simulated platform at 250 ms per request and 50 ms per MiB (`cargo bench --bench
/// catchup`): past a few MiB the round trip is a small share of a request's cost, while a
/// window that proves too large (413, a timeout) costs the whole response again.
pub const DEFAULT_TARGET_RESPONSE_BYTES: u64 = 8 << 20;

/// The span a catch-up starts with before anything was answered, at the default target: four
/// days (in proportion for any other target: a source that asks for 1 MiB responses starts
/// with half a day). Every answer before the span has found its size costs a round trip that
/// nothing overlaps (a window planned ahead then would be too small), so the first window is as
/// long as it can be while still holding less than the target at the busiest time of a large
/// municipality's year: every four-day window of the simulated 200 000-pupil year holds at most
/// 7.05 MB (median 6.84) against 8 MiB. Against the realistic platform at 20 000 pupils this is
/// one probe fewer than a one-day start: 3.28 s instead of 3.57 (farm-bench, 9 pairs).
pub const INITIAL_SPAN_MINUTES: i64 = 4 * 24 * 60;

/// How much longer than the last one the next window may be: a quiet week says little about
/// the next (school starts, results arrive in bulk), so the pacer probes before it leaps.
const MAX_GROWTH: i32 = 4;

/// What a response is sized for besides bytes: a window whose answer took longer than this
/// share of `request_timeout` is shrunk, so a slow platform never brings a window near its
/// timeout (which would cost the whole attempt and a split).
const TIMEOUT_SHARE: f64 = 0.25;

/// How fast the response size the pacer aims at grows back after a refusal, per window.
const REGROWTH: f64 = 1.25;

/// How close to a size the platform refused the pacer lets a response grow again: the refusal
/// was somewhere above what worked and at or below what was refused, and one more refusal costs
/// a whole request.
const REFUSED_MARGIN: f64 = 0.8;

/// Sizes catch-up windows from what the platform answers (see the module docs). Pure: it is told
/// what happened and proposes a span; [`Plan`] turns the span into a window.
///
/// It aims at a response *size*, not a span: a platform refuses (413) or times out by what a
/// response holds, and the same span holds ten times more in May than in July. So after a
/// refusal it lowers the size it aims at to what the largest part that worked held, grows it
/// back by a quarter per window, and never again past most of the size that was refused.
#[derive(Clone, Debug)]
pub struct Pacer {
    /// Bytes a response should have; 0 sizes nothing: every window is `max`, as before pacing.
    target_bytes: u64,
    /// What the next response is aimed at: `target_bytes`, or less after a refusal.
    aim: f64,
    /// The smallest response size (estimated) the platform refused in this catch-up.
    refused: Option<f64>,
    /// Seconds a response may take (a share of `request_timeout`).
    time_budget: f64,
    max: Duration,
    /// The shortest useful span: one that reaches past the watermark despite the overlap.
    min: Duration,
    span: Duration,
    /// Bytes per minute of window, weighted towards the recent windows.
    density: Option<f64>,
    /// Whether the last answer left the span held back by the growth cap: the next windows will
    /// be larger still.
    growing: bool,
}

impl Pacer {
    /// A pacer for a plan: windows between `overlap` + 2 minutes and `max_window`, aiming at
    /// `target_bytes` per response and at most a quarter of `request_timeout`.
    pub fn new(plan: &Plan, target_bytes: u64, request_timeout: std::time::Duration) -> Pacer {
        let max = plan.max_window;
        let min = (plan.overlap + Duration::minutes(2)).min(max);
        let span = if target_bytes == 0 {
            max
        } else {
            let share = target_bytes as f64 / DEFAULT_TARGET_RESPONSE_BYTES as f64;
            minutes_clamped(INITIAL_SPAN_MINUTES as f64 * share, min, max)
        };
        Pacer {
            target_bytes,
            aim: target_bytes as f64,
            refused: None,
            time_budget: request_timeout.as_secs_f64() * TIMEOUT_SHARE,
            max,
            min,
            span,
            density: None,
            growing: target_bytes != 0,
        }
    }

    /// Whether the span has found its size: windows planned now are the size the next answers
    /// would give them. Before that (at the start, while each answer still grows the span) a
    /// window planned ahead of its turn would be too small, and cost a request of its own.
    pub fn settled(&self) -> bool {
        !self.growing
    }

    /// The span of the next window.
    pub fn span(&self) -> Duration {
        self.span
    }

    /// A window of `span` was answered with `bytes` in `seconds` (and committed).
    pub fn answered(&mut self, span: Duration, bytes: u64, seconds: f64) {
        if self.target_bytes == 0 {
            return;
        }
        let minutes = span.num_minutes().max(1) as f64;
        let observed = bytes as f64 / minutes;
        // Half the weight on the newest window: quick to follow a change of season, not thrown
        // by one odd window.
        let density = match self.density {
            Some(d) => 0.5 * d + 0.5 * observed,
            None => observed,
        };
        self.density = Some(density);
        let by_bytes = self.aim / density.max(1.0);
        // Minutes the budget allows at the speed this window was answered.
        let by_time = if seconds > 0.0 {
            minutes * self.time_budget / seconds
        } else {
            f64::INFINITY
        };
        let grown = (span * MAX_GROWTH).num_minutes() as f64;
        let wanted = by_bytes.min(by_time);
        self.growing = grown < wanted && (grown as i64) < self.max.num_minutes();
        self.span = minutes_clamped(wanted.min(grown), self.min, self.max);
        let mut ceiling = self.target_bytes as f64;
        if let Some(refused) = self.refused {
            ceiling = ceiling.min(refused * REFUSED_MARGIN);
        }
        self.aim = (self.aim * REGROWTH).min(ceiling).max(self.aim);
    }

    /// A window of `refused_span` was too large (413, a timeout, `max_response_bytes`) and had
    /// to be split; the largest part that then succeeded held `worked_bytes`. Call it after
    /// [`Pacer::answered`] for the parts, whose density prices the refused span.
    pub fn too_large(&mut self, refused_span: Duration, worked_bytes: u64) {
        if self.target_bytes == 0 {
            return;
        }
        let estimate = self.density.unwrap_or(0.0) * refused_span.num_minutes().max(1) as f64;
        if estimate > 0.0 {
            self.refused = Some(self.refused.map_or(estimate, |r| r.min(estimate)));
        }
        self.aim = (worked_bytes.max(1) as f64).min(self.aim);
        if let Some(density) = self.density {
            let by_bytes = self.aim / density.max(1.0);
            self.span = minutes_clamped(by_bytes, self.min, self.max).min(self.span);
        }
    }
}

/// `minutes` (finite or not) as a span within [min, max].
fn minutes_clamped(minutes: f64, min: Duration, max: Duration) -> Duration {
    let whole = if minutes.is_finite() {
        minutes.floor().clamp(0.0, max.num_minutes() as f64) as i64
    } else {
        max.num_minutes()
    };
    Duration::minutes(whole).clamp(min, max)
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

    fn pacer(target: u64) -> Pacer {
        let plan = Plan {
            max_window: Duration::days(31),
            ..plan()
        };
        Pacer::new(&plan, target, std::time::Duration::from_secs(300))
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_first_window_is_four_days_at_the_default_target_and_in_proportion_to_another() {
        let first = |target: u64| pacer(target).span();
        assert_eq!(first(DEFAULT_TARGET_RESPONSE_BYTES), Duration::days(4));
        assert_eq!(first(MIB), Duration::hours(12));
        assert_eq!(first(32 * MIB), Duration::days(16));
        // Within the plan's bounds: max_window above, the overlap plus two minutes below.
        assert_eq!(first(1 << 40), Duration::days(31));
        assert_eq!(first(1), Duration::minutes(32));
    }

    #[test]
    fn without_a_target_every_window_is_max_window_whatever_was_answered() {
        let mut p = pacer(0);
        assert_eq!(p.span(), Duration::days(31));
        p.answered(Duration::days(31), 900 * MIB, 200.0);
        p.too_large(Duration::hours(1), MIB);
        assert_eq!(p.span(), Duration::days(31));
    }

    #[test]
    fn the_span_settles_once_an_answer_no_longer_grows_it() {
        // Fixed windows never grow: settled from the start.
        assert!(pacer(0).settled());
        let mut p = pacer(8 * MIB);
        assert!(!p.settled(), "nothing answered yet");
        // A quiet day: the span may grow fourfold and wants more, so it is still growing.
        p.answered(Duration::days(1), 10_000, 0.1);
        assert!(!p.settled());
        assert_eq!(p.span(), Duration::days(4));
        // Four days of 4 MiB a day: 8 MiB is two days, so the bytes bound it, not the cap.
        p.answered(Duration::days(4), 16 * MIB, 1.0);
        assert!(p.settled());
        // At the longest window there is nothing left to grow into.
        let mut q = pacer(8 * MIB);
        q.answered(Duration::days(16), 100, 0.1);
        assert!(q.settled(), "{:?}", q.span());
    }

    /// (case, answers as (span in minutes, bytes, seconds), then a refusal as (refused span in
    /// minutes, bytes of the largest part that worked), expected next span in minutes)
    type PaceCase = (
        &'static str,
        &'static [(i64, u64, f64)],
        Option<(i64, u64)>,
        i64,
    );

    #[test]
    fn the_next_span_follows_what_the_platform_answered() {
        const DAY: i64 = 24 * 60;
        let cases: &[PaceCase] = &[
            ("nothing answered yet: four days", &[], None, 4 * DAY),
            (
                "a quiet day grows fourfold, not to the cap at once",
                &[(DAY, 2_000, 0.3)],
                None,
                4 * DAY,
            ),
            (
                "quiet days grow to max_window and stay there",
                &[
                    (DAY, 2_000, 0.3),
                    (4 * DAY, 2_000, 0.3),
                    (16 * DAY, 2_000, 0.3),
                ],
                None,
                31 * DAY,
            ),
            (
                "a busy day shrinks to the target: 32 MiB a day, 8 MiB is a quarter day",
                &[(DAY, 32 * MIB, 2.0)],
                None,
                DAY / 4,
            ),
            (
                "density is weighted: half the old estimate, half the new one",
                &[(DAY, 32 * MIB, 2.0), (DAY / 4, 2 * MIB, 0.5)],
                None,
                // (32 MiB/1440 + 2 MiB/360) / 2 per minute = 20 MiB/1440 per minute
                8 * DAY / 20,
            ),
            (
                "a slow answer shrinks by time: 150 s for a day, 75 s allowed",
                &[(DAY, MIB, 150.0)],
                None,
                DAY / 2,
            ),
            (
                "a refusal aims the next window at what worked: 2 MiB at 1 MiB a day",
                &[(DAY, MIB, 1.0)],
                Some((4 * DAY, 2 * MIB)),
                2 * DAY,
            ),
            (
                "never shorter than the overlap plus two minutes: the watermark must move",
                &[(60, 900 * MIB, 10.0)],
                None,
                32,
            ),
        ];
        for (case, answers, refusal, expected) in cases {
            let mut p = pacer(8 * MIB);
            for (minutes, bytes, seconds) in *answers {
                p.answered(Duration::minutes(*minutes), *bytes, *seconds);
            }
            if let Some((refused, worked)) = refusal {
                p.too_large(Duration::minutes(*refused), *worked);
            }
            assert_eq!(p.span(), Duration::minutes(*expected), "{case}");
        }
    }

    #[test]
    fn after_a_refusal_the_size_grows_back_by_a_quarter_and_stays_below_what_was_refused() {
        const DAY: i64 = 24 * 60;
        let mut p = pacer(8 * MIB);
        p.answered(Duration::days(1), MIB, 1.0);
        assert_eq!(p.span(), Duration::days(4));
        // Four days (4 MiB at this density) refused; two days (2 MiB) worked.
        p.too_large(Duration::days(4), 2 * MIB);
        assert_eq!(p.span(), Duration::days(2));
        let mut spans = Vec::new();
        for _ in 0..5 {
            let span = p.span();
            // 1 MiB a day, as before.
            p.answered(span, (span.num_minutes() as u64) * MIB / DAY as u64, 1.0);
            spans.push(p.span().num_minutes());
        }
        // 2 MiB, 2.5, 3.125, then 80 % of the 4 MiB refused, for good.
        assert_eq!(spans, vec![2 * DAY, 3600, 4500, 4608, 4608]);
    }

    #[test]
    fn a_paced_window_keeps_every_rule_of_a_planned_one() {
        let p = plan();
        let now = utc("2026-03-10T12:00:00Z");
        let w = Some(utc("2026-03-05T10:00:00Z"));
        // Shorter than max_window: the span decides; longer: max_window does.
        let short = p
            .next_sized(w, local("2026-03-01T00:00"), now, Duration::hours(3))
            .expect("window");
        assert_eq!(short.from_utc, utc("2026-03-05T09:30:00Z"));
        assert_eq!(short.span(), Duration::hours(3));
        let long = p
            .next_sized(w, local("2026-03-01T00:00"), now, Duration::days(9))
            .expect("window");
        assert_eq!(
            long,
            p.next(w, local("2026-03-01T00:00"), now).expect("window")
        );
        // Near now the safety lag cuts it, as before.
        let near = p
            .next_sized(
                Some(utc("2026-03-10T11:00:00Z")),
                local("2026-03-01T00:00"),
                now,
                Duration::days(9),
            )
            .expect("window");
        assert_eq!(near.tom_utc, utc("2026-03-10T11:58:00Z"));
        // A paced backfill covers the range without gap or overlap.
        let (mut at, end) = p.backfill_range(local("2026-03-01T00:00"), local("2026-03-03T00:00"));
        let mut spans = Vec::new();
        while let Some(win) = p.backfill_window(at, end, Duration::hours(7)) {
            assert_eq!(win.from_utc, at);
            at = win.tom_utc + Duration::minutes(1);
            spans.push(win.span().num_minutes());
        }
        assert_eq!(at, end + Duration::minutes(1));
        assert_eq!(spans.iter().sum::<i64>(), 48 * 60 + 1);
    }
}

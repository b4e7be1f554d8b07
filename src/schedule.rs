//! A source's `schedule`: a cron expression with seconds, evaluated in the source's own time zone
//! by tokio-cron-scheduler. Configuration checks it when it loads; the daemon runs it. Both read
//! it through the scheduler's own parser, so a schedule that loads is one the daemon can run.

use chrono_tz::Tz;
use tokio_cron_scheduler::{Job, JobSchedulerError};

/// The scheduler job that calls `tick` at every time `schedule` names, in `tz`.
///
/// # Errors
/// A schedule the scheduler cannot read.
pub fn job(
    schedule: &str,
    tz: Tz,
    tick: impl Fn() + Send + Sync + 'static,
) -> Result<Job, JobSchedulerError> {
    Job::new_async_tz(schedule, tz, move |_, _| {
        tick();
        Box::pin(async {})
    })
}

/// Checks a source's schedule the way the daemon will read it.
///
/// # Errors
/// A message that shows the expected form.
pub fn check(schedule: &str, tz: Tz) -> Result<(), String> {
    job(schedule, tz, || {}).map(|_| ()).map_err(|_| {
        format!(
            "{schedule:?} is not a cron expression with seconds \
                 (sec min hour day-of-month month day-of-week), e.g. \"0 */5 * * * *\""
        )
    })
}

/// The time between the schedule's next two runs after `now` (a schedule's period, for rules
/// that count schedules); `None` for one that does not parse or never runs twice.
pub fn interval(
    schedule: &str,
    tz: Tz,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<std::time::Duration> {
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(schedule)
        .ok()?;
    let mut next = cron.iter_after(now.with_timezone(&tz));
    let (a, b) = (next.next()?, next.next()?);
    (b - a).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::{check, interval};

    #[test]
    fn a_schedule_s_interval_is_the_time_between_its_next_two_runs() {
        let tz = chrono_tz::Europe::Stockholm;
        let now = chrono::DateTime::parse_from_rfc3339("2026-03-01T10:17:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        assert_eq!(
            interval("0 0 * * * *", tz, now),
            Some(std::time::Duration::from_secs(3600))
        );
        assert_eq!(
            interval("0 */5 * * * *", tz, now),
            Some(std::time::Duration::from_secs(300))
        );
        assert_eq!(interval("nonsense", tz, now), None);
    }

    #[test]
    fn schedules_are_checked_in_the_form_the_daemon_reads() {
        let tz = chrono_tz::Europe::Stockholm;
        assert!(check("0 */5 * * * *", tz).is_ok());
        assert!(check("*/1 * * * * *", tz).is_ok());
        // Five fields (no seconds) is the classic crontab form: refused with the expected form.
        let e = check("*/5 * * * *", tz).expect_err("no seconds");
        assert!(e.contains("with seconds"), "{e}");
        assert!(check("every five minutes", tz).is_err());
    }
}

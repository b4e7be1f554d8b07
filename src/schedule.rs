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

#[cfg(test)]
mod tests {
    use super::check;

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

//! One scheduler job per source, installed at start and on every reload, and re-created when a
//! source's zone changes its UTC offset (the scheduler fixes a job's offset when it makes it).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use tokio_cron_scheduler::{JobScheduler, JobSchedulerError};
use uuid::Uuid;

use super::shared::Shared;
use super::{DaemonError, Loaded};
use crate::sync::SyncSource;

/// A source as currently configured.
pub(super) struct Configured {
    /// Shared with runs in flight, which keep the configuration they started with.
    pub source: Arc<SyncSource>,
    pub schedule: String,
    pub tz: Tz,
    /// The zone's UTC offset when the job was created (see the module docs).
    pub offset_seconds: i32,
    pub job: Uuid,
}

fn offset_seconds(tz: Tz, at: DateTime<Utc>) -> i32 {
    tz.offset_from_utc_datetime(&at.naive_utc())
        .fix()
        .local_minus_utc()
}

async fn add_job(
    shared: &Arc<Shared>,
    scheduler: &JobScheduler,
    name: &str,
    schedule: &str,
    tz: Tz,
) -> Result<Uuid, JobSchedulerError> {
    let shared = shared.clone();
    let name = name.to_owned();
    let job = crate::schedule::job(schedule, tz, move || shared.tick(&name))?;
    scheduler.add(job).await
}

/// Schedules the configured sources, replacing whatever was scheduled before.
pub(super) async fn install_sources(
    shared: &Arc<Shared>,
    scheduler: &JobScheduler,
    loaded: Loaded,
) -> Result<Vec<String>, DaemonError> {
    let Loaded {
        settings, sources, ..
    } = loaded;
    let mut next = BTreeMap::new();
    for mut source in sources {
        let name = source.name().to_owned();
        let schedule = settings
            .source
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.schedule.clone())
            .unwrap_or_else(|| crate::config::DEFAULT_SCHEDULE.into());
        let state = shared.state(&name);
        source.metrics = state.metrics.clone();
        // Read at start and on every reload: a renewed certificate shows once it is in force.
        state
            .metrics
            .certificate_expiry(source.certificates.client, source.certificates.ca);
        let tz = source.plan.tz;
        next.insert(
            name.clone(),
            (source, schedule, tz, offset_seconds(tz, Utc::now())),
        );
    }
    // Unschedule the old jobs first: a source whose job is gone but whose run is in flight keeps
    // its guard, so a new job for it cannot start a second run.
    let old: Vec<Arc<Configured>> = {
        let mut sources = shared.sources.write().expect("sources lock");
        std::mem::take(&mut *sources).into_values().collect()
    };
    for c in &old {
        scheduler.remove(&c.job).await?;
    }
    let mut installed = BTreeMap::new();
    for (name, (source, schedule, tz, offset)) in next {
        let job = add_job(shared, scheduler, &name, &schedule, tz).await?;
        installed.insert(
            name,
            Arc::new(Configured {
                source: Arc::new(source),
                schedule,
                tz,
                offset_seconds: offset,
                job,
            }),
        );
    }
    // Sources no longer configured give their lead up once their run, if any, is over: in a task
    // of its own, so the main loop (and a SIGTERM) does not wait for that run.
    for c in old {
        let name = c.source.name().to_owned();
        if !installed.contains_key(&name) {
            let state = shared.state(&name);
            tracing::info!(source = %name, "source removed from the configuration");
            let shared = shared.clone();
            shared.clone().tracker.spawn(async move {
                let mut slot = state.slot.lock().await;
                let changed = state.release(&mut slot).await;
                shared.announce(&name, &state, changed);
                drop(slot);
                shared.forget_source(&name);
            });
        }
    }
    let names = installed.keys().cloned().collect();
    *shared.sources.write().expect("sources lock") = installed;
    *shared.config.write().expect("config lock") = settings.daemon()?;
    Ok(names)
}

/// Re-creates the jobs of sources whose zone changed its UTC offset since they were scheduled.
pub(super) async fn follow_offsets(shared: &Arc<Shared>, scheduler: &JobScheduler) {
    let now = Utc::now();
    let stale: Vec<Arc<Configured>> = shared
        .sources
        .read()
        .expect("sources lock")
        .values()
        .filter(|c| offset_seconds(c.tz, now) != c.offset_seconds)
        .cloned()
        .collect();
    for c in stale {
        let name = c.source.name().to_owned();
        let rescheduled = async {
            scheduler.remove(&c.job).await?;
            add_job(shared, scheduler, &name, &c.schedule, c.tz).await
        }
        .await;
        match rescheduled {
            Ok(job) => {
                let mut sources = shared.sources.write().expect("sources lock");
                if let Some(entry) = sources.get_mut(&name) {
                    if entry.job == c.job {
                        // Rebuild the entry around the same source; the old Arc may still be in
                        // a run, which keeps its own reference.
                        *entry = Arc::new(Configured {
                            source: c.source.clone(),
                            schedule: c.schedule.clone(),
                            tz: c.tz,
                            offset_seconds: offset_seconds(c.tz, now),
                            job,
                        });
                    }
                }
                tracing::info!(
                    source = %name,
                    "the time zone changed its UTC offset; the schedule follows local time"
                );
            }
            Err(e) => {
                tracing::error!(source = %name, error = %e, "could not reschedule after an offset change")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_follows_the_zone_across_dst() {
        let tz = chrono_tz::Europe::Stockholm;
        let winter = DateTime::parse_from_rfc3339("2026-01-15T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let summer = DateTime::parse_from_rfc3339("2026-07-15T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(offset_seconds(tz, winter), 3600);
        assert_eq!(offset_seconds(tz, summer), 7200);
    }
}

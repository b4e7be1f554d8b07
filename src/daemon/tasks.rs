//! What runs beside the scheduler's source jobs, each started by a function of its own: the
//! heartbeat job that the watchdog follows, the HTTP endpoints, the maintenance loop (watchdog
//! pings, following the zones' UTC offsets) and the daily prune.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinHandle;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;

use super::shared::Shared;
use super::{http, jobs};
use crate::store::governance::Mode;

/// How often the scheduler's heartbeat job ticks; the watchdog is fed only while it does.
const HEARTBEAT_SCHEDULE: &str = "*/5 * * * * *";

/// How often the daemon prunes past the retention horizons (from start-up), and how soon it
/// tries again after a failure.
const PRUNE_EVERY: Duration = Duration::from_secs(24 * 60 * 60);
const PRUNE_RETRY: Duration = Duration::from_secs(60 * 60);

/// A job of the scheduler's own that only records that it ticked: the maintenance loop feeds
/// systemd's watchdog only while it does, so a stuck scheduler restarts the service.
pub(super) async fn add_heartbeat(
    shared: &Arc<Shared>,
    scheduler: &JobScheduler,
) -> Result<(), JobSchedulerError> {
    let shared = shared.clone();
    scheduler
        .add(Job::new_async(HEARTBEAT_SCHEDULE, move |_, _| {
            shared
                .heartbeat
                .store(Utc::now().timestamp_millis(), Ordering::SeqCst);
            Box::pin(async {})
        })?)
        .await?;
    Ok(())
}

/// Serves the metrics and health endpoints on `listener` until `stop`.
pub(super) fn serve_http(
    shared: &Arc<Shared>,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let app = http::router(shared.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
        {
            tracing::error!(error = %e, "the metrics listener failed");
        }
    })
}

/// Every half watchdog interval (at most 30 s) until `stop`: pings the watchdog while the
/// scheduler's heartbeat is fresh, and re-creates the jobs of sources whose zone changed its UTC
/// offset.
pub(super) fn maintain(
    shared: &Arc<Shared>,
    scheduler: &JobScheduler,
    watchdog: Option<Duration>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let shared = shared.clone();
    let scheduler = scheduler.clone();
    tokio::spawn(async move {
        let period = watchdog.map(|w| w / 2).unwrap_or(Duration::from_secs(30));
        let mut every = tokio::time::interval(period.min(Duration::from_secs(30)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = stop.cancelled() => return,
            }
            if let Some(limit) = watchdog {
                let age = Utc::now().timestamp_millis() - shared.heartbeat.load(Ordering::SeqCst);
                if age >= 0 && (age as u128) < limit.as_millis() {
                    shared.notifier.notify(&[sd_notify::NotifyState::Watchdog]);
                } else {
                    tracing::error!(
                        heartbeat_age_ms = age,
                        "the scheduler has stopped ticking; withholding the watchdog ping"
                    );
                }
            }
            jobs::follow_offsets(&shared, &scheduler).await;
        }
    })
}

/// Retention: a prune now and once a day, with the horizons in force (a reload changes them),
/// until `stop`. A prune is one transaction: cancelled by a shutdown, it rolls back.
pub(super) fn prune_daily(shared: &Arc<Shared>, stop: CancellationToken) -> JoinHandle<()> {
    shared.metrics.pruning();
    let shared = shared.clone();
    tokio::spawn(async move {
        loop {
            let retention = shared.config.read().expect("config lock").retention;
            let cutoffs = retention.cutoffs(Utc::now());
            let wait = tokio::select! {
                result = shared.store.prune(&cutoffs, Mode::Apply) => match result {
                    Ok(pruned) => {
                        shared.metrics.pruned(&pruned, Utc::now());
                        pruned.log();
                        PRUNE_EVERY
                    }
                    Err(e) => {
                        tracing::warn!(
                            error = %crate::error::chain(&e),
                            "pruning past retention failed; trying again in an hour"
                        );
                        PRUNE_RETRY
                    }
                },
                () = stop.cancelled() => return,
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
        }
    })
}

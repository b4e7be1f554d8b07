//! `nprov-sync run`: the long-running service.
//!
//! One scheduled job per configured source (tokio-cron-scheduler, evaluated in the source's own
//! time zone), plus a run of every source at start-up. Per source:
//!
//! * **No overlap.** The scheduler starts a job at every tick whether or not the previous one is
//!   still going (its issues #50 and #83), so each source has a guard: a tick that finds a run in
//!   progress is skipped and logged.
//! * **Back-off.** A failed run makes the source wait (one minute, doubling, up to
//!   `daemon.failure_backoff_max`) before its next attempt; sources are independent, so one
//!   failing platform never holds the others back.
//! * **Leadership.** A run starts only while this instance leads the source
//!   ([`Store::try_lead`]; a PostgreSQL advisory lock), so of several instances sharing a database
//!   exactly one syncs each source and the others stand by, asking again at every tick. The
//!   watermark fence in the store keeps even a mistaken second leader from committing a window
//!   twice.
//!
//! Shutdown (SIGTERM/SIGINT, or the injected token): stop scheduling, stop planning windows, give
//! the window in flight `daemon.shutdown_grace` to commit, then drop it (its transaction rolls
//! back; the watermark has not moved), release leadership and return. SIGHUP re-reads the
//! configuration; an invalid one is logged and the running one kept. What cannot change without a
//! restart (the database, the metrics listener) is logged as such.
//!
//! systemd: `READY=1` once the database answered, `STATUS=` with a one-line summary after every
//! run, `WATCHDOG=1` while the scheduler's own heartbeat job keeps ticking, `STOPPING=1` when
//! shutdown begins.
//!
//! The rooms: [`state`] holds each source's state and the decisions made from it as pure
//! functions (back-off, readiness, the status line, leadership transitions); `shared` what a tick
//! does; `jobs` the scheduler's jobs and offset following; `http` the endpoints; `notify` and
//! `signals` the supervisor's side; `tasks` what runs beside the scheduler (the heartbeat job,
//! the endpoints, the maintenance loop, the daily prune). This file is the service loop: start,
//! reload, shut down.
//!
//! Known limitation of the scheduler, handled here: it fixes a job's UTC offset when the job is
//! created, so a daily `0 0 6 * * *` would run at 05:00 or 07:00 local time after a DST change.
//! The daemon re-creates a source's job whenever its zone's offset has changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex as StdMutex, RwLock};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio_cron_scheduler::{JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConfigError, Settings};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::sync::SyncSource;

mod http;
mod jobs;
mod notify;
mod provisioning;
mod shared;
mod signals;
mod startup;
mod state;
mod tasks;

pub use notify::{Notifier, SystemdNotifier};
pub use signals::spawn_signal_handlers;
pub use startup::{wait_for_database, Startup};
pub use state::{not_ready, readiness, Readiness, Role, SourceSnapshot};

use shared::Shared;

/// After the grace period, how long dropped windows get to finish rolling back.
const ROLLBACK_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the database is not usable: {0}")]
    Store(#[from] StoreError),
    #[error("the scheduler failed: {0}")]
    Scheduler(String),
    #[error("no [[source]] is configured: see `nprov-sync config example`")]
    NoSources,
}

impl From<JobSchedulerError> for DaemonError {
    fn from(e: JobSchedulerError) -> Self {
        DaemonError::Scheduler(e.to_string())
    }
}

/// A configuration as the daemon runs it.
pub struct Loaded {
    pub settings: Settings,
    /// Built from `settings.source`, in the same order.
    pub sources: Vec<SyncSource>,
    /// Built from `settings.provisioning`, in the same order.
    pub provisioning: Vec<crate::provisioning::ProvSource>,
}

/// Reads the configuration again (for SIGHUP): file, environment, credentials.
pub type Loader = Box<dyn Fn() -> Result<Loaded, String> + Send + Sync>;

/// Everything from outside the daemon, injected so tests run the real thing.
pub struct World {
    /// The metrics/health listener, already bound (port 0 in tests).
    pub listener: Option<tokio::net::TcpListener>,
    pub shutdown: CancellationToken,
    /// One message per SIGHUP.
    pub reload: mpsc::Receiver<()>,
    pub loader: Loader,
    pub notifier: Arc<dyn Notifier>,
    pub metrics: Metrics,
    /// systemd's watchdog interval (`$WATCHDOG_USEC`), if it asks for one.
    pub watchdog: Option<Duration>,
}

/// Runs the daemon until `world.shutdown` is cancelled; returns once windows in flight have
/// committed or been rolled back and leadership is released.
///
/// # Errors
/// A configuration that cannot be used, a database that does not answer at start-up, or a
/// scheduler that cannot start. Failures of individual syncs are not errors of the daemon: they
/// are logged, counted and retried.
pub async fn run(
    store: Arc<dyn Store>,
    mut loaded: Loaded,
    world: World,
) -> Result<(), DaemonError> {
    let World {
        listener,
        shutdown,
        mut reload,
        loader,
        notifier,
        metrics,
        watchdog,
    } = world;
    if loaded.sources.is_empty() && loaded.provisioning.is_empty() {
        return Err(DaemonError::NoSources);
    }
    let config = loaded.settings.daemon()?;
    // The first health check: READY=1 only once the (migrated) database answers.
    store.ping().await?;
    let shared = Arc::new(Shared {
        store: store.clone(),
        metrics,
        config: RwLock::new(config),
        database_url: loaded.settings.database.url.clone(),
        metrics_listen: loaded.settings.metrics.listen.clone(),
        sources: RwLock::new(BTreeMap::new()),
        states: StdMutex::new(HashMap::new()),
        tracker: TaskTracker::new(),
        shutdown: shutdown.clone(),
        abort: CancellationToken::new(),
        heartbeat: AtomicI64::new(Utc::now().timestamp_millis()),
        started_at: Utc::now(),
        notifier: notifier.clone(),
        provisioning: provisioning::Provisioning::default(),
    });

    let scheduler = JobScheduler::new().await?;
    let passes = std::mem::take(&mut loaded.provisioning);
    let names = jobs::install_sources(&shared, &scheduler, loaded).await?;
    let prov_names = provisioning::install(&shared, &scheduler, passes).await?;
    // Freshness survives a restart: the watermark row says when the last window committed.
    for name in &names {
        let state = shared.state(name);
        if let Some(wm) = store.watermark(name).await? {
            state.metrics.restore(&wm);
        }
    }
    tasks::add_heartbeat(&shared, &scheduler).await?;
    scheduler.start().await?;

    // The tasks beside the scheduler: the endpoints and the maintenance loop stop with
    // `background`, after the windows in flight; the pruner stops at shutdown (a prune cut
    // short rolls back).
    let background = CancellationToken::new();
    let server = listener.map(|l| tasks::serve_http(&shared, l, background.clone()));
    tracing::info!(
        sources = %names.join(", "),
        provisioning = %prov_names.join(", "),
        version = env!("CARGO_PKG_VERSION"),
        "nprov-sync is running"
    );
    shared.metrics.config_loaded(true, Utc::now());
    notifier.notify(&[sd_notify::NotifyState::Ready]);
    shared.publish_status();
    let maintenance = tasks::maintain(&shared, &scheduler, watchdog, background.clone());
    let pruner = tasks::prune_daily(&shared, shutdown.clone());

    // A first run of every source now, rather than at its first tick minutes away.
    for name in &names {
        shared.tick(name);
    }
    for name in &prov_names {
        shared.tick_provisioning(name);
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(()) = reload.recv() => reload_in_force(&shared, &scheduler, &loader).await,
        }
    }

    shut_down(&shared, scheduler).await;
    background.cancel();
    maintenance.await.ok();
    pruner.await.ok();
    if let Some(server) = server {
        server.await.ok();
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: tells systemd a reload is under way, puts the new configuration in force (or keeps
/// the running one) and says which is in force.
async fn reload_in_force(shared: &Arc<Shared>, scheduler: &JobScheduler, loader: &Loader) {
    // systemd (Type=notify-reload, 253+) waits for READY=1 after RELOADING=1; the monotonic
    // timestamp tells it which reload this is. On 252 and older, and outside systemd, these are
    // harmless.
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => shared
            .notifier
            .notify(&[sd_notify::NotifyState::Reloading, now]),
        Err(e) => tracing::warn!(error = %e, "no monotonic clock for RELOADING=1"),
    }
    let used = reload_configuration(shared, scheduler, loader).await;
    shared.metrics.config_loaded(used, Utc::now());
    // In force: the new configuration, or the old one kept.
    shared.notifier.notify(&[sd_notify::NotifyState::Ready]);
    shared.publish_status();
}

/// Stops scheduling, gives the windows in flight `shutdown_grace` to commit (then drops them:
/// their transactions roll back) and releases every lead held.
async fn shut_down(shared: &Arc<Shared>, mut scheduler: JobScheduler) {
    shared.notifier.notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping: letting windows in flight finish"),
    ]);
    let grace = shared.config.read().expect("config lock").shutdown_grace;
    tracing::info!(
        grace = %humantime::format_duration(grace),
        "stopping: no new windows; waiting for windows in flight"
    );
    if let Err(e) = scheduler.shutdown().await {
        tracing::warn!(error = %e, "the scheduler did not stop cleanly");
    }
    shared.tracker.close();
    if tokio::time::timeout(grace, shared.tracker.wait())
        .await
        .is_err()
    {
        shared.abort.cancel();
        if tokio::time::timeout(ROLLBACK_WAIT, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::error!("a window did not finish rolling back in time");
        }
    }
    let states: Vec<(String, Arc<state::SourceState>)> = shared
        .states
        .lock()
        .expect("states lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (name, state) in states {
        if let Ok(mut slot) = state.slot.clone().try_lock_owned() {
            if state.release(&mut slot).await {
                tracing::info!(source = %name, "released the lead");
            }
        } else {
            state.stand_by_without_slot();
        }
    }
}

/// Reads the configuration again and puts it in force; whether it is used (an unreadable or
/// invalid one is logged and the running one stays).
async fn reload_configuration(
    shared: &Arc<Shared>,
    scheduler: &JobScheduler,
    loader: &Loader,
) -> bool {
    let mut next = match loader() {
        Ok(next) => next,
        Err(e) => {
            tracing::error!(error = %e, "the configuration was not reloaded; the running one stays");
            return false;
        }
    };
    if next.settings.database.url != shared.database_url {
        tracing::warn!("database.url changed: takes effect at the next restart");
    }
    if next.settings.metrics.listen != shared.metrics_listen {
        tracing::warn!("metrics.listen changed: takes effect at the next restart");
    }
    let passes = std::mem::take(&mut next.provisioning);
    let before: Vec<String> = shared
        .provisioning
        .configured
        .read()
        .expect("provisioning lock")
        .keys()
        .cloned()
        .collect();
    let installed = match jobs::install_sources(shared, scheduler, next).await {
        Ok(names) => provisioning::install(shared, scheduler, passes)
            .await
            .map(|prov| (names, prov)),
        Err(e) => Err(e),
    };
    match installed {
        Ok((names, prov)) => {
            tracing::info!(sources = %names.join(", "), provisioning = %prov.join(", "), "configuration reloaded");
            for name in &names {
                shared.tick(name);
            }
            // A provisioning source new to the configuration passes now; the others keep
            // their schedule (a pass of a large register takes minutes of the API's quota).
            for name in prov.iter().filter(|n| !before.contains(n)) {
                shared.tick_provisioning(name);
            }
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "reloading the configuration failed");
            false
        }
    }
}

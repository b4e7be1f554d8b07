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
//! Known limitation of the scheduler, handled here: it fixes a job's UTC offset when the job is
//! created, so a daily `0 0 6 * * *` would run at 05:00 or 07:00 local time after a DST change.
//! The daemon re-creates a source's job whenever its zone's offset has changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use tokio::sync::{mpsc, Mutex, OwnedMutexGuard};
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::{ConfigError, DaemonConfig, Settings};
use crate::metrics::{Metrics, SourceMetrics};
use crate::store::{Leadership, Store, StoreError};
use crate::sync::{catch_up_until, SyncError, SyncSource};

/// How often the scheduler's heartbeat job ticks; the watchdog is fed only while it does.
const HEARTBEAT_SCHEDULE: &str = "*/5 * * * * *";
/// The first back-off after a failed run; it doubles with every further failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(60);
/// After the grace period, how long dropped windows get to finish rolling back.
const ROLLBACK_WAIT: Duration = Duration::from_secs(10);
/// A database that does not answer a readiness ping in this time is not ready.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

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

/// Checks a source's schedule the way the daemon will read it.
///
/// # Errors
/// A message that shows the expected form.
pub fn check_schedule(schedule: &str, tz: Tz) -> Result<(), String> {
    Job::new_async_tz(schedule, tz, |_, _| Box::pin(async {}))
        .map(|_| ())
        .map_err(|_| {
            format!(
                "{schedule:?} is not a cron expression with seconds \
                 (sec min hour day-of-month month day-of-week), e.g. \"0 */5 * * * *\""
            )
        })
}

/// A configuration as the daemon runs it.
pub struct Loaded {
    pub settings: Settings,
    /// Built from `settings.source`, in the same order.
    pub sources: Vec<SyncSource>,
}

/// Reads the configuration again (for SIGHUP): file, environment, credentials.
pub type Loader = Box<dyn Fn() -> Result<Loaded, String> + Send + Sync>;

/// Where the daemon tells its supervisor how it is.
pub trait Notifier: Send + Sync {
    fn notify(&self, state: &[sd_notify::NotifyState<'_>]);
}

/// systemd's notify socket (`$NOTIFY_SOCKET`); does nothing when not run by systemd.
pub struct SystemdNotifier;

impl Notifier for SystemdNotifier {
    fn notify(&self, state: &[sd_notify::NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(state) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }
}

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

/// A source as currently configured.
struct Configured {
    /// Shared with runs in flight, which keep the configuration they started with.
    source: Arc<SyncSource>,
    schedule: String,
    tz: Tz,
    /// The zone's UTC offset when the job was created (see the module docs).
    offset_seconds: i32,
    job: Uuid,
}

/// What the daemon keeps about a source across reloads.
struct SourceState {
    /// Held for the whole of a run: the overlap guard.
    slot: Arc<Mutex<Slot>>,
    metrics: SourceMetrics,
    leader: AtomicBool,
    /// When this instance last took the lead (readiness counts from there).
    leader_since: StdMutex<Option<DateTime<Utc>>>,
}

#[derive(Default)]
struct Slot {
    leadership: Option<Box<dyn Leadership>>,
    backoff_until: Option<Instant>,
}

struct Shared {
    store: Arc<dyn Store>,
    metrics: Metrics,
    config: RwLock<DaemonConfig>,
    database_url: String,
    metrics_listen: String,
    sources: RwLock<BTreeMap<String, Arc<Configured>>>,
    states: StdMutex<HashMap<String, Arc<SourceState>>>,
    tracker: TaskTracker,
    /// Cancelled when shutdown begins: no new runs, no new windows.
    shutdown: CancellationToken,
    /// Cancelled when the grace period is over: windows in flight are dropped (rolled back).
    abort: CancellationToken,
    /// Unix milliseconds of the scheduler heartbeat's last tick.
    heartbeat: AtomicI64,
    started_at: DateTime<Utc>,
    notifier: Arc<dyn Notifier>,
}

impl Shared {
    fn state(&self, name: &str) -> Arc<SourceState> {
        let mut states = self.states.lock().expect("states lock");
        states
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(SourceState {
                    slot: Arc::new(Mutex::new(Slot::default())),
                    metrics: self.metrics.source(name),
                    leader: AtomicBool::new(false),
                    leader_since: StdMutex::new(None),
                })
            })
            .clone()
    }

    fn configured(&self, name: &str) -> Option<Arc<Configured>> {
        self.sources
            .read()
            .expect("sources lock")
            .get(name)
            .cloned()
    }

    fn source_names(&self) -> Vec<String> {
        self.sources
            .read()
            .expect("sources lock")
            .keys()
            .cloned()
            .collect()
    }

    /// A scheduler tick (or the start-up run) for one source: starts a run unless one is going.
    fn tick(self: &Arc<Self>, name: &str) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let Some(configured) = self.configured(name) else {
            return;
        };
        let state = self.state(name);
        let Ok(slot) = state.slot.clone().try_lock_owned() else {
            tracing::info!(
                source = name,
                "the previous run is still going; this tick is skipped"
            );
            return;
        };
        let shared = self.clone();
        self.tracker.spawn(async move {
            shared.run_source(configured, state, slot).await;
        });
    }

    async fn run_source(
        &self,
        configured: Arc<Configured>,
        state: Arc<SourceState>,
        mut slot: OwnedMutexGuard<Slot>,
    ) {
        let name = configured.source.name();
        if self.shutdown.is_cancelled() {
            return;
        }
        if let Some(until) = slot.backoff_until {
            if Instant::now() < until {
                tracing::debug!(
                    source = name,
                    "backing off after a failure; this tick is skipped"
                );
                return;
            }
        }
        if !self.lead(name, &state, &mut slot).await {
            return;
        }
        let run = catch_up_until(
            self.store.as_ref(),
            &configured.source,
            Utc::now(),
            &self.shutdown,
            |_| {},
        );
        let result = tokio::select! {
            r = run => Some(r),
            () = self.abort.cancelled() => None,
        };
        match result {
            None => tracing::warn!(
                source = name,
                "the shutdown grace period is over: the window in flight was rolled back and \
                 will be read again at the next start"
            ),
            Some(Ok(reports)) => {
                state.metrics.run_finished(false);
                slot.backoff_until = None;
                if !reports.is_empty() {
                    tracing::info!(source = name, windows = reports.len(), "caught up");
                }
            }
            Some(Err(e)) => {
                state.metrics.run_finished(true);
                let failures = state.metrics.consecutive_failures().max(1) as u32;
                let max = self.config.read().expect("config lock").failure_backoff_max;
                let wait = FIRST_BACKOFF
                    .saturating_mul(1u32 << (failures - 1).min(16))
                    .min(max);
                slot.backoff_until = Some(Instant::now() + wait);
                tracing::error!(
                    source = name,
                    error = %error_chain(&e),
                    consecutive_failures = failures,
                    retry_in = %humantime::format_duration(wait),
                    "sync failed; the watermark stays where it was"
                );
                if matches!(e, SyncError::Store(StoreError::WatermarkMoved { .. })) {
                    // Another instance synced this source: whatever we believed, we do not
                    // lead it. Give the lead up; the next tick asks again.
                    if let Some(l) = slot.leadership.take() {
                        l.release().await;
                    }
                    self.set_leader(name, &state, false);
                }
            }
        }
        drop(slot);
        self.publish_status();
    }

    /// Makes sure this instance leads the source; `false` means stand by.
    async fn lead(&self, name: &str, state: &SourceState, slot: &mut Slot) -> bool {
        if let Some(l) = slot.leadership.as_mut() {
            if l.still_held().await {
                return true;
            }
            slot.leadership = None;
            tracing::warn!(
                source = name,
                "lost the lead (the connection holding it is gone); asking again"
            );
            self.set_leader(name, state, false);
        }
        match self.store.try_lead(name).await {
            Ok(Some(l)) => {
                slot.leadership = Some(l);
                self.set_leader(name, state, true);
                true
            }
            Ok(None) => {
                self.set_leader(name, state, false);
                tracing::debug!(source = name, "standing by: another instance leads");
                false
            }
            Err(e) => {
                tracing::warn!(source = name, error = %e, "could not ask for the lead");
                false
            }
        }
    }

    fn set_leader(&self, name: &str, state: &SourceState, leader: bool) {
        let was = state.leader.swap(leader, Ordering::SeqCst);
        state.metrics.set_leader(leader);
        if was != leader {
            if leader {
                *state.leader_since.lock().expect("leader lock") = Some(Utc::now());
                tracing::info!(
                    source = name,
                    role = "leader",
                    "this instance leads the source"
                );
            } else {
                tracing::info!(source = name, role = "standby", "this instance stands by");
            }
            self.publish_status();
        }
    }

    /// One line for `systemctl status`.
    fn status_line(&self) -> String {
        let names = self.source_names();
        let now = Utc::now().timestamp();
        let parts: Vec<String> = names
            .iter()
            .map(|name| {
                let state = self.state(name);
                if !state.leader.load(Ordering::SeqCst) {
                    return format!("{name} standby");
                }
                let failures = state.metrics.consecutive_failures();
                let last = state.metrics.last_success() as i64;
                let age = if last > 0 {
                    format!(
                        "last success {} ago",
                        humantime::format_duration(Duration::from_secs((now - last).max(0) as u64))
                    )
                } else {
                    "no success yet".to_owned()
                };
                if failures > 0 {
                    format!("{name} failing ({failures} in a row, {age})")
                } else {
                    format!("{name} ok ({age})")
                }
            })
            .collect();
        format!("{} source(s): {}", names.len(), parts.join("; "))
    }

    fn publish_status(&self) {
        let line = self.status_line();
        self.notifier
            .notify(&[sd_notify::NotifyState::Status(&line)]);
    }

    /// `/readyz`: the database answers, and every source this instance leads committed a window
    /// within `metrics.ready_max_age`.
    async fn readiness(&self) -> (bool, serde_json::Value) {
        let db = match tokio::time::timeout(PING_TIMEOUT, self.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(PING_TIMEOUT)
            )),
        };
        let max_age = self.config.read().expect("config lock").ready_max_age;
        let now = Utc::now();
        let names = self.source_names();
        let mut ready = db.is_ok();
        let mut sources = Vec::new();
        for name in names {
            let state = self.state(&name);
            let leader = state.leader.load(Ordering::SeqCst);
            let last = state.metrics.last_success();
            let last_success = (last > 0.0)
                .then(|| DateTime::from_timestamp(last as i64, 0))
                .flatten();
            let since = *state.leader_since.lock().expect("leader lock");
            // Counted from start-up or from taking the lead: a fresh leader has had no chance.
            let reference = [last_success, since, Some(self.started_at)]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(self.started_at);
            let age = (now - reference).to_std().unwrap_or_default();
            let ok = !leader || age <= max_age;
            ready &= ok;
            sources.push(serde_json::json!({
                "source": name,
                "role": if leader { "leader" } else { "standby" },
                "last_success": last_success.map(|t| t.to_rfc3339()),
                "consecutive_failures": state.metrics.consecutive_failures(),
                "ready": ok,
                "reason": (!ok).then(|| format!(
                    "no window committed for {} (bound {})",
                    humantime::format_duration(Duration::from_secs(age.as_secs())),
                    humantime::format_duration(max_age)
                )),
            }));
        }
        let body = serde_json::json!({
            "ready": ready,
            "database": match &db { Ok(()) => "ok".to_owned(), Err(e) => e.clone() },
            "sources": sources,
        });
        (ready, body)
    }
}

/// The cause chain of an error in one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
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
    let job = Job::new_async_tz(schedule, tz, move |_, _| {
        shared.tick(&name);
        Box::pin(async {})
    })?;
    scheduler.add(job).await
}

/// Schedules the configured sources, replacing whatever was scheduled before.
async fn install_sources(
    shared: &Arc<Shared>,
    scheduler: &JobScheduler,
    loaded: Loaded,
) -> Result<Vec<String>, DaemonError> {
    let Loaded { settings, sources } = loaded;
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
        source.client.set_metrics(state.metrics.clone());
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
            shared.tracker.spawn(async move {
                let mut slot = state.slot.lock().await;
                if let Some(l) = slot.leadership.take() {
                    l.release().await;
                }
                state.leader.store(false, Ordering::SeqCst);
                state.metrics.set_leader(false);
            });
        }
    }
    let names = installed.keys().cloned().collect();
    *shared.sources.write().expect("sources lock") = installed;
    *shared.config.write().expect("config lock") = settings.daemon()?;
    Ok(names)
}

/// Re-creates the jobs of sources whose zone changed its UTC offset since they were scheduled.
async fn follow_offsets(shared: &Arc<Shared>, scheduler: &JobScheduler) {
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

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

async fn metrics_handler(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(Utc::now()),
    )
        .into_response()
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    let body = serde_json::json!({
        "status": "alive",
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": shared.started_at.to_rfc3339(),
        "uptime_seconds": (Utc::now() - shared.started_at).num_seconds(),
    });
    axum::Json(body).into_response()
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let (ready, body) = shared.readiness().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Runs the daemon until `world.shutdown` is cancelled; returns once windows in flight have
/// committed or been rolled back and leadership is released.
///
/// # Errors
/// A configuration that cannot be used, a database that does not answer at start-up, or a
/// scheduler that cannot start. Failures of individual syncs are not errors of the daemon: they
/// are logged, counted and retried.
pub async fn run(store: Arc<dyn Store>, loaded: Loaded, world: World) -> Result<(), DaemonError> {
    let World {
        listener,
        shutdown,
        mut reload,
        loader,
        notifier,
        metrics,
        watchdog,
    } = world;
    if loaded.sources.is_empty() {
        return Err(DaemonError::NoSources);
    }
    let config = loaded.settings.daemon()?;
    // The first health check: READY=1 only once the (migrated) database answers.
    store.ping().await?;
    let shared = Arc::new(Shared {
        store: store.clone(),
        metrics,
        config: RwLock::new(config.clone()),
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
    });

    let mut scheduler = JobScheduler::new().await?;
    let names = install_sources(&shared, &scheduler, loaded).await?;
    // Freshness survives a restart: the watermark row says when the last window committed.
    for name in &names {
        let state = shared.state(name);
        if let Some(wm) = store.watermark(name).await? {
            state.metrics.watermark(wm.utc);
            state.metrics.restore_last_success(wm.updated_at);
        }
    }
    {
        let shared = shared.clone();
        scheduler
            .add(Job::new_async(HEARTBEAT_SCHEDULE, move |_, _| {
                shared
                    .heartbeat
                    .store(Utc::now().timestamp_millis(), Ordering::SeqCst);
                Box::pin(async {})
            })?)
            .await?;
    }
    scheduler.start().await?;

    let server_stop = CancellationToken::new();
    let server = listener.map(|listener| {
        let app = router(shared.clone());
        let stop = server_stop.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
            {
                tracing::error!(error = %e, "the metrics listener failed");
            }
        })
    });

    tracing::info!(
        sources = %names.join(", "),
        version = env!("CARGO_PKG_VERSION"),
        "nprov-sync is running"
    );
    notifier.notify(&[sd_notify::NotifyState::Ready]);
    shared.publish_status();

    let maintenance = {
        let shared = shared.clone();
        let scheduler = scheduler.clone();
        let stop = server_stop.clone();
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
                    let age =
                        Utc::now().timestamp_millis() - shared.heartbeat.load(Ordering::SeqCst);
                    if age >= 0 && (age as u128) < limit.as_millis() {
                        shared.notifier.notify(&[sd_notify::NotifyState::Watchdog]);
                    } else {
                        tracing::error!(
                            heartbeat_age_ms = age,
                            "the scheduler has stopped ticking; withholding the watchdog ping"
                        );
                    }
                }
                follow_offsets(&shared, &scheduler).await;
            }
        })
    };

    // A first run of every source now, rather than at its first tick minutes away.
    for name in &names {
        shared.tick(name);
    }

    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(()) = reload.recv() => {
                match loader() {
                    Err(e) => tracing::error!(error = %e, "the configuration was not reloaded; the running one stays"),
                    Ok(next) => {
                        if next.settings.database.url != shared.database_url {
                            tracing::warn!("database.url changed: takes effect at the next restart");
                        }
                        if next.settings.metrics.listen != shared.metrics_listen {
                            tracing::warn!("metrics.listen changed: takes effect at the next restart");
                        }
                        match install_sources(&shared, &scheduler, next).await {
                            Ok(names) => {
                                tracing::info!(sources = %names.join(", "), "configuration reloaded");
                                for name in &names {
                                    shared.tick(name);
                                }
                                shared.publish_status();
                            }
                            Err(e) => tracing::error!(error = %e, "reloading the configuration failed"),
                        }
                    }
                }
            }
        }
    }

    notifier.notify(&[
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
    let states: Vec<(String, Arc<SourceState>)> = shared
        .states
        .lock()
        .expect("states lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (name, state) in states {
        if let Ok(mut slot) = state.slot.clone().try_lock_owned() {
            if let Some(l) = slot.leadership.take() {
                l.release().await;
                tracing::info!(source = %name, "released the lead");
            }
        }
        state.metrics.set_leader(false);
    }
    server_stop.cancel();
    maintenance.await.ok();
    if let Some(server) = server {
        server.await.ok();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Turns SIGTERM/SIGINT into `shutdown` and SIGHUP into reload messages, until shutdown.
///
/// # Errors
/// When the signal handlers cannot be installed.
#[cfg(unix)]
pub fn spawn_signal_handlers(
    shutdown: CancellationToken,
    reload: mpsc::Sender<()>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM received"); shutdown.cancel(); return; }
                _ = int.recv() => { tracing::info!("SIGINT received"); shutdown.cancel(); return; }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP received: reloading the configuration");
                    if reload.send(()).await.is_err() { return; }
                }
                () = shutdown.cancelled() => return,
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_checked_in_the_form_the_daemon_reads() {
        let tz = chrono_tz::Europe::Stockholm;
        assert!(check_schedule("0 */5 * * * *", tz).is_ok());
        assert!(check_schedule("*/1 * * * * *", tz).is_ok());
        // Five fields (no seconds) is the classic crontab form: refused with the expected form.
        let e = check_schedule("*/5 * * * *", tz).expect_err("no seconds");
        assert!(e.contains("with seconds"), "{e}");
        assert!(check_schedule("every five minutes", tz).is_err());
    }

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

    #[test]
    fn an_error_chain_is_one_line_without_repeats() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: inner broke")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("inner broke")]
        struct Inner;
        assert_eq!(error_chain(&Outer(Inner)), "outer: inner broke");
    }
}

//! The daemon's state shared by its jobs, its HTTP endpoints and its main loop, and what a
//! scheduler tick does with it: start a run unless one is going, lead the source or stand by,
//! catch up, back off after a failure.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex as StdMutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::jobs::Configured;
use super::notify::Notifier;
use super::state::{self, Readiness, Slot, SourceSnapshot, SourceState};
use crate::config::DaemonConfig;
use crate::metrics::Metrics;
use crate::store::{RunOutcome, Store, StoreError};
use crate::sync::{catch_up_until, next_step, Next, SyncError};

/// A database that does not answer a readiness ping in this time is not ready.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) struct Shared {
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
    pub config: RwLock<DaemonConfig>,
    pub database_url: String,
    pub metrics_listen: String,
    pub sources: RwLock<BTreeMap<String, Arc<Configured>>>,
    pub states: StdMutex<HashMap<String, Arc<SourceState>>>,
    pub tracker: TaskTracker,
    /// Cancelled when shutdown begins: no new runs, no new windows.
    pub shutdown: CancellationToken,
    /// Cancelled when the grace period is over: windows in flight are dropped (rolled back).
    pub abort: CancellationToken,
    /// Unix milliseconds of the scheduler heartbeat's last tick.
    pub heartbeat: AtomicI64,
    pub started_at: DateTime<Utc>,
    pub notifier: Arc<dyn Notifier>,
    pub provisioning: super::provisioning::Provisioning,
}

impl Shared {
    /// A source's state, made on first use; it outlives reloads.
    pub(super) fn state(&self, name: &str) -> Arc<SourceState> {
        let mut states = self.states.lock().expect("states lock");
        states
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(SourceState::new(
                    self.metrics.source(name, &crate::sync::KNOWN_LABELS),
                ))
            })
            .clone()
    }

    /// Forgets a source that left the configuration once its last run is over: its series leave
    /// the metrics, and its state goes, so that if it comes back it starts afresh with handles
    /// in the registry. Nothing is forgotten if a later reload has configured it again.
    pub(super) fn forget_source(&self, name: &str) {
        if self.configured(name).is_some() {
            return;
        }
        self.states.lock().expect("states lock").remove(name);
        self.metrics.remove_source(name);
        tracing::info!(source = name, "its metrics are removed");
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

    /// The configured sources as readiness and the status line see them.
    fn snapshots(&self) -> Vec<SourceSnapshot> {
        self.source_names()
            .iter()
            .map(|name| self.state(name).snapshot(name))
            .collect()
    }

    /// A scheduler tick (or the start-up run) for one source: starts a run unless one is going.
    pub(super) fn tick(self: &Arc<Self>, name: &str) {
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
                state.metrics.run_finished(RunOutcome::Ok);
                slot.backoff_until = None;
                if !reports.is_empty() {
                    tracing::info!(source = name, windows = reports.len(), "caught up");
                }
            }
            Some(Err(e)) => {
                state.metrics.run_finished(RunOutcome::Failed);
                let failures = state
                    .metrics
                    .consecutive_failures()
                    .clamp(1, i64::from(u32::MAX));
                let max = self.config.read().expect("config lock").failure_backoff_max;
                let wait = state::backoff(failures as u32, max);
                slot.backoff_until = Some(Instant::now() + wait);
                let error = crate::error::chain(&e);
                let retry_in = humantime::format_duration(wait);
                match next_step(&e) {
                    // Trying again will not help until someone fixes something: said loudly.
                    Next::Fail => tracing::error!(
                        source = name,
                        error = %error,
                        consecutive_failures = failures,
                        %retry_in,
                        "sync failed; the watermark stays where it was (this needs a fix: \
                         configuration, credentials, the platform's data or the database)"
                    ),
                    // Busy, restarting, unreachable, or a body that kept breaking: the back-off
                    // is the remedy.
                    Next::RetryLater | Next::RetryBody | Next::Split => tracing::warn!(
                        source = name,
                        error = %error,
                        consecutive_failures = failures,
                        %retry_in,
                        "sync failed; the watermark stays where it was (tried again after the \
                         back-off)"
                    ),
                }
                if matches!(e, SyncError::Store(StoreError::WatermarkMoved { .. })) {
                    // Another instance synced this source: whatever we believed, we do not
                    // lead it. Give the lead up; the next tick asks again.
                    let changed = state.release(&mut slot).await;
                    self.announce(name, &state, changed);
                }
            }
        }
        drop(slot);
        self.publish_status();
    }

    /// Makes sure this instance leads the source; `false` means stand by.
    async fn lead(&self, name: &str, state: &SourceState, slot: &mut Slot) -> bool {
        if let Some(l) = state.handle(slot) {
            if l.still_held().await {
                return true;
            }
            tracing::warn!(
                source = name,
                "lost the lead (the connection holding it is gone); asking again"
            );
            let changed = state.stand_by(slot);
            self.announce(name, state, changed);
        }
        match self.store.try_lead(name).await {
            Ok(Some(l)) => {
                let changed = state.hold(slot, l);
                self.announce(name, state, changed);
                true
            }
            Ok(None) => {
                let changed = state.stand_by(slot);
                self.announce(name, state, changed);
                tracing::debug!(source = name, "standing by: another instance leads");
                false
            }
            Err(e) => {
                tracing::warn!(source = name, error = %e, "could not ask for the lead");
                false
            }
        }
    }

    /// Logs a change of role and updates systemd's status line; nothing when it did not change.
    pub(super) fn announce(&self, name: &str, state: &SourceState, changed: bool) {
        if !changed {
            return;
        }
        if state.role().leader {
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

    pub(super) fn publish_status(&self) {
        let line = state::status_line(&self.snapshots(), Utc::now());
        self.notifier
            .notify(&[sd_notify::NotifyState::Status(&line)]);
    }

    /// `/readyz`: the database answers, and every source this instance leads committed a window
    /// within `metrics.ready_max_age`.
    pub(super) async fn readiness(&self) -> Readiness {
        let database = match tokio::time::timeout(PING_TIMEOUT, self.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(PING_TIMEOUT)
            )),
        };
        let max_age = self.config.read().expect("config lock").ready_max_age;
        let now = Utc::now();
        let mut readiness =
            state::readiness(&database, &self.snapshots(), now, self.started_at, max_age);
        let (ready, provisioning) = self.provisioning_readiness(now);
        readiness.ready &= ready;
        readiness.body["ready"] = serde_json::json!(readiness.ready);
        readiness.body["provisioning"] = serde_json::json!(provisioning);
        readiness
    }
}

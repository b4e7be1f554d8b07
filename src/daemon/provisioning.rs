//! The daemon's provisioning sources: one scheduler job each, a pass per tick unless one is
//! going, the lead taken for the pass (several instances on one PostgreSQL database pass a
//! source once), metrics after every pass, and the readiness rule: a provisioning source this
//! instance passes is ready while its last complete pass (or, before the first, the start) is
//! younger than three schedules, the rule the alert follows too.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_cron_scheduler::JobScheduler;
use uuid::Uuid;

use super::shared::Shared;
use super::DaemonError;
use crate::metrics::ProvMetrics;
use crate::provisioning::pass::PassOutcome;
use crate::provisioning::ProvSource;

/// How many schedules may pass without a complete pass before the source is not ready.
pub const READY_SCHEDULES: u32 = 3;

/// A provisioning source as currently configured.
pub(super) struct ProvConfigured {
    pub source: Arc<ProvSource>,
    pub job: Uuid,
    /// Between two passes of its schedule.
    pub interval: Duration,
}

/// What outlives reloads: the pass guard, the metrics, the last complete pass.
pub(super) struct ProvState {
    pub running: Arc<tokio::sync::Mutex<()>>,
    pub metrics: ProvMetrics,
    pub last_complete: StdMutex<Option<DateTime<Utc>>>,
}

/// Provisioning sources and their states, beside the results sources'.
#[derive(Default)]
pub(super) struct Provisioning {
    pub configured: std::sync::RwLock<BTreeMap<String, Arc<ProvConfigured>>>,
    pub states: StdMutex<HashMap<String, Arc<ProvState>>>,
}

impl Shared {
    fn prov_state(&self, name: &str) -> Arc<ProvState> {
        let mut states = self.provisioning.states.lock().expect("states lock");
        states
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(ProvState {
                    running: Arc::new(tokio::sync::Mutex::new(())),
                    metrics: self.metrics.provisioning(
                        name,
                        &crate::provisioning::Kind::ALL.map(|k| k.as_str()),
                        &crate::provisioning::client::STATUS_LABELS,
                    ),
                    last_complete: StdMutex::new(None),
                })
            })
            .clone()
    }

    /// A scheduler tick (or the start-up pass) of one provisioning source.
    pub(super) fn tick_provisioning(self: &Arc<Self>, name: &str) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let Some(configured) = self
            .provisioning
            .configured
            .read()
            .expect("provisioning lock")
            .get(name)
            .cloned()
        else {
            return;
        };
        let state = self.prov_state(name);
        let Ok(guard) = state.running.clone().try_lock_owned() else {
            tracing::info!(
                source = name,
                "the previous provisioning pass is still going; this tick is skipped"
            );
            return;
        };
        let shared = self.clone();
        self.tracker.spawn(async move {
            shared.pass(configured, state).await;
            drop(guard);
        });
    }

    async fn pass(&self, configured: Arc<ProvConfigured>, state: Arc<ProvState>) {
        let source = &configured.source;
        let name = source.name();
        let lead = match self.store.try_lead(name).await {
            Ok(Some(lead)) => lead,
            Ok(None) => {
                tracing::debug!(
                    source = name,
                    "another instance passes this provisioning source"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(source = name, error = %crate::error::chain(&e), "could not take the provisioning source's lead");
                return;
            }
        };
        let report = tokio::select! {
            report = source.pass(self.store.as_ref()) => report,
            () = self.shutdown.cancelled() => {
                // The pages written so far are committed and true; nothing is removed.
                tracing::info!(source = name, "a provisioning pass was stopped by the shutdown");
                lead.release().await;
                return;
            }
        };
        lead.release().await;
        match report {
            Ok(report) => {
                report.record(&state.metrics, &source.api.counters);
                match report.outcome {
                    PassOutcome::Complete => {
                        *state.last_complete.lock().expect("state lock") = Some(report.finished_at);
                        tracing::info!(source = name, "{}", report.summary(name));
                    }
                    PassOutcome::Refused => {
                        tracing::error!(source = name, "{}", report.summary(name));
                    }
                    PassOutcome::Failed => {
                        tracing::warn!(
                            source = name,
                            error = report.error.as_deref().unwrap_or(""),
                            "a provisioning pass failed; nothing was removed, the next tick starts over"
                        );
                    }
                }
            }
            Err(e) => {
                tracing::error!(source = name, error = %crate::error::chain(&e), "a provisioning pass could not be recorded");
            }
        }
    }

    /// Readiness of the provisioning sources: (ready, one entry each).
    pub(super) fn provisioning_readiness(
        &self,
        now: DateTime<Utc>,
    ) -> (bool, Vec<serde_json::Value>) {
        let configured: Vec<Arc<ProvConfigured>> = self
            .provisioning
            .configured
            .read()
            .expect("provisioning lock")
            .values()
            .cloned()
            .collect();
        let mut ready = true;
        let mut out = Vec::new();
        for c in configured {
            let name = c.source.name();
            let last = *self
                .prov_state(name)
                .last_complete
                .lock()
                .expect("state lock");
            // As for the results sources: a fresh start has had no chance yet.
            let reference = last.map_or(self.started_at, |l| l.max(self.started_at));
            let age = (now - reference).to_std().unwrap_or_default();
            let bound = c.interval * READY_SCHEDULES;
            let reason = (age > bound).then(|| {
                format!(
                    "no complete provisioning pass for {} (bound: {READY_SCHEDULES} schedules, {})",
                    humantime::format_duration(Duration::from_secs(age.as_secs())),
                    humantime::format_duration(bound)
                )
            });
            ready &= reason.is_none();
            out.push(serde_json::json!({
                "source": name,
                "last_complete": last.map(|t| t.to_rfc3339()),
                "ready": reason.is_none(),
                "reason": reason,
            }));
        }
        (ready, out)
    }
}

/// Schedules the configured provisioning sources, replacing what was scheduled before; their
/// names.
pub(super) async fn install(
    shared: &Arc<Shared>,
    scheduler: &JobScheduler,
    sources: Vec<ProvSource>,
) -> Result<Vec<String>, DaemonError> {
    let old: Vec<Arc<ProvConfigured>> = {
        let mut c = shared
            .provisioning
            .configured
            .write()
            .expect("provisioning lock");
        std::mem::take(&mut *c).into_values().collect()
    };
    for c in &old {
        scheduler.remove(&c.job).await?;
    }
    let mut installed = BTreeMap::new();
    for source in sources {
        let name = source.name().to_owned();
        let tick = {
            let shared = shared.clone();
            let name = name.clone();
            move || shared.tick_provisioning(&name)
        };
        let job = scheduler
            .add(crate::schedule::job(
                &source.schedule,
                source.timezone,
                tick,
            )?)
            .await?;
        let interval = crate::schedule::interval(&source.schedule, source.timezone, Utc::now())
            .unwrap_or(Duration::from_secs(3600));
        let state = shared.prov_state(&name);
        state.metrics.schedule(interval);
        // Freshness survives a restart: the last complete pass is in the database.
        if state.last_complete.lock().expect("state lock").is_none() {
            match last_complete(shared, &name).await {
                Ok(Some(at)) => {
                    *state.last_complete.lock().expect("state lock") = Some(at);
                    state.metrics.last_complete(at);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(source = %name, error = %crate::error::chain(&e), "could not read the last complete provisioning pass")
                }
            }
        }
        installed.insert(
            name,
            Arc::new(ProvConfigured {
                source: Arc::new(source),
                job,
                interval,
            }),
        );
    }
    for c in old {
        let name = c.source.name().to_owned();
        if !installed.contains_key(&name) {
            tracing::info!(source = %name, "provisioning source removed from the configuration");
            shared
                .provisioning
                .states
                .lock()
                .expect("states lock")
                .remove(&name);
            shared.metrics.remove_provisioning(&name);
        }
    }
    let names = installed.keys().cloned().collect();
    *shared
        .provisioning
        .configured
        .write()
        .expect("provisioning lock") = installed;
    Ok(names)
}

async fn last_complete(
    shared: &Shared,
    name: &str,
) -> Result<Option<DateTime<Utc>>, crate::store::StoreError> {
    crate::provisioning::store::last_complete(&*shared.store, name).await
}

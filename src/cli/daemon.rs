//! `run`: the long-running service, with its listener, signals and reload wired up.

use std::path::PathBuf;
use std::sync::Arc;

use super::failure::Failure;
use super::setup::{build_sources, open_store, settings_from};
use crate::config::Settings;

pub(crate) async fn run_daemon(
    config: &Option<PathBuf>,
    database: Option<String>,
    settings: Settings,
) -> Result<(), Failure> {
    use crate::daemon::{self, Loaded, World};
    let daemon_config = settings.daemon().map_err(|e| Failure::Config(e.into()))?;
    let sources = build_sources(config, &settings, None)?;
    if sources.is_empty() {
        return Err(Failure::Config(anyhow::anyhow!(
            "no [[source]] is configured: see `nprov-sync config example`"
        )));
    }
    let store = open_store(&settings).await?;
    let listener = match daemon_config.metrics_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            Failure::Runtime(anyhow::Error::new(e).context(format!("metrics.listen {addr}")))
        })?),
        None => None,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (reload_tx, reload) = tokio::sync::mpsc::channel(4);
    daemon::spawn_signal_handlers(shutdown.clone(), reload_tx).map_err(|e| {
        Failure::Runtime(anyhow::Error::new(e).context("installing signal handlers"))
    })?;
    let config_path = config.clone();
    let loader: daemon::Loader = Box::new(move || {
        let settings = settings_from(config_path.as_deref(), database.as_deref())
            .map_err(|f| f.error().to_string())?;
        let sources =
            build_sources(&config_path, &settings, None).map_err(|f| f.error().to_string())?;
        Ok(Loaded { settings, sources })
    });
    let world = World {
        listener,
        shutdown,
        reload,
        loader,
        notifier: Arc::new(daemon::SystemdNotifier),
        metrics: crate::metrics::Metrics::new(),
        watchdog: sd_notify::watchdog_enabled(),
    };
    let result = daemon::run(store.clone(), Loaded { settings, sources }, world).await;
    store.close().await;
    result.map_err(|e| match e {
        daemon::DaemonError::Config(_) | daemon::DaemonError::NoSources => {
            Failure::Config(e.into())
        }
        other => Failure::Runtime(other.into()),
    })
}

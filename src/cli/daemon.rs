//! `run`: the long-running service, with its listener, signals and reload wired up.

use std::path::PathBuf;
use std::sync::Arc;

use super::failure::Failure;
use super::setup::{build_sources, settings_from};
use super::Invocation;
use crate::config::Settings;

#[derive(Debug, clap::Args)]
pub struct Run {}

impl Run {
    pub(super) async fn run(self, ctx: &Invocation<'_>) -> Result<(), Failure> {
        run_daemon(
            ctx.config,
            ctx.database.map(str::to_owned),
            ctx.settings.clone(),
        )
        .await
    }
}

async fn run_daemon(
    config: &Option<PathBuf>,
    database: Option<String>,
    settings: Settings,
) -> Result<(), Failure> {
    use crate::daemon::{self, Loaded, World};
    let daemon_config = settings.daemon().map_err(|e| Failure::Config(e.into()))?;
    let sources = build_sources(config, &settings, None)?;
    let provisioning = super::provisioning::build(config, &settings, None)?;
    if sources.is_empty() && provisioning.is_empty() {
        return Err(Failure::Config(anyhow::anyhow!(
            "no [[source]] or [[provisioning]] is configured: see `nprov-sync config example`"
        )));
    }
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
    // While the database does not answer, a second handle on the metrics socket serves the
    // "starting" answers; the daemon serves on the first one afterwards.
    let (listener, waiting) = match listener {
        Some(l) => {
            let (a, b) = share_listener(l).map_err(|e| {
                Failure::Runtime(anyhow::Error::new(e).context("sharing the metrics listener"))
            })?;
            (Some(a), Some(b))
        }
        None => (None, None),
    };
    let options = settings
        .database
        .connect_options()
        .map_err(|e| Failure::Config(e.into()))?;
    // Ready means migrated too: migrations (and the data contract written with them) need the
    // write lock, so a SQLite file another process has locked is waited for like a server that
    // does not answer yet.
    let store = daemon::wait_for_database(
        || async {
            let store = crate::store::connect(&settings.database.url, options).await?;
            let ready = async {
                store.ping().await?;
                if settings.database.migrate_on_start {
                    super::setup::migrate(store.as_ref(), &settings).await?;
                }
                Ok(())
            };
            match ready.await {
                Ok(()) => Ok(store),
                Err(e) => {
                    store.close().await;
                    Err(e)
                }
            }
        },
        daemon::Startup::of,
        waiting,
        daemon_config.startup_database_wait,
        &shutdown,
    )
    .await
    .map_err(Failure::from)?;
    let config_path = config.clone();
    let loader: daemon::Loader = Box::new(move || {
        let settings = settings_from(config_path.as_deref(), database.as_deref())
            .map_err(|f| f.error().to_string())?;
        let sources =
            build_sources(&config_path, &settings, None).map_err(|f| f.error().to_string())?;
        let provisioning = super::provisioning::build(&config_path, &settings, None)
            .map_err(|f| f.error().to_string())?;
        Ok(Loaded {
            settings,
            sources,
            provisioning,
        })
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
    let loaded = Loaded {
        settings,
        sources,
        provisioning,
    };
    let result = daemon::run(store.clone(), loaded, world).await;
    store.close().await;
    result.map_err(|e| match e {
        daemon::DaemonError::Config(_) | daemon::DaemonError::NoSources => {
            Failure::Config(e.into())
        }
        other => Failure::Runtime(other.into()),
    })
}

/// Two handles on one listening socket: connections go to whichever is accepting.
fn share_listener(
    listener: tokio::net::TcpListener,
) -> std::io::Result<(tokio::net::TcpListener, tokio::net::TcpListener)> {
    let std = listener.into_std()?;
    let second = std.try_clone()?;
    Ok((
        tokio::net::TcpListener::from_std(std)?,
        tokio::net::TcpListener::from_std(second)?,
    ))
}

//! SIGTERM and SIGINT stop the daemon, SIGHUP reloads its configuration.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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

//! systemd's notify protocol (READY, STATUS, WATCHDOG, STOPPING), behind a trait so tests
//! can listen in.

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

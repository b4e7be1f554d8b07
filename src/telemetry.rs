//! Logging setup. The writer is a parameter so tests (and commands whose stdout is data) can
//! direct or silence it; logs go to stderr by default, leaving stdout to command output.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Builds a subscriber writing to `writer`. `RUST_LOG`, when set, wins over `log.filter`.
pub fn subscriber<W>(
    settings: &LogSettings,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| EnvFilter::try_new(f).is_ok())
        .unwrap_or_else(|| settings.filter.clone());
    // The scheduler announces its internals at info level; keep them out of an operator's log
    // unless a filter asks for them by name.
    let directives = if directives.contains("tokio_cron_scheduler") {
        directives
    } else {
        format!("{directives},tokio_cron_scheduler=warn")
    };
    let filter = EnvFilter::new(directives);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    match settings.format {
        LogFormat::Pretty => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(builder.json().with_ansi(false).finish()),
    }
}

/// Installs the global subscriber on stderr; colours only when stderr is a terminal, so journald
/// gets plain lines.
pub fn init(settings: &LogSettings) {
    let ansi = std::io::stderr().is_terminal();
    // A second init (tests) keeps the first subscriber.
    let _ = tracing::subscriber::set_global_default(subscriber(settings, std::io::stderr, ansi));
}

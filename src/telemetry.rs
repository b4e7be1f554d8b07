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
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(&settings.filter));
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

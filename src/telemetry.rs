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

/// Whether log lines are coloured: only on a terminal (journald gets plain lines), and never when
/// `NO_COLOR` is set to anything but the empty string (<https://no-color.org>).
pub fn colours(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && !no_color.is_some_and(|v| !v.is_empty())
}

/// Installs the global subscriber on stderr, coloured as [`colours`] says.
pub fn init(settings: &LogSettings) {
    let ansi = colours(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    // A second init (tests) keeps the first subscriber.
    let _ = tracing::subscriber::set_global_default(subscriber(settings, std::io::stderr, ansi));
}

#[cfg(test)]
mod tests {
    use super::colours;
    use std::ffi::OsStr;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(colours(true, Some(OsStr::new(""))));
        assert!(!colours(true, Some(OsStr::new("1"))));
        assert!(!colours(false, None));
    }
}

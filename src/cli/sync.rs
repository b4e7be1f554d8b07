//! `sync --once` and `backfill`: the engine driven from the command line, with one line per
//! committed window and progress (a bar on a terminal, a log line otherwise).

use std::io::Write;
use std::path::PathBuf;

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::failure::{io_failure, Failure};
use super::setup::build_sources;
use super::{with_store, Invocation, Open};
use crate::store::{RunOutcome, Store};
use crate::sync::{SyncError, SyncSource, WindowReport};
use crate::window::{earliest_instant, latest_instant, parse_local};

fn sync_failure(source: &str, e: SyncError) -> Failure {
    let classify = |e: SyncError| match e {
        SyncError::Document { .. } => Failure::Data(e.into()),
        // A database newer than this build is the operator's to sort out (exit 2), like any
        // refusal of the store's.
        SyncError::Store(e) => Failure::from(e),
        SyncError::Source(_) | SyncError::Internal { .. } => Failure::Runtime(e.into()),
    };
    match classify(e) {
        Failure::Data(e) => Failure::Data(e.context(format!("source {source}"))),
        Failure::Runtime(e) => Failure::Runtime(e.context(format!(
            "source {source}: the window was not synced; the watermark stays where it was"
        ))),
        Failure::Config(e) => Failure::Config(e.context(format!("source {source}"))),
        Failure::NotReady(e) => Failure::NotReady(e),
    }
}

/// How far a long run has got: a bar on a terminal, a log line every few seconds otherwise.
enum Progress {
    Bar(indicatif::ProgressBar),
    Log { last: Instant, started: Instant },
}

/// A progress bar over `total` minutes of windows, when standard error is a terminal.
pub(crate) fn progress_bar(prefix: &str, total: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {percent:>3}% up to {msg} ({elapsed}, about {eta} left)",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_owned());
    Some(bar)
}

/// How often progress is logged when no terminal shows a bar.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Prints one line per committed window from inside the engine's callback, which cannot fail:
/// the first write error is kept and reported after the engine returns.
struct Printer<'a> {
    out: &'a mut dyn Write,
    source: &'a str,
    failed: Option<Failure>,
    /// The span the run covers, for progress, and its length in minutes.
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    total: u64,
    progress: Progress,
    /// Windows committed and their response bytes, so far.
    windows: u64,
    bytes: u64,
}

impl<'a> Printer<'a> {
    fn new(
        out: &'a mut dyn Write,
        source: &'a str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Self {
        let total = (to - from).num_minutes().max(1) as u64;
        let progress = match progress_bar(source, total) {
            Some(bar) => Progress::Bar(bar),
            None => Progress::Log {
                last: Instant::now(),
                started: Instant::now(),
            },
        };
        Printer {
            out,
            source,
            failed: None,
            from,
            to,
            total,
            progress,
            windows: 0,
            bytes: 0,
        }
    }

    fn window(&mut self, r: &WindowReport) {
        if self.failed.is_none() {
            self.failed = match &self.progress {
                // Hide the bar while the line is written, so the two do not interleave.
                Progress::Bar(bar) => bar.suspend(|| line(self.out, self.source, r)).err(),
                Progress::Log { .. } => line(self.out, self.source, r).err(),
            };
        }
        self.windows += 1;
        self.bytes += r.bytes;
        let total = self.total;
        let done = (r.window.tom_utc.min(self.to) - self.from)
            .num_minutes()
            .max(0) as u64;
        let at = r.window.tom_param();
        match &mut self.progress {
            Progress::Bar(bar) => {
                bar.set_position(done.min(total));
                bar.set_message(format!(
                    "{at}, {} windows, {:.1} MB",
                    self.windows,
                    self.bytes as f64 / 1e6
                ));
            }
            Progress::Log { last, started } => {
                if last.elapsed() >= PROGRESS_EVERY {
                    *last = Instant::now();
                    let elapsed = started.elapsed().as_secs_f64();
                    // The rest of the span at the pace of the part done, as the terminal's bar
                    // estimates it: a school year is uneven, so this is a guide, not a promise.
                    let left = (done > 0)
                        .then(|| elapsed * (total.saturating_sub(done)) as f64 / done as f64);
                    tracing::info!(
                        source = self.source,
                        up_to = %at,
                        percent = (100 * done.min(total) / total),
                        windows = self.windows,
                        bytes = self.bytes,
                        elapsed_seconds = elapsed as u64,
                        eta_seconds = left.map(|l| l as u64),
                        "catching up"
                    );
                }
            }
        }
    }

    fn finish(self) -> Result<(), Failure> {
        if let Progress::Bar(bar) = &self.progress {
            bar.finish_and_clear();
        }
        self.failed.map_or(Ok(()), Err)
    }
}

fn line(out: &mut dyn Write, source: &str, r: &WindowReport) -> Result<(), Failure> {
    let s = &r.summary;
    writeln!(
        out,
        "{source} {}: HTTP {} ({} attempt{}), {}, {} bytes, {} records → {} changed, {} unchanged, {} cleared, {} quarantined ({:.2} s)",
        r.window.label(),
        r.http_status,
        r.attempts,
        if r.attempts == 1 { "" } else { "s" },
        r.version,
        r.bytes,
        s.records,
        s.changed,
        s.unchanged,
        s.cleared,
        s.quarantined,
        r.seconds
    )
    .map_err(io_failure)
}

#[derive(Debug, clap::Args)]
pub struct SyncOnce {
    /// Catch up and exit (`nprov-sync run` is the long-running service).
    #[arg(long, required = true)]
    once: bool,
    /// Stop at this local time (yyyy-MM-ddTHH:mm) instead of now.
    #[arg(long, value_name = "LOCAL_TIME")]
    until: Option<String>,
    /// Only this source (a [[source]] or a [[provisioning]]).
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
    /// Also write the run's metrics to this file, in the text format node_exporter's
    /// textfile collector reads (written beside it, then renamed into place), so a run
    /// from a timer is monitored like the daemon.
    #[arg(long, value_name = "PATH")]
    textfile: Option<PathBuf>,
}

impl SyncOnce {
    pub(super) async fn run(
        self,
        ctx: &Invocation<'_>,
        out: &mut dyn Write,
    ) -> Result<(), Failure> {
        // The sources first: a configuration error is reported before the database is touched.
        // `--source` names either kind.
        let only = self.source.as_deref();
        let provisioning_named =
            only.is_some_and(|n| ctx.settings.provisioning.iter().any(|p| p.name == n));
        let sources = if provisioning_named {
            Vec::new()
        } else {
            build_sources(ctx.config, ctx.settings, only)?
        };
        let provisioning = if only.is_some() && !provisioning_named {
            Vec::new()
        } else {
            super::provisioning::build(ctx.config, ctx.settings, only)?
        };
        if sources.is_empty() && provisioning.is_empty() {
            return Err(Failure::Config(anyhow::anyhow!(
                "no [[source]] or [[provisioning]] is configured: see `nprov-sync config example`"
            )));
        }
        let until = self.until.as_deref();
        // One registry for the run's textfile: the results sources' and the provisioning ones'.
        let metrics = self
            .textfile
            .as_ref()
            .map(|_| crate::metrics::Metrics::for_textfile());
        with_store(ctx.settings, Open::Migrated, async |store| {
            let results = match (sources.is_empty(), &metrics) {
                (true, _) => Ok(()),
                (false, None) => sync_once(store, &sources, until, out).await,
                (false, Some(metrics)) => {
                    sync_once_to_textfile(store, sources, until, metrics, out).await
                }
            };
            // The provisioning passes run whatever the results sources did: they are another
            // system's mirror.
            let passes =
                super::provisioning::pass_all(store, &provisioning, metrics.as_ref(), out).await;
            let written = match (&self.textfile, &metrics) {
                (Some(path), Some(metrics)) => write_textfile(path, &metrics.render(Utc::now())),
                (Some(_), None) | (None, Some(_)) | (None, None) => Ok(()),
            };
            // The run's own failure comes first; a file that could not be written is the
            // failure otherwise.
            results.and(passes).and(written)
        })
        .await
    }
}

#[derive(Debug, clap::Args)]
pub struct Backfill {
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
    /// Local time (yyyy-MM-ddTHH:mm) of the first minute.
    #[arg(long, value_name = "LOCAL_TIME")]
    from: String,
    /// Local time of the last minute.
    #[arg(long, value_name = "LOCAL_TIME")]
    to: String,
}

impl Backfill {
    pub(super) async fn run(
        self,
        ctx: &Invocation<'_>,
        out: &mut dyn Write,
    ) -> Result<(), Failure> {
        let sources = build_sources(ctx.config, ctx.settings, self.source.as_deref())?;
        let [src] = sources.as_slice() else {
            return Err(Failure::Config(anyhow::anyhow!(
                "backfill reads one source: name it with --source (configured: {})",
                sources
                    .iter()
                    .map(|s| s.name().to_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        with_store(ctx.settings, Open::Migrated, async |store| {
            backfill(store, src, &self.from, &self.to, out).await
        })
        .await
    }
}

/// `sync --once`: every source caught up to now (or `until`, local time), one after another.
async fn sync_once(
    store: &dyn Store,
    sources: &[SyncSource],
    until: Option<&str>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    if sources.is_empty() {
        return Err(Failure::Config(anyhow::anyhow!(
            "no [[source]] is configured: see `nprov-sync config example`"
        )));
    }
    for src in sources {
        // With --until, plan as if it were that time: the last window ends at `until`.
        let horizon = match until {
            None => Utc::now(),
            Some(t) => {
                let local =
                    parse_local(t).map_err(|e| Failure::Config(anyhow::anyhow!("--until: {e}")))?;
                // The planner ends windows at now − lag and never in now's minute.
                latest_instant(src.plan.tz, local)
                    + src.plan.safety_lag.max(chrono::Duration::minutes(1))
            }
        };
        let from = store
            .watermark(src.name())
            .await
            .map_err(|e| Failure::Runtime(e.into()))?
            .map(|w| w.utc)
            .unwrap_or_else(|| earliest_instant(src.plan.tz, src.start));
        let mut printer = Printer::new(out, src.name(), from, horizon);
        let result = crate::sync::catch_up(store, src, horizon, |r| printer.window(r)).await;
        printer.finish()?;
        let reports = result.map_err(|e| sync_failure(src.name(), e))?;
        let wm = store
            .watermark(src.name())
            .await
            .map_err(|e| Failure::Runtime(e.into()))?;
        writeln!(
            out,
            "{}: {} windows synced; watermark {}",
            src.name(),
            reports.len(),
            wm.map(|w| w.local.format("%Y-%m-%dT%H:%M").to_string())
                .unwrap_or_else(|| "not set (nothing to sync yet)".into())
        )
        .map_err(io_failure)?;
    }
    Ok(())
}

/// `sync --once --textfile PATH`: as [`sync_once`], source by source into `metrics`, whose
/// families the caller then writes to `path` for node_exporter, also when a source failed (that
/// is what the file is for). Each source the run syncs shows as led by this run.
async fn sync_once_to_textfile(
    store: &dyn Store,
    mut sources: Vec<SyncSource>,
    until: Option<&str>,
    metrics: &crate::metrics::Metrics,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    for src in &mut sources {
        src.metrics = metrics
            .source(src.name(), &crate::sync::KNOWN_LABELS)
            .quiet();
        src.metrics
            .certificate_expiry(src.certificates.client, src.certificates.ca);
        // Freshness survives between runs: the watermark row says when the last window
        // committed.
        if let Some(wm) = store
            .watermark(src.name())
            .await
            .map_err(|e| Failure::Runtime(e.into()))?
        {
            src.metrics.restore(&wm);
        }
    }
    if sources.is_empty() {
        // Its error: nothing is configured, and there is nothing to write.
        return sync_once(store, &sources, until, out).await;
    }
    let mut result = Ok(());
    for src in &sources {
        result = sync_once(store, std::slice::from_ref(src), until, out).await;
        src.metrics.set_leader(true);
        src.metrics.run_finished(match result {
            Ok(()) => RunOutcome::Ok,
            Err(_) => RunOutcome::Failed,
        });
        if result.is_err() {
            break;
        }
    }
    result
}

/// Writes `text` to `path` whole or not at all: into a temporary file in the same directory,
/// flushed, readable by others (node_exporter runs as its own user), then renamed over `path`.
fn write_textfile(path: &std::path::Path, text: &str) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |e: std::io::Error| {
        Failure::Runtime(anyhow::Error::new(e).context(format!("--textfile {}", path.display())))
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".nprov-sync-")
        .suffix(".prom.tmp")
        .tempfile_in(dir)
        .map_err(failed)?;
    tmp.write_all(text.as_bytes()).map_err(failed)?;
    tmp.as_file().sync_all().map_err(failed)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(failed)?;
    tmp.persist(path).map_err(|e| failed(e.error))?;
    Ok(())
}

/// `backfill`: a historic range re-read; the watermark does not move.
async fn backfill(
    store: &dyn Store,
    src: &SyncSource,
    from: &str,
    to: &str,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let from = parse_local(from).map_err(|e| Failure::Config(anyhow::anyhow!("--from: {e}")))?;
    let to = parse_local(to).map_err(|e| Failure::Config(anyhow::anyhow!("--to: {e}")))?;
    if to < from {
        return Err(Failure::Config(anyhow::anyhow!("--to is before --from")));
    }
    let mut printer = Printer::new(
        out,
        src.name(),
        earliest_instant(src.plan.tz, from),
        latest_instant(src.plan.tz, to),
    );
    let result = crate::sync::backfill(store, src, from, to, |r| printer.window(r)).await;
    printer.finish()?;
    let reports = result.map_err(|e| sync_failure(src.name(), e))?;
    writeln!(out, "{}: backfilled {} windows", src.name(), reports.len()).map_err(io_failure)
}

//! `provisioning sync|accept-removals|hash-civic-no`: the provisioning mirror's passes and its
//! operator's two decisions. `sync --once` and `run` pass the same sources beside the results
//! sources; these commands are for one provisioning source at a time.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use super::failure::{io_failure, Failure};
use super::{with_store, Invocation, Open};
use crate::config::Settings;
use crate::provisioning::pass::PassOutcome;
use crate::provisioning::ProvSource;
use crate::store::Store;

#[derive(Debug, clap::Subcommand)]
pub enum ProvisioningCommand {
    /// Run one pass of every [[provisioning]] source (or --source NAME) now, and exit: every
    /// kind read to its last page, changed persons looked up, removals applied within
    /// max_removed_share. Exits 1 when removals were refused, 3 when a pass failed.
    Sync(ProvSync),
    /// Confirm the removals a pass refused (more than max_removed_share of a kind): the next
    /// complete pass of NAME applies its removals whatever their share.
    AcceptRemovals(AcceptRemovals),
    /// Print the HMAC of one personnummer under NAME's civic_no_key_file, as civic_no_hmac
    /// holds it, so a warehouse can look a person up. The number is read from standard input
    /// (one line) unless given, keeping it out of shell history and the process list.
    HashCivicNo(HashCivicNo),
}

impl ProvisioningCommand {
    pub(super) async fn run(
        self,
        ctx: &Invocation<'_>,
        out: &mut dyn Write,
    ) -> Result<(), Failure> {
        match self {
            ProvisioningCommand::Sync(c) => c.run(ctx, out).await,
            ProvisioningCommand::AcceptRemovals(c) => c.run(ctx, out).await,
            ProvisioningCommand::HashCivicNo(c) => c.run(ctx, out),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ProvSync {
    /// Only this provisioning source.
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
}

impl ProvSync {
    async fn run(self, ctx: &Invocation<'_>, out: &mut dyn Write) -> Result<(), Failure> {
        let sources = build(ctx.config, ctx.settings, self.source.as_deref())?;
        if sources.is_empty() {
            return Err(Failure::Config(anyhow::anyhow!(
                "no [[provisioning]] is configured: see `nprov-sync config example`"
            )));
        }
        with_store(ctx.settings, Open::Migrated, async |store| {
            pass_all(store, &sources, None, out).await
        })
        .await
    }
}

/// One pass of each source, a line each; the first failure decides the exit code, after every
/// source had its pass.
/// With `metrics` (a `--textfile` run), each pass is counted there too.
pub(crate) async fn pass_all(
    store: &dyn Store,
    sources: &[ProvSource],
    metrics: Option<&crate::metrics::Metrics>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let mut failure = None;
    for src in sources {
        let report = src.pass(store).await.map_err(Failure::from)?;
        if let Some(metrics) = metrics {
            let m = metrics.provisioning(
                src.name(),
                &crate::provisioning::Kind::ALL.map(|k| k.as_str()),
                &crate::provisioning::client::STATUS_LABELS,
            );
            m.schedule(
                crate::schedule::interval(&src.schedule, src.timezone, chrono::Utc::now())
                    .unwrap_or(std::time::Duration::from_secs(3600)),
            );
            report.record(&m, &src.api.counters);
        }
        writeln!(out, "{}", report.summary(src.name())).map_err(io_failure)?;
        let error = || {
            anyhow::anyhow!(
                "provisioning source {}: {}",
                src.name(),
                report.error.clone().unwrap_or_default()
            )
        };
        let this = match report.outcome {
            PassOutcome::Complete => None,
            PassOutcome::Refused => Some(Failure::Data(error())),
            PassOutcome::Failed => Some(Failure::Runtime(error().context(
                "the pass stopped part way; nothing was removed, and the next pass starts over",
            ))),
        };
        if failure.is_none() {
            failure = this;
        }
    }
    failure.map_or(Ok(()), Err)
}

/// The configured provisioning sources (`only`: the one of that name, which must exist).
pub(crate) fn build(
    config: &Option<PathBuf>,
    settings: &Settings,
    only: Option<&str>,
) -> Result<Vec<ProvSource>, Failure> {
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let mut sources =
        crate::provisioning::sources(settings, config.as_deref(), credentials.as_deref())
            .map_err(|e| Failure::Config(e.into()))?;
    if let Some(name) = only {
        sources.retain(|s| s.name() == name);
        if sources.is_empty() {
            return Err(Failure::Config(anyhow::anyhow!(
                "no [[provisioning]] named {name:?} in the configuration"
            )));
        }
    }
    Ok(sources)
}

#[derive(Debug, clap::Args)]
pub struct AcceptRemovals {
    /// The provisioning source.
    #[arg(value_name = "NAME")]
    name: String,
}

impl AcceptRemovals {
    async fn run(self, ctx: &Invocation<'_>, out: &mut dyn Write) -> Result<(), Failure> {
        if !ctx
            .settings
            .provisioning
            .iter()
            .any(|p| p.name == self.name)
        {
            return Err(Failure::Config(anyhow::anyhow!(
                "no [[provisioning]] named {:?} in the configuration",
                self.name
            )));
        }
        with_store(ctx.settings, Open::Migrated, async |store| {
            let mut tx = store
                .begin_sql("accepting a provisioning source's removals")
                .await?;
            let set = crate::provisioning::store::accept_removals(&mut *tx, &self.name).await?;
            tx.commit("accepting a provisioning source's removals")
                .await?;
            if !set {
                return Err(Failure::Config(anyhow::anyhow!(
                    "provisioning source {}: no pass has been recorded yet, so there is nothing \
                     to confirm",
                    self.name
                )));
            }
            writeln!(
                out,
                "{}: the next complete pass applies its removals whatever their share",
                self.name
            )
            .map_err(io_failure)
        })
        .await
    }
}

#[derive(Debug, clap::Args)]
pub struct HashCivicNo {
    /// The provisioning source whose key to use.
    #[arg(value_name = "NAME")]
    name: String,
    /// The personnummer (YYYYMMDDNNNN, a hyphen allowed); without it, or `-`, one line of
    /// standard input.
    #[arg(value_name = "PERSONNUMMER")]
    number: Option<String>,
}

impl HashCivicNo {
    fn run(self, ctx: &Invocation<'_>, out: &mut dyn Write) -> Result<(), Failure> {
        let Some(config) = ctx
            .settings
            .provisioning
            .iter()
            .find(|p| p.name == self.name)
        else {
            return Err(Failure::Config(anyhow::anyhow!(
                "no [[provisioning]] named {:?} in the configuration",
                self.name
            )));
        };
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        let spec = config
            .spec(ctx.config_path(), credentials.as_deref())
            .map_err(|e| Failure::Config(e.into()))?;
        let typed = match self.number.as_deref() {
            Some(n) if n != "-" => n.to_owned(),
            Some(_) | None => {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .map_err(io_failure)?;
                line
            }
        };
        // The message says what is wrong with the number, never the number.
        let number = crate::provisioning::civic::normalise_civic_no(&typed)
            .map_err(|m| Failure::Config(anyhow::anyhow!("the personnummer: {m}")))?;
        let keyed = crate::provisioning::civic::Keyed::new(spec.civic_key);
        writeln!(out, "{}", keyed.civic_no(&number)).map_err(io_failure)
    }
}

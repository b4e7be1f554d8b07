//! `prune`, `forget` and `source list|rewind|drop`: retention, erasure and a source's state.
//!
//! What these print and log names tables, sources and counts, never a pupil's id.

use std::io::{BufRead, Write};

use chrono::Utc;

use super::failure::{io_failure, Failure};
use super::{with_store, Invocation, Open};
use crate::config::Settings;
use crate::store::governance::{Erasure, Mode, Removed};
use crate::store::{Leadership, Store};
use crate::window::{earliest_instant, parse_local, API_FORMAT};

#[derive(Debug, clap::Args)]
pub struct Prune {
    /// Count what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
}

impl Prune {
    pub(super) async fn run(
        self,
        ctx: &Invocation<'_>,
        out: &mut dyn Write,
    ) -> Result<(), Failure> {
        with_store(ctx.settings, Open::Migrated, async |store| {
            prune(store, ctx.settings, self.dry_run, out).await
        })
        .await
    }
}

#[derive(Debug, clap::Args)]
pub struct Forget {
    /// The pupil's id on the platform, matched exactly (letter case included); `-` reads it
    /// from standard input, keeping it out of shell history and the process list.
    #[arg(long, value_name = "ID")]
    elev: String,
    /// Only this source's rows (default: every source).
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
    /// Recorded with the erasure, e.g. the case number of the request.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// Erase; without it, only count.
    #[arg(long)]
    yes: bool,
}

impl Forget {
    pub(super) async fn run(
        self,
        ctx: &Invocation<'_>,
        out: &mut dyn Write,
    ) -> Result<(), Failure> {
        with_store(ctx.settings, Open::Migrated, async |store| {
            forget(store, &self, out).await
        })
        .await
    }
}

#[derive(Debug, clap::Args)]
pub struct SourceList {}

impl SourceList {
    pub(super) async fn run(
        self,
        ctx: &Invocation<'_>,
        out: &mut dyn Write,
    ) -> Result<(), Failure> {
        // Listing only reads (no write lock, no data contract written); the commands that
        // change a source's state migrate first, as every writing command does.
        with_store(ctx.settings, Open::ForReading, async |store| {
            source_list(store, ctx.settings, out).await
        })
        .await
    }
}

#[derive(Debug, clap::Args)]
pub struct SourceRewind {
    name: String,
    /// Local time (yyyy-MM-ddTHH:mm, in the source's time zone), earlier than the watermark.
    #[arg(long, value_name = "LOCAL_TIME")]
    to: String,
}

impl SourceRewind {
    pub(super) async fn run(
        self,
        ctx: &Invocation<'_>,
        out: &mut dyn Write,
    ) -> Result<(), Failure> {
        with_store(ctx.settings, Open::Migrated, async |store| {
            source_rewind(store, ctx.settings, &self.name, &self.to, out).await
        })
        .await
    }
}

#[derive(Debug, clap::Args)]
pub struct SourceDrop {
    name: String,
    #[arg(long)]
    yes: bool,
}

impl SourceDrop {
    pub(super) async fn run(
        self,
        ctx: &Invocation<'_>,
        out: &mut dyn Write,
    ) -> Result<(), Failure> {
        with_store(ctx.settings, Open::Migrated, async |store| {
            source_drop(store, &self.name, self.yes, out).await
        })
        .await
    }
}

async fn prune(
    store: &dyn Store,
    settings: &Settings,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let retention = settings
        .retention()
        .map_err(|e| Failure::Config(e.into()))?;
    let cutoffs = retention.cutoffs(Utc::now());
    let pruned = store
        .prune(&cutoffs, if dry_run { Mode::DryRun } else { Mode::Apply })
        .await
        .map_err(Failure::from)?;
    let verb = if dry_run { "would prune" } else { "pruned" };
    for ((table, n), cutoff) in pruned.by_table().into_iter().zip(cutoffs.in_order()) {
        let horizon = match cutoff {
            Some(at) => format!("older than {}", crate::store::timestamp(at)),
            None => "kept forever (retention 0)".into(),
        };
        writeln!(out, "{verb} {table}: {n} ({horizon})").map_err(io_failure)?;
    }
    if !dry_run {
        pruned.log();
    }
    Ok(())
}

/// `--elev -` reads the id from standard input, so it stays out of shell history and `ps`.
fn elev_argument(elev: &str) -> Result<String, Failure> {
    if elev != "-" {
        return Ok(elev.to_owned());
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| {
        Failure::Runtime(anyhow::anyhow!("reading the id from standard input: {e}"))
    })?;
    let id = line.trim_end_matches(['\n', '\r']).to_owned();
    if id.is_empty() {
        return Err(Failure::Config(anyhow::anyhow!(
            "--elev -: standard input held no id"
        )));
    }
    Ok(id)
}

fn describe(r: &Removed) -> String {
    let mut parts = vec![
        format!("{} provomrade", r.provomrade),
        format!("{} provtillfalle", r.provtillfalle),
        format!("{} delprovsresultat", r.delprovsresultat),
        format!("{} change_log", r.change_log),
        format!("{} quarantine", r.quarantine),
    ];
    if r.sync_run > 0 || r.watermark > 0 {
        parts.push(format!("{} sync_run", r.sync_run));
        parts.push(format!("{} sync_watermark", r.watermark));
    }
    if r.provisioning > 0 {
        parts.push(format!("{} provisioning rows (prov_*)", r.provisioning));
    }
    parts.join(", ")
}

async fn forget(store: &dyn Store, args: &Forget, out: &mut dyn Write) -> Result<(), Failure> {
    let elev = elev_argument(&args.elev)?;
    if elev.trim().is_empty() {
        return Err(Failure::Config(anyhow::anyhow!("--elev: the id is empty")));
    }
    let erasure = Erasure {
        elev: &elev,
        source: args.source.as_deref(),
        reason: args.reason.as_deref(),
        now: Utc::now(),
        mode: Mode::unless_confirmed(args.yes),
    };
    let removed = store.forget(&erasure).await.map_err(Failure::from)?;
    let scope = args
        .source
        .as_deref()
        .map(|s| format!("source {s}"))
        .unwrap_or_else(|| "every source".into());
    if !args.yes {
        writeln!(
            out,
            "would remove from {scope}: {}\nnothing removed: run again with --yes to erase \
             (one transaction, recorded in the erasure table without the id)",
            describe(&removed)
        )
        .map_err(io_failure)?;
        return Ok(());
    }
    writeln!(
        out,
        "removed from {scope}: {}\nrecorded in the erasure table (when and how many rows, not the \
         id); change_log has an erase entry per removed provomrade. A later window in which the \
         platform still sends this pupil brings the data back.",
        describe(&removed)
    )
    .map_err(io_failure)?;
    tracing::info!(
        source = args.source.as_deref().unwrap_or("*"),
        rows = removed.total(),
        "erased a pupil's rows"
    );
    Ok(())
}

async fn source_list(
    store: &dyn Store,
    settings: &Settings,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let mut known = store.sources().await.map_err(Failure::from)?;
    for configured in &settings.source {
        if !known.iter().any(|k| k.source == configured.name) {
            known.push(crate::store::governance::SourceState {
                source: configured.name.clone(),
                watermark: None,
                provomrade: 0,
                runs: 0,
                last_ok: None,
            });
        }
    }
    known.sort_by(|a, b| a.source.cmp(&b.source));
    if known.is_empty() {
        writeln!(out, "no sources: none configured, none in the database").map_err(io_failure)?;
        return Ok(());
    }
    for s in &known {
        let configured = settings.source.iter().any(|c| c.name == s.source);
        let watermark = s
            .watermark
            .as_ref()
            .map(|w| w.local.format(API_FORMAT).to_string())
            .unwrap_or_else(|| "none".into());
        let leader = match store.leader(&s.source).await.map_err(Failure::from)? {
            Some(info) => format!(", leader {}", info.holder.unwrap_or_else(|| "none".into())),
            None => String::new(),
        };
        writeln!(
            out,
            "{}: {}, watermark {watermark}, {} provomrade rows, {} windows recorded, last committed {}{leader}",
            s.source,
            if configured { "configured" } else { "NOT configured (rows only)" },
            s.provomrade,
            s.runs,
            s.last_ok.as_deref().unwrap_or("never"),
        )
        .map_err(io_failure)?;
    }
    Ok(())
}

/// Holds the source's leadership for the duration of a state command, so no instance syncs it
/// meanwhile; refused, naming the holder, while another instance leads it.
async fn exclusive(
    store: &dyn Store,
    source: &str,
    what: &str,
) -> Result<Box<dyn Leadership>, Failure> {
    match store.try_lead(source).await.map_err(Failure::from)? {
        Some(lead) => Ok(lead),
        None => {
            let holder = store
                .leader(source)
                .await
                .ok()
                .flatten()
                .and_then(|i| i.holder)
                .unwrap_or_else(|| "another instance".into());
            Err(Failure::Runtime(anyhow::anyhow!(
                "source {source} is being synced by {holder}: refusing to {what} it while another \
                 instance leads it. Stop that instance (or remove the source from its \
                 configuration and reload it), then run this again"
            )))
        }
    }
}

async fn source_rewind(
    store: &dyn Store,
    settings: &Settings,
    source: &str,
    to: &str,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let configured = settings
        .source
        .iter()
        .find(|s| s.name == source)
        .ok_or_else(|| {
            Failure::Config(anyhow::anyhow!(
                "no [[source]] named {source:?} in the configuration: its time zone, which --to \
                 is read in, is unknown"
            ))
        })?;
    let tz: chrono_tz::Tz = configured.timezone.parse().map_err(|e| {
        Failure::Config(anyhow::anyhow!(
            "source.{source}.timezone {:?}: {e}",
            configured.timezone
        ))
    })?;
    let local = parse_local(to).map_err(|e| Failure::Config(anyhow::anyhow!("--to: {e}")))?;
    let utc = earliest_instant(tz, local);
    let lead = exclusive(store, source, "rewind").await?;
    let result = store.rewind(source, utc, local, Utc::now()).await;
    lead.release().await;
    let before = result.map_err(Failure::from)?;
    writeln!(
        out,
        "source {source}: watermark moved back from {} to {}; the next run re-reads from there",
        before.local.format(API_FORMAT),
        local.format(API_FORMAT)
    )
    .map_err(io_failure)?;
    tracing::info!(
        source,
        from = %before.local.format(API_FORMAT),
        to = %local.format(API_FORMAT),
        "watermark rewound"
    );
    Ok(())
}

async fn source_drop(
    store: &dyn Store,
    source: &str,
    yes: bool,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let lead = exclusive(store, source, "drop").await?;
    let result = store
        .drop_source(source, Utc::now(), Mode::unless_confirmed(yes))
        .await;
    lead.release().await;
    let removed = result.map_err(Failure::from)?;
    if removed.total() == 0 {
        writeln!(out, "source {source}: nothing in the database").map_err(io_failure)?;
        return Ok(());
    }
    if !yes {
        writeln!(
            out,
            "would remove source {source}: {}\nnothing removed: run again with --yes",
            describe(&removed)
        )
        .map_err(io_failure)?;
        return Ok(());
    }
    writeln!(
        out,
        "removed source {source}: {}; change_log has an erase entry per removed provomrade. \
         Remove it from the configuration too, or its next run starts again from its start.",
        describe(&removed)
    )
    .map_err(io_failure)?;
    tracing::info!(source, rows = removed.total(), "dropped a source");
    Ok(())
}

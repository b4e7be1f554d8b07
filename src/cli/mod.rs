//! The command line: parse arguments, load settings, run a command, and classify failures into
//! exit codes. One file per group of commands:
//!
//! * `files`: `validate` and `import` (documents from files);
//! * `sync`: `sync --once` and `backfill`, with per-window lines and progress;
//! * `status`: `status`, as text or JSON;
//! * `daemon`: `run`, the service;
//! * `simulate` and `demo`: the simulated platform, alone or driven end to end;
//! * `admin`: `migrate` and `config example|check`;
//! * `generate`: `completions` and `manpages`, which need no settings;
//! * `govern`: `prune`, `forget` and `source list|rewind|drop` (retention, erasure, state);
//! * `provisioning`: `provisioning sync|accept-removals|hash-civic-no` (the provtjänst mirror);
//! * `setup`: settings, sources and the database, as every command opens them;
//! * `failure`: [`Failure`] and its exit codes.
//!
//! Nothing outside this module imports it but `main.rs`.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Settings;

mod admin;
mod daemon;
mod demo;
mod failure;
mod files;
mod generate;
mod govern;
mod provisioning;
mod setup;
mod simulate;
mod status;
mod sync;

pub use demo::DemoArgs;
pub use failure::Failure;
pub use simulate::SimulateArgs;

#[derive(Debug, Parser)]
#[command(
    name = "nprov-sync",
    version,
    about = "Mirrors national-test results (nationella prov) from the school platform into a database"
)]
pub struct Cli {
    /// Configuration file (TOML). Without it, defaults and NPROV_* variables apply; the working
    /// directory is never searched.
    #[arg(long, global = true, env = "NPROV_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Database URL, overriding `[database] url` (e.g. sqlite://nprov.db or
    /// postgres://nprov@db.example/warehouse).
    #[arg(long, global = true, value_name = "URL")]
    pub database: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// Every command. Each is a struct in the file of its group, with its own `run`; those that use
/// the database open it through [`with_store`], the one place a command's store is opened and
/// closed.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse documents and report their version, counts and every error with its location.
    /// Exits non-zero if any document or record has an error.
    Validate(files::Validate),
    /// Apply saved API responses to the database, in the order given; each file is one
    /// transaction. `-` reads standard input. Stops at the first document that cannot be applied.
    Import(files::Import),
    /// Run as a service: sync every configured source on its schedule, serve /metrics, /healthz
    /// and /readyz, stop cleanly on SIGTERM/SIGINT, reload the configuration on SIGHUP.
    Run(daemon::Run),
    /// Apply pending database migrations.
    Migrate(admin::Migrate),
    /// Sync every configured source from its watermark: catch up to now (or --until) and exit.
    /// Exits non-zero with a clear message if a window cannot be synced.
    Sync(sync::SyncOnce),
    /// Re-read a historic range of one source without moving its watermark.
    Backfill(sync::Backfill),
    /// Per source: watermark, lag, last windows; and the tables' row counts.
    Status(status::StatusCommand),
    /// Show the whole pipeline on generated data: import a population into a fresh SQLite file
    /// (nprov-demo.db), apply a later document with changes and clears, re-read it, and query.
    Demo(DemoArgs),
    /// Serve a simulated platform (generated students, a school year of changes) on a local port,
    /// for trying a configuration or the client's behaviour under faults. Stops on Ctrl-C.
    Simulate(Box<SimulateArgs>),
    /// Inspect configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Remove rows older than the [retention] horizons (sync_run, quarantined raw XML and rows,
    /// change_log), as the daemon does once a day; prints what was removed.
    Prune(govern::Prune),
    /// Erase one pupil's rows from every table (provområden with their provtillfällen and
    /// delprov, change_log, quarantine; in the provisioning mirror the person whose id or
    /// external identifier is the pupil's, braces and case ignored, with their lists,
    /// memberships and duties) in one transaction, and record the erasure without the id. Without --yes, only counts. A later window in which the platform still sends the
    /// pupil brings the data back: the platform is the source of truth.
    Forget(govern::Forget),
    /// A source's state in the database: list, rewind the watermark, drop its data.
    #[command(subcommand)]
    Source(SourceCommand),
    /// The provtjänst provisioning mirror ([[provisioning]]): a pass now, confirming refused
    /// removals, the HMAC of a personnummer.
    #[command(subcommand)]
    Provisioning(provisioning::ProvisioningCommand),
    /// Print shell completions to standard output (e.g. `nprov-sync completions bash >
    /// /etc/bash_completion.d/nprov-sync`); the Debian package installs them.
    Completions(generate::Completions),
    /// Write the man pages (nprov-sync.1 and one per command) into a directory; for packaging.
    #[command(hide = true)]
    Manpages(generate::Manpages),
}

#[derive(Debug, Subcommand)]
pub enum SourceCommand {
    /// Every source configured or in the database: watermark, rows, windows, leader.
    List(govern::SourceList),
    /// Move a source's watermark back, so that its next run re-reads from there (after a
    /// platform incident, say). The only way the watermark moves back. Refused while another
    /// instance leads the source.
    Rewind(govern::SourceRewind),
    /// Remove a source's rows, windows and watermark (change_log gets an erase entry per
    /// removed provområde). Without --yes, only counts. Refused while another instance leads
    /// the source.
    Drop(govern::SourceDrop),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the example configuration: every setting, commented, with its default.
    Example(admin::ConfigExample),
    /// Check a configuration (the --config file plus NPROV_* variables) without doing anything.
    Check(admin::ConfigCheck),
}

/// What every command runs with: the loaded settings and the command line's global options
/// (the daemon reloads from them).
pub(crate) struct Invocation<'a> {
    pub settings: &'a Settings,
    pub config: &'a Option<PathBuf>,
    pub database: Option<&'a str>,
}

impl Invocation<'_> {
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config.as_deref()
    }
}

/// Runs a command that needs no settings (completions, man pages), so that neither a missing
/// configuration nor a stray `NPROV_…` variable on a packaging machine stops it; `None` for
/// every other command.
pub fn run_without_settings(cli: &Cli, out: &mut dyn Write) -> Option<Result<(), Failure>> {
    match &cli.command {
        Command::Completions(c) => Some(c.run(out)),
        Command::Manpages(c) => Some(c.run(out)),
        Command::Validate(_)
        | Command::Import(_)
        | Command::Run(_)
        | Command::Migrate(_)
        | Command::Sync(_)
        | Command::Backfill(_)
        | Command::Status(_)
        | Command::Demo(_)
        | Command::Simulate(_)
        | Command::Config(_)
        | Command::Prune(_)
        | Command::Forget(_)
        | Command::Source(_)
        | Command::Provisioning(_) => None,
    }
}

/// How a command opens the database.
#[derive(Clone, Copy)]
enum Open {
    /// Migrated first (unless `migrate_on_start` is off), as every command that writes.
    Migrated,
    /// Not migrated, nothing written, a newer schema refused: for commands that only read.
    ForReading,
    /// Connected only: the command reads the schema's state itself (`status`).
    Connected,
}

/// Opens the database as `open` says, runs the command on it and closes it (flushing SQLite's
/// WAL) whatever the command returned: the one place a command's store is opened and closed.
async fn with_store(
    settings: &Settings,
    open: Open,
    command: impl AsyncFnOnce(&dyn crate::store::Store) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let store = match open {
        Open::Migrated => setup::open_store(settings).await?,
        Open::ForReading => setup::open_for_reading(settings).await?,
        Open::Connected => setup::connect_store(settings).await?,
    };
    let result = command(store.as_ref()).await;
    store.close().await;
    result
}

/// Loads settings for a command: file, environment, then `--database`.
pub fn load_settings(cli: &Cli) -> Result<Settings, Failure> {
    setup::settings_from(cli.config.as_deref(), cli.database.as_deref())
}

/// Runs a parsed command line with loaded settings; output goes to `out`.
pub async fn run(cli: Cli, settings: Settings, out: &mut dyn Write) -> Result<(), Failure> {
    let ctx = Invocation {
        settings: &settings,
        config: &cli.config,
        database: cli.database.as_deref(),
    };
    match cli.command {
        Command::Validate(c) => c.run(&ctx, out),
        Command::Import(c) => c.run(&ctx, out).await,
        Command::Run(c) => c.run(&ctx).await,
        Command::Migrate(c) => c.run(&ctx, out).await,
        Command::Sync(c) => c.run(&ctx, out).await,
        Command::Backfill(c) => c.run(&ctx, out).await,
        Command::Status(c) => c.run(&ctx, out).await,
        Command::Demo(args) => demo::run(&args.file, args.students, out).await,
        Command::Simulate(args) => simulate::simulate(*args, out).await,
        Command::Config(ConfigCommand::Example(c)) => c.run(out),
        Command::Config(ConfigCommand::Check(c)) => c.run(&ctx, out),
        Command::Prune(c) => c.run(&ctx, out).await,
        Command::Forget(c) => c.run(&ctx, out).await,
        Command::Source(SourceCommand::List(c)) => c.run(&ctx, out).await,
        Command::Source(SourceCommand::Rewind(c)) => c.run(&ctx, out).await,
        Command::Source(SourceCommand::Drop(c)) => c.run(&ctx, out).await,
        Command::Provisioning(c) => c.run(&ctx, out).await,
        // main.rs runs these before loading settings; here for callers of `run` alone.
        Command::Completions(c) => c.run(out),
        Command::Manpages(c) => c.run(out),
    }
}

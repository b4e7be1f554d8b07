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
//! * `setup`: settings, sources and the database, as every command opens them;
//! * `failure`: [`Failure`] and its exit codes.
//!
//! Nothing outside this module imports it but `main.rs`.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::store::DEFAULT_SOURCE;

mod admin;
mod daemon;
mod demo;
mod failure;
mod files;
mod generate;
mod govern;
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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse documents and report their version, counts and every error with its location.
    /// Exits non-zero if any document or record has an error.
    Validate {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Apply saved API responses to the database, in the order given; each file is one
    /// transaction. `-` reads standard input. Stops at the first document that cannot be applied.
    Import {
        /// The source name written to the `source` column.
        #[arg(long, default_value = DEFAULT_SOURCE)]
        source: String,
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Run as a service: sync every configured source on its schedule, serve /metrics, /healthz
    /// and /readyz, stop cleanly on SIGTERM/SIGINT, reload the configuration on SIGHUP.
    Run,
    /// Apply pending database migrations.
    Migrate,
    /// Sync every configured source from its watermark: catch up to now (or --until) and exit.
    /// Exits non-zero with a clear message if a window cannot be synced.
    Sync {
        /// Catch up and exit (`nprov-sync run` is the long-running service).
        #[arg(long, required = true)]
        once: bool,
        /// Stop at this local time (yyyy-MM-ddTHH:mm) instead of now.
        #[arg(long, value_name = "LOCAL_TIME")]
        until: Option<String>,
        /// Only this source.
        #[arg(long, value_name = "NAME")]
        source: Option<String>,
        /// Also write the run's metrics to this file, in the text format node_exporter's
        /// textfile collector reads (written beside it, then renamed into place), so a run
        /// from a timer is monitored like the daemon.
        #[arg(long, value_name = "PATH")]
        textfile: Option<PathBuf>,
    },
    /// Re-read a historic range of one source without moving its watermark.
    Backfill {
        #[arg(long, value_name = "NAME")]
        source: Option<String>,
        /// Local time (yyyy-MM-ddTHH:mm) of the first minute.
        #[arg(long, value_name = "LOCAL_TIME")]
        from: String,
        /// Local time of the last minute.
        #[arg(long, value_name = "LOCAL_TIME")]
        to: String,
    },
    /// Per source: watermark, lag, last windows; and the tables' row counts.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
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
    Prune {
        /// Count what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Erase one pupil's rows from every table (provområden with their provtillfällen and
    /// delprov, change_log, quarantine) in one transaction, and record the erasure without the
    /// id. Without --yes, only counts. A later window in which the platform still sends the
    /// pupil brings the data back: the platform is the source of truth.
    Forget {
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
    },
    /// A source's state in the database: list, rewind the watermark, drop its data.
    #[command(subcommand)]
    Source(SourceCommand),
    /// Print shell completions to standard output (e.g. `nprov-sync completions bash >
    /// /etc/bash_completion.d/nprov-sync`); the Debian package installs them.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (nprov-sync.1 and one per command) into a directory; for packaging.
    #[command(hide = true)]
    Manpages {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum SourceCommand {
    /// Every source configured or in the database: watermark, rows, windows, leader.
    List,
    /// Move a source's watermark back, so that its next run re-reads from there (after a
    /// platform incident, say). The only way the watermark moves back. Refused while another
    /// instance leads the source.
    Rewind {
        name: String,
        /// Local time (yyyy-MM-ddTHH:mm, in the source's time zone), earlier than the watermark.
        #[arg(long, value_name = "LOCAL_TIME")]
        to: String,
    },
    /// Remove a source's rows, windows and watermark (change_log gets an erase entry per
    /// removed provområde). Without --yes, only counts. Refused while another instance leads
    /// the source.
    Drop {
        name: String,
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the example configuration: every setting, commented, with its default.
    Example,
    /// Check a configuration (the --config file plus NPROV_* variables) without doing anything.
    Check,
}

/// Runs a command that needs no settings (completions, man pages), so that neither a missing
/// configuration nor a stray `NPROV_…` variable on a packaging machine stops it; `None` for
/// every other command.
pub fn run_without_settings(cli: &Cli, out: &mut dyn Write) -> Option<Result<(), Failure>> {
    match &cli.command {
        Command::Completions { shell } => Some(generate::completions(*shell, out)),
        Command::Manpages { dir } => Some(generate::manpages(dir, out)),
        _ => None,
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
    match cli.command {
        Command::Validate { files } => files::validate(&files, settings.limits(), out),
        Command::Import { source, files } => {
            with_store(&settings, Open::Migrated, async |store| {
                files::import_files(store, &source, &files, settings.limits(), out).await
            })
            .await
        }
        Command::Migrate => admin::migrate(&settings, out).await,
        Command::Run => daemon::run_daemon(&cli.config, cli.database.clone(), settings).await,
        Command::Demo(args) => demo::run(&args.file, args.students, out).await,
        Command::Simulate(args) => simulate::simulate(*args, out).await,
        Command::Sync {
            until,
            source,
            textfile,
            ..
        } => {
            let sources = setup::build_sources(&cli.config, &settings, source.as_deref())?;
            with_store(&settings, Open::Migrated, async |store| match textfile {
                None => sync::sync_once(store, &sources, until.as_deref(), out).await,
                Some(path) => {
                    sync::sync_once_to_textfile(store, sources, until.as_deref(), &path, out).await
                }
            })
            .await
        }
        Command::Backfill { source, from, to } => {
            let sources = setup::build_sources(&cli.config, &settings, source.as_deref())?;
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
            with_store(&settings, Open::Migrated, async |store| {
                sync::backfill(store, src, &from, &to, out).await
            })
            .await
        }
        Command::Status { json } => {
            // Reading needs no right to migrate: a read-only role or user can run it. Nor does it
            // create anything: a SQLite file that is not there yet is said so, not made empty.
            status::require_existing_sqlite(&settings.database.url)?;
            with_store(&settings, Open::Connected, async |store| {
                status::status(store, &settings, cli.config.as_deref(), json, out).await
            })
            .await
        }
        Command::Config(ConfigCommand::Example) => admin::config_example(out),
        Command::Config(ConfigCommand::Check) => {
            admin::config_check(cli.config.as_deref(), &settings, out)
        }
        Command::Prune { dry_run } => {
            with_store(&settings, Open::Migrated, async |store| {
                govern::prune(store, &settings, dry_run, out).await
            })
            .await
        }
        Command::Forget {
            elev,
            source,
            reason,
            yes,
        } => {
            let args = govern::ForgetArgs {
                elev: &elev,
                source: source.as_deref(),
                reason: reason.as_deref(),
                yes,
            };
            with_store(&settings, Open::Migrated, async |store| {
                govern::forget(store, args, out).await
            })
            .await
        }
        // Listing only reads (no write lock, no data contract written); the two that change a
        // source's state migrate first, as every writing command does.
        Command::Source(SourceCommand::List) => {
            with_store(&settings, Open::ForReading, async |store| {
                govern::source_list(store, &settings, out).await
            })
            .await
        }
        Command::Source(SourceCommand::Rewind { name, to }) => {
            with_store(&settings, Open::Migrated, async |store| {
                govern::source_rewind(store, &settings, &name, &to, out).await
            })
            .await
        }
        Command::Source(SourceCommand::Drop { name, yes }) => {
            with_store(&settings, Open::Migrated, async |store| {
                govern::source_drop(store, &name, yes, out).await
            })
            .await
        }
        // main.rs runs these before loading settings; here for callers of `run` alone.
        Command::Completions { shell } => generate::completions(shell, out),
        Command::Manpages { dir } => generate::manpages(&dir, out),
    }
}

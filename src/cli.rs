//! The command line: parse arguments, load settings, call the library, and classify failures
//! into exit codes (see [`Failure`]).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use chrono::Utc;
use clap::{Args, Parser, Subcommand};

use crate::config::{Settings, EXAMPLE};
use crate::import::{import_document, parse_document, ImportError, ImportReport};
use crate::store::{self, ApplyContext, Store, DEFAULT_SOURCE};
use crate::xml::{DocumentError, Item, Limits};

#[derive(Debug, Parser)]
#[command(
    name = "nprov-sync",
    version,
    about = "Mirrors national-test results (nationella prov) from the school platform into a database"
)]
pub struct Cli {
    /// Configuration file (TOML). Without it, defaults and NPROV_… variables apply; the working
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
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Students in the generated population.
    #[arg(long, default_value_t = 20_000)]
    pub students: u64,
    /// The demo's own database file; it is recreated on every run.
    #[arg(long, default_value = "nprov-demo.db", value_name = "PATH")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8088")]
    pub listen: std::net::SocketAddr,
    #[arg(long, default_value_t = 20_000)]
    pub students: u64,
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Schema version to answer in (v1.1, v1.2, v2.0b, v4.0a, v12.0).
    #[arg(long, default_value = "v12.0")]
    pub version: String,
    /// Local time of the first change.
    #[arg(long, default_value = "2025-08-11T07:00")]
    pub first_change: String,
    /// Local time of the last change.
    #[arg(long, default_value = "2026-06-12T17:00")]
    pub last_change: String,
    /// Probability of an HTTP 500 per request.
    #[arg(long, default_value_t = 0.0)]
    pub server_errors: f64,
    /// Probability of a body cut in half.
    #[arg(long, default_value_t = 0.0)]
    pub truncated: f64,
    /// Probability of a malformed body.
    #[arg(long, default_value_t = 0.0)]
    pub malformed: f64,
    /// Probability of an answer that starts only after --slow-delay.
    #[arg(long, default_value_t = 0.0)]
    pub slow: f64,
    /// How long a slow answer keeps the client waiting (e.g. "5s").
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub slow_delay: std::time::Duration,
    /// Answer 429 with Retry-After to requests beyond this many per second.
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// Wait this long before every answer (e.g. "250ms"), as a real platform's round trip.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub latency: std::time::Duration,
    /// Milliseconds of rendering per MiB of body, paid as the body streams out.
    #[arg(long, default_value_t = 0)]
    pub render_ms_per_mb: u64,
    /// Answer 413 to a window with more changed students than this.
    #[arg(long)]
    pub max_students_per_response: Option<usize>,
    /// Demand HTTP basic authentication with this user (password from --password-file).
    #[arg(long, requires = "password_file")]
    pub basic_user: Option<String>,
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM, leaf first) and demand client
    /// certificates signed by --client-ca: mutual TLS, as the platform does.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "client_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that must have signed a client's certificate.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the example configuration: every setting, commented, with its default.
    Example,
    /// Check a configuration (the --config file plus NPROV_… variables) without doing anything.
    Check,
}

/// Why a command failed, which decides the exit code.
#[derive(Debug)]
pub enum Failure {
    /// The input data is bad (a document or record error): exit 1.
    Data(anyhow::Error),
    /// The configuration or the command line is wrong: exit 2.
    Config(anyhow::Error),
    /// The database or the system failed: exit 3.
    Runtime(anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Data(_) => 1,
            Failure::Config(_) => 2,
            Failure::Runtime(_) => 3,
        }
    }

    pub fn error(&self) -> &anyhow::Error {
        match self {
            Failure::Data(e) | Failure::Config(e) | Failure::Runtime(e) => e,
        }
    }
}

impl From<ImportError> for Failure {
    fn from(e: ImportError) -> Self {
        match e {
            ImportError::Document(_) => Failure::Data(e.into()),
            _ => Failure::Runtime(e.into()),
        }
    }
}

/// Loads settings for a command: file, environment, then `--database`.
pub fn load_settings(cli: &Cli) -> Result<Settings, Failure> {
    settings_from(cli.config.as_deref(), cli.database.as_deref())
}

/// The file, the environment, then `--database`: at start-up, and again on SIGHUP.
fn settings_from(config: Option<&Path>, database: Option<&str>) -> Result<Settings, Failure> {
    let mut settings =
        Settings::load(config, std::env::vars()).map_err(|e| Failure::Config(e.into()))?;
    if let Some(url) = database {
        settings.database.url = url.to_owned();
    }
    Ok(settings)
}

/// Runs a parsed command line with loaded settings; output goes to `out`.
pub async fn run(cli: Cli, settings: Settings, out: &mut dyn Write) -> Result<(), Failure> {
    match cli.command {
        Command::Validate { files } => validate(&files, settings.limits(), out),
        Command::Import { source, files } => {
            let store = open_store(&settings).await?;
            let result =
                import_files(store.as_ref(), &source, &files, settings.limits(), out).await;
            store.close().await;
            result
        }
        Command::Migrate => {
            let store = connect_store(&settings).await?;
            store
                .migrate()
                .await
                .map_err(|e| Failure::Runtime(e.into()))?;
            writeln!(
                out,
                "migrated {}",
                store::redact_url(&settings.database.url)
            )
            .map_err(io_failure)?;
            store.close().await;
            Ok(())
        }
        Command::Run => run_daemon(&cli.config, cli.database.clone(), settings).await,
        Command::Demo(args) => crate::demo::run(&args.file, args.students, out).await,
        Command::Simulate(args) => simulate(*args, out).await,
        Command::Sync { until, source, .. } => {
            let sources = build_sources(&cli.config, &settings, source.as_deref())?;
            let store = open_store(&settings).await?;
            let result =
                crate::run::sync_once(store.as_ref(), &sources, until.as_deref(), out).await;
            store.close().await;
            result
        }
        Command::Backfill { source, from, to } => {
            let sources = build_sources(&cli.config, &settings, source.as_deref())?;
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
            let store = open_store(&settings).await?;
            let result = crate::run::backfill(store.as_ref(), src, &from, &to, out).await;
            store.close().await;
            result
        }
        Command::Status { json } => {
            let store = open_store(&settings).await?;
            let result = crate::run::status(store.as_ref(), &settings, json, out).await;
            store.close().await;
            result
        }
        Command::Config(ConfigCommand::Example) => {
            out.write_all(EXAMPLE.as_bytes()).map_err(io_failure)
        }
        Command::Config(ConfigCommand::Check) => {
            // Building the sources reads their credential files: a check that passes means
            // syncing can start.
            let sources = build_sources(&cli.config, &settings, None)?;
            for s in &sources {
                writeln!(out, "source {}: {}", s.name(), s.client.url_base())
                    .map_err(io_failure)?;
            }
            writeln!(
                out,
                "configuration OK ({}): database {}",
                cli.config
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "defaults and environment".into()),
                store::redact_url(&settings.database.url)
            )
            .map_err(io_failure)
        }
    }
}

async fn simulate(args: SimulateArgs, out: &mut dyn Write) -> Result<(), Failure> {
    use crate::simulate::server::{serve, serve_tls, Faults, Simulator, Stats, VirtualClock};
    use crate::simulate::{Platform, Population};
    let config = |m: String| Failure::Config(anyhow::anyhow!(m));
    let version = crate::xml::version::VERSIONS
        .iter()
        .find(|v| v.name == args.version)
        .ok_or_else(|| {
            config(format!(
                "--version {}: not a published version",
                args.version
            ))
        })?;
    let tz = chrono_tz::Europe::Stockholm;
    let first = crate::window::parse_local(&args.first_change)
        .map_err(|e| config(format!("--first-change: {e}")))?;
    let last = crate::window::parse_local(&args.last_change)
        .map_err(|e| config(format!("--last-change: {e}")))?;
    let password = match &args.password_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| config(format!("--password-file {}: {e}", p.display())))?
                .trim_end()
                .to_owned(),
        ),
        None => None,
    };
    let platform = Platform::new(
        Population {
            students: args.students,
            seed: args.seed,
            version,
            year: 2026,
        },
        tz,
        crate::window::earliest_instant(tz, first),
        crate::window::latest_instant(tz, last),
        3,
    );
    let tls = match (&args.tls_cert, &args.tls_key, &args.client_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(
            crate::simulate::server::TlsSettings::from_pem_files(cert, key, ca)
                .map_err(|e| config(format!("--tls-cert/--tls-key/--client-ca: {e}")))?,
        ),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            Failure::Runtime(anyhow::Error::new(e).context(format!("binding {}", args.listen)))
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::Runtime(e.into()))?;
    writeln!(
        out,
        "simulated platform: {scheme}://{addr} ({} students, {} changes, schema {}); source url = \"{scheme}://{addr}\"; Ctrl-C stops",
        args.students,
        platform.changes_by(chrono::Utc::now()),
        version.name
    )
    .map_err(io_failure)?;
    out.flush().map_err(io_failure)?;
    let sim = Simulator {
        platform: std::sync::Arc::new(platform),
        // Real time: changes become visible as their moment passes.
        clock: VirtualClock::new(chrono::Utc::now()),
        faults: Faults {
            server_error: args.server_errors,
            truncated: args.truncated,
            malformed: args.malformed,
            slow: args.slow,
            slow_delay: args.slow_delay,
            rate_limit_per_second: args.rate_limit,
            seed: args.seed,
        },
        load: crate::simulate::server::Load {
            latency: args.latency,
            render_per_mb: std::time::Duration::from_millis(args.render_ms_per_mb),
            max_students_per_response: args.max_students_per_response,
        },
        basic: args.basic_user.zip(password),
    };
    let clock = sim.clock.clone();
    // Keep the virtual clock on real time while serving.
    let ticker = tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            every.tick().await;
            clock.set(chrono::Utc::now());
        }
    });
    let stats = std::sync::Arc::new(Stats::default());
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.ok();
    };
    let result = match tls {
        Some(tls) => serve_tls(listener, sim, stats, tls, ctrl_c).await,
        None => serve(listener, sim, stats, ctrl_c).await,
    };
    ticker.abort();
    result.map_err(|e| Failure::Runtime(e.into()))
}

async fn run_daemon(
    config: &Option<PathBuf>,
    database: Option<String>,
    settings: Settings,
) -> Result<(), Failure> {
    use crate::daemon::{self, Loaded, World};
    let daemon_config = settings.daemon().map_err(|e| Failure::Config(e.into()))?;
    let sources = build_sources(config, &settings, None)?;
    if sources.is_empty() {
        return Err(Failure::Config(anyhow::anyhow!(
            "no [[source]] is configured: see `nprov-sync config example`"
        )));
    }
    let store = open_store(&settings).await?;
    let listener = match daemon_config.metrics_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            Failure::Runtime(anyhow::Error::new(e).context(format!("metrics.listen {addr}")))
        })?),
        None => None,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (reload_tx, reload) = tokio::sync::mpsc::channel(4);
    daemon::spawn_signal_handlers(shutdown.clone(), reload_tx).map_err(|e| {
        Failure::Runtime(anyhow::Error::new(e).context("installing signal handlers"))
    })?;
    let config_path = config.clone();
    let loader: daemon::Loader = Box::new(move || {
        let settings = settings_from(config_path.as_deref(), database.as_deref())
            .map_err(|f| f.error().to_string())?;
        let sources =
            build_sources(&config_path, &settings, None).map_err(|f| f.error().to_string())?;
        Ok(Loaded { settings, sources })
    });
    let world = World {
        listener,
        shutdown,
        reload,
        loader,
        notifier: Arc::new(daemon::SystemdNotifier),
        metrics: crate::metrics::Metrics::new(),
        watchdog: sd_notify::watchdog_enabled(),
    };
    let result = daemon::run(store.clone(), Loaded { settings, sources }, world).await;
    store.close().await;
    result.map_err(|e| match e {
        daemon::DaemonError::Config(_) | daemon::DaemonError::NoSources => {
            Failure::Config(e.into())
        }
        other => Failure::Runtime(other.into()),
    })
}

/// Builds the configured sources (all, or the one named).
fn build_sources(
    config: &Option<PathBuf>,
    settings: &Settings,
    only: Option<&str>,
) -> Result<Vec<crate::sync::SyncSource>, Failure> {
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    for warning in settings.credential_warnings(config.as_deref(), credentials.as_deref()) {
        tracing::warn!("{warning}");
    }
    let mut sources = settings
        .sources(config.as_deref(), credentials.as_deref())
        .map_err(|e| Failure::Config(e.into()))?;
    if let Some(name) = only {
        sources.retain(|s| s.name() == name);
        if sources.is_empty() {
            return Err(Failure::Config(anyhow::anyhow!(
                "no [[source]] named {name:?} in the configuration"
            )));
        }
    }
    Ok(sources)
}

/// Opens the configured database, migrating it unless told not to.
pub async fn open_store(settings: &Settings) -> Result<Arc<dyn Store>, Failure> {
    let store = connect_store(settings).await?;
    if settings.database.migrate_on_start {
        store
            .migrate()
            .await
            .map_err(|e| Failure::Runtime(e.into()))?;
    }
    Ok(store)
}

/// Connects to the configured database, without migrating.
async fn connect_store(settings: &Settings) -> Result<Arc<dyn Store>, Failure> {
    let mode = settings
        .database
        .file_mode()
        .map_err(|e| Failure::Config(e.into()))?;
    store::connect(&settings.database.url, &settings.database.schema, mode)
        .await
        .map_err(|e| Failure::Runtime(e.into()))
}

fn io_failure(e: std::io::Error) -> Failure {
    Failure::Runtime(anyhow::Error::new(e).context("writing output"))
}

/// A file, or standard input for `-`. Unbuffered: the parser reads in large chunks itself.
fn open_input(path: &Path) -> Result<Box<dyn Read + Send>, Failure> {
    if path == Path::new("-") {
        return Ok(Box::new(std::io::stdin()));
    }
    let f = File::open(path)
        .with_context(|| format!("cannot open {}", path.display()))
        .map_err(Failure::Runtime)?;
    Ok(Box::new(f))
}

/// Record errors `validate` prints per document; the rest are counted.
const MAX_RECORD_ERRORS_SHOWN: usize = 100;

fn validate(files: &[PathBuf], limits: Limits, out: &mut dyn Write) -> Result<(), Failure> {
    let mut failed = 0usize;
    for path in files {
        let input = open_input(path)?;
        // A sample of the record errors, not all of them: a document of a million broken
        // records must not cost memory in proportion (the count is in the stats).
        let mut record_errors = Vec::new();
        let result = parse_document(input, limits, |item| {
            if let Item::Quarantined(q) = item {
                if record_errors.len() < MAX_RECORD_ERRORS_SHOWN {
                    record_errors.push(q.error.to_string());
                }
            }
        });
        let name = path.display();
        let (header, stats, doc_error) = (result.header, result.stats, result.error);
        let version = header
            .as_ref()
            .map(|h| format!("{} ({})", h.version.label(), h.version.namespace))
            .unwrap_or_else(|| "unknown version".into());
        let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(io_failure);
        w(
            out,
            format!(
                "{name}: {version}: {} records, {} provtillfällen, {} delprovsresultat, {} record errors, {} warnings",
                stats.records,
                stats.provtillfallen,
                stats.delprovsresultat,
                stats.quarantined,
                stats.warning_count
            ),
        )?;
        for warning in &stats.warnings {
            w(out, format!("  warning: {warning}"))?;
        }
        if stats.warning_count > stats.warnings.len() as u64 {
            w(
                out,
                format!(
                    "  … and {} more warnings",
                    stats.warning_count - stats.warnings.len() as u64
                ),
            )?;
        }
        for ((field, value), n) in &stats.unknown_values {
            w(
                out,
                format!("  unknown {} value {value:?}: {n} times", field.as_str()),
            )?;
        }
        for e in &record_errors {
            w(out, format!("  record error: {e}"))?;
        }
        if stats.quarantined > record_errors.len() as u64 {
            w(
                out,
                format!(
                    "  … and {} more record errors",
                    stats.quarantined - record_errors.len() as u64
                ),
            )?;
        }
        if let Some(e) = &doc_error {
            w(out, format!("  document error: {e}"))?;
        }
        if doc_error.is_some() || !record_errors.is_empty() {
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(Failure::Data(anyhow::anyhow!(
            "{failed} of {} documents have errors",
            files.len()
        )));
    }
    Ok(())
}

async fn import_files(
    store: &dyn Store,
    source: &str,
    files: &[PathBuf],
    limits: Limits,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let mut total = store::ApplySummary::default();
    for path in files {
        let input = open_input(path)?;
        let started = Instant::now();
        let ctx = ApplyContext {
            source: source.to_owned(),
            document: path.display().to_string(),
            now: Utc::now(),
        };
        let report = match import_document(store, input, limits, ctx).await {
            Ok(r) => r,
            Err(ImportError::Document(e)) => {
                let what = describe_document_error(path, &e);
                return Err(Failure::Data(anyhow::anyhow!(what)));
            }
            Err(e) => {
                return Err(Failure::from(e)).map_err(|f| match f {
                    Failure::Runtime(e) => {
                        Failure::Runtime(e.context(format!("importing {}", path.display())))
                    }
                    other => other,
                })
            }
        };
        print_report(out, &path.display().to_string(), &report, started.elapsed())?;
        total.add(&report.summary);
    }
    if files.len() > 1 {
        writeln!(
            out,
            "total: {} records, {} changed, {} unchanged, {} cleared, {} quarantined",
            total.records, total.changed, total.unchanged, total.cleared, total.quarantined
        )
        .map_err(io_failure)?;
    }
    Ok(())
}

fn describe_document_error(path: &Path, e: &DocumentError) -> String {
    format!(
        "{}: {e}; nothing from this document was applied",
        path.display()
    )
}

/// One line per imported document, the same for `import` and `demo`.
pub fn print_report(
    out: &mut dyn Write,
    name: &str,
    r: &ImportReport,
    elapsed: std::time::Duration,
) -> Result<(), Failure> {
    let s = &r.summary;
    writeln!(
        out,
        "{name}: {}: {} records → {} changed, {} unchanged, {} cleared, {} quarantined ({} rows written, {:.2} s)",
        r.header.version.label(),
        s.records,
        s.changed,
        s.unchanged,
        s.cleared,
        s.quarantined,
        s.rows_written(),
        elapsed.as_secs_f64()
    )
    .map_err(io_failure)?;
    for w in r.stats.warnings.iter().take(5) {
        writeln!(out, "  warning: {w}").map_err(io_failure)?;
    }
    if r.stats.warning_count > 5 {
        writeln!(out, "  … {} warnings in all", r.stats.warning_count).map_err(io_failure)?;
    }
    Ok(())
}

//! `simulate`: the simulated platform served on a local port until Ctrl-C.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::failure::{io_failure, Failure};

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
    /// Persons in the simulated provtjänst register (the provisioning API at
    /// /provisioning/v1, its token endpoint at /transaction); default: the students and a
    /// tenth more registered without results. 0 serves no provisioning API.
    #[arg(long, value_name = "N")]
    pub provisioning_persons: Option<u64>,
    /// The provisioning API's requests per second before 429 (the published 10).
    #[arg(long, default_value_t = 10)]
    pub provisioning_rate_limit: u32,
    /// How long a provisioning token's JWT stays valid (its expires_in always says 1h).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub provisioning_token_ttl: std::time::Duration,
    /// Wait this long before every provisioning answer (e.g. "100ms").
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub provisioning_latency: std::time::Duration,
    /// Probability of a burst of three 429s starting at a provisioning request.
    #[arg(long, default_value_t = 0.0)]
    pub provisioning_burst_429: f64,
    /// Probability of a burst of three 503s starting at a provisioning request.
    #[arg(long, default_value_t = 0.0)]
    pub provisioning_burst_503: f64,
    /// Every this many list requests, a person is added, one changed and one deleted.
    #[arg(long, value_name = "N")]
    pub provisioning_churn_every: Option<u64>,
}

pub(crate) async fn simulate(args: SimulateArgs, out: &mut dyn Write) -> Result<(), Failure> {
    use crate::simulate::server::{
        serve_tls_with, serve_with, Faults, Simulator, Stats, VirtualClock,
    };
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
    let population = Population {
        students: args.students,
        seed: args.seed,
        version,
        year: 2026,
    };
    let persons = args
        .provisioning_persons
        .unwrap_or(args.students + args.students / 10);
    let provisioning = (persons > 0).then(|| {
        use crate::simulate::provisioning::{ProvFaults, ProvSim, Register};
        ProvSim::new(
            Register::generate(&population, persons),
            ProvFaults {
                rate_limit_per_second: Some(args.provisioning_rate_limit),
                burst_429: args.provisioning_burst_429,
                burst_503: args.provisioning_burst_503,
                token_ttl: args.provisioning_token_ttl,
                latency: args.provisioning_latency,
                max_lookup_ids: 100,
                churn_every: args.provisioning_churn_every,
                seed: args.seed,
            },
        )
    });
    let platform = Platform::new(
        population,
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
    // One write for both lines: a reader that takes the first line and closes the pipe (a test,
    // `| head -1`) must not leave the second to fail on a closed pipe and stop the simulator.
    let mut banner = format!(
        "simulated platform: {scheme}://{addr} ({} students, {} changes, schema {}); source url = \"{scheme}://{addr}\"; Ctrl-C stops\n",
        args.students,
        platform.changes_by(chrono::Utc::now()),
        version.name
    );
    if let Some(p) = &provisioning {
        let persons = p.register.lock().map(|r| r.persons.len()).unwrap_or(0);
        banner.push_str(&format!(
            "simulated provisioning API: {scheme}://{addr}{} ({persons} persons); \
             base_url = \"{scheme}://{addr}{}\", auth_url = \"{scheme}://{addr}{}\", any entity_id\n",
            crate::simulate::provisioning::BASE_PATH,
            crate::simulate::provisioning::BASE_PATH,
            crate::simulate::provisioning::TOKEN_PATH,
        ));
    }
    out.write_all(banner.as_bytes()).map_err(io_failure)?;
    out.flush().map_err(io_failure)?;
    let extra = provisioning
        .as_ref()
        .map(|p| p.router())
        .unwrap_or_default();
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
        Some(tls) => serve_tls_with(listener, sim, stats, tls, extra, ctrl_c).await,
        None => serve_with(listener, sim, stats, extra, ctrl_c).await,
    };
    ticker.abort();
    result.map_err(|e| Failure::Runtime(e.into()))
}

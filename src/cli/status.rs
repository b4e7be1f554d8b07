//! `status`: per source watermark, lag, leader and latest windows, and the tables' sizes; as text
//! for people or as JSON for scripts, both printed from the same typed snapshot. It reads without
//! migrating, and exits 4 when a configured source is not ready by `/readyz`'s rule (see
//! [`crate::daemon::readiness`]), so a script or a check can act on it.

use std::io::Write;

use chrono::{DateTime, Utc};

use super::failure::{io_failure, Failure};
use super::{with_store, Invocation, Open};
use crate::config::Settings;
use crate::daemon::{not_ready, Role, SourceSnapshot};
use crate::store::{RunRow, SchemaState, Store, TableCounts};

/// What `status` reports. Serialized as `status --json` prints it; the field order is the JSON's.
#[derive(serde::Serialize)]
struct Status {
    /// Every configured source is ready.
    ready: bool,
    sources: Vec<SourceStatus>,
    /// The `[[provisioning]]` sources.
    provisioning: Vec<ProvisioningStatus>,
    tables: TableCounts,
    /// The database's schema against this build's migrations.
    schema: SchemaState,
    #[serde(serialize_with = "rfc3339")]
    at: DateTime<Utc>,
}

/// A provisioning source as `status` reports it.
#[derive(serde::Serialize)]
struct ProvisioningStatus {
    source: String,
    /// When its last complete pass ended (RFC 3339).
    last_complete: Option<String>,
    /// By the daemon's rule: a complete pass within three schedules.
    ready: bool,
    not_ready: Option<String>,
    recent_passes: Vec<PassLine>,
}

/// One `prov_pass` row.
#[derive(serde::Serialize)]
struct PassLine {
    started_at: String,
    outcome: String,
    requests: u64,
    duration_ms: u64,
    /// Per kind: seen, added, changed, removed.
    person: [u64; 4],
    duty: [u64; 4],
    group: [u64; 4],
    activity: [u64; 4],
    error: Option<String>,
}

#[derive(serde::Serialize)]
struct SourceStatus {
    source: String,
    /// None: a single-instance database (SQLite); otherwise which instance leads, if any.
    leader: Option<String>,
    watermark_local: Option<String>,
    watermark_utc: Option<String>,
    lag_seconds: Option<i64>,
    /// By `/readyz`'s rule; `None` for a source the database knows but the configuration does
    /// not name (nothing is expected of it).
    ready: Option<bool>,
    /// Why not, when not.
    not_ready: Option<String>,
    /// When the client certificate and the CA file expire (RFC 3339), or why that is unknown
    /// here; absent for a file the source does not use.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_certificate_expires: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_expires: Option<String>,
    recent_windows: Vec<RunRow>,
}

/// A certificate's expiry for people: the date and the days left, or why it is unknown.
fn expiry_text(file: &crate::config::CertificateFile, now: DateTime<Utc>) -> String {
    match file {
        crate::config::CertificateFile::Expires(at) => {
            format!(
                "{} ({})",
                at.to_rfc3339(),
                super::admin::days_left(*at, now)
            )
        }
        crate::config::CertificateFile::Unknown(why) => format!("unknown: {why}"),
    }
}

fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339())
}

/// For a SQLite URL, that its file exists: connecting would create it empty.
fn require_existing_sqlite(url: &str) -> Result<(), Failure> {
    use std::str::FromStr;
    if crate::store::Backend::of_url(url) != Some(crate::store::Backend::Sqlite) {
        return Ok(());
    }
    let Ok(options) = sqlx::sqlite::SqliteConnectOptions::from_str(url) else {
        return Ok(()); // connecting reports the bad URL
    };
    let path = options.get_filename();
    if path.as_os_str() == ":memory:" || path.exists() {
        return Ok(());
    }
    Err(Failure::Runtime(anyhow::anyhow!(
        "no database at {} yet: `nprov-sync run`, `sync` or `migrate` creates it",
        path.display()
    )))
}

/// Every configured source, then any other the database knows.
async fn snapshot(
    store: &dyn Store,
    settings: &Settings,
    config: Option<&std::path::Path>,
) -> Result<Status, Failure> {
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
    let runtime = |e: crate::store::StoreError| Failure::Runtime(e.into());
    let schema = store.schema_state().await.map_err(runtime)?;
    // Its tables may not mean what this build reads them as: refused like everywhere else.
    schema.check()?;
    let mut names: Vec<String> = settings.source.iter().map(|s| s.name.clone()).collect();
    let provisioning_names: Vec<&str> = settings
        .provisioning
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    for known in store.source_rows().await.map_err(runtime)? {
        if !names.contains(&known.source) && !provisioning_names.contains(&known.source.as_str()) {
            names.push(known.source);
        }
    }
    let now = Utc::now();
    let max_age = settings
        .daemon()
        .map_err(|e| Failure::Config(e.into()))?
        .ready_max_age;
    let mut sources = Vec::new();
    for name in names {
        let wm = store.watermark(&name).await.map_err(runtime)?;
        let recent_windows = store.recent_runs(&name, 5).await.map_err(runtime)?;
        let leader = store.leader(&name).await.map_err(runtime)?;
        let configured = settings.source.iter().find(|s| s.name == name);
        let (ready, not_ready) = if configured.is_some() {
            let verdict = source_ready(&name, &wm, &leader, now, max_age);
            (Some(verdict.is_none()), verdict)
        } else {
            (None, None)
        };
        let [(_, client), (_, ca)] = configured
            .map(|c| c.certificate_files(config, credentials.as_deref()))
            .unwrap_or([("", None), ("", None)]);
        sources.push(SourceStatus {
            ready,
            not_ready,
            client_certificate_expires: client.map(|f| expiry_text(&f, now)),
            ca_expires: ca.map(|f| expiry_text(&f, now)),
            leader: leader.map(|l| {
                l.holder
                    .unwrap_or_else(|| "none: no instance leads it".into())
            }),
            watermark_local: wm
                .as_ref()
                .map(|w| w.local.format("%Y-%m-%dT%H:%M").to_string()),
            watermark_utc: wm.as_ref().map(|w| w.utc.to_rfc3339()),
            lag_seconds: wm.as_ref().map(|w| (now - w.utc).num_seconds()),
            recent_windows,
            source: name,
        });
    }
    let mut provisioning = Vec::new();
    for p in &settings.provisioning {
        provisioning.push(provisioning_status(store, p, now).await.map_err(runtime)?);
    }
    let tables = store.table_counts().await.map_err(runtime)?;
    Ok(Status {
        ready: sources.iter().all(|s| s.ready != Some(false))
            && provisioning.iter().all(|p| p.ready),
        sources,
        provisioning,
        tables,
        schema,
        at: now,
    })
}

/// A provisioning source's last passes and readiness, read without a transaction.
async fn provisioning_status(
    store: &dyn Store,
    p: &crate::config::ProvisioningConfig,
    now: DateTime<Utc>,
) -> Result<ProvisioningStatus, crate::store::StoreError> {
    use crate::store::sql::Value;
    let instant = |t: Option<&str>| {
        t.and_then(crate::provisioning::store::parse_instant)
            .map(crate::store::timestamp)
    };
    let last = store
        .read_texts(
            "SELECT CAST(last_complete_finished AS TEXT) FROM prov_state WHERE source = $1",
            &[Value::Text(&p.name)],
            "reading a provisioning source's state",
        )
        .await?
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten());
    let last_at = last
        .as_deref()
        .and_then(crate::provisioning::store::parse_instant);
    let rows = store
        .read_texts(
            "SELECT CAST(started_at AS TEXT), outcome, CAST(requests AS TEXT),
                    CAST(duration_ms AS TEXT),
                    CAST(person_seen AS TEXT), CAST(person_added AS TEXT),
                    CAST(person_changed AS TEXT), CAST(person_removed AS TEXT),
                    CAST(duty_seen AS TEXT), CAST(duty_added AS TEXT),
                    CAST(duty_changed AS TEXT), CAST(duty_removed AS TEXT),
                    CAST(group_seen AS TEXT), CAST(group_added AS TEXT),
                    CAST(group_changed AS TEXT), CAST(group_removed AS TEXT),
                    CAST(activity_seen AS TEXT), CAST(activity_added AS TEXT),
                    CAST(activity_changed AS TEXT), CAST(activity_removed AS TEXT), error
             FROM prov_pass WHERE source = $1 ORDER BY id DESC LIMIT 5",
            &[Value::Text(&p.name)],
            "reading a provisioning source's passes",
        )
        .await?;
    let recent_passes = rows
        .into_iter()
        .map(|r| {
            let n = |i: usize| {
                r.get(i)
                    .and_then(|v| v.as_deref())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            let kind = |k: usize| [n(4 + 4 * k), n(5 + 4 * k), n(6 + 4 * k), n(7 + 4 * k)];
            PassLine {
                started_at: instant(r.first().and_then(|v| v.as_deref())).unwrap_or_default(),
                outcome: r.get(1).cloned().flatten().unwrap_or_default(),
                requests: n(2),
                duration_ms: n(3),
                person: kind(0),
                duty: kind(1),
                group: kind(2),
                activity: kind(3),
                error: r.get(20).cloned().flatten(),
            }
        })
        .collect();
    let tz: chrono_tz::Tz = p.timezone.parse().unwrap_or(chrono_tz::Europe::Stockholm);
    let interval = crate::schedule::interval(&p.schedule, tz, now)
        .unwrap_or(std::time::Duration::from_secs(3600));
    let bound = interval * 3;
    let not_ready = match last_at {
        None => Some("no complete provisioning pass yet".to_owned()),
        Some(at) => {
            let age = (now - at).to_std().unwrap_or_default();
            (age > bound).then(|| {
                format!(
                    "no complete provisioning pass for {} (bound: 3 schedules, {})",
                    humantime::format_duration(std::time::Duration::from_secs(age.as_secs())),
                    humantime::format_duration(bound)
                )
            })
        }
    };
    Ok(ProvisioningStatus {
        source: p.name.clone(),
        last_complete: last_at.map(crate::store::timestamp),
        ready: not_ready.is_none(),
        not_ready,
        recent_passes,
    })
}

/// Why a configured source is not ready, or `None` when it is: some instance leads it (always so
/// on SQLite, where one instance syncs) and it committed a window within `max_age`. The daemon's
/// rule, applied to what the database shows: its last commit is the watermark's `updated_at`.
fn source_ready(
    name: &str,
    wm: &Option<crate::store::Watermark>,
    leader: &Option<crate::store::LeaderInfo>,
    now: DateTime<Utc>,
    max_age: std::time::Duration,
) -> Option<String> {
    if leader.as_ref().is_some_and(|l| l.holder.is_none()) {
        return Some("no instance leads it".into());
    }
    let snapshot = SourceSnapshot {
        name: name.to_owned(),
        role: Role {
            leader: true,
            since: None,
        },
        last_success: wm.as_ref().map(|w| w.updated_at),
        // Not part of the rule.
        consecutive_failures: 0,
    };
    // No start-up grace: a source that never committed is not ready.
    not_ready(&snapshot, now, DateTime::<Utc>::MIN_UTC, max_age)
}

#[derive(Debug, clap::Args)]
pub struct StatusCommand {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

impl StatusCommand {
    pub(super) async fn run(
        self,
        ctx: &Invocation<'_>,
        out: &mut dyn Write,
    ) -> Result<(), Failure> {
        // Reading needs no right to migrate: a read-only role or user can run it. Nor does it
        // create anything: a SQLite file that is not there yet is said so, not made empty.
        require_existing_sqlite(&ctx.settings.database.url)?;
        with_store(ctx.settings, Open::Connected, async |store| {
            status(store, ctx.settings, ctx.config_path(), self.json, out).await
        })
        .await
    }
}

async fn status(
    store: &dyn Store,
    settings: &Settings,
    config: Option<&std::path::Path>,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let status = snapshot(store, settings, config).await?;
    if json {
        // Through a `Value`, so keys come out as they always have (serde_json's map order).
        let doc = serde_json::to_value(&status).expect("status serializes");
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON values serialize")
        )
        .map_err(io_failure)?;
        return fail_unless_ready(&status);
    }
    for s in &status.sources {
        let lag = s
            .lag_seconds
            .map(|l| format!("{}h{:02}m", l / 3600, (l % 3600) / 60));
        writeln!(
            out,
            "source {}: watermark {} (lag {})",
            s.source,
            s.watermark_local.as_deref().unwrap_or("not set"),
            lag.as_deref().unwrap_or("-")
        )
        .map_err(io_failure)?;
        if let Some(leader) = &s.leader {
            writeln!(out, "  leader: {leader}").map_err(io_failure)?;
        }
        if let Some(why) = &s.not_ready {
            writeln!(out, "  not ready: {why}").map_err(io_failure)?;
        }
        for (what, expiry) in [
            ("client certificate", &s.client_certificate_expires),
            ("CA (ca_file)", &s.ca_expires),
        ] {
            if let Some(expiry) = expiry {
                writeln!(out, "  {what} expires {expiry}").map_err(io_failure)?;
            }
        }
        for r in &s.recent_windows {
            writeln!(
                out,
                "  {} {} {}..{} {} records {} changed {}{}",
                r.finished_at,
                r.kind,
                r.from_local,
                r.tom_local,
                r.outcome,
                r.records,
                r.changed,
                r.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )
            .map_err(io_failure)?;
        }
    }
    for p in &status.provisioning {
        writeln!(
            out,
            "provisioning {}: last complete pass {}",
            p.source,
            p.last_complete.as_deref().unwrap_or("never")
        )
        .map_err(io_failure)?;
        if let Some(why) = &p.not_ready {
            writeln!(out, "  not ready: {why}").map_err(io_failure)?;
        }
        for r in &p.recent_passes {
            let k = |c: &[u64; 4]| format!("{}/{}/{}/{}", c[0], c[1], c[2], c[3]);
            writeln!(
                out,
                "  {} {} persons {} duties {} groups {} activities {} (seen/added/changed/removed), {} requests in {:.1} s{}",
                r.started_at,
                r.outcome,
                k(&r.person),
                k(&r.duty),
                k(&r.group),
                k(&r.activity),
                r.requests,
                r.duration_ms as f64 / 1000.0,
                r.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
            )
            .map_err(io_failure)?;
        }
    }
    let c = &status.tables;
    writeln!(
        out,
        "tables: provomrade {}, provtillfalle {}, delprovsresultat {}, change_log {}, quarantine {}",
        c.provomrade, c.provtillfalle, c.delprovsresultat, c.change_log, c.quarantine
    )
    .map_err(io_failure)?;
    let schema = &status.schema;
    writeln!(
        out,
        "schema: migration {} of this build's {}{}",
        schema
            .applied
            .map_or_else(|| "none".to_owned(), |v| v.to_string()),
        schema.known,
        match schema.pending {
            0 => String::new(),
            n => format!(" ({n} pending: the next `run`, `sync` or `migrate` applies them)"),
        }
    )
    .map_err(io_failure)?;
    fail_unless_ready(&status)
}

/// Exit 4 when a configured source is not ready, naming each.
fn fail_unless_ready(status: &Status) -> Result<(), Failure> {
    if status.ready {
        return Ok(());
    }
    let why: Vec<String> = status
        .sources
        .iter()
        .filter_map(|s| Some(format!("source {}: {}", s.source, s.not_ready.as_ref()?)))
        .chain(status.provisioning.iter().filter_map(|p| {
            Some(format!(
                "provisioning {}: {}",
                p.source,
                p.not_ready.as_ref()?
            ))
        }))
        .collect();
    Err(Failure::NotReady(anyhow::anyhow!(
        "not ready: {}",
        why.join("; ")
    )))
}

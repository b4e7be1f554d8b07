//! `migrate` and `config example|check`.

use std::io::Write;
use std::path::Path;

use super::failure::{io_failure, Failure};
use super::setup::build_sources;
use super::{with_store, Invocation, Open};
use crate::config::{Settings, EXAMPLE};
use crate::store;

#[derive(Debug, clap::Args)]
pub struct Migrate {}

impl Migrate {
    pub(super) async fn run(
        self,
        ctx: &Invocation<'_>,
        out: &mut dyn Write,
    ) -> Result<(), Failure> {
        let settings = ctx.settings;
        // Connected only: migrating is the command (and `migrate_on_start = false` does not
        // stop it).
        with_store(settings, Open::Connected, async |store| {
            super::setup::migrate(store, settings).await?;
            writeln!(
                out,
                "migrated {}",
                store::redact_url(&settings.database.url)
            )
            .map_err(io_failure)
        })
        .await
    }
}

#[derive(Debug, clap::Args)]
pub struct ConfigExample {}

impl ConfigExample {
    pub(super) fn run(self, out: &mut dyn Write) -> Result<(), Failure> {
        out.write_all(EXAMPLE.as_bytes()).map_err(io_failure)
    }
}

#[derive(Debug, clap::Args)]
pub struct ConfigCheck {}

impl ConfigCheck {
    pub(super) fn run(self, ctx: &Invocation<'_>, out: &mut dyn Write) -> Result<(), Failure> {
        config_check(ctx.config_path(), ctx.settings, out)
    }
}

fn config_check(
    config: Option<&Path>,
    settings: &Settings,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    // Building the sources reads their credential files: a check that passes means syncing can
    // start.
    let sources = build_sources(&config.map(Path::to_path_buf), settings, None)?;
    let now = chrono::Utc::now();
    for s in &sources {
        writeln!(out, "source {}: {}", s.name(), s.client.url_base()).map_err(io_failure)?;
        for (what, at) in [
            ("client certificate", s.certificates.client),
            ("CA (ca_file)", s.certificates.ca),
        ] {
            if let Some(at) = at {
                writeln!(
                    out,
                    "  {what} expires {} ({})",
                    at.format("%Y-%m-%d %H:%M UTC"),
                    days_left(at, now)
                )
                .map_err(io_failure)?;
            }
        }
    }
    // The provisioning sources too: their certificates, key file and limits.
    let provisioning = super::provisioning::build(&config.map(Path::to_path_buf), settings, None)?;
    for p in &provisioning {
        writeln!(
            out,
            "provisioning {}: {} at {} requests/s, pages of {}, schedule {:?}",
            p.name(),
            p.api.base_url(),
            p.api.rate_limit(),
            p.page_size,
            p.schedule
        )
        .map_err(io_failure)?;
        if let Some(at) = p.certificates.client {
            writeln!(
                out,
                "  client certificate expires {} ({})",
                at.format("%Y-%m-%d %H:%M UTC"),
                days_left(at, now)
            )
            .map_err(io_failure)?;
        }
    }
    let roots = crate::source::trust::system_roots();
    writeln!(
        out,
        "trust: {} CA certificates from {}, for the platform and PostgreSQL \
         (a source's ca_file and the database's sslrootcert add to them)",
        roots.certificates, roots.origin
    )
    .map_err(io_failure)?;
    for error in &roots.errors {
        writeln!(out, "  not read: {error}").map_err(io_failure)?;
    }
    writeln!(
        out,
        "configuration OK ({}): database {}",
        config
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "defaults and environment".into()),
        store::redact_url(&settings.database.url)
    )
    .map_err(io_failure)
}

/// "in 198 days", or "EXPIRED 3 days ago": how `config check` and `status` put an expiry.
pub(super) fn days_left(
    at: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let days = (at - now).num_days();
    if at < now {
        format!("EXPIRED {} days ago", -days)
    } else {
        format!("in {days} days")
    }
}

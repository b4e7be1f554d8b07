//! The provisioning mirror: what the huvudman has transferred to Skolverket's provtjänst
//! (persons, duties, groups, activities), read back through the provisioning API's GET and
//! lookup endpoints in full passes, since the API has no change filter.
//!
//! - [`model`]: the API's records, and the same as stored (no personnummer in clear, protected
//!   persons without names), with keyed content hashes.
//! - [`civic`]: the HMAC key of `civic_no_key_file`.
//! - [`client`]: the GNAP token and the API's requests, through the results source's client.
//! - [`decide`]: what a complete pass may remove (the `max_removed_share` guard), pure.
//! - [`store`]: the mirror's writes, once for both backends ([`crate::store::sql`]).
//! - [`pass`]: one pass: every kind to its last page, lookups of changed persons, removals.

pub mod civic;
pub mod client;
pub mod decide;
pub mod model;
pub mod pass;
pub mod store;

/// The API's four kinds, in the order a pass reads them (the order they are transferred in).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Person,
    Duty,
    Group,
    Activity,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Person, Kind::Duty, Kind::Group, Kind::Activity];

    /// The `kind` label and column prefix (`person`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Person => "person",
            Kind::Duty => "duty",
            Kind::Group => "group",
            Kind::Activity => "activity",
        }
    }

    /// For messages: "persons page 3".
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Person => "persons",
            Kind::Duty => "duties",
            Kind::Group => "groups",
            Kind::Activity => "activities",
        }
    }

    /// The list endpoint, below the base URL.
    pub fn path(self) -> &'static str {
        match self {
            Kind::Person => "/persons",
            Kind::Duty => "/duties",
            Kind::Group => "/groups",
            Kind::Activity => "/activities",
        }
    }

    /// The kind's table.
    pub fn table(self) -> &'static str {
        match self {
            Kind::Person => "prov_person",
            Kind::Duty => "prov_duty",
            Kind::Group => "prov_group",
            Kind::Activity => "prov_activity",
        }
    }

    /// Its position in [`Kind::ALL`], for per-kind arrays.
    pub fn index(self) -> usize {
        match self {
            Kind::Person => 0,
            Kind::Duty => 1,
            Kind::Group => 2,
            Kind::Activity => 3,
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

use crate::config::{ConfigError, ProvisioningSpec, Settings};
use crate::source::{Client, SourceError};

/// A provisioning source ready to pass: its client built, its key read.
pub struct ProvSource {
    pub api: client::Api,
    pub keyed: civic::Keyed,
    pub page_size: u32,
    pub max_removed_share: f64,
    /// Cron expression with seconds, in `timezone`; checked.
    pub schedule: String,
    pub timezone: chrono_tz::Tz,
    pub certificates: crate::config::CertificateDates,
}

impl ProvSource {
    /// Builds the clients of a checked spec.
    ///
    /// # Errors
    /// What the HTTP client refuses, named by the setting as `provisioning.<name>.<key>`.
    pub fn from_spec(spec: ProvisioningSpec) -> Result<ProvSource, ConfigError> {
        let name = spec.name.clone();
        let invalid = |fallback: &str, e: SourceError| {
            let (setting, message) = match e {
                SourceError::Config {
                    setting, message, ..
                } => (setting.to_owned(), message),
                other => (fallback.to_owned(), other.to_string()),
            };
            ConfigError::Invalid {
                origin: format!("provisioning.{name}.{setting}"),
                message,
            }
        };
        let api = Client::with_path(spec.api, "").map_err(|e| invalid("base_url", e))?;
        let auth = Client::with_path(spec.auth, "").map_err(|e| invalid("auth_url", e))?;
        Ok(ProvSource {
            api: client::Api::new(api, auth, spec.proof, spec.max_response_bytes),
            keyed: civic::Keyed::new(spec.civic_key),
            page_size: spec.page_size,
            max_removed_share: spec.max_removed_share,
            schedule: spec.schedule,
            timezone: spec.timezone,
            certificates: spec.certificates,
        })
    }

    pub fn name(&self) -> &str {
        self.api.name()
    }

    /// Runs one pass and records it.
    ///
    /// # Errors
    /// Only when the pass's row cannot be written.
    pub async fn pass(
        &self,
        store: &dyn crate::store::Store,
    ) -> Result<pass::PassReport, crate::store::StoreError> {
        pass::run(
            &self.api,
            store,
            &self.keyed,
            &pass::PassSpec {
                source: self.name(),
                page_size: self.page_size,
                max_removed_share: self.max_removed_share,
            },
        )
        .await
    }
}

/// Every configured `[[provisioning]]`, built.
///
/// # Errors
/// The first source whose settings, credentials or key are wrong.
pub fn sources(
    settings: &Settings,
    config_path: Option<&std::path::Path>,
    credentials_dir: Option<&std::path::Path>,
) -> Result<Vec<ProvSource>, ConfigError> {
    settings
        .provisioning
        .iter()
        .map(|p| ProvSource::from_spec(p.spec(config_path, credentials_dir)?))
        .collect()
}

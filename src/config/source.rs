//! A `[[source]]`: the text settings as the file and the environment give them
//! ([`SourceConfig`]), and the same parsed once into typed values with the credentials read
//! ([`SourceSpec`]), which the sync engine and the daemon run from. Configuration builds no HTTP
//! client and knows nothing of the sync engine.

use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};

use super::credentials::CertificateDates;
use super::{invalid, ConfigError, ParserSettings};
use crate::source::{Redirects, SourceSettings};
use crate::window::Plan;
use crate::xml::Limits;

/// Windows a catch-up requests at once unless a source says otherwise: two. Once the window
/// size has settled, the next window is requested while the last is fetched and written, so the
/// platform's latency for one overlaps its rendering of the other. A 20 000-student year on a
/// realistic platform (250 ms per request, 50 ms per MiB, 5 requests/s): 6.7 s with one at a
/// time, 3.9 s with two, 3.6 s with three; on a platform at memory speed two cost no more CPU
/// than one (0.95 of it, paired runs). Peak memory varies from run to run with one as with two
/// (about 41 to 69 MiB at 20 000 students; each spool holds at most 1 MiB).
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 2;
/// At most this many windows' requests at once: each waits in a spool of its own (1 MiB of
/// memory, the rest in a temporary file), and a platform gains nothing from more.
pub const MAX_IN_FLIGHT: u32 = 4;

fn default_source_name() -> String {
    crate::store::DEFAULT_SOURCE.into()
}
fn default_timezone() -> String {
    "Europe/Stockholm".into()
}
/// When `run` syncs a source unless its `schedule` says otherwise: every five minutes.
pub const DEFAULT_SCHEDULE: &str = "0 */5 * * * *";

fn default_schedule() -> String {
    DEFAULT_SCHEDULE.into()
}
fn default_overlap() -> String {
    "30m".into()
}
fn default_safety_lag() -> String {
    "2m".into()
}
fn default_max_window() -> String {
    "31d".into()
}
fn default_max_in_flight() -> u32 {
    DEFAULT_MAX_IN_FLIGHT
}
fn default_target_response_bytes() -> u64 {
    crate::window::DEFAULT_TARGET_RESPONSE_BYTES
}
fn default_max_response_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_rate_limit() -> u32 {
    5
}
fn default_connect_timeout() -> String {
    "10s".into()
}
fn default_request_timeout() -> String {
    "5m".into()
}
fn default_read_timeout() -> String {
    "60s".into()
}
fn default_max_retry_wait() -> String {
    "5m".into()
}
fn default_follow_redirects() -> String {
    "never".into()
}
fn default_max_attempts() -> u32 {
    6
}
fn default_body_attempts() -> u32 {
    3
}

/// One `[[source]]`: a platform, its credentials and how to poll it. Secrets are never in the
/// file itself: the `*_file` settings name files (relative names are looked up in systemd's
/// `$CREDENTIALS_DIRECTORY` when it is set, else beside the config file).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(default = "default_source_name")]
    pub name: String,
    pub url: String,
    pub start: String,
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Cron expression with seconds, in `timezone`.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    #[serde(default = "default_overlap")]
    pub overlap: String,
    #[serde(default = "default_safety_lag")]
    pub safety_lag: String,
    #[serde(default = "default_max_window")]
    pub max_window: String,
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    #[serde(default = "default_target_response_bytes")]
    pub target_response_bytes: u64,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    #[serde(default = "default_rate_limit")]
    pub rate_limit_per_second: u32,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    #[serde(default = "default_request_timeout")]
    pub request_timeout: String,
    #[serde(default = "default_read_timeout")]
    pub read_timeout: String,
    #[serde(default = "default_max_retry_wait")]
    pub max_retry_wait: String,
    /// `never` or `same-origin`.
    #[serde(default = "default_follow_redirects")]
    pub follow_redirects: String,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_body_attempts")]
    pub body_attempts: u32,
    #[serde(default)]
    pub client_certificate_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub basic_user: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// A source's settings as typed values, its credentials read.
pub struct SourceSpec {
    /// The HTTP client's settings (name, URL, rate, timeouts, redirects, credentials).
    pub client: SourceSettings,
    pub plan: Plan,
    /// Local time of the first window.
    pub start: NaiveDateTime,
    /// Cron expression with seconds, in the plan's zone; checked.
    pub schedule: String,
    /// Parser limits; `max_document_bytes` is the source's `max_response_bytes`.
    pub limits: Limits,
    pub body_attempts: u32,
    pub target_response_bytes: u64,
    pub max_in_flight: u32,
    /// When the client certificate and the CA expire, if configured and readable.
    pub certificates: CertificateDates,
}

impl SourceConfig {
    /// Parses the text settings into typed values and reads the source's credential files:
    /// everything a client and the sync engine need, checked.
    ///
    /// # Errors
    /// A message naming `source.<name>.<key>` and what is wrong with it.
    pub fn spec(
        &self,
        parser: &ParserSettings,
        config_path: Option<&Path>,
        credentials_dir: Option<&Path>,
    ) -> Result<SourceSpec, ConfigError> {
        let key = |k: &str| format!("source.{}.{k}", self.name);
        let duration = |k: &str, v: &str| -> Result<chrono::Duration, ConfigError> {
            let d = humantime::parse_duration(v).map_err(|e| {
                invalid(
                    key(k),
                    format!("{v:?} is not a duration like \"30m\" or \"1d\": {e}"),
                )
            })?;
            chrono::Duration::from_std(d).map_err(|e| invalid(key(k), e.to_string()))
        };
        let std_duration = |k: &str, v: &str| -> Result<std::time::Duration, ConfigError> {
            humantime::parse_duration(v)
                .map_err(|e| invalid(key(k), format!("{v:?} is not a duration like \"10s\": {e}")))
        };
        let tz: chrono_tz::Tz = self
            .timezone
            .parse()
            .map_err(|e| invalid(key("timezone"), format!("{:?}: {e}", self.timezone)))?;
        crate::schedule::check(&self.schedule, tz).map_err(|e| invalid(key("schedule"), e))?;
        let start =
            crate::window::parse_local(&self.start).map_err(|e| invalid(key("start"), e))?;
        let plan = crate::window::Plan {
            tz,
            overlap: duration("overlap", &self.overlap)?,
            safety_lag: duration("safety_lag", &self.safety_lag)?,
            max_window: duration("max_window", &self.max_window)?,
        };
        plan.validate().map_err(|e| invalid(key("max_window"), e))?;
        let rate = std::num::NonZeroU32::new(self.rate_limit_per_second)
            .ok_or_else(|| invalid(key("rate_limit_per_second"), "must be at least 1"))?;
        if !(1..=MAX_IN_FLIGHT).contains(&self.max_in_flight) {
            return Err(invalid(
                key("max_in_flight"),
                "must be 1 (one window at a time) to 4 (the next windows requested while the last is written)",
            ));
        }
        if self.max_attempts == 0 || self.body_attempts == 0 {
            return Err(invalid(key("max_attempts"), "attempts must be at least 1"));
        }
        let (auth, certificates) =
            self.auth(config_path.and_then(Path::parent), credentials_dir)?;
        let redirects = match self.follow_redirects.as_str() {
            "never" => Redirects::Never,
            "same-origin" => Redirects::SameOrigin,
            other => {
                return Err(invalid(
                    key("follow_redirects"),
                    format!("{other:?}: use \"never\" or \"same-origin\""),
                ))
            }
        };
        Ok(SourceSpec {
            client: SourceSettings {
                name: self.name.clone(),
                base_url: self.url.clone(),
                rate_limit_per_second: rate,
                connect_timeout: std_duration("connect_timeout", &self.connect_timeout)?,
                request_timeout: std_duration("request_timeout", &self.request_timeout)?,
                read_timeout: std_duration("read_timeout", &self.read_timeout)?,
                max_retry_wait: std_duration("max_retry_wait", &self.max_retry_wait)?,
                redirects,
                max_attempts: self.max_attempts,
                backoff_base: std::time::Duration::from_millis(500),
                backoff_cap: std::time::Duration::from_secs(60),
                auth,
            },
            plan,
            start,
            schedule: self.schedule.clone(),
            limits: crate::xml::Limits {
                max_record_bytes: parser.max_record_bytes,
                max_document_bytes: Some(self.max_response_bytes),
            },
            body_attempts: self.body_attempts,
            target_response_bytes: self.target_response_bytes,
            max_in_flight: self.max_in_flight,
            certificates,
        })
    }
}

//! A `[[provisioning]]`: a huvudman's account at Skolverket's provtjänst provisioning API, read
//! back in full passes ([`crate::provisioning`]). The text settings as the file and the
//! environment give them ([`ProvisioningConfig`]), and the same parsed once into typed values
//! with the credentials and the HMAC key read ([`ProvisioningSpec`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::credentials::{read_auth, read_secret_file, CertificateDates, CredentialFiles};
use super::{invalid, ConfigError};
use crate::source::{Redirects, SourceSettings};

/// How a token's owner is named to the authorisation server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyProof {
    /// The organisation's entityId in the federation's metadata.
    EntityId(String),
    /// Mutual TLS: base64 of the SHA-256 of the client certificate's DER.
    Mtls { cert_sha256: String },
}

/// The `cert#S256` of a PEM bundle's first certificate: base64 of the SHA-256 of its DER.
pub fn cert_sha256(pem: &[u8]) -> Option<String> {
    use base64::Engine;
    use sha2::Digest;
    let der = x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .find(|p| p.label == "CERTIFICATE")?
        .contents;
    Some(base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&der)))
}

/// The fewest bytes a civic_no key may have: 128 bits.
pub const MIN_KEY_BYTES: usize = 16;

/// A civic_no key from a file's bytes, trailing line ends dropped (an editor's or `echo`'s
/// newline must not change every hash).
///
/// # Errors
/// Fewer than [`MIN_KEY_BYTES`] bytes.
pub fn civic_key(bytes: &[u8]) -> Result<secrecy::SecretBox<Vec<u8>>, String> {
    let mut end = bytes.len();
    while end > 0 && matches!(bytes[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    if end < MIN_KEY_BYTES {
        return Err(format!(
            "the key has {end} bytes; it needs at least {MIN_KEY_BYTES} (make one with \
             `openssl rand -hex 32`)"
        ));
    }
    Ok(secrecy::SecretBox::new(Box::new(bytes[..end].to_vec())))
}

/// Skolverket's production provisioning API.
pub const DEFAULT_BASE_URL: &str = "https://api.skolverket.se/provtjanst/provisioning/v1";
/// The verification test environment, for `config example`'s comment.
pub const VERIFICATION_BASE_URL: &str =
    "https://apigw-pre.skolverket.se/provtjanst/verifieringstest/provisioning/v1";
/// The authorisation server's GNAP transaction endpoint.
pub const DEFAULT_AUTH_URL: &str = "https://nutid-auth.sunet.se/transaction";
/// The published limit of the GET endpoints: 10 requests a second per client IP.
pub const MAX_RATE_LIMIT: u32 = 10;
/// Hourly, on the hour: a register changes in the day, and a pass of 100 000 persons takes
/// minutes at 10 requests a second.
pub const DEFAULT_SCHEDULE: &str = "0 0 * * * *";

fn default_base_url() -> String {
    DEFAULT_BASE_URL.into()
}
fn default_auth_url() -> String {
    DEFAULT_AUTH_URL.into()
}
fn default_schedule() -> String {
    DEFAULT_SCHEDULE.into()
}
fn default_timezone() -> String {
    "Europe/Stockholm".into()
}
fn default_rate_limit() -> u32 {
    MAX_RATE_LIMIT
}
fn default_page_size() -> u32 {
    100
}
fn default_max_removed_share() -> f64 {
    0.2
}
fn default_max_response_bytes() -> u64 {
    32 * 1024 * 1024
}
fn default_connect_timeout() -> String {
    "10s".into()
}
fn default_request_timeout() -> String {
    "2m".into()
}
fn default_read_timeout() -> String {
    "60s".into()
}
fn default_max_retry_wait() -> String {
    "5m".into()
}
fn default_max_attempts() -> u32 {
    6
}

/// One `[[provisioning]]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningConfig {
    pub name: String,
    #[serde(default = "default_base_url")]
    pub base_url: String,
    #[serde(default = "default_auth_url")]
    pub auth_url: String,
    /// The organisation's entityId in the federation's metadata; empty: the `mtls` key proof
    /// (the certificate's SHA-256).
    #[serde(default)]
    pub entity_id: String,
    #[serde(default)]
    pub client_certificate_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The HMAC key of the personnummer (required).
    #[serde(default)]
    pub civic_no_key_file: Option<PathBuf>,
    /// Cron expression with seconds, in `timezone`.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    #[serde(default = "default_timezone")]
    pub timezone: String,
    #[serde(default = "default_rate_limit")]
    pub rate_limit_per_second: u32,
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    #[serde(default = "default_max_removed_share")]
    pub max_removed_share: f64,
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    #[serde(default = "default_request_timeout")]
    pub request_timeout: String,
    #[serde(default = "default_read_timeout")]
    pub read_timeout: String,
    #[serde(default = "default_max_retry_wait")]
    pub max_retry_wait: String,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

/// A provisioning source's settings as typed values, credentials and key read.
pub struct ProvisioningSpec {
    pub name: String,
    /// The API's client settings (base URL, the rate limit, mutual TLS).
    pub api: SourceSettings,
    /// The authorisation server's (its transaction URL, the same certificate).
    pub auth: SourceSettings,
    pub proof: KeyProof,
    /// The HMAC key of `civic_no_key_file`.
    pub civic_key: secrecy::SecretBox<Vec<u8>>,
    pub schedule: String,
    pub timezone: chrono_tz::Tz,
    pub page_size: u32,
    pub max_removed_share: f64,
    pub max_response_bytes: u64,
    pub certificates: CertificateDates,
}

impl ProvisioningConfig {
    /// Parses and checks the settings and reads the credential files and the key.
    ///
    /// # Errors
    /// A message naming `provisioning.<name>.<key>` and what is wrong with it.
    pub fn spec(
        &self,
        config_path: Option<&Path>,
        credentials_dir: Option<&Path>,
    ) -> Result<ProvisioningSpec, ConfigError> {
        let key = |k: &str| format!("provisioning.{}.{k}", self.name);
        let std_duration = |k: &str, v: &str| -> Result<std::time::Duration, ConfigError> {
            humantime::parse_duration(v)
                .map_err(|e| invalid(key(k), format!("{v:?} is not a duration like \"10s\": {e}")))
        };
        let tz: chrono_tz::Tz = self
            .timezone
            .parse()
            .map_err(|e| invalid(key("timezone"), format!("{:?}: {e}", self.timezone)))?;
        crate::schedule::check(&self.schedule, tz).map_err(|e| invalid(key("schedule"), e))?;
        let rate = match self.rate_limit_per_second {
            0 => return Err(invalid(key("rate_limit_per_second"), "must be at least 1")),
            r if r > MAX_RATE_LIMIT => {
                return Err(invalid(
                    key("rate_limit_per_second"),
                    format!(
                        "{r} is more than the {MAX_RATE_LIMIT} requests a second per client IP \
                         that Skolverket allows for these endpoints"
                    ),
                ))
            }
            r => std::num::NonZeroU32::new(r).unwrap_or(std::num::NonZeroU32::MIN),
        };
        if !(1..=100).contains(&self.page_size) {
            return Err(invalid(
                key("page_size"),
                "must be 1 to 100 (the API's limit)",
            ));
        }
        if !(self.max_removed_share > 0.0 && self.max_removed_share <= 1.0) {
            return Err(invalid(
                key("max_removed_share"),
                "must be above 0 and at most 1 (1: any share)",
            ));
        }
        if self.max_attempts == 0 {
            return Err(invalid(key("max_attempts"), "must be at least 1"));
        }
        if self.max_response_bytes < 64 * 1024 {
            return Err(invalid(key("max_response_bytes"), "must be at least 65536"));
        }
        let config_dir = config_path.and_then(Path::parent);
        for (setting, url) in [("base_url", &self.base_url), ("auth_url", &self.auth_url)] {
            check_url(url).map_err(|m| invalid(key(setting), m))?;
        }
        let (auth, certificates) = read_auth(
            &format!("provisioning.{}", self.name),
            &CredentialFiles {
                client_certificate_file: self.client_certificate_file.as_deref(),
                client_key_file: self.client_key_file.as_deref(),
                ca_file: self.ca_file.as_deref(),
                ..CredentialFiles::default()
            },
            config_dir,
            credentials_dir,
        )?;
        let proof = if self.entity_id.trim().is_empty() {
            let Some(cert) = &self.client_certificate_file else {
                return Err(invalid(
                    key("client_certificate_file"),
                    "the mtls key proof needs the client certificate (or set entity_id)",
                ));
            };
            let pem = read_secret_file(
                &key("client_certificate_file"),
                cert,
                config_dir,
                credentials_dir,
            )?;
            let fingerprint = cert_sha256(&pem).ok_or_else(|| {
                invalid(
                    key("client_certificate_file"),
                    "holds no PEM certificate to take the SHA-256 of",
                )
            })?;
            KeyProof::Mtls {
                cert_sha256: fingerprint,
            }
        } else {
            KeyProof::EntityId(self.entity_id.trim().to_owned())
        };
        let Some(key_file) = &self.civic_no_key_file else {
            return Err(invalid(
                key("civic_no_key_file"),
                "is required: the personnummer is stored only as an HMAC under this key (make \
                 one with `openssl rand -hex 32 > civic-no.key`, mode 0600)",
            ));
        };
        let key_bytes = read_secret_file(
            &key("civic_no_key_file"),
            key_file,
            config_dir,
            credentials_dir,
        )?;
        let civic_key = civic_key(&key_bytes).map_err(|m| invalid(key("civic_no_key_file"), m))?;
        let settings = |base_url: &str, rate| -> Result<SourceSettings, ConfigError> {
            Ok(SourceSettings {
                name: self.name.clone(),
                base_url: base_url.to_owned(),
                rate_limit_per_second: rate,
                connect_timeout: std_duration("connect_timeout", &self.connect_timeout)?,
                request_timeout: std_duration("request_timeout", &self.request_timeout)?,
                read_timeout: std_duration("read_timeout", &self.read_timeout)?,
                max_retry_wait: std_duration("max_retry_wait", &self.max_retry_wait)?,
                redirects: Redirects::Never,
                max_attempts: self.max_attempts,
                backoff_base: std::time::Duration::from_millis(500),
                backoff_cap: std::time::Duration::from_secs(60),
                auth: crate::source::Auth {
                    identity_pem: auth.identity_pem.as_ref().map(|p| {
                        use secrecy::ExposeSecret;
                        secrecy::SecretBox::new(Box::new(p.expose_secret().clone()))
                    }),
                    extra_roots_pem: auth.extra_roots_pem.clone(),
                    basic: None,
                    bearer: None,
                },
            })
        };
        Ok(ProvisioningSpec {
            name: self.name.clone(),
            api: settings(&self.base_url, rate)?,
            // Tokens are asked for rarely: one a second is more than a pass ever needs.
            auth: settings(&self.auth_url, std::num::NonZeroU32::MIN)?,
            proof,
            civic_key,
            schedule: self.schedule.clone(),
            timezone: tz,
            page_size: self.page_size,
            max_removed_share: self.max_removed_share,
            max_response_bytes: self.max_response_bytes,
            certificates,
        })
    }
}

/// https, or plain http to loopback only (a simulator): a token travels on every request.
fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?}: {e}"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not contain credentials".into());
    }
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if crate::source::is_loopback(&parsed) => Ok(()),
        "http" => Err(format!(
            "{url} is plain http to a host that is not loopback: tokens are only sent over https"
        )),
        other => Err(format!(
            "the scheme {other:?} is not supported: use https://"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> ProvisioningConfig {
        toml::from_str(&format!(
            "name = \"kommun\"\ncivic_no_key_file = \"k\"\n{extra}"
        ))
        .expect("parses")
    }

    #[test]
    fn more_than_ten_requests_a_second_and_plain_http_elsewhere_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("k"), "0123456789abcdef0123").expect("key");
        let path = dir.path().join("nprov.toml");
        let check = |c: ProvisioningConfig| c.spec(Some(&path), None).err().map(|e| e.to_string());
        let e = check(config("rate_limit_per_second = 11\nentity_id = \"x\"")).expect("refused");
        assert!(
            e.contains("provisioning.kommun.rate_limit_per_second"),
            "{e}"
        );
        let e = check(config(
            "base_url = \"http://api.example.se/v1\"\nentity_id = \"x\"",
        ))
        .expect("refused");
        assert!(e.contains("provisioning.kommun.base_url"), "{e}");
        assert_eq!(
            check(config(
                "base_url = \"http://127.0.0.1:9/v1\"\nauth_url = \"http://127.0.0.1:9/t\"\nentity_id = \"x\""
            )),
            None
        );
        let e = check(config("entity_id = \"\"")).expect("refused");
        assert!(e.contains("client_certificate_file"), "{e}");
    }

    #[test]
    fn a_missing_or_short_key_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("nprov.toml");
        let e = config("entity_id = \"x\"")
            .spec(Some(&path), None)
            .err()
            .expect("no key file")
            .to_string();
        assert!(
            e.contains("civic_no_key_file") && e.contains("cannot read"),
            "{e}"
        );
        std::fs::write(dir.path().join("k"), "short\n").expect("key");
        let e = config("entity_id = \"x\"")
            .spec(Some(&path), None)
            .err()
            .expect("short key")
            .to_string();
        assert!(e.contains("at least 16"), "{e}");
    }

    #[test]
    fn environment_variables_set_a_provisioning_source_s_keys() {
        let env = [
            ("NPROV_PROVISIONING_KOMMUN_CIVIC_NO_KEY_FILE", "civic.key"),
            ("NPROV_PROVISIONING_KOMMUN_MAX_REMOVED_SHARE", "0.5"),
            ("NPROV_PROVISIONING_KOMMUN_PAGE_SIZE", "50"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let settings = crate::config::Settings::load(None, env).expect("loads");
        let [p] = settings.provisioning.as_slice() else {
            panic!("one provisioning source");
        };
        assert_eq!(p.name, "kommun");
        assert_eq!(p.max_removed_share, 0.5);
        assert_eq!(p.page_size, 50);
        let e = crate::config::Settings::load(
            None,
            [(
                "NPROV_PROVISIONING_KOMMUN_NO_SUCH".to_owned(),
                "1".to_owned(),
            )],
        )
        .expect_err("refused")
        .to_string();
        assert!(e.contains("NPROV_PROVISIONING_<NAME>_<KEY>"), "{e}");
    }
}

//! A source's credential files: where they are looked for, how they are read (never shown in a
//! message), and which are open to other users.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::{invalid, ConfigError, Settings, SourceConfig};
use crate::source::Auth;

impl SourceConfig {
    /// Reads the credential files this source names.
    ///
    /// # Errors
    /// As [`read_auth`].
    pub(super) fn auth(
        &self,
        config_dir: Option<&Path>,
        credentials_dir: Option<&Path>,
    ) -> Result<(Auth, CertificateDates), ConfigError> {
        read_auth(
            &format!("source.{}", self.name),
            &CredentialFiles {
                client_certificate_file: self.client_certificate_file.as_deref(),
                client_key_file: self.client_key_file.as_deref(),
                ca_file: self.ca_file.as_deref(),
                basic_user: self.basic_user.as_deref(),
                password_file: self.password_file.as_deref(),
                token_file: self.token_file.as_deref(),
            },
            config_dir,
            credentials_dir,
        )
    }
}

/// The credential files a section (`[[source]]`, `[[provisioning]]`) names.
#[derive(Default)]
pub(super) struct CredentialFiles<'a> {
    pub client_certificate_file: Option<&'a Path>,
    pub client_key_file: Option<&'a Path>,
    pub ca_file: Option<&'a Path>,
    pub basic_user: Option<&'a str>,
    pub password_file: Option<&'a Path>,
    pub token_file: Option<&'a Path>,
}

/// Reads one secret file of a section: relative names in systemd's credentials directory when
/// there is one, else beside the config file; an empty file is refused. The message names the
/// file, never its content.
///
/// # Errors
/// The file cannot be read or is empty.
pub(super) fn read_secret_file(
    key: &str,
    p: &Path,
    config_dir: Option<&Path>,
    credentials_dir: Option<&Path>,
) -> Result<Vec<u8>, ConfigError> {
    let path = credential_path(p, config_dir, credentials_dir);
    let bytes = std::fs::read(&path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    // An empty file is a credential that was never filled in (or systemd's placeholder for one
    // that is not used): say so instead of failing later at the platform.
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid(key, format!("{} is empty", path.display())));
    }
    Ok(bytes)
}

/// Reads the credential files a section names (`section` is `source.NAME` or
/// `provisioning.NAME`, for messages).
///
/// # Errors
/// A file that cannot be read, is empty or is not text where text is needed, or half of a
/// pair (certificate and key, user and password); named by its setting.
pub(super) fn read_auth(
    section: &str,
    files: &CredentialFiles<'_>,
    config_dir: Option<&Path>,
    credentials_dir: Option<&Path>,
) -> Result<(Auth, CertificateDates), ConfigError> {
    {
        let key = |k: &str| format!("{section}.{k}");
        let mut dates = CertificateDates::default();
        let read = |k: &str, p: &Path| -> Result<Vec<u8>, ConfigError> {
            read_secret_file(&key(k), p, config_dir, credentials_dir)
        };
        let secret_text = |k: &str, p: &Path| -> Result<secrecy::SecretString, ConfigError> {
            let bytes = read(k, p)?;
            let text =
                String::from_utf8(bytes).map_err(|_| invalid(key(k), "is not UTF-8 text"))?;
            Ok(secrecy::SecretString::from(
                text.trim_end_matches(['\r', '\n']).to_owned(),
            ))
        };
        let mut auth = Auth::default();
        match (files.client_certificate_file, files.client_key_file) {
            (Some(cert), Some(k)) => {
                let mut pem = read("client_certificate_file", cert)?;
                dates.client = earliest_expiry(&pem);
                pem.push(b'\n');
                pem.extend(read("client_key_file", k)?);
                auth.identity_pem = Some(secrecy::SecretBox::new(Box::new(pem)));
            }
            (None, None) => {}
            _ => {
                return Err(invalid(
                    key("client_certificate_file"),
                    "mutual TLS needs both client_certificate_file and client_key_file",
                ))
            }
        }
        if let Some(ca) = files.ca_file {
            let pem = read("ca_file", ca)?;
            dates.ca = earliest_expiry(&pem);
            auth.extra_roots_pem.push(pem);
        }
        match (files.basic_user, files.password_file) {
            (Some(user), Some(p)) => {
                auth.basic = Some((user.to_owned(), secret_text("password_file", p)?))
            }
            (None, None) => {}
            _ => {
                return Err(invalid(
                    key("basic_user"),
                    "HTTP basic authentication needs both basic_user and password_file",
                ))
            }
        }
        if let Some(t) = files.token_file {
            auth.bearer = Some(secret_text("token_file", t)?);
        }
        Ok((auth, dates))
    }
}

/// When a source's certificates stop being valid (their `notAfter`), as far as they could be
/// read: a file that holds no certificate this parser reads gives `None`, and the TLS stack
/// says what is wrong with it when the client is built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CertificateDates {
    /// The client certificate (`client_certificate_file`; the earliest, if it holds a chain).
    pub client: Option<DateTime<Utc>>,
    /// The private CA (`ca_file`; the earliest of the certificates it holds).
    pub ca: Option<DateTime<Utc>>,
}

/// The earliest `notAfter` of the certificates in a PEM file.
pub fn earliest_expiry(pem: &[u8]) -> Option<DateTime<Utc>> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .filter_map(|p| {
            let cert = p.parse_x509().ok()?;
            DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
        })
        .min()
}

/// One public certificate file as `status` reports it: when it expires, or why that is unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertificateFile {
    Expires(DateTime<Utc>),
    /// Could not be read here (permissions, or a relative name outside systemd's credentials
    /// directory), or holds no certificate this parser reads; the text says which.
    Unknown(String),
}

impl SourceConfig {
    /// The expiry of the client certificate and the CA file, read from those (public) files
    /// alone: `status` reports them without reading any secret. `None` for a file not set.
    pub fn certificate_files(
        &self,
        config_path: Option<&Path>,
        credentials_dir: Option<&Path>,
    ) -> [(&'static str, Option<CertificateFile>); 2] {
        let config_dir = config_path.and_then(Path::parent);
        let one = |p: &Option<PathBuf>| {
            let p = p.as_deref()?;
            let path = credential_path(p, config_dir, credentials_dir);
            Some(match std::fs::read(&path) {
                Ok(pem) => match earliest_expiry(&pem) {
                    Some(at) => CertificateFile::Expires(at),
                    None => {
                        CertificateFile::Unknown(format!("{} holds no certificate", path.display()))
                    }
                },
                Err(e) => CertificateFile::Unknown(format!(
                    "{} not readable here: {e} (as the service sees it: \
                     CREDENTIALS_DIRECTORY=/etc/nprov-sync/credentials)",
                    path.display()
                )),
            })
        };
        [
            ("client certificate", one(&self.client_certificate_file)),
            ("CA (ca_file)", one(&self.ca_file)),
        ]
    }

    /// The secret files this source reads, by setting (the client certificate is public).
    fn secret_files(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        [
            ("client_key_file", &self.client_key_file),
            ("password_file", &self.password_file),
            ("token_file", &self.token_file),
        ]
        .into_iter()
        .filter_map(|(k, p)| Some((k, p.as_deref()?)))
    }
}

/// Where a credential file is: absolute as given; relative in systemd's credentials directory
/// when there is one, else beside the config file.
fn credential_path(p: &Path, config_dir: Option<&Path>, credentials_dir: Option<&Path>) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else if let Some(dir) = credentials_dir {
        dir.join(p)
    } else {
        config_dir.unwrap_or(Path::new(".")).join(p)
    }
}

impl Settings {
    /// Credential and key files that users other than the owner may read (group or others),
    /// one message each, naming the setting and the mode. A warning, not an error: a shared
    /// group may be deliberate, but it should never be an accident. The client certificate is
    /// public and not checked.
    pub fn credential_warnings(
        &self,
        config_path: Option<&Path>,
        credentials_dir: Option<&Path>,
    ) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt;
        let dir = config_path.and_then(Path::parent);
        let mut out = Vec::new();
        for s in &self.source {
            for (k, p) in s.secret_files() {
                let path = credential_path(p, dir, credentials_dir);
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue; // unreadable files are the build's error, named there
                };
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    out.push(format!(
                        "source.{}.{k}: {} is open to users other than its owner (mode \
                         {mode:04o}): make it 0600 (chmod 600), or hand it over with systemd's \
                         LoadCredential=",
                        s.name,
                        path.display(),
                    ));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::earliest_expiry;

    fn certificate(year: i32) -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["x.example".into()]).expect("params");
        params.not_after = rcgen::date_time_ymd(year, 5, 17);
        params.self_signed(&key).expect("certificate").pem()
    }

    #[test]
    fn the_earliest_not_after_of_a_bundle_is_its_expiry() {
        let bundle = format!("{}{}", certificate(2033), certificate(2031));
        let at = earliest_expiry(bundle.as_bytes()).expect("a certificate");
        assert_eq!(at.to_rfc3339(), "2031-05-17T00:00:00+00:00");
        // A key, garbage or nothing: no date (the TLS stack reports what is wrong).
        assert_eq!(
            earliest_expiry(b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"),
            None
        );
        assert_eq!(earliest_expiry(b"not a certificate"), None);
    }
}

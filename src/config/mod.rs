//! Settings: named defaults < the file given with `--config` < `NPROV_…` environment variables <
//! command-line options.
//!
//! The settings types are the list of settings: the environment variables that may override one
//! are derived from them ([`env`]), and the embedded `config.example.toml`, which documents every
//! setting with its default, is held equal to them by a test. Unknown keys and unknown `NPROV_…`
//! variables are errors, so a typo cannot silently fall back to a default. Errors name the key (or
//! variable) and what is wrong with it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod credentials;
mod env;
pub mod provisioning;
mod source;

pub use credentials::{earliest_expiry, CertificateDates, CertificateFile};
use env::overlay_env;
pub use provisioning::{ProvisioningConfig, ProvisioningSpec};
pub use source::{SourceConfig, SourceSpec, DEFAULT_MAX_IN_FLIGHT, DEFAULT_SCHEDULE};

use crate::store::DEFAULT_DATABASE_URL;
use crate::xml::parser::DEFAULT_MAX_RECORD_BYTES;

/// The example configuration, with every setting and its default.
pub const EXAMPLE: &str = include_str!("../../config.example.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

fn invalid(origin: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.into(),
        message: message.into(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    pub url: String,
    /// PostgreSQL only: the schema the tables live in; empty for the connection's default.
    pub schema: String,
    pub migrate_on_start: bool,
    /// SQLite only: the permission bits (octal, e.g. "0640") of a database file created here.
    pub file_mode: String,
    /// PostgreSQL only: a role granted read access to every table and view; empty for none.
    pub reader_role: String,
    /// SQLite only: how long a write waits for another process's lock before it fails.
    pub busy_timeout: String,
}

impl DatabaseSettings {
    /// `file_mode` as permission bits.
    ///
    /// # Errors
    /// Not an octal mode, bits outside 0777, or a mode that does not let the owner read and
    /// write (the service could not use its own database).
    pub fn file_mode(&self) -> Result<u32, ConfigError> {
        let text = self.file_mode.trim();
        let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8).map_err(|_| {
            invalid(
                "database.file_mode",
                format!("{text:?} is not an octal mode like \"0600\" or \"0640\""),
            )
        })?;
        if mode & !0o777 != 0 || mode & 0o600 != 0o600 {
            return Err(invalid(
                "database.file_mode",
                format!(
                    "{text:?}: use permission bits within 0777 that let the owner read and write"
                ),
            ));
        }
        Ok(mode)
    }

    /// `busy_timeout` as a duration.
    ///
    /// # Errors
    /// Not a duration, or one over an hour (SQLite counts milliseconds in an int; past an hour
    /// a window should fail and be retried rather than hang).
    pub fn busy_timeout(&self) -> Result<std::time::Duration, ConfigError> {
        let d = humantime::parse_duration(&self.busy_timeout).map_err(|e| {
            invalid(
                "database.busy_timeout",
                format!("{:?}: {e}", self.busy_timeout),
            )
        })?;
        if d > std::time::Duration::from_secs(3600) {
            return Err(invalid(
                "database.busy_timeout",
                format!("{:?}: at most 1h", self.busy_timeout),
            ));
        }
        Ok(d)
    }

    /// How to open the database: everything but the URL.
    ///
    /// # Errors
    /// A `file_mode` or `busy_timeout` that does not parse.
    pub fn connect_options(&self) -> Result<crate::store::ConnectOptions<'_>, ConfigError> {
        Ok(crate::store::ConnectOptions {
            schema: &self.schema,
            file_mode: self.file_mode()?,
            busy_timeout: self.busy_timeout()?,
        })
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: DEFAULT_DATABASE_URL.into(),
            schema: String::new(),
            migrate_on_start: true,
            file_mode: format!("{:04o}", crate::store::sqlite::DEFAULT_FILE_MODE),
            reader_role: String::new(),
            busy_timeout: humantime::format_duration(crate::store::sqlite::DEFAULT_BUSY_TIMEOUT)
                .to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParserSettings {
    pub max_record_bytes: u64,
}

impl Default for ParserSettings {
    fn default() -> Self {
        ParserSettings {
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Pretty,
            filter: "info".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// `host:port` of the metrics/health listener; empty turns it off.
    pub listen: String,
    pub ready_max_age: String,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            listen: "127.0.0.1:9464".into(),
            ready_max_age: "1h".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSettings {
    pub shutdown_grace: String,
    pub failure_backoff_max: String,
    pub startup_database_wait: String,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            shutdown_grace: "30s".into(),
            failure_backoff_max: "30m".into(),
            startup_database_wait: "4m".into(),
        }
    }
}

/// How long rows are kept (`[retention]`): durations, "0" keeps forever.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    pub sync_run: String,
    pub quarantine_raw_xml: String,
    pub quarantine: String,
    pub change_log: String,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            sync_run: "180d".into(),
            quarantine_raw_xml: "30d".into(),
            quarantine: "365d".into(),
            change_log: "365d".into(),
        }
    }
}

/// The retention horizons, parsed: `None` keeps rows forever.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    pub sync_run: Option<std::time::Duration>,
    pub quarantine_raw_xml: Option<std::time::Duration>,
    pub quarantine: Option<std::time::Duration>,
    pub change_log: Option<std::time::Duration>,
}

impl Retention {
    /// The oldest instants that stay, as of `now`.
    pub fn cutoffs(&self, now: chrono::DateTime<chrono::Utc>) -> crate::store::governance::Cutoffs {
        let at = |d: Option<std::time::Duration>| {
            d.and_then(|d| chrono::Duration::from_std(d).ok())
                .and_then(|d| now.checked_sub_signed(d))
        };
        crate::store::governance::Cutoffs {
            sync_run: at(self.sync_run),
            quarantine_raw_xml: at(self.quarantine_raw_xml),
            quarantine: at(self.quarantine),
            change_log: at(self.change_log),
        }
    }
}

/// The daemon's settings as typed values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub ready_max_age: std::time::Duration,
    pub shutdown_grace: std::time::Duration,
    pub failure_backoff_max: std::time::Duration,
    pub startup_database_wait: std::time::Duration,
    /// What the daily prune removes (`[retention]`).
    pub retention: Retention,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub parser: ParserSettings,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
    pub daemon: DaemonSettings,
    pub retention: RetentionSettings,
    /// The platforms to sync from (`[[source]]` tables).
    pub source: Vec<SourceConfig>,
    /// The provtjänst provisioning accounts to mirror (`[[provisioning]]` tables).
    pub provisioning: Vec<ProvisioningConfig>,
}

impl Settings {
    /// Loads settings from an optional file and the environment.
    ///
    /// `env` is injected (pass `std::env::vars()`) so tests need not touch the process
    /// environment.
    ///
    /// # Errors
    /// An unreadable file, TOML that does not parse, an unknown key or variable, or a value of the
    /// wrong type or out of range; the message names the key or variable.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let (mut table, origin) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                    invalid(p.display().to_string(), e.to_string())
                })?;
                (table, p.display().to_string())
            }
            None => (toml::Table::new(), "defaults".to_owned()),
        };
        // Deserialize the file alone first so its errors are reported against the file.
        Settings::deserialize(toml::Value::Table(table.clone()))
            .map_err(|e| invalid(&origin, e.to_string()))?;
        overlay_env(&mut table, env)?;
        let settings = Settings::deserialize(toml::Value::Table(table))
            .map_err(|e| invalid("environment", e.to_string()))?;
        settings.validate(&origin)?;
        Ok(settings)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let url = &self.database.url;
        let Some(backend) = crate::store::Backend::of_url(url) else {
            return Err(invalid(
                origin,
                format!(
                    "database.url: {} is not supported: use sqlite://PATH or postgres://USER@HOST/DATABASE",
                    crate::store::redact_url(url)
                ),
            ));
        };
        if let Err(crate::store::StoreError::InvalidSchema { schema, reason }) =
            crate::store::check_schema(backend, &self.database.schema)
        {
            return Err(invalid(
                origin,
                format!("database.schema: {schema:?}: {reason}"),
            ));
        }
        self.database
            .file_mode()
            .map_err(|e| invalid(origin, e.to_string()))?;
        self.database
            .busy_timeout()
            .map_err(|e| invalid(origin, e.to_string()))?;
        if self.parser.max_record_bytes < 1024 {
            return Err(invalid(
                origin,
                "parser.max_record_bytes: must be at least 1024 bytes",
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            return Err(invalid(origin, format!("log.filter: {e}")));
        }
        self.daemon().map_err(|e| invalid(origin, e.to_string()))?;
        self.retention()
            .map_err(|e| invalid(origin, e.to_string()))?;
        let role = &self.database.reader_role;
        if !role.is_empty() {
            if backend != crate::store::Backend::Postgres {
                return Err(invalid(
                    origin,
                    "database.reader_role is for PostgreSQL; give SQLite readers the file \
                     (database.file_mode and the state directory's group, see the README)",
                ));
            }
            if role.len() > 63 || role.contains('\0') {
                return Err(invalid(
                    origin,
                    format!("database.reader_role: {role:?} is not a PostgreSQL role name"),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.source {
            if !names.insert(s.name.as_str()) {
                return Err(invalid(
                    origin,
                    format!("source.{}: the name is used twice", s.name),
                ));
            }
        }
        // One namespace for both kinds: `--source NAME` selects either.
        for p in &self.provisioning {
            if p.name.trim().is_empty() {
                return Err(invalid(origin, "provisioning: a name is required"));
            }
            if !names.insert(p.name.as_str()) {
                return Err(invalid(
                    origin,
                    format!(
                        "provisioning.{}: the name is used twice (by a [[source]] or another \
                         [[provisioning]])",
                        p.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The daemon's settings, parsed.
    ///
    /// # Errors
    /// A value that does not parse, named by its key.
    pub fn daemon(&self) -> Result<DaemonConfig, ConfigError> {
        let duration = |k: &str, v: &str| {
            humantime::parse_duration(v)
                .map_err(|e| invalid(k, format!("{v:?} is not a duration like \"30s\": {e}")))
        };
        let listen = self.metrics.listen.trim();
        Ok(DaemonConfig {
            metrics_listen: if listen.is_empty() {
                None
            } else {
                Some(listen.parse().map_err(|e| {
                    invalid(
                        "metrics.listen",
                        format!("{listen:?} is not an address like 127.0.0.1:9464: {e}"),
                    )
                })?)
            },
            ready_max_age: duration("metrics.ready_max_age", &self.metrics.ready_max_age)?,
            shutdown_grace: duration("daemon.shutdown_grace", &self.daemon.shutdown_grace)?,
            failure_backoff_max: duration(
                "daemon.failure_backoff_max",
                &self.daemon.failure_backoff_max,
            )?,
            startup_database_wait: duration(
                "daemon.startup_database_wait",
                &self.daemon.startup_database_wait,
            )?,
            retention: self.retention()?,
        })
    }

    /// The retention horizons, parsed.
    ///
    /// # Errors
    /// A value that is not a duration, named by its key.
    pub fn retention(&self) -> Result<Retention, ConfigError> {
        let horizon = |k: &str, v: &str| {
            let v = v.trim();
            if v == "0" {
                return Ok(None);
            }
            let d = humantime::parse_duration(v).map_err(|e| {
                invalid(
                    k,
                    format!("{v:?} is not a duration like \"180d\" (or \"0\" to keep): {e}"),
                )
            })?;
            Ok((!d.is_zero()).then_some(d))
        };
        let r = &self.retention;
        Ok(Retention {
            sync_run: horizon("retention.sync_run", &r.sync_run)?,
            quarantine_raw_xml: horizon("retention.quarantine_raw_xml", &r.quarantine_raw_xml)?,
            quarantine: horizon("retention.quarantine", &r.quarantine)?,
            change_log: horizon("retention.change_log", &r.change_log)?,
        })
    }

    pub fn limits(&self) -> crate::xml::Limits {
        crate::xml::Limits {
            max_record_bytes: self.parser.max_record_bytes,
            max_document_bytes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut f, text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn retention_parses_durations_and_zero_keeps_and_a_reader_role_needs_postgres() {
        let f = write("[retention]\nsync_run = \"0\"\nchange_log = \"90d\"\n");
        let s = Settings::load(Some(f.path()), env(&[("NPROV_RETENTION_QUARANTINE", "0s")]))
            .expect("loads");
        let r = s.retention().expect("parses");
        assert_eq!(r.sync_run, None);
        assert_eq!(r.quarantine, None);
        assert_eq!(
            r.change_log,
            Some(std::time::Duration::from_secs(90 * 86400))
        );
        assert_eq!(
            r.quarantine_raw_xml,
            Some(std::time::Duration::from_secs(30 * 86400))
        );
        let now = chrono::Utc::now();
        let cutoffs = r.cutoffs(now);
        assert_eq!(cutoffs.sync_run, None);
        assert_eq!(cutoffs.change_log, Some(now - chrono::Duration::days(90)));

        let f = write("[retention]\nquarantine = \"a year\"\n");
        let e = Settings::load(Some(f.path()), env(&[])).expect_err("not a duration");
        assert!(e.to_string().contains("retention.quarantine"), "{e}");

        let f = write("[database]\nreader_role = \"nprov_reader\"\n");
        let e = Settings::load(Some(f.path()), env(&[])).expect_err("SQLite has no roles");
        assert!(
            e.to_string().contains("reader_role is for PostgreSQL"),
            "{e}"
        );
        let s = Settings::load(
            Some(f.path()),
            env(&[("NPROV_DATABASE_URL", "postgres://nprov@db/nprov")]),
        )
        .expect("PostgreSQL has");
        assert_eq!(s.database.reader_role, "nprov_reader");
    }

    #[test]
    fn the_example_is_exactly_the_defaults() {
        let f = write(EXAMPLE);
        assert_eq!(
            Settings::load(Some(f.path()), env(&[])).expect("valid"),
            Settings::default()
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let f = write("[database]\nurl = \"sqlite://a.db\"\n");
        let s = Settings::load(
            Some(f.path()),
            env(&[
                ("NPROV_DATABASE_URL", "sqlite://b.db"),
                ("NPROV_PARSER_MAX_RECORD_BYTES", "2048"),
                ("NPROV_DATABASE_MIGRATE_ON_START", "false"),
            ]),
        )
        .expect("valid");
        assert_eq!(s.database.url, "sqlite://b.db");
        assert_eq!(s.parser.max_record_bytes, 2048);
        assert!(!s.database.migrate_on_start);
    }

    #[test]
    fn an_unknown_key_is_named() {
        let f = write("[database]\nulr = \"sqlite://a.db\"\n");
        let e = Settings::load(Some(f.path()), env(&[]))
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("ulr"), "{e}");
    }

    #[test]
    fn an_unknown_variable_is_named() {
        let e = Settings::load(None, env(&[("NPROV_DATABSE_URL", "x")]))
            .expect_err("unknown variable")
            .to_string();
        assert!(e.starts_with("NPROV_DATABSE_URL"), "{e}");
    }

    #[test]
    fn a_wrong_type_is_named() {
        let e = Settings::load(None, env(&[("NPROV_PARSER_MAX_RECORD_BYTES", "lots")]))
            .expect_err("not an integer")
            .to_string();
        assert!(
            e.contains("NPROV_PARSER_MAX_RECORD_BYTES") && e.contains("lots"),
            "{e}"
        );
        let f = write("[log]\nformat = \"xml\"\n");
        let e = Settings::load(Some(f.path()), env(&[]))
            .expect_err("bad format")
            .to_string();
        assert!(e.contains("format") || e.contains("xml"), "{e}");
    }

    /// The documented source block, uncommented, is a valid configuration.
    fn example_with_source() -> String {
        let mut out = String::new();
        let mut in_block = false;
        for line in EXAMPLE.lines() {
            if line == "# [[source]]" {
                in_block = true;
            }
            match line.strip_prefix("# ") {
                // Settings are "# key = value"; prose and the nested commented settings stay.
                Some(rest) if in_block && (rest.starts_with("[[") || rest.contains(" = ")) => {
                    out.push_str(rest)
                }
                _ => out.push_str(line),
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn the_documented_source_block_loads_and_builds() {
        let f = write(&example_with_source());
        let s = Settings::load(Some(f.path()), env(&[])).expect("valid");
        assert_eq!(s.source.len(), 1);
        let src = &s.source[0];
        assert_eq!(src.url, "https://skolplattform.example.se");
        assert_eq!(src.overlap, "30m");
        let built = crate::sync::sources(&s, Some(f.path()), None).expect("builds");
        assert_eq!(built[0].plan.max_window, chrono::Duration::days(31));
        assert_eq!(built[0].target_response_bytes, 8 << 20);
        assert_eq!(built[0].limits.max_document_bytes, Some(256 * 1024 * 1024));
    }

    #[test]
    fn source_errors_name_the_source_and_key() {
        let f = write(
            "[[source]]\nname = \"solna\"\nurl = \"https://x.example\"\nstart = \"2026-08-01T00:00\"\noverlap = \"half an hour\"\n",
        );
        let s = Settings::load(Some(f.path()), env(&[])).expect("loads");
        let e = crate::sync::sources(&s, Some(f.path()), None)
            .err()
            .expect("bad duration")
            .to_string();
        assert!(e.contains("source.solna.overlap"), "{e}");
        let f = write(
            "[[source]]\nurl = \"https://x.example\"\nstart = \"2026-08-01T00:00\"\npassword_file = \"pw\"\n",
        );
        let s = Settings::load(Some(f.path()), env(&[])).expect("loads");
        let e = crate::sync::sources(&s, Some(f.path()), None)
            .err()
            .expect("half of basic auth")
            .to_string();
        assert!(e.contains("basic_user"), "{e}");
    }

    #[test]
    fn credentials_are_read_from_the_credentials_directory_and_never_shown() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("pw"), "s3cret-value\n").expect("write");
        let f = write(
            "[[source]]\nurl = \"https://x.example\"\nstart = \"2026-08-01T00:00\"\nbasic_user = \"kommun\"\npassword_file = \"pw\"\n",
        );
        let s = Settings::load(Some(f.path()), env(&[])).expect("loads");
        crate::sync::sources(&s, Some(f.path()), Some(dir.path()))
            .expect("builds with the credential");
        let missing = crate::sync::sources(&s, Some(f.path()), None)
            .err()
            .expect("not beside the config")
            .to_string();
        assert!(
            missing.contains("cannot read") && !missing.contains("s3cret"),
            "{missing}"
        );
    }

    #[test]
    fn postgres_urls_are_accepted_with_or_without_a_schema() {
        for url in ["postgres://nprov@db/wh", "postgresql://nprov:pw@db:5432/wh"] {
            let s = Settings::load(
                None,
                env(&[
                    ("NPROV_DATABASE_URL", url),
                    ("NPROV_DATABASE_SCHEMA", "nprov"),
                ]),
            )
            .expect("valid");
            assert_eq!(
                (s.database.url.as_str(), s.database.schema.as_str()),
                (url, "nprov")
            );
        }
    }

    #[test]
    fn a_bad_schema_is_named_and_a_schema_for_sqlite_is_refused() {
        let e = Settings::load(
            None,
            env(&[
                ("NPROV_DATABASE_URL", "postgres://db/wh"),
                ("NPROV_DATABASE_SCHEMA", "Nprov-Data"),
            ]),
        )
        .expect_err("not a plain identifier")
        .to_string();
        assert!(
            e.contains("database.schema") && e.contains("Nprov-Data"),
            "{e}"
        );
        let e = Settings::load(None, env(&[("NPROV_DATABASE_SCHEMA", "nprov")]))
            .expect_err("the default database is SQLite")
            .to_string();
        assert!(e.contains("database.schema") && e.contains("SQLite"), "{e}");
    }

    #[test]
    fn an_unsupported_database_is_refused_without_its_password() {
        let e = Settings::load(None, env(&[("NPROV_DATABASE_URL", "mysql://u:pw@h/db")]))
            .expect_err("unsupported")
            .to_string();
        assert!(e.contains("database.url") && !e.contains("pw@"), "{e}");
    }

    #[test]
    fn source_settings_come_from_the_environment_too() {
        let f = write(
            "[[source]]\nname = \"solna-gy\"\nurl = \"https://x.example\"\nstart = \"2026-08-01T00:00\"\n",
        );
        let s = Settings::load(
            Some(f.path()),
            env(&[
                ("NPROV_SOURCE_SOLNA_GY_MAX_WINDOW", "6h"),
                ("NPROV_SOURCE_SOLNA_GY_RATE_LIMIT_PER_SECOND", "2"),
                ("NPROV_SOURCE_SOLNA_GY_CLIENT_KEY_FILE", "solna.key"),
                // A source the file does not have: made from variables alone.
                ("NPROV_SOURCE_NACKA_URL", "https://nacka.example"),
                ("NPROV_SOURCE_NACKA_START", "2026-09-01T00:00"),
            ]),
        )
        .expect("valid");
        assert_eq!(s.source.len(), 2);
        let solna = &s.source[0];
        assert_eq!(solna.name, "solna-gy");
        assert_eq!(solna.max_window, "6h");
        assert_eq!(solna.rate_limit_per_second, 2);
        assert_eq!(
            solna.client_key_file.as_deref(),
            Some(Path::new("solna.key"))
        );
        assert_eq!(s.source[1].name, "nacka");
        assert_eq!(s.source[1].url, "https://nacka.example");
    }

    #[test]
    fn a_wrong_source_variable_is_named() {
        let e = Settings::load(None, env(&[("NPROV_SOURCE_SOLNA_MAX_WINDOWS", "1d")]))
            .expect_err("unknown key")
            .to_string();
        assert!(
            e.starts_with("NPROV_SOURCE_SOLNA_MAX_WINDOWS") && e.contains("MAX_WINDOW"),
            "{e}"
        );
        let e = Settings::load(
            None,
            env(&[("NPROV_SOURCE_SOLNA_RATE_LIMIT_PER_SECOND", "many")]),
        )
        .expect_err("not an integer")
        .to_string();
        assert!(e.contains("many"), "{e}");
        // A source made from variables still needs its required keys.
        let e = Settings::load(
            None,
            env(&[("NPROV_SOURCE_SOLNA_URL", "https://x.example")]),
        )
        .expect_err("no start")
        .to_string();
        assert!(e.contains("start"), "{e}");
    }

    #[test]
    fn every_documented_source_key_can_be_set_from_the_environment() {
        let keys: Vec<&str> = env::source_keys().into_iter().map(|(k, _)| k).collect();
        for k in [
            "url",
            "start",
            "schedule",
            "overlap",
            "max_window",
            "client_certificate_file",
            "token_file",
            "body_attempts",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn an_empty_credential_file_is_refused_by_its_setting() {
        // systemd's SetCredential placeholder for an unused credential is a lone newline.
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("token"), "\n").expect("write");
        let f = write(
            "[[source]]\nurl = \"https://x.example\"\nstart = \"2026-08-01T00:00\"\ntoken_file = \"token\"\n",
        );
        let s = Settings::load(Some(f.path()), env(&[])).expect("loads");
        let e = crate::sync::sources(&s, Some(f.path()), Some(dir.path()))
            .err()
            .expect("an empty token")
            .to_string();
        assert!(
            e.contains("source.default.token_file") && e.contains("is empty"),
            "{e}"
        );
    }

    #[test]
    fn credential_files_open_to_others_are_warned_about_by_setting_and_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let f = write(
            "[[source]]\nname = \"solna\"\nurl = \"https://x.example\"\nstart = \"2026-08-01T00:00\"\nbasic_user = \"kommun\"\npassword_file = \"pw\"\ntoken_file = \"token\"\n",
        );
        for (name, mode) in [("pw", 0o644), ("token", 0o600)] {
            let path = dir.path().join(name);
            std::fs::write(&path, "s3cret-value\n").expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        let s = Settings::load(Some(f.path()), env(&[])).expect("loads");
        let warnings = s.credential_warnings(Some(f.path()), Some(dir.path()));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("source.solna.password_file: ")
                && warnings[0].contains("mode 0644")
                && !warnings[0].contains("s3cret"),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn an_encrypted_key_is_refused_and_named_by_its_setting() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(
            dir.path().join("client.crt"),
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("client.key"),
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0w\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .expect("write");
        let f = write(
            "[[source]]\nname = \"solna\"\nurl = \"https://x.example\"\nstart = \"2026-08-01T00:00\"\nclient_certificate_file = \"client.crt\"\nclient_key_file = \"client.key\"\n",
        );
        let s = Settings::load(Some(f.path()), env(&[])).expect("loads");
        let err = crate::sync::sources(&s, Some(f.path()), Some(dir.path()))
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.starts_with("source.solna.client_key_file: ") && err.contains("encrypted"),
            "{err}"
        );
    }

    #[test]
    fn redirect_policy_file_mode_and_plain_http_credentials_are_checked_by_name() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("token"), "t\n").expect("write");
        let source = |extra: &str| {
            write(&format!(
                "[[source]]\nname = \"solna\"\nurl = \"https://x.example\"\nstart = \"2026-08-01T00:00\"\n{extra}\n"
            ))
        };
        let build_error = |f: &tempfile::NamedTempFile| {
            let s = Settings::load(Some(f.path()), env(&[])).expect("loads");
            crate::sync::sources(&s, Some(f.path()), Some(dir.path()))
                .err()
                .expect("refused")
                .to_string()
        };
        let err = build_error(&source("follow_redirects = \"always\""));
        assert!(err.starts_with("source.solna.follow_redirects: "), "{err}");
        let err = build_error(&source("max_in_flight = 5"));
        assert!(err.starts_with("source.solna.max_in_flight: "), "{err}");
        let f = write(
            "[[source]]\nname = \"solna\"\nurl = \"http://x.example\"\nstart = \"2026-08-01T00:00\"\ntoken_file = \"token\"\n",
        );
        let err = build_error(&f);
        assert!(
            err.starts_with("source.solna.url: ") && err.contains("only sent over https"),
            "{err}"
        );
        let f = source(
            "follow_redirects = \"same-origin\"\nmax_retry_wait = \"1m\"\nread_timeout = \"5s\"",
        );
        let s = Settings::load(Some(f.path()), env(&[])).expect("loads");
        crate::sync::sources(&s, Some(f.path()), Some(dir.path())).expect("builds");

        for bad in ["\"0644x\"", "\"1777\"", "\"0400\""] {
            let f = write(&format!("[database]\nfile_mode = {bad}\n"));
            let err = Settings::load(Some(f.path()), env(&[]))
                .expect_err("refused")
                .to_string();
            assert!(err.contains("database.file_mode"), "{err}");
        }
        let f = write("[database]\nfile_mode = \"0640\"\n");
        let s = Settings::load(Some(f.path()), env(&[])).expect("loads");
        assert_eq!(s.database.file_mode().expect("mode"), 0o640);
    }
}

//! Settings: named defaults < the file given with `--config` < `NPROV_…` environment variables <
//! command-line options.
//!
//! The embedded `config.example.toml` is the documentation *and* the list of settings: the
//! environment variables that may override a setting are derived from its keys, so a documented
//! key always has an override and an undocumented one never does. Unknown keys and unknown
//! `NPROV_…` variables are errors, so a typo cannot silently fall back to a default. Errors name
//! the key (or variable) and what is wrong with it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::store::DEFAULT_DATABASE_URL;
use crate::xml::parser::DEFAULT_MAX_RECORD_BYTES;

/// The example configuration, with every setting and its default.
pub const EXAMPLE: &str = include_str!("../config.example.toml");

/// Environment variables with the `NPROV_` prefix that are not settings.
const NON_SETTING_VARIABLES: &[&str] = &["NPROV_CONFIG"];

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

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    pub url: String,
    pub migrate_on_start: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: DEFAULT_DATABASE_URL.into(),
            migrate_on_start: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
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

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub parser: ParserSettings,
    pub log: LogSettings,
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
        if !url.starts_with("sqlite:") {
            return Err(invalid(
                origin,
                format!(
                    "database.url: {} is not supported: use sqlite://PATH",
                    crate::store::redact_url(url)
                ),
            ));
        }
        if self.parser.max_record_bytes < 1024 {
            return Err(invalid(
                origin,
                "parser.max_record_bytes: must be at least 1024 bytes",
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            return Err(invalid(origin, format!("log.filter: {e}")));
        }
        Ok(())
    }

    pub fn limits(&self) -> crate::xml::Limits {
        crate::xml::Limits {
            max_record_bytes: self.parser.max_record_bytes,
            max_document_bytes: None,
        }
    }
}

/// A documented setting: its table, key and the TOML type of its default.
struct Setting {
    table: String,
    key: String,
    example: toml::Value,
}

impl Setting {
    fn env_name(&self) -> String {
        format!("NPROV_{}_{}", self.table, self.key).to_uppercase()
    }
}

fn documented_settings() -> Vec<Setting> {
    let example: toml::Table = EXAMPLE.parse().expect("the embedded example is valid TOML");
    let mut out = Vec::new();
    for (table, value) in example {
        if let toml::Value::Table(t) = value {
            for (key, v) in t {
                out.push(Setting {
                    table: table.clone(),
                    key,
                    example: v,
                });
            }
        }
    }
    out
}

fn overlay_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let settings = documented_settings();
    for (name, raw) in env {
        if !name.starts_with("NPROV_") || NON_SETTING_VARIABLES.contains(&name.as_str()) {
            continue;
        }
        let Some(s) = settings.iter().find(|s| s.env_name() == name) else {
            let known: Vec<String> = settings.iter().map(Setting::env_name).collect();
            return Err(invalid(
                name,
                format!("not a setting; the known ones are {}", known.join(", ")),
            ));
        };
        let value = match &s.example {
            toml::Value::Integer(_) => toml::Value::Integer(
                raw.trim()
                    .parse()
                    .map_err(|_| invalid(&name, format!("{raw:?} is not an integer")))?,
            ),
            toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => return Err(invalid(&name, format!("{raw:?} is not true or false"))),
            }),
            _ => toml::Value::String(raw),
        };
        let section = table
            .entry(s.table.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match section {
            toml::Value::Table(t) => {
                t.insert(s.key.clone(), value);
            }
            _ => {
                return Err(invalid(
                    &name,
                    format!("[{}] in the file is not a table", s.table),
                ))
            }
        }
    }
    Ok(())
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

    #[test]
    fn an_unsupported_database_is_refused_without_its_password() {
        let e = Settings::load(None, env(&[("NPROV_DATABASE_URL", "mysql://u:pw@h/db")]))
            .expect_err("unsupported")
            .to_string();
        assert!(e.contains("database.url") && !e.contains("pw@"), "{e}");
    }
}

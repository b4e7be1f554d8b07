//! `NPROV_…` environment variables over the file's settings.
//!
//! Which variables exist, and the TOML type their text is read as, come from the settings types
//! themselves: the sections' keys and types from the serialized defaults, a `[[source]]`'s keys
//! from the fields serde reads for [`SourceConfig`] and their types from a source with every
//! default filled in (a key with no default, an optional file or user, is text). Editing the
//! example's comments changes nothing the program accepts; a test keeps the example and these
//! lists equal.

use serde::de::{self, DeserializeOwned, Visitor};
use serde::Deserialize;

use super::{invalid, ConfigError, ProvisioningConfig, Settings, SourceConfig};

/// Environment variables with the `NPROV_` prefix that are not settings.
const NON_SETTING_VARIABLES: &[&str] = &["NPROV_CONFIG"];

/// How a variable's text becomes a TOML value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    Integer,
    Float,
    Boolean,
    Text,
}

impl Kind {
    fn of(value: Option<&toml::Value>) -> Kind {
        match value {
            Some(toml::Value::Integer(_)) => Kind::Integer,
            Some(toml::Value::Float(_)) => Kind::Float,
            Some(toml::Value::Boolean(_)) => Kind::Boolean,
            _ => Kind::Text,
        }
    }

    /// The text of a variable as this kind of TOML value.
    fn value(self, name: &str, raw: String) -> Result<toml::Value, ConfigError> {
        Ok(match self {
            Kind::Integer => toml::Value::Integer(
                raw.trim()
                    .parse()
                    .map_err(|_| invalid(name, format!("{raw:?} is not an integer")))?,
            ),
            Kind::Float => toml::Value::Float(
                raw.trim()
                    .parse()
                    .map_err(|_| invalid(name, format!("{raw:?} is not a number")))?,
            ),
            Kind::Boolean => toml::Value::Boolean(match raw.trim() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => return Err(invalid(name, format!("{raw:?} is not true or false"))),
            }),
            Kind::Text => toml::Value::String(raw),
        })
    }
}

/// A setting of one of the sections (`[database]`, `[log]`, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Setting {
    pub table: String,
    pub key: String,
    pub kind: Kind,
}

impl Setting {
    pub(super) fn env_name(&self) -> String {
        format!("NPROV_{}_{}", self.table, self.key).to_uppercase()
    }
}

/// Every section setting, from the defaults as serialized: each section has a default for every
/// key, so every key is there with its type.
pub(super) fn section_settings() -> Vec<Setting> {
    let defaults =
        toml::Table::try_from(Settings::default()).expect("the default settings serialize");
    let mut out = Vec::new();
    for (table, value) in defaults {
        if let toml::Value::Table(t) = value {
            for (key, v) in &t {
                out.push(Setting {
                    table: table.clone(),
                    key: key.clone(),
                    kind: Kind::of(Some(v)),
                });
            }
        }
    }
    out
}

/// Every `[[source]]` key and its kind.
pub(super) fn source_keys() -> Vec<(&'static str, Kind)> {
    // The keys without a default given any value, so the rest take theirs.
    let mut required = toml::Table::new();
    required.insert("url".into(), toml::Value::String(String::new()));
    required.insert("start".into(), toml::Value::String(String::new()));
    let template = SourceConfig::deserialize(toml::Value::Table(required))
        .expect("a source with url and start deserializes");
    let filled = toml::Table::try_from(&template).expect("a source serializes");
    field_names::<SourceConfig>()
        .iter()
        .map(|&k| (k, Kind::of(filled.get(k))))
        .collect()
}

/// Every `[[provisioning]]` key and its kind.
pub(super) fn provisioning_keys() -> Vec<(&'static str, Kind)> {
    let mut required = toml::Table::new();
    required.insert("name".into(), toml::Value::String(String::new()));
    let template = ProvisioningConfig::deserialize(toml::Value::Table(required))
        .expect("a provisioning source with a name deserializes");
    let filled = toml::Table::try_from(&template).expect("a provisioning source serializes");
    field_names::<ProvisioningConfig>()
        .iter()
        .map(|&k| (k, Kind::of(filled.get(k))))
        .collect()
}

/// An array of named tables that variables can set keys of: `[[source]]` or
/// `[[provisioning]]`.
struct Named {
    /// The table's name in the file.
    array: &'static str,
    /// `NPROV_SOURCE_`, `NPROV_PROVISIONING_`.
    prefix: &'static str,
    keys: Vec<(&'static str, Kind)>,
    /// The name a table without one has.
    default_name: &'static str,
}

/// The field names serde reads for `T`, asked of its `Deserialize` implementation: a deserializer
/// that records the fields a struct asks for and stops there.
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Recorder<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Recorder<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    // The error is the recorder stopping, by design.
    let _ = T::deserialize(Recorder(&mut fields));
    fields
}

/// A source name as it appears in a variable name: upper case, anything else than A–Z and 0–9
/// as `_`.
fn env_source_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// `NPROV_SOURCE_<NAME>_<KEY>` (or `NPROV_PROVISIONING_<NAME>_<KEY>`): sets `KEY` of the
/// `[[source]]` (`[[provisioning]]`) named `NAME` (as [`env_source_name`] spells it); a name no
/// table in the file has adds one of that name, in lower case, which then needs its required
/// keys (a source's `URL` and `START`, a provisioning source's `CIVIC_NO_KEY_FILE`).
fn overlay_named_env(
    table: &mut toml::Table,
    named: &Named,
    name: &str,
    raw: String,
) -> Result<(), ConfigError> {
    let rest = &name[named.prefix.len()..];
    let keys = &named.keys;
    // The longest key the variable ends with: keys contain underscores too.
    let Some(&(key, kind)) = keys
        .iter()
        .filter(|(k, _)| *k != "name")
        .filter(|(k, _)| {
            let k = format!("_{}", k.to_ascii_uppercase());
            rest.ends_with(&k) && rest.len() > k.len()
        })
        .max_by_key(|(k, _)| k.len())
    else {
        let known: Vec<String> = keys
            .iter()
            .filter(|(k, _)| *k != "name")
            .map(|(k, _)| k.to_ascii_uppercase())
            .collect();
        return Err(invalid(
            name,
            format!(
                "not a {} setting: use {}<NAME>_<KEY> with KEY one of {}",
                named.array,
                named.prefix,
                known.join(", ")
            ),
        ));
    };
    let source_name = &rest[..rest.len() - key.len() - 1];
    let value = kind.value(name, raw)?;
    let sources = table
        .entry(named.array)
        .or_insert_with(|| toml::Value::Array(Vec::new()));
    let toml::Value::Array(sources) = sources else {
        return Err(invalid(
            name,
            format!("{} in the file is not an array of tables", named.array),
        ));
    };
    let matching = sources.iter_mut().find(|s| {
        let n = s
            .get("name")
            .and_then(toml::Value::as_str)
            .unwrap_or(named.default_name);
        env_source_name(n) == source_name
    });
    let entry = match matching {
        Some(entry) => entry,
        None => {
            let mut t = toml::Table::new();
            t.insert(
                "name".into(),
                toml::Value::String(source_name.to_ascii_lowercase()),
            );
            sources.push(toml::Value::Table(t));
            sources.last_mut().expect("just pushed")
        }
    };
    match entry {
        toml::Value::Table(t) => {
            t.insert(key.to_owned(), value);
            Ok(())
        }
        _ => Err(invalid(
            name,
            format!("a [[{}]] in the file is not a table", named.array),
        )),
    }
}

/// Sets every `NPROV_…` variable's setting in the file's table; an unknown one is an error.
pub(super) fn overlay_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let settings = section_settings();
    let named = [
        Named {
            array: "source",
            prefix: "NPROV_SOURCE_",
            keys: source_keys(),
            default_name: crate::store::DEFAULT_SOURCE,
        },
        Named {
            array: "provisioning",
            prefix: "NPROV_PROVISIONING_",
            keys: provisioning_keys(),
            default_name: "",
        },
    ];
    // Sorted, so sources created from variables come in a stable order.
    let mut env: Vec<(String, String)> = env.into_iter().collect();
    env.sort();
    for (name, raw) in env {
        if !name.starts_with("NPROV_") || NON_SETTING_VARIABLES.contains(&name.as_str()) {
            continue;
        }
        if let Some(n) = named.iter().find(|n| name.starts_with(n.prefix)) {
            overlay_named_env(table, n, &name, raw)?;
            continue;
        }
        let Some(s) = settings.iter().find(|s| s.env_name() == name) else {
            let known: Vec<String> = settings.iter().map(Setting::env_name).collect();
            return Err(invalid(
                name,
                format!(
                    "not a setting; the known ones are {}, NPROV_SOURCE_<NAME>_<KEY> and \
                     NPROV_PROVISIONING_<NAME>_<KEY>",
                    known.join(", ")
                ),
            ));
        };
        let value = s.kind.value(&name, raw)?;
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

    /// The settings the example documents: its tables' keys, and the keys of the `[[source]]`
    /// block it shows commented out, each with the TOML type of its example value.
    /// Section settings as (table, key, kind), source keys as (key, kind).
    type Documented = (
        Vec<(String, String, Kind)>,
        Vec<(String, Kind)>,
        Vec<(String, Kind)>,
    );

    fn documented() -> Documented {
        let example: toml::Table = super::super::EXAMPLE
            .parse()
            .expect("the embedded example is valid TOML");
        let mut sections = Vec::new();
        for (table, value) in example {
            if let toml::Value::Table(t) = value {
                for (key, v) in t {
                    sections.push((table.clone(), key, Kind::of(Some(&v))));
                }
            }
        }
        let mut source = Vec::new();
        let mut provisioning = Vec::new();
        let mut block = None;
        for line in super::super::EXAMPLE.lines() {
            if line == "# [[source]]" {
                block = Some(0);
                continue;
            }
            if line == "# [[provisioning]]" {
                block = Some(1);
                continue;
            }
            // "# key = value", or "# # key = value" for the optional ones shown commented.
            let Some(rest) = line.strip_prefix("# ").filter(|_| block.is_some()) else {
                continue;
            };
            let rest = rest.strip_prefix("# ").unwrap_or(rest);
            let Some((key, value)) = rest.split_once(" = ") else {
                continue;
            };
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                continue;
            }
            if let Ok(t) = format!("v = {value}").parse::<toml::Table>() {
                let into = if block == Some(1) {
                    &mut provisioning
                } else {
                    &mut source
                };
                into.push((key.to_owned(), Kind::of(t.get("v"))));
            }
        }
        (sections, source, provisioning)
    }

    #[test]
    fn the_example_documents_exactly_the_settings_the_types_accept() {
        let (sections, source, provisioning) = documented();
        let mut accepted: Vec<(String, String, Kind)> = section_settings()
            .into_iter()
            .map(|s| (s.table, s.key, s.kind))
            .collect();
        let mut documented_sections = sections;
        accepted.sort();
        documented_sections.sort();
        assert_eq!(accepted, documented_sections);
        let mut accepted: Vec<(String, Kind)> = source_keys()
            .into_iter()
            .map(|(k, kind)| (k.to_owned(), kind))
            .collect();
        let mut documented_source = source;
        accepted.sort();
        documented_source.sort();
        assert_eq!(accepted, documented_source);
        let mut accepted: Vec<(String, Kind)> = provisioning_keys()
            .into_iter()
            .map(|(k, kind)| (k.to_owned(), kind))
            .collect();
        let mut documented_provisioning = provisioning;
        accepted.sort();
        documented_provisioning.sort();
        assert_eq!(accepted, documented_provisioning);
    }

    #[test]
    fn source_keys_come_from_the_type_with_their_kinds() {
        let keys = source_keys();
        let kind = |k: &str| keys.iter().find(|(x, _)| *x == k).map(|(_, kind)| *kind);
        assert_eq!(kind("rate_limit_per_second"), Some(Kind::Integer));
        assert_eq!(kind("overlap"), Some(Kind::Text));
        // Optional, without a default: text.
        assert_eq!(kind("token_file"), Some(Kind::Text));
        assert_eq!(kind("basic_user"), Some(Kind::Text));
        assert_eq!(kind("no_such_key"), None);
    }
}

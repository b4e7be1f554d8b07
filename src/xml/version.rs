//! The table of published schema versions.
//!
//! The five vendor namespaces share one content model; they differ only in which enumeration values
//! they list and in whether `<provtillfälle>` may carry `genomfört`. That difference lives here, as
//! data, so the parser is one piece of code for all versions.

/// Every namespace the vendor publishes lives under this prefix.
pub const NAMESPACE_PREFIX: &str = "http://pingpong.se/schemas/nationellaprov/";

const SKOLFORM: &[&str] = &["GR", "GRSAR", "GY", "GYSAR", "SFI", "SARVUX", "VUX", "YH"];
const BETYG_AF: &[&str] = &["A", "B", "C", "D", "E", "F"];
const BETYG_V12: &[&str] = &["A", "B", "C", "D", "E", "F", "0", "1", "2"];
const SAMMANVAGT_V12: &[&str] = &["A", "B", "C", "D", "E", "F", "I", "G"];
const TYP_V11: &[&str] = &["LÄSA", "TALA", "SKRIVA", "LYSSNA", "ANNAN"];
const TYP_V12: &[&str] = &[
    "LÄSA", "TALA", "SKRIVA", "LYSSNA", "A", "B", "C", "D", "E", "F", "G", "H",
];
const TYP_V4: &[&str] = &[
    "LÄSA", "TALA", "SKRIVA", "LYSSNA", "A", "A1", "A2", "A3", "B", "C", "D", "E", "F", "F1", "F2",
    "G", "G1", "G2", "H",
];
const TYP_V120: &[&str] = &[
    "LÄSA",
    "TALA",
    "SKRIVA",
    "LYSSNA",
    "A",
    "A1",
    "A2",
    "A3",
    "B",
    "C",
    "D",
    "E",
    "F",
    "F1",
    "F2",
    "G",
    "G1",
    "G2",
    "H",
    "PROVRESULTAT",
];

/// What one schema version allows.
#[derive(Debug, PartialEq, Eq)]
pub struct VersionRules {
    /// The version as the namespace spells it (`v1.1`, `v12.0`, …).
    pub name: &'static str,
    pub skolform: &'static [&'static str],
    pub typ: &'static [&'static str],
    pub betyg: &'static [&'static str],
    pub sammanvagt_provbetyg: &'static [&'static str],
    /// `genomfört` on `<provtillfälle>` exists from v2.0b on.
    pub genomfort: bool,
}

/// The published versions, oldest first; the last one is the newest.
pub static VERSIONS: &[VersionRules] = &[
    VersionRules {
        name: "v1.1",
        skolform: SKOLFORM,
        typ: TYP_V11,
        betyg: BETYG_AF,
        sammanvagt_provbetyg: BETYG_AF,
        genomfort: false,
    },
    VersionRules {
        name: "v1.2",
        skolform: SKOLFORM,
        typ: TYP_V12,
        betyg: BETYG_AF,
        sammanvagt_provbetyg: BETYG_AF,
        genomfort: false,
    },
    VersionRules {
        name: "v2.0b",
        skolform: SKOLFORM,
        typ: TYP_V12,
        betyg: BETYG_AF,
        sammanvagt_provbetyg: BETYG_AF,
        genomfort: true,
    },
    VersionRules {
        name: "v4.0a",
        skolform: SKOLFORM,
        typ: TYP_V4,
        betyg: BETYG_AF,
        sammanvagt_provbetyg: BETYG_AF,
        genomfort: true,
    },
    VersionRules {
        name: "v12.0",
        skolform: SKOLFORM,
        typ: TYP_V120,
        betyg: BETYG_V12,
        sammanvagt_provbetyg: SAMMANVAGT_V12,
        genomfort: true,
    },
];

/// The newest published rules: used for a namespace under [`NAMESPACE_PREFIX`] that we do not know.
pub fn newest() -> &'static VersionRules {
    &VERSIONS[VERSIONS.len() - 1]
}

/// The document's schema version, as recognised from its namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaVersion {
    /// The full namespace URI the document used.
    pub namespace: String,
    /// The rules applied to it.
    pub rules: &'static VersionRules,
    /// `true` when the namespace is under the vendor's prefix but not one we know; it is then
    /// parsed with the newest rules and flagged.
    pub unknown: bool,
}

impl SchemaVersion {
    /// Recognises a namespace. `None` for anything not under the vendor's prefix.
    pub fn from_namespace(ns: &str) -> Option<SchemaVersion> {
        let suffix = ns.strip_prefix(NAMESPACE_PREFIX)?;
        let known = VERSIONS.iter().find(|v| v.name == suffix);
        Some(SchemaVersion {
            namespace: ns.to_owned(),
            rules: known.unwrap_or_else(|| newest()),
            unknown: known.is_none(),
        })
    }

    /// Short name for reports and metrics labels: the version, or `unknown`.
    pub fn label(&self) -> &str {
        if self.unknown {
            "unknown"
        } else {
            self.rules.name
        }
    }
}

/// Fields whose enumerations grow between versions; used to count values outside the known sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EnumField {
    Skolform,
    Typ,
    Betyg,
    SammanvagtProvbetyg,
}

impl EnumField {
    /// The `field` label of each, in declaration order: metrics start every series at zero from
    /// this list.
    pub const LABELS: [&'static str; 4] = ["skolform", "typ", "betyg", "sammanvagt_provbetyg"];

    pub fn as_str(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

impl VersionRules {
    pub fn knows(&self, field: EnumField, value: &str) -> bool {
        self.intern(field, value).is_some()
    }

    /// The table's own `'static` spelling of a known value, so records need not allocate it.
    pub fn intern(&self, field: EnumField, value: &str) -> Option<&'static str> {
        let set = match field {
            EnumField::Skolform => self.skolform,
            EnumField::Typ => self.typ,
            EnumField::Betyg => self.betyg,
            EnumField::SammanvagtProvbetyg => self.sammanvagt_provbetyg,
        };
        // Comparing lengths first skips nearly every byte comparison.
        set.iter()
            .copied()
            .find(|k| k.len() == value.len() && *k == value)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn each_enum_field_has_its_own_label() {
        use super::EnumField::*;
        let all = [Skolform, Typ, Betyg, SammanvagtProvbetyg];
        let labels: Vec<&str> = all.iter().map(|f| f.as_str()).collect();
        assert_eq!(labels, super::EnumField::LABELS);
        assert_eq!(SammanvagtProvbetyg.as_str(), "sammanvagt_provbetyg");
    }
    use super::*;

    #[test]
    fn every_published_namespace_is_known() {
        for v in ["v1.1", "v1.2", "v2.0b", "v4.0a", "v12.0"] {
            let sv = SchemaVersion::from_namespace(&format!("{NAMESPACE_PREFIX}{v}"))
                .expect("vendor namespace");
            assert!(!sv.unknown);
            assert_eq!(sv.label(), v);
        }
    }

    #[test]
    fn an_unknown_vendor_namespace_gets_the_newest_rules_and_is_flagged() {
        let sv =
            SchemaVersion::from_namespace(&format!("{NAMESPACE_PREFIX}v13.0")).expect("vendor");
        assert!(sv.unknown);
        assert_eq!(sv.rules.name, "v12.0");
        assert_eq!(sv.label(), "unknown");
    }

    #[test]
    fn a_foreign_namespace_is_not_recognised() {
        assert!(SchemaVersion::from_namespace("http://example.org/provresultat").is_none());
    }

    #[test]
    fn enumerations_grow_as_the_vendor_documents() {
        let v11 = &VERSIONS[0];
        let v12 = newest();
        assert!(v11.knows(EnumField::Typ, "ANNAN") && !v12.knows(EnumField::Typ, "ANNAN"));
        assert!(!v11.knows(EnumField::SammanvagtProvbetyg, "G"));
        assert!(v12.knows(EnumField::SammanvagtProvbetyg, "G"));
        assert!(v12.knows(EnumField::Betyg, "2") && !v11.knows(EnumField::Betyg, "2"));
        assert!(!v11.genomfort && v12.genomfort);
    }
}

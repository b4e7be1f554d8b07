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

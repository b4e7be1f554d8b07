//! The provisioning API's records as it sends them (OpenAPI `Person`, `Duty`, `Group`,
//! `Activity`), and the same as the mirror stores them: ids in lower case, the personnummer as
//! an HMAC, a protected person without names, e-mail or EPPN, and a keyed hash of what is stored
//! by which a changed record is told from an unchanged one.
//!
//! Nothing here derives `Debug`: a record holds personal data, and a `{:?}` of one must not
//! compile. Unknown fields are ignored (the API grows); a field of the wrong type, an id that is
//! not a uuid or a time that is not RFC 3339 is an error naming the field and the record's id.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::civic::Keyed;

/// The longest text kept from any one field: far above any honest name or id, and a hostile
/// one cannot make a row (or a hash input) arbitrarily large.
pub const MAX_FIELD_CHARS: usize = 1024;

/// A field the schema gives as an array, an object or a boolean, read as its default when a
/// server writes `null` for it (as serialisers that write every absent field do) as when it
/// leaves it out: an empty list, no meta, not cancelled.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One page of a list endpoint.
#[derive(Deserialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    #[serde(rename = "pageToken", default)]
    pub page_token: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct Meta {
    pub created: Option<String>,
    pub modified: Option<String>,
}

#[derive(Deserialize)]
pub struct Reference {
    pub id: String,
}

#[derive(Deserialize)]
pub struct CivicNo {
    pub value: String,
    pub nationality: Option<String>,
}

#[derive(Deserialize)]
pub struct Email {
    pub value: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalIdentifier {
    pub value: String,
    pub context: String,
    pub globally_unique: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Enrolment {
    pub enroled_at: Reference,
    pub school_year: Option<i64>,
    pub school_type: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub cancelled: bool,
    pub education_code: Option<String>,
}

/// `Person`: the list returns a subset (id, civicNo, eduPersonPrincipalNames, names,
/// provisioningStatus, meta); a lookup the whole.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Person {
    pub id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: Meta,
    pub given_name: Option<String>,
    pub middle_name: Option<String>,
    pub family_name: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub edu_person_principal_names: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub external_identifiers: Vec<ExternalIdentifier>,
    pub security_marking: Option<String>,
    pub civic_no: Option<CivicNo>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub emails: Vec<Email>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub enrolments: Vec<Enrolment>,
    pub provisioning_status: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Duty {
    pub id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: Meta,
    pub person: Reference,
    pub duty_at: Reference,
    pub duty_role: String,
    pub provisioning_status: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupMembership {
    pub person: Reference,
    /// Not in the provisioning API's schema, but in SS 12000's `GroupMembership`: kept when
    /// sent.
    pub start_date: Option<String>,
    pub end_date: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    pub id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: Meta,
    pub display_name: String,
    pub group_type: String,
    pub school_type: String,
    pub organisation: Reference,
    #[serde(default, deserialize_with = "null_as_default")]
    pub group_memberships: Vec<GroupMembership>,
    pub provisioning_status: Option<bool>,
}

#[derive(Deserialize)]
pub struct DutyAssignment {
    pub duty: Reference,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    pub id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: Meta,
    pub display_name: String,
    pub activity_type: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub groups: Vec<Reference>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub teachers: Vec<DutyAssignment>,
    pub organisation: Reference,
    pub parent_activity: Reference,
    pub provisioning_status: Option<bool>,
}

/// What is wrong with a record, naming the field (never its value: it may be personal data).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {problem}")]
pub struct RecordError {
    pub field: &'static str,
    pub problem: &'static str,
}

fn bad(field: &'static str, problem: &'static str) -> RecordError {
    RecordError { field, problem }
}

/// A uuid as the mirror keys it: lower case, hyphenated; anything else is refused.
pub fn uuid(field: &'static str, text: &str) -> Result<String, RecordError> {
    uuid::Uuid::parse_str(text.trim())
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| bad(field, "is not a uuid"))
}

/// A uuid as 128 bits, for the set of ids a pass has seen (16 bytes each).
pub fn uuid_bits(id: &str) -> u128 {
    uuid::Uuid::parse_str(id).map(|u| u.as_u128()).unwrap_or(0)
}

/// An RFC 3339 date-time; one without an offset (as the API's own example page token carries
/// its `created`) is read as Swedish local time, where the API's records are made, rather than
/// failing the pass.
fn instant(field: &'static str, text: Option<&str>) -> Result<Option<DateTime<Utc>>, RecordError> {
    text.map(|t| {
        let t = t.trim();
        DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&Utc))
            .or_else(|_| {
                let naive = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f")
                    .map_err(|_| bad(field, "is not an RFC 3339 date-time"))?;
                naive
                    .and_local_timezone(chrono_tz::Europe::Stockholm)
                    .earliest()
                    .map(|t| t.with_timezone(&Utc))
                    .ok_or_else(|| bad(field, "is a local time that does not exist in Sweden"))
            })
            .map(crate::store::to_micros)
    })
    .transpose()
}

fn text(field: &'static str, value: &str) -> Result<String, RecordError> {
    if value.chars().count() > MAX_FIELD_CHARS {
        return Err(bad(field, "is longer than 1024 characters"));
    }
    Ok(value.to_owned())
}

fn opt_text(field: &'static str, value: Option<&str>) -> Result<Option<String>, RecordError> {
    value.map(|v| text(field, v)).transpose()
}

/// A person as stored. `Serialize` only for its hash input (field order is the hash's).
#[derive(Serialize)]
pub struct PersonRecord {
    pub id: String,
    pub created: Option<DateTime<Utc>>,
    pub modified: Option<DateTime<Utc>>,
    pub given_name: Option<String>,
    pub middle_name: Option<String>,
    pub family_name: Option<String>,
    pub eppn: Option<String>,
    pub civic_no_hmac: Option<String>,
    pub civic_no_nationality: Option<String>,
    pub security_marking: Option<String>,
    pub protected: bool,
    pub provisioning_status: Option<bool>,
    pub enrolments: Vec<EnrolmentRecord>,
    pub emails: Vec<EmailRecord>,
    pub external_ids: Vec<ExternalIdRecord>,
}

#[derive(Serialize)]
pub struct EnrolmentRecord {
    pub enroled_at: String,
    pub school_year: Option<i32>,
    pub school_type: String,
    pub cancelled: bool,
    pub education_code: Option<String>,
}

#[derive(Serialize)]
pub struct EmailRecord {
    pub value: String,
    pub kind: Option<String>,
}

#[derive(Serialize)]
pub struct ExternalIdRecord {
    pub value: String,
    pub context: String,
    pub globally_unique: Option<bool>,
}

/// Whether a security marking protects the person's names and contacts (skyddade
/// personuppgifter): any marking but `Ingen`. An unknown marking protects too: when in doubt,
/// keep less.
pub fn is_protected(marking: Option<&str>) -> bool {
    match marking.map(str::trim) {
        None | Some("") | Some("Ingen") => false,
        Some(_) => true,
    }
}

impl Person {
    /// The keyed hash of what the list shows of a person: a person whose list hash and
    /// `meta.modified` are unchanged is not looked up again.
    pub fn list_hash(&self, keyed: &Keyed) -> Result<String, RecordError> {
        #[derive(Serialize)]
        struct ListView<'a> {
            id: String,
            created: Option<&'a str>,
            modified: Option<&'a str>,
            given_name: Option<&'a str>,
            middle_name: Option<&'a str>,
            family_name: Option<&'a str>,
            eppn: &'a [String],
            civic_no: Option<String>,
            nationality: Option<&'a str>,
            provisioning_status: Option<bool>,
        }
        let view = ListView {
            id: uuid("id", &self.id)?,
            created: self.meta.created.as_deref(),
            modified: self.meta.modified.as_deref(),
            given_name: self.given_name.as_deref(),
            middle_name: self.middle_name.as_deref(),
            family_name: self.family_name.as_deref(),
            eppn: &self.edu_person_principal_names,
            civic_no: self.civic_no.as_ref().map(|c| keyed.civic_no(&c.value)),
            nationality: self
                .civic_no
                .as_ref()
                .and_then(|c| c.nationality.as_deref()),
            provisioning_status: self.provisioning_status,
        };
        Ok(keyed.content(&serde_json::to_vec(&view).unwrap_or_default()))
    }

    /// The person as stored: protected persons without names, e-mail or EPPN.
    pub fn record(&self, keyed: &Keyed) -> Result<PersonRecord, RecordError> {
        let protected = is_protected(self.security_marking.as_deref());
        let unless_protected = |v: Option<String>| if protected { None } else { v };
        let enrolments = self
            .enrolments
            .iter()
            .map(|e| {
                Ok(EnrolmentRecord {
                    enroled_at: uuid("enrolments.enroledAt.id", &e.enroled_at.id)?,
                    school_year: e
                        .school_year
                        .map(|y| {
                            i32::try_from(y)
                                .map_err(|_| bad("enrolments.schoolYear", "is out of range"))
                        })
                        .transpose()?,
                    school_type: text("enrolments.schoolType", &e.school_type)?,
                    cancelled: e.cancelled,
                    education_code: opt_text(
                        "enrolments.educationCode",
                        e.education_code.as_deref(),
                    )?,
                })
            })
            .collect::<Result<Vec<_>, RecordError>>()?;
        let emails = if protected {
            Vec::new()
        } else {
            self.emails
                .iter()
                .map(|e| {
                    Ok(EmailRecord {
                        value: text("emails.value", &e.value)?,
                        kind: opt_text("emails.type", e.kind.as_deref())?,
                    })
                })
                .collect::<Result<Vec<_>, RecordError>>()?
        };
        let external_ids = self
            .external_identifiers
            .iter()
            .map(|x| {
                Ok(ExternalIdRecord {
                    value: text("externalIdentifiers.value", &x.value)?,
                    context: text("externalIdentifiers.context", &x.context)?,
                    globally_unique: x.globally_unique,
                })
            })
            .collect::<Result<Vec<_>, RecordError>>()?;
        Ok(PersonRecord {
            id: uuid("id", &self.id)?,
            created: instant("meta.created", self.meta.created.as_deref())?,
            modified: instant("meta.modified", self.meta.modified.as_deref())?,
            given_name: unless_protected(opt_text("givenName", self.given_name.as_deref())?),
            middle_name: unless_protected(opt_text("middleName", self.middle_name.as_deref())?),
            family_name: unless_protected(opt_text("familyName", self.family_name.as_deref())?),
            eppn: unless_protected(opt_text(
                "eduPersonPrincipalNames",
                self.edu_person_principal_names.first().map(String::as_str),
            )?),
            civic_no_hmac: self.civic_no.as_ref().map(|c| keyed.civic_no(&c.value)),
            civic_no_nationality: opt_text(
                "civicNo.nationality",
                self.civic_no
                    .as_ref()
                    .and_then(|c| c.nationality.as_deref()),
            )?,
            security_marking: opt_text("securityMarking", self.security_marking.as_deref())?,
            protected,
            provisioning_status: self.provisioning_status,
            enrolments,
            emails,
            external_ids,
        })
    }
}

#[derive(Serialize)]
pub struct DutyRecord {
    pub id: String,
    pub created: Option<DateTime<Utc>>,
    pub modified: Option<DateTime<Utc>>,
    pub person_id: String,
    pub duty_at: String,
    pub duty_role: String,
    pub provisioning_status: Option<bool>,
}

impl Duty {
    pub fn record(&self) -> Result<DutyRecord, RecordError> {
        Ok(DutyRecord {
            id: uuid("id", &self.id)?,
            created: instant("meta.created", self.meta.created.as_deref())?,
            modified: instant("meta.modified", self.meta.modified.as_deref())?,
            person_id: uuid("person.id", &self.person.id)?,
            duty_at: uuid("dutyAt.id", &self.duty_at.id)?,
            duty_role: text("dutyRole", &self.duty_role)?,
            provisioning_status: self.provisioning_status,
        })
    }
}

#[derive(Serialize)]
pub struct MembershipRecord {
    pub person_id: String,
    pub start_date: Option<String>,
    pub end_date: Option<String>,
}

#[derive(Serialize)]
pub struct GroupRecord {
    pub id: String,
    pub created: Option<DateTime<Utc>>,
    pub modified: Option<DateTime<Utc>>,
    pub display_name: String,
    pub group_type: String,
    pub school_type: String,
    pub organisation: String,
    pub provisioning_status: Option<bool>,
    pub members: Vec<MembershipRecord>,
}

impl Group {
    pub fn record(&self) -> Result<GroupRecord, RecordError> {
        let members = self
            .group_memberships
            .iter()
            .map(|m| {
                Ok(MembershipRecord {
                    person_id: uuid("groupMemberships.person.id", &m.person.id)?,
                    start_date: opt_text("groupMemberships.startDate", m.start_date.as_deref())?,
                    end_date: opt_text("groupMemberships.endDate", m.end_date.as_deref())?,
                })
            })
            .collect::<Result<Vec<_>, RecordError>>()?;
        Ok(GroupRecord {
            id: uuid("id", &self.id)?,
            created: instant("meta.created", self.meta.created.as_deref())?,
            modified: instant("meta.modified", self.meta.modified.as_deref())?,
            display_name: text("displayName", &self.display_name)?,
            group_type: text("groupType", &self.group_type)?,
            school_type: text("schoolType", &self.school_type)?,
            organisation: uuid("organisation.id", &self.organisation.id)?,
            provisioning_status: self.provisioning_status,
            members,
        })
    }
}

#[derive(Serialize)]
pub struct ActivityRecord {
    pub id: String,
    pub created: Option<DateTime<Utc>>,
    pub modified: Option<DateTime<Utc>>,
    pub display_name: String,
    pub activity_type: String,
    pub organisation: String,
    pub parent_activity: String,
    pub provisioning_status: Option<bool>,
    pub groups: Vec<String>,
    pub teachers: Vec<String>,
}

impl Activity {
    pub fn record(&self) -> Result<ActivityRecord, RecordError> {
        Ok(ActivityRecord {
            id: uuid("id", &self.id)?,
            created: instant("meta.created", self.meta.created.as_deref())?,
            modified: instant("meta.modified", self.meta.modified.as_deref())?,
            display_name: text("displayName", &self.display_name)?,
            activity_type: text("activityType", &self.activity_type)?,
            organisation: uuid("organisation.id", &self.organisation.id)?,
            parent_activity: uuid("parentActivity.id", &self.parent_activity.id)?,
            provisioning_status: self.provisioning_status,
            groups: self
                .groups
                .iter()
                .map(|g| uuid("groups.id", &g.id))
                .collect::<Result<_, _>>()?,
            teachers: self
                .teachers
                .iter()
                .map(|t| uuid("teachers.duty.id", &t.duty.id))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// One record of any kind, as stored, with its content hash.
pub enum Record {
    Person {
        record: PersonRecord,
        list_sha256: String,
    },
    Duty(DutyRecord),
    Group(GroupRecord),
    Activity(ActivityRecord),
}

impl Record {
    pub fn id(&self) -> &str {
        match self {
            Record::Person { record, .. } => &record.id,
            Record::Duty(r) => &r.id,
            Record::Group(r) => &r.id,
            Record::Activity(r) => &r.id,
        }
    }

    /// The keyed hash of the record as stored.
    pub fn content_hash(&self, keyed: &Keyed) -> String {
        let bytes = match self {
            Record::Person { record, .. } => serde_json::to_vec(record),
            Record::Duty(r) => serde_json::to_vec(r),
            Record::Group(r) => serde_json::to_vec(r),
            Record::Activity(r) => serde_json::to_vec(r),
        };
        keyed.content(&bytes.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed() -> Keyed {
        Keyed::from_bytes(b"0123456789abcdef0123456789abcdef").expect("key")
    }

    const PERSON: &str = r#"{
        "id": "3FA85F64-5717-4562-B3FC-2C963F66AFA6",
        "meta": {"created": "2021-05-12T10:30:00.123+02:00", "modified": "2021-05-12T10:30:00.123+02:00"},
        "givenName": "Pippilotta", "familyName": "Långstrump",
        "eduPersonPrincipalNames": ["fc79e369@edu.huvudman.se"],
        "civicNo": {"value": "200901272385", "nationality": "SE"},
        "securityMarking": "Skyddad folkbokföring",
        "emails": [{"value": "pippi@example.se", "type": "Skola elev"}],
        "enrolments": [{"enroledAt": {"id": "d544563a-747a-42d3-8d37-415a101537fa"}, "schoolYear": 6, "schoolType": "GR"}],
        "provisioningStatus": true,
        "somethingNew": [1, 2, 3]
    }"#;

    #[test]
    fn a_protected_person_keeps_ids_and_enrolments_only_and_no_personnummer() {
        let p: Person = serde_json::from_str(PERSON).expect("parses");
        let r = p.record(&keyed()).expect("valid");
        assert_eq!(r.id, "3fa85f64-5717-4562-b3fc-2c963f66afa6");
        assert!(r.protected);
        assert_eq!((r.given_name, r.family_name, r.eppn), (None, None, None));
        assert!(r.emails.is_empty());
        assert_eq!(r.enrolments.len(), 1);
        let hmac = r.civic_no_hmac.expect("hashed");
        assert_eq!(hmac.len(), 64);
        assert!(!hmac.contains("200901272385"));
        assert_eq!(Some(hmac), Some(keyed().civic_no("200901272385")));
    }

    #[test]
    fn an_unmarked_person_keeps_names_and_a_changed_field_changes_the_hash() {
        let text = PERSON.replace("Skyddad folkbokföring", "Ingen");
        let p: Person = serde_json::from_str(&text).expect("parses");
        let k = keyed();
        let r = Record::Person {
            list_sha256: p.list_hash(&k).expect("valid"),
            record: p.record(&k).expect("valid"),
        };
        let Record::Person { record, .. } = &r else {
            panic!("a person")
        };
        assert_eq!(record.given_name.as_deref(), Some("Pippilotta"));
        assert_eq!(record.emails.len(), 1);
        let before = r.content_hash(&k);
        let p2: Person =
            serde_json::from_str(&text.replace("\"schoolYear\": 6", "\"schoolYear\": 7"))
                .expect("parses");
        let r2 = Record::Person {
            list_sha256: p2.list_hash(&k).expect("valid"),
            record: p2.record(&k).expect("valid"),
        };
        assert_ne!(before, r2.content_hash(&k));
        assert_eq!(
            p.list_hash(&k),
            p2.list_hash(&k),
            "enrolments are not in the list"
        );
    }

    #[test]
    fn bad_ids_and_times_are_named_without_their_values() {
        let p: Person =
            serde_json::from_str(&PERSON.replace("3FA85F64-5717", "not-a-uuid")).expect("parses");
        let e = p.record(&keyed()).err().expect("refused");
        assert_eq!(e.to_string(), "id: is not a uuid");
        let p: Person = serde_json::from_str(&PERSON.replace(
            "\"modified\": \"2021-05-12T10:30:00.123+02:00\"",
            "\"modified\": \"igår\"",
        ))
        .expect("parses");
        let e = p.record(&keyed()).err().expect("refused");
        assert_eq!(e.to_string(), "meta.modified: is not an RFC 3339 date-time");
    }

    #[test]
    fn null_lists_and_meta_read_as_absent_and_a_time_without_offset_as_swedish() {
        let text = PERSON
            .replace(
                r#"[{"value": "pippi@example.se", "type": "Skola elev"}]"#,
                "null",
            )
            .replace(
                r#""eduPersonPrincipalNames": ["fc79e369@edu.huvudman.se"]"#,
                r#""eduPersonPrincipalNames": null, "externalIdentifiers": null"#,
            )
            .replace("Skyddad folkbokföring", "Ingen")
            .replace(
                "2021-05-12T10:30:00.123+02:00\"}",
                "2021-01-12T10:30:00.5\"}",
            );
        let p: Person = serde_json::from_str(&text).expect("parses");
        let r = p.record(&keyed()).expect("valid");
        assert!(r.emails.is_empty() && r.eppn.is_none() && r.external_ids.is_empty());
        // Winter: Swedish time is UTC+1.
        assert_eq!(
            r.modified.map(|t| t.to_rfc3339()),
            Some("2021-01-12T09:30:00.500+00:00".to_owned())
        );
        let p: Person = serde_json::from_str(
            r#"{"id": "3fa85f64-5717-4562-b3fc-2c963f66afa6", "meta": null, "enrolments": null}"#,
        )
        .expect("parses");
        let r = p.record(&keyed()).expect("valid");
        assert!(r.modified.is_none() && r.enrolments.is_empty());
    }

    #[test]
    fn unknown_markings_protect() {
        assert!(!is_protected(None));
        assert!(!is_protected(Some("Ingen")));
        assert!(is_protected(Some("Sekretessmarkering")));
        assert!(is_protected(Some("Något nytt")));
    }
}

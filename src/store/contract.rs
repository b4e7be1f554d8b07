//! The data contract: what every table, view and column of the mirror means, in one place.
//!
//! PostgreSQL gets it as `COMMENT ON` (so `\d+` and every catalogue-reading tool show it);
//! SQLite, which has no comments, as rows of the table `data_contract`; the README's data
//! contract section is generated from it (a test holds the README equal to [`markdown`]). Both
//! are brought up to date after every migration (written whole when they differ, not at all
//! when they do not), so a change here reaches an existing database on the next start. A test
//! checks that every table, view and column in either database is described here, and nothing
//! more.

/// A table or view of the mirror.
#[derive(Debug)]
pub struct Object {
    pub name: &'static str,
    pub view: bool,
    /// What one row is, and what the object is for.
    pub about: &'static str,
    /// Every column, in table order, with its meaning (in parts, so the views can share).
    pub columns: &'static [&'static [(&'static str, &'static str)]],
}

impl Object {
    /// Every column with its meaning, in order.
    pub fn columns(&self) -> impl Iterator<Item = &'static (&'static str, &'static str)> {
        self.columns.iter().flat_map(|part| part.iter())
    }
}

const SOURCE: &str =
    "The configured source (platform) the row came from; `name` of its [[source]].";

/// The columns both views share, in their order.
const VIEW_COLUMNS: &[(&str, &str)] = &[
    ("source", SOURCE),
    ("elev", "The pupil's id on the platform (personal data)."),
    ("kind", "`amne` or `kurs`."),
    ("amne", "Subject code, for kind `amne`."),
    ("arskurs", "Year 3, 6 or 9, for kind `amne`."),
    ("kurs", "Course code, for kind `kurs`."),
    ("skolform", "Skolform the test was taken in."),
    (
        "uppdaterat",
        "Date the platform last updated the provtillfälle.",
    ),
    ("genomfort", "Date the test was taken; NULL when not given."),
    ("intedeltagit", "Whether the pupil did not take part."),
    (
        "sammanvagt_provbetyg",
        "The sammanvägt provbetyg; NULL when not given.",
    ),
    ("provomrade_id", "The provområde (stable id)."),
    ("ordinal", "0-based position of the provtillfälle."),
    (
        "changed_at",
        "When the provområde's content last really changed (UTC).",
    ),
    (
        "current_as_of",
        "The source's watermark: the row is current as of this instant.",
    ),
];

/// What v_delprovsresultat adds to [`VIEW_COLUMNS`].
const DELPROV_VIEW_COLUMNS: &[(&str, &str)] = &[
    (
        "delprov_ordinal",
        "0-based position of the delprov in its provtillfälle.",
    ),
    ("typ", "Delprov type code."),
    ("utfall", "`resultat`, `intedeltagit` or `borttappat`."),
    ("betyg", "Grade, for utfall `resultat`."),
    ("poang", "Points, for utfall `resultat`."),
    (
        "maluppfyllnad",
        "Whether the goals were met, where the delprov says.",
    ),
];

const PROV_SOURCE: &str =
    "The configured provisioning source the row came from; `name` of its [[provisioning]].";
const PROV_ID: &str = "The record's id in the provisioning API (a uuid, lower case).";
const PROV_CREATED: &str =
    "When provtjänst created the record (meta.created); NULL when not given.";
const PROV_MODIFIED: &str =
    "When provtjänst last changed the record's own attributes (meta.modified); NULL when not given.";
const PROV_FIRST_SEEN: &str = "Start of the first pass that saw the record (UTC).";
const PROV_CHANGED_AT: &str = "When the record's content last really changed here (UTC).";
const PROV_VIEW_LAST_SEEN: &str = "Start of the last complete pass, which saw the record (UTC).";

/// The key and times every provisioning kind's table starts with.
const PROV_KEY: &[(&str, &str)] = &[
    ("source", PROV_SOURCE),
    ("id", PROV_ID),
    ("created", PROV_CREATED),
    ("modified", PROV_MODIFIED),
];

/// The bookkeeping every provisioning kind's table ends with.
const PROV_TRACKING: &[(&str, &str)] = &[
    ("content_sha256", "Keyed hash of the record as stored, by which a changed record is told from an unchanged one."),
    ("first_seen", PROV_FIRST_SEEN),
    ("last_seen", "Start of the last pass that wrote the row, or, once removed, of the last complete pass before the removal; the v_prov_ views give the last complete pass for live rows, which an unchanged pass does not write."),
    ("changed_at", PROV_CHANGED_AT),
    ("removed_at", "When a complete pass no longer saw the record (UTC); NULL while it is live."),
];

/// A result's columns in the join views.
const RESULT_MATCH_COLUMNS: &[(&str, &str)] = &[
    ("result_source", SOURCE),
    ("provomrade_id", "The provområde (provomrade.id)."),
    ("elev", "The pupil's id on the platform (personal data)."),
    ("kind", "`amne` or `kurs`."),
    ("amne", "Subject code, for kind `amne`."),
    ("arskurs", "Year 3, 6 or 9, for kind `amne`."),
    ("kurs", "Course code, for kind `kurs`."),
];

/// Every table and view the migrations create, in the order the README shows them.
pub const OBJECTS: &[Object] = &[
    Object {
        name: "provomrade",
        view: false,
        about: "One row per source + pupil + provområde (a subject in årskurs 3, 6 or 9, or a \
                course): the unit the platform replaces. Personal data: keyed by the pupil's \
                platform id.",
        columns: &[&[
            ("id", "Stable row id; the provtillfällen and change_log refer to it."),
            ("source", SOURCE),
            ("elev", "The pupil's id on the platform (personal data)."),
            ("kind", "`amne` (a subject in a year) or `kurs` (a course)."),
            ("amne", "Subject code, for kind `amne`; NULL otherwise."),
            ("arskurs", "Year 3, 6 or 9, for kind `amne`; NULL otherwise."),
            ("kurs", "Course code, for kind `kurs`; NULL otherwise."),
            ("namespace", "Schema namespace (version) of the content as stored."),
            ("content_sha256", "SHA-256 (hex) of the content, by which a changed content is told from an unchanged one."),
            ("changed_at", "When the content last really changed here (UTC)."),
            ("raw_sha256", "SHA-256 (32 bytes) of the elements' raw bytes as last applied, by which a re-read skips them unbuilt; NULL until first compared."),
        ]],
    },
    Object {
        name: "provtillfalle",
        view: false,
        about: "One row per provtillfälle of a provområde, in the platform's order. Replaced \
                whole when the provområde changes, so ids are not stable: join on provomrade_id.",
        columns: &[&[
            ("id", "Row id; changes when the provområde is replaced."),
            ("provomrade_id", "The provområde (provomrade.id)."),
            ("ordinal", "0-based position in the document."),
            ("skolform", "Skolform the test was taken in (text: the list grows between versions)."),
            ("uppdaterat", "Date the platform last updated the provtillfälle."),
            ("genomfort", "Date the test was taken; NULL when not given."),
            ("intedeltagit", "Whether the pupil did not take part."),
            ("sammanvagt_provbetyg", "The sammanvägt provbetyg (combined test grade); NULL when not given."),
        ]],
    },
    Object {
        name: "delprovsresultat",
        view: false,
        about: "One row per delprov (part test) of a provtillfälle, in the platform's order.",
        columns: &[&[
            ("id", "Row id; changes when the provområde is replaced."),
            ("provtillfalle_id", "The provtillfälle (provtillfalle.id)."),
            ("ordinal", "0-based position in the provtillfälle."),
            ("typ", "Delprov type code (text: the list grows between versions)."),
            ("utfall", "`resultat`, `intedeltagit` (did not take part) or `borttappat` (lost)."),
            ("betyg", "Grade, for utfall `resultat`; NULL otherwise or when points are given."),
            ("poang", "Points, for utfall `resultat`; NULL otherwise or when a grade is given."),
            ("maluppfyllnad", "Whether the goals were met, where the delprov says; NULL otherwise."),
        ]],
    },
    Object {
        name: "quarantine",
        view: false,
        about: "One row per distinct element that was not applied (it broke the schema, or its \
                key was held back), kept so nothing received is lost; received again, it counts \
                up. Personal data: raw_xml and elev. Pruned by retention (raw_xml first).",
        columns: &[&[
            ("id", "Row id."),
            ("source", SOURCE),
            ("elev", "The pupil id the element claims, if it could be read (personal data)."),
            ("kind", "The kind of key it claims (`amne`/`kurs`), if readable."),
            ("amne", "The subject it claims, if readable."),
            ("arskurs", "The year it claims, if readable."),
            ("kurs", "The course it claims, if readable."),
            ("element_sha256", "SHA-256 of the element's bytes: with source, what makes it distinct."),
            ("reason", "Why it was not applied, in words."),
            ("error_code", "Machine-readable reason; `key_held` for a valid element of a key held back, `key_withdrawn` for elements applied earlier in the document and taken back."),
            ("element", "The element's name."),
            ("location", "Where in the element the error is (path)."),
            ("line", "Line of the error in the document where last received."),
            ("column", "Column of the error in the document where last received."),
            ("document", "The document (window or file) it was last received in."),
            ("namespace", "Schema namespace of that document."),
            ("raw_xml", "The element verbatim (personal data); NULL for withdrawn elements and once retention has cleared it."),
            ("first_seen_at", "When it was first received (UTC)."),
            ("last_seen_at", "When it was last received (UTC); retention counts from here."),
            ("times_seen", "How often it was received."),
        ]],
    },
    Object {
        name: "change_log",
        view: false,
        about: "Append-only feed of real changes, for warehouses that load incrementally: read \
                the entries above the highest seq you loaded. Pruned by retention.",
        columns: &[&[
            ("seq", "Monotonic, never reused; on PostgreSQL also commit order."),
            ("provomrade_id", "The provområde that changed (provomrade.id)."),
            ("op", "`upsert` (new or changed content) or `clear` (the platform sent no provtillfälle)."),
            ("at", "When the change was applied (UTC)."),
        ]],
    },
    Object {
        name: "sync_watermark",
        view: false,
        about: "One row per source: the end of the last window fully committed. Every row of the \
                source is current as of it. Moves back only by `nprov-sync source rewind`.",
        columns: &[&[
            ("source", SOURCE),
            ("watermark_local", "The watermark in the platform's local wall-clock time, for people."),
            ("watermark_utc", "The watermark as an instant (authoritative; local time repeats in autumn)."),
            ("updated_at", "When it last moved (UTC)."),
        ]],
    },
    Object {
        name: "sync_run",
        view: false,
        about: "One row per window attempt, committed or failed. Pruned by retention.",
        columns: &[&[
            ("id", "Row id."),
            ("source", SOURCE),
            ("kind", "`sync` (moves the watermark) or `backfill` (a re-read that does not)."),
            ("from_local", "Window start, the platform's local time (the `from` sent)."),
            ("tom_local", "Window end, local time (the `tom` sent)."),
            ("from_utc", "Window start as an instant."),
            ("tom_utc", "Window end as an instant."),
            ("started_at", "When the attempt started (UTC)."),
            ("finished_at", "When it committed or failed (UTC)."),
            ("outcome", "`ok` or `failed`."),
            ("http_status", "The last HTTP status, if one was received."),
            ("bytes", "Response bytes."),
            ("records", "Elements read."),
            ("changed", "Provområden whose content changed."),
            ("unchanged", "Provområden received unchanged (nothing written)."),
            ("cleared", "Provområden cleared (no provtillfälle left)."),
            ("quarantined", "Elements quarantined."),
            ("error", "Why it failed, for `failed` (no credentials, no pupil ids)."),
        ]],
    },
    Object {
        name: "erasure",
        view: false,
        about: "Audit of `nprov-sync forget`: one row per erasure of a pupil's data, with what \
                was removed. The pupil's id is not recorded.",
        columns: &[&[
            ("id", "Row id."),
            ("erased_at", "When the erasure committed (UTC)."),
            ("source", "The source it was limited to; NULL for every source."),
            ("reason", "The reason given with --reason (e.g. a case number); NULL if none."),
            ("provomrade", "provomrade rows removed."),
            ("provtillfalle", "provtillfalle rows removed."),
            ("delprovsresultat", "delprovsresultat rows removed."),
            ("change_log", "change_log entries removed."),
            ("quarantine", "quarantine rows removed."),
            ("provisioning", "Rows of the provisioning mirror removed (the registered person, their lists, memberships and duties, and their prov_change_log entries)."),
        ]],
    },
    Object {
        name: "v_provresultat",
        view: true,
        about: "One row per provtillfälle with its pupil and provområde, for analysts (no joins).",
        columns: &[VIEW_COLUMNS],
    },
    Object {
        name: "v_delprovsresultat",
        view: true,
        about: "One row per delprov with its provtillfälle, pupil and provområde, for analysts.",
        columns: &[VIEW_COLUMNS, DELPROV_VIEW_COLUMNS],
    },
    Object {
        name: "prov_person",
        view: false,
        about: "One row per provisioning source + person transferred to Skolverket's provtjänst, \
                as its provisioning API last returned it (persons/lookup). Personal data. The \
                personnummer is kept only as an HMAC; a person with a security marking keeps \
                only ids and enrolments. A removed person stays, with removed_at set.",
        columns: &[
            PROV_KEY,
            &[
                ("given_name", "Given name; NULL for a protected person."),
                ("middle_name", "Middle name; NULL for a protected person or when not given."),
                ("family_name", "Family name; NULL for a protected person."),
                ("eppn", "The eduPersonPrincipalName (federation user name); NULL for a protected person."),
                ("civic_no_hmac", "HMAC-SHA-256 (hex) of the personnummer under the source's civic_no_key_file; `nprov-sync provisioning hash-civic-no` gives a number's."),
                ("civic_no_nationality", "Country of the personnummer (ISO 3166-1 alpha-2)."),
                ("security_marking", "`Ingen`, `Sekretessmarkering` or `Skyddad folkbokföring`, as the API says; NULL when not given."),
                ("protected", "Whether the person has a security marking other than `Ingen`: names, e-mail addresses and EPPN are then not stored."),
                ("provisioning_status", "Whether the person has an account on the test platform (the API's provisioningStatus)."),
                ("list_sha256", "Keyed hash of the person as the list returns it, by which a pass tells a changed person (to look up) from an unchanged one."),
            ],
            PROV_TRACKING,
        ],
    },
    Object {
        name: "prov_person_enrolment",
        view: false,
        about: "One row per enrolment (inskrivning) of a person, in the API's order; replaced \
                whole when the person changes.",
        columns: &[&[
            ("source", PROV_SOURCE),
            ("person_id", "The person (prov_person.id)."),
            ("ordinal", "0-based position in the person's list."),
            ("enroled_at", "The school unit (Skolverket's uuid)."),
            ("school_year", "Årskurs; NULL when not given."),
            ("school_type", "Skolform: `GR`, `SP`, `SAM`, `GY` or `VUXGY`."),
            ("cancelled", "Whether the enrolment was cancelled in advance."),
            ("education_code", "Studievägskod; NULL when not given."),
        ]],
    },
    Object {
        name: "prov_person_email",
        view: false,
        about: "One row per e-mail address of a person (personal data); none for a protected person.",
        columns: &[&[
            ("source", PROV_SOURCE),
            ("person_id", "The person (prov_person.id)."),
            ("ordinal", "0-based position in the person's list."),
            ("value", "The address."),
            ("type", "`Privat`, `Skola elev`, `Skola personal` or `Arbete övrigt`; NULL when not given."),
        ]],
    },
    Object {
        name: "prov_person_external_id",
        view: false,
        about: "One row per external identifier of a person (an eduID EPPN for staff), kept for \
                protected persons too: it is an id, and the results join on it.",
        columns: &[&[
            ("source", PROV_SOURCE),
            ("person_id", "The person (prov_person.id)."),
            ("ordinal", "0-based position in the person's list."),
            ("value", "The identifier."),
            ("context", "Where it is used (a URI, `https://eduid.se`)."),
            ("globally_unique", "Whether it is globally unique; NULL when not given."),
        ]],
    },
    Object {
        name: "prov_duty",
        view: false,
        about: "One row per duty (tjänstgöring) of school staff, as the provisioning API last \
                returned it.",
        columns: &[
            PROV_KEY,
            &[
                ("person_id", "The person on duty (prov_person.id)."),
                ("duty_at", "The school unit (Skolverket's uuid)."),
                ("duty_role", "The role (`Lärare`, `Rektor` and so on)."),
                ("provisioning_status", "Whether the duty exists on the test platform."),
            ],
            PROV_TRACKING,
        ],
    },
    Object {
        name: "prov_group",
        view: false,
        about: "One row per group (`Klass` or `Undervisning`), as the provisioning API last \
                returned it; its members are in prov_group_membership.",
        columns: &[
            PROV_KEY,
            &[
                ("display_name", "The group's name."),
                ("group_type", "`Klass`, `Undervisning` or another SS 12000 group type."),
                ("school_type", "Skolform: `GR`, `SP`, `SAM`, `GY` or `VUXGY`."),
                ("organisation", "The school unit (Skolverket's uuid)."),
                ("provisioning_status", "Whether the group exists on the test platform."),
            ],
            PROV_TRACKING,
        ],
    },
    Object {
        name: "prov_group_membership",
        view: false,
        about: "One row per member of a group, in the API's order; replaced whole when the group \
                changes.",
        columns: &[&[
            ("source", PROV_SOURCE),
            ("group_id", "The group (prov_group.id)."),
            ("ordinal", "0-based position in the group's list."),
            ("person_id", "The member (prov_person.id)."),
            ("start_date", "First day of the membership, where the API gives one (SS 12000); NULL otherwise."),
            ("end_date", "Last day of the membership, where the API gives one; NULL otherwise."),
        ]],
    },
    Object {
        name: "prov_activity",
        view: false,
        about: "One row per activity (teaching tied to a national test), as the provisioning API \
                last returned it; its groups and teachers are in prov_activity_group and \
                prov_activity_teacher.",
        columns: &[
            PROV_KEY,
            &[
                ("display_name", "The activity's name."),
                ("activity_type", "`Undervisning` or another SS 12000 activity type."),
                ("organisation", "The school unit (Skolverket's uuid)."),
                ("parent_activity", "The national test activity (Skolverket's uuid, e.g. MA åk 6)."),
                ("provisioning_status", "Whether a teaching group of the activity exists on the test platform."),
            ],
            PROV_TRACKING,
        ],
    },
    Object {
        name: "prov_activity_group",
        view: false,
        about: "One row per group of an activity, in the API's order.",
        columns: &[&[
            ("source", PROV_SOURCE),
            ("activity_id", "The activity (prov_activity.id)."),
            ("ordinal", "0-based position in the activity's list."),
            ("group_id", "The group (prov_group.id)."),
        ]],
    },
    Object {
        name: "prov_activity_teacher",
        view: false,
        about: "One row per teacher (duty) of an activity, in the API's order: every teacher \
                teaches every group of the activity.",
        columns: &[&[
            ("source", PROV_SOURCE),
            ("activity_id", "The activity (prov_activity.id)."),
            ("ordinal", "0-based position in the activity's list."),
            ("duty_id", "The teacher's duty (prov_duty.id)."),
        ]],
    },
    Object {
        name: "prov_pass",
        view: false,
        about: "One row per pass of a provisioning source over every kind: complete (its \
                removals applied), refused (complete, but its removals held back for an operator) \
                or failed (nothing removed). Pruned by retention with sync_run.",
        columns: &[
            &[
                ("id", "Row id."),
                ("source", PROV_SOURCE),
                ("started_at", "When the pass started (UTC)."),
                ("finished_at", "When it ended (UTC)."),
                ("outcome", "`complete`, `refused` (removals held back) or `failed`."),
                ("requests", "HTTP requests to the provisioning API, retries and lookups included."),
                ("duration_ms", "Wall time in milliseconds."),
            ],
            &[
                ("person_seen", "Persons the pass read."),
                ("person_added", "Persons new to the mirror (or back after a removal)."),
                ("person_changed", "Persons whose content changed."),
                ("person_removed", "Persons marked removed."),
                ("duty_seen", "Duties the pass read."),
                ("duty_added", "Duties new to the mirror."),
                ("duty_changed", "Duties whose content changed."),
                ("duty_removed", "Duties marked removed."),
                ("group_seen", "Groups the pass read."),
                ("group_added", "Groups new to the mirror."),
                ("group_changed", "Groups whose content changed."),
                ("group_removed", "Groups marked removed."),
                ("activity_seen", "Activities the pass read."),
                ("activity_added", "Activities new to the mirror."),
                ("activity_changed", "Activities whose content changed."),
                ("activity_removed", "Activities marked removed."),
                ("error", "Why it failed or was refused (kind, page, record id; no personal data)."),
            ],
        ],
    },
    Object {
        name: "prov_change_log",
        view: false,
        about: "Append-only feed of the provisioning mirror's changes, for warehouses that load \
                incrementally: read the entries above the highest seq you loaded. Pruned by \
                retention with change_log.",
        columns: &[&[
            ("seq", "Monotonic, never reused."),
            ("source", PROV_SOURCE),
            ("kind", "`person`, `duty`, `group` or `activity`."),
            ("id", "The record's id."),
            ("op", "`upsert` (new, changed or back), `remove` (a complete pass did not see it) or `erase` (`nprov-sync forget`)."),
            ("at", "When the change was applied (UTC)."),
        ]],
    },
    Object {
        name: "prov_state",
        view: false,
        about: "One row per provisioning source: its last complete pass and removals held back.",
        columns: &[&[
            ("source", PROV_SOURCE),
            ("last_complete_started", "Start of the last complete pass (the instant every live record was last seen)."),
            ("last_complete_finished", "End of the last complete pass."),
            ("accept_removals", "Set by `nprov-sync provisioning accept-removals`: the next complete pass applies its removals whatever their share."),
            ("refused_kinds", "The kinds whose removals the last pass held back (comma-separated); NULL when none."),
        ]],
    },
    Object {
        name: "v_prov_person",
        view: true,
        about: "The persons the last complete pass saw (removed ones left out).",
        columns: &[&[
            ("source", PROV_SOURCE),
            ("id", PROV_ID),
            ("created", PROV_CREATED),
            ("modified", PROV_MODIFIED),
            ("given_name", "Given name; NULL for a protected person."),
            ("middle_name", "Middle name; NULL for a protected person or when not given."),
            ("family_name", "Family name; NULL for a protected person."),
            ("eppn", "The eduPersonPrincipalName; NULL for a protected person."),
            ("civic_no_hmac", "HMAC-SHA-256 (hex) of the personnummer."),
            ("civic_no_nationality", "Country of the personnummer."),
            ("security_marking", "The API's securityMarking; NULL when not given."),
            ("protected", "Whether the person has a security marking other than `Ingen`."),
            ("provisioning_status", "Whether the person has an account on the test platform."),
            ("first_seen", PROV_FIRST_SEEN),
            ("last_seen", PROV_VIEW_LAST_SEEN),
            ("changed_at", PROV_CHANGED_AT),
        ]],
    },
    Object {
        name: "v_prov_duty",
        view: true,
        about: "The duties the last complete pass saw.",
        columns: &[&[
            ("source", PROV_SOURCE),
            ("id", PROV_ID),
            ("created", PROV_CREATED),
            ("modified", PROV_MODIFIED),
            ("person_id", "The person on duty (prov_person.id)."),
            ("duty_at", "The school unit (Skolverket's uuid)."),
            ("duty_role", "The role."),
            ("provisioning_status", "Whether the duty exists on the test platform."),
            ("first_seen", PROV_FIRST_SEEN),
            ("last_seen", PROV_VIEW_LAST_SEEN),
            ("changed_at", PROV_CHANGED_AT),
        ]],
    },
    Object {
        name: "v_prov_group",
        view: true,
        about: "The groups the last complete pass saw.",
        columns: &[&[
            ("source", PROV_SOURCE),
            ("id", PROV_ID),
            ("created", PROV_CREATED),
            ("modified", PROV_MODIFIED),
            ("display_name", "The group's name."),
            ("group_type", "`Klass`, `Undervisning` or another SS 12000 group type."),
            ("school_type", "Skolform."),
            ("organisation", "The school unit (Skolverket's uuid)."),
            ("provisioning_status", "Whether the group exists on the test platform."),
            ("first_seen", PROV_FIRST_SEEN),
            ("last_seen", PROV_VIEW_LAST_SEEN),
            ("changed_at", PROV_CHANGED_AT),
        ]],
    },
    Object {
        name: "v_prov_activity",
        view: true,
        about: "The activities the last complete pass saw.",
        columns: &[&[
            ("source", PROV_SOURCE),
            ("id", PROV_ID),
            ("created", PROV_CREATED),
            ("modified", PROV_MODIFIED),
            ("display_name", "The activity's name."),
            ("activity_type", "`Undervisning` or another SS 12000 activity type."),
            ("organisation", "The school unit (Skolverket's uuid)."),
            ("parent_activity", "The national test activity (Skolverket's uuid)."),
            ("provisioning_status", "Whether a teaching group of the activity exists on the test platform."),
            ("first_seen", PROV_FIRST_SEEN),
            ("last_seen", PROV_VIEW_LAST_SEEN),
            ("changed_at", PROV_CHANGED_AT),
        ]],
    },
    Object {
        name: "v_prov_person_key",
        view: true,
        about: "Every id a live person is known by, normalised as the results' elev is matched \
                (braces dropped, lower case): the person's uuid and its external identifiers.",
        columns: &[&[
            ("source", PROV_SOURCE),
            ("person_id", "The person (prov_person.id)."),
            ("elev_key", "An id of the person, normalised."),
        ]],
    },
    Object {
        name: "v_prov_registered_result",
        view: true,
        about: "Results joined to registered pupils: one row per provområde of the results mirror \
                and person whose id (or external identifier) is the result's elev, braces and \
                case ignored. Provisioning lags the platform by up to 30 minutes, or longer.",
        columns: &[RESULT_MATCH_COLUMNS, &[
            ("provisioning_source", "The provisioning source that registered the pupil."),
            ("person_id", "The registered person (prov_person.id)."),
        ]],
    },
    Object {
        name: "v_prov_registered_without_result",
        view: true,
        about: "Registered pupils (a live person with an enrolment not cancelled) that no result \
                of the results mirror names.",
        columns: &[&[
            ("provisioning_source", "The provisioning source that registered the pupil."),
            ("person_id", "The registered person (prov_person.id)."),
        ]],
    },
    Object {
        name: "v_prov_result_without_registration",
        view: true,
        about: "Results whose pupil no provisioning source has registered (as a live person's id \
                or external identifier).",
        columns: &[RESULT_MATCH_COLUMNS],
    },
    Object {
        name: "data_contract",
        view: false,
        about: "SQLite only (PostgreSQL has COMMENT ON): this description of every table, view \
                and column, checked at every start and rewritten whole when it differs.",
        columns: &[&[
            ("object", "Table or view name."),
            ("column_name", "Column name; NULL for the row describing the object itself."),
            ("description", "What it means."),
        ]],
    },
];

/// The migrations' own bookkeeping, which sqlx creates; described on PostgreSQL too, so that
/// every table in the schema carries a comment.
pub const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// The README's data-contract tables, generated (see the module comment).
pub fn markdown() -> String {
    let mut out = String::new();
    for o in OBJECTS {
        let kind = if o.view { "view" } else { "table" };
        out.push_str(&format!(
            "#### `{}` ({kind})\n\n{}\n\n",
            o.name,
            squeeze(o.about)
        ));
        out.push_str("| column | meaning |\n|---|---|\n");
        for (column, about) in o.columns() {
            out.push_str(&format!("| `{column}` | {} |\n", squeeze(about)));
        }
        out.push('\n');
    }
    out
}

/// One line: the `\` continuations above leave runs of spaces.
pub(crate) fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text for a SQL string literal (quotes doubled).
pub(crate) fn literal(text: &str) -> String {
    format!("'{}'", squeeze(text).replace('\'', "''"))
}

/// One description: of a table or view (`column` `None`) or of a column; a row of SQLite's
/// `data_contract`, a comment on PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Description {
    pub object: &'static str,
    /// `TABLE` or `VIEW`.
    pub kind: &'static str,
    pub column: Option<&'static str>,
    /// The text as the database stores it (squeezed to one line).
    pub text: String,
}

impl Description {
    /// Its `COMMENT ON` statement (PostgreSQL).
    pub fn statement(&self) -> String {
        match self.column {
            None => format!(
                "COMMENT ON {} {} IS {}",
                self.kind,
                self.object,
                literal(&self.text)
            ),
            Some(column) => format!(
                "COMMENT ON COLUMN {}.\"{column}\" IS {}",
                self.object,
                literal(&self.text)
            ),
        }
    }
}

/// Every object's and column's description, in [`OBJECTS`]' order.
pub fn described() -> impl Iterator<Item = Description> {
    OBJECTS.iter().flat_map(|o| {
        let kind = if o.view { "VIEW" } else { "TABLE" };
        std::iter::once((None, o.about))
            .chain(o.columns().map(|(c, about)| (Some(*c), *about)))
            .map(move |(column, about)| Description {
                object: o.name,
                kind,
                column,
                text: squeeze(about),
            })
    })
}

/// Every comment PostgreSQL carries: each object and column but SQLite's `data_contract`, and
/// sqlx's migrations table.
pub fn postgres_described() -> Vec<Description> {
    let mut out: Vec<Description> = described()
        .filter(|d| d.object != "data_contract")
        .collect();
    out.push(Description {
        object: MIGRATIONS_TABLE,
        kind: "TABLE",
        column: None,
        text: squeeze(
            "The migrations applied to this schema (sqlx's bookkeeping): version, description, \
             when, checksum.",
        ),
    });
    for (column, about) in MIGRATIONS_COLUMNS {
        out.push(Description {
            object: MIGRATIONS_TABLE,
            kind: "TABLE",
            column: Some(column),
            text: squeeze(about),
        });
    }
    out
}

const MIGRATIONS_COLUMNS: &[(&str, &str)] = &[
    (
        "version",
        "The migration's version (its file name's number).",
    ),
    ("description", "The migration's name."),
    ("installed_on", "When it was applied."),
    ("success", "Whether it completed."),
    (
        "checksum",
        "SHA-384 of the migration's SQL, to detect edits after it ran.",
    ),
    ("execution_time", "How long it took, in nanoseconds."),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_text_is_one_sentence_or_more() {
        let mut names = std::collections::BTreeSet::new();
        for o in OBJECTS {
            assert!(names.insert(o.name), "{} twice", o.name);
            assert!(o.about.ends_with('.'), "{}", o.name);
            let mut columns = std::collections::BTreeSet::new();
            for (c, about) in o.columns() {
                assert!(columns.insert(c), "{}.{c} twice", o.name);
                assert!(about.ends_with('.'), "{}.{c}: {about}", o.name);
            }
        }
    }

    /// The README's data-contract tables are [`markdown`]'s output; `BLESS_README=1 cargo test`
    /// writes them after a change here.
    #[test]
    fn the_readme_shows_the_contract_as_generated() {
        const BEGIN: &str =
            "<!-- data-contract:begin (generated from src/store/contract.rs; a test keeps this equal) -->\n";
        const END: &str = "<!-- data-contract:end -->";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
        let readme = std::fs::read_to_string(&path).expect("README.md");
        let start = readme.find(BEGIN).expect("the begin marker") + BEGIN.len();
        let end = readme.find(END).expect("the end marker");
        let expected = format!("\n{}", markdown());
        if std::env::var_os("BLESS_README").is_some() {
            let updated = format!("{}{expected}{}", &readme[..start], &readme[end..]);
            std::fs::write(&path, updated).expect("write README.md");
            return;
        }
        assert!(
            readme[start..end] == expected,
            "README.md's data contract differs from src/store/contract.rs; run \
             BLESS_README=1 cargo test --lib contract"
        );
    }

    #[test]
    fn quotes_are_doubled_in_literals() {
        assert_eq!(literal("the pupil's  id"), "'the pupil''s id'");
    }
}

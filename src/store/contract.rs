//! The data contract: what every table, view and column of the mirror means, in one place.
//!
//! PostgreSQL gets it as `COMMENT ON` (so `\d+` and every catalogue-reading tool show it);
//! SQLite, which has no comments, as rows of the table `data_contract`; the README's data
//! contract section is generated from it (a test holds the README equal to [`markdown`]). Both
//! are written after every migration, so a change here reaches an existing database on the next
//! start. A test checks that every table, view and column in either database is described here,
//! and nothing more.

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
        name: "data_contract",
        view: false,
        about: "SQLite only (PostgreSQL has COMMENT ON): this description of every table, view \
                and column, rewritten after every migration.",
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

/// `COMMENT ON` statements for PostgreSQL, every object and column.
pub fn postgres_comments() -> Vec<String> {
    let mut out = Vec::new();
    for o in OBJECTS.iter().filter(|o| o.name != "data_contract") {
        let kind = if o.view { "VIEW" } else { "TABLE" };
        out.push(format!(
            "COMMENT ON {kind} {} IS {}",
            o.name,
            literal(o.about)
        ));
        for (column, about) in o.columns() {
            out.push(format!(
                "COMMENT ON COLUMN {}.\"{column}\" IS {}",
                o.name,
                literal(about)
            ));
        }
    }
    out.push(format!(
        "COMMENT ON TABLE {MIGRATIONS_TABLE} IS {}",
        literal("The migrations applied to this schema (sqlx's bookkeeping): version, description, when, checksum.")
    ));
    for (column, about) in MIGRATIONS_COLUMNS {
        out.push(format!(
            "COMMENT ON COLUMN {MIGRATIONS_TABLE}.{column} IS {}",
            literal(about)
        ));
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

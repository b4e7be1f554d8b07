-- The provisioning mirror (issue 25): what a huvudman has transferred to Skolverket's provtjänst,
-- read back through the provisioning API's GET endpoints in full passes. One table per kind
-- (person, duty, group, activity) with a child table per list, a row per pass, a change log of
-- its own and each source's pass state. A record a complete pass did not see is marked
-- removed (removed_at), never deleted: a warehouse loading incrementally learns of it from
-- prov_change_log. Ids are the API's uuids in lower case. The personnummer is never stored:
-- civic_no_hmac is its HMAC-SHA-256 under the source's civic_no_key_file.

-- `forget` counts the provisioning rows it removes too.
ALTER TABLE erasure ADD COLUMN provisioning bigint NOT NULL DEFAULT 0;

CREATE TABLE prov_person (
    source               text    NOT NULL,
    id                   text    NOT NULL,
    created              timestamptz,
    modified             timestamptz,
    given_name           TEXT,
    middle_name          TEXT,
    family_name          TEXT,
    eppn                 TEXT,
    civic_no_hmac        TEXT,
    civic_no_nationality TEXT,
    security_marking     TEXT,
    protected            boolean  NOT NULL,
    provisioning_status  boolean,
    list_sha256          text    NOT NULL,
    content_sha256       text    NOT NULL,
    first_seen           timestamptz    NOT NULL,
    last_seen            timestamptz    NOT NULL,
    changed_at           timestamptz    NOT NULL,
    removed_at           timestamptz,
    PRIMARY KEY (source, id)
);
CREATE INDEX prov_person_civic_no ON prov_person (civic_no_hmac);

CREATE TABLE prov_person_enrolment (
    source         text    NOT NULL,
    person_id      text    NOT NULL,
    ordinal        integer NOT NULL CHECK (ordinal >= 0),
    enroled_at     text    NOT NULL,
    school_year    integer,
    school_type    text    NOT NULL,
    cancelled      boolean  NOT NULL,
    education_code TEXT,
    PRIMARY KEY (source, person_id, ordinal),
    FOREIGN KEY (source, person_id) REFERENCES prov_person (source, id) ON DELETE CASCADE
);

CREATE TABLE prov_person_email (
    source    text    NOT NULL,
    person_id text    NOT NULL,
    ordinal   integer NOT NULL CHECK (ordinal >= 0),
    value     text    NOT NULL,
    type      TEXT,
    PRIMARY KEY (source, person_id, ordinal),
    FOREIGN KEY (source, person_id) REFERENCES prov_person (source, id) ON DELETE CASCADE
);

CREATE TABLE prov_person_external_id (
    source          text    NOT NULL,
    person_id       text    NOT NULL,
    ordinal         integer NOT NULL CHECK (ordinal >= 0),
    value           text    NOT NULL,
    context         text    NOT NULL,
    globally_unique boolean,
    PRIMARY KEY (source, person_id, ordinal),
    FOREIGN KEY (source, person_id) REFERENCES prov_person (source, id) ON DELETE CASCADE
);

CREATE TABLE prov_duty (
    source              text   NOT NULL,
    id                  text   NOT NULL,
    created             timestamptz,
    modified            timestamptz,
    person_id           text   NOT NULL,
    duty_at             text   NOT NULL,
    duty_role           text   NOT NULL,
    provisioning_status boolean,
    content_sha256      text   NOT NULL,
    first_seen          timestamptz   NOT NULL,
    last_seen           timestamptz   NOT NULL,
    changed_at          timestamptz   NOT NULL,
    removed_at          timestamptz,
    PRIMARY KEY (source, id)
);
CREATE INDEX prov_duty_person ON prov_duty (source, person_id);

CREATE TABLE prov_group (
    source              text   NOT NULL,
    id                  text   NOT NULL,
    created             timestamptz,
    modified            timestamptz,
    display_name        text   NOT NULL,
    group_type          text   NOT NULL,
    school_type         text   NOT NULL,
    organisation        text   NOT NULL,
    provisioning_status boolean,
    content_sha256      text   NOT NULL,
    first_seen          timestamptz   NOT NULL,
    last_seen           timestamptz   NOT NULL,
    changed_at          timestamptz   NOT NULL,
    removed_at          timestamptz,
    PRIMARY KEY (source, id)
);

CREATE TABLE prov_group_membership (
    source     text    NOT NULL,
    group_id   text    NOT NULL,
    ordinal    integer NOT NULL CHECK (ordinal >= 0),
    person_id  text    NOT NULL,
    start_date TEXT,
    end_date   TEXT,
    PRIMARY KEY (source, group_id, ordinal),
    FOREIGN KEY (source, group_id) REFERENCES prov_group (source, id) ON DELETE CASCADE
);
CREATE INDEX prov_group_membership_person ON prov_group_membership (source, person_id);

CREATE TABLE prov_activity (
    source              text   NOT NULL,
    id                  text   NOT NULL,
    created             timestamptz,
    modified            timestamptz,
    display_name        text   NOT NULL,
    activity_type       text   NOT NULL,
    organisation        text   NOT NULL,
    parent_activity     text   NOT NULL,
    provisioning_status boolean,
    content_sha256      text   NOT NULL,
    first_seen          timestamptz   NOT NULL,
    last_seen           timestamptz   NOT NULL,
    changed_at          timestamptz   NOT NULL,
    removed_at          timestamptz,
    PRIMARY KEY (source, id)
);

CREATE TABLE prov_activity_group (
    source      text    NOT NULL,
    activity_id text    NOT NULL,
    ordinal     integer NOT NULL CHECK (ordinal >= 0),
    group_id    text    NOT NULL,
    PRIMARY KEY (source, activity_id, ordinal),
    FOREIGN KEY (source, activity_id) REFERENCES prov_activity (source, id) ON DELETE CASCADE
);

CREATE TABLE prov_activity_teacher (
    source      text    NOT NULL,
    activity_id text    NOT NULL,
    ordinal     integer NOT NULL CHECK (ordinal >= 0),
    duty_id     text    NOT NULL,
    PRIMARY KEY (source, activity_id, ordinal),
    FOREIGN KEY (source, activity_id) REFERENCES prov_activity (source, id) ON DELETE CASCADE
);

CREATE TABLE prov_pass (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source           text    NOT NULL,
    started_at       timestamptz    NOT NULL,
    finished_at      timestamptz    NOT NULL,
    outcome          text    NOT NULL CHECK (outcome IN ('complete', 'refused', 'failed')),
    requests         bigint  NOT NULL,
    duration_ms      bigint  NOT NULL,
    person_seen      bigint  NOT NULL,
    person_added     bigint  NOT NULL,
    person_changed   bigint  NOT NULL,
    person_removed   bigint  NOT NULL,
    duty_seen        bigint  NOT NULL,
    duty_added       bigint  NOT NULL,
    duty_changed     bigint  NOT NULL,
    duty_removed     bigint  NOT NULL,
    group_seen       bigint  NOT NULL,
    group_added      bigint  NOT NULL,
    group_changed    bigint  NOT NULL,
    group_removed    bigint  NOT NULL,
    activity_seen    bigint  NOT NULL,
    activity_added   bigint  NOT NULL,
    activity_changed bigint  NOT NULL,
    activity_removed bigint  NOT NULL,
    error            TEXT
);
CREATE INDEX prov_pass_source ON prov_pass (source, id);
CREATE INDEX prov_pass_started ON prov_pass (started_at);

CREATE TABLE prov_change_log (
    seq    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source text NOT NULL,
    kind   text NOT NULL CHECK (kind IN ('person', 'duty', 'group', 'activity')),
    id     text NOT NULL,
    op     text NOT NULL CHECK (op IN ('upsert', 'remove', 'erase')),
    at     timestamptz NOT NULL
);
CREATE INDEX prov_change_log_at ON prov_change_log (at);

CREATE TABLE prov_state (
    source                 text   PRIMARY KEY,
    last_complete_started  timestamptz,
    last_complete_finished timestamptz,
    accept_removals        boolean NOT NULL,
    refused_kinds          TEXT
);

-- The current state: what the last complete pass saw.
CREATE VIEW v_prov_person AS
SELECT p.source, p.id, p.created, p.modified, p.given_name, p.middle_name, p.family_name, p.eppn,
       p.civic_no_hmac, p.civic_no_nationality, p.security_marking, p.protected,
       p.provisioning_status, p.first_seen, COALESCE(s.last_complete_started, p.last_seen) AS last_seen,
       p.changed_at
FROM prov_person p LEFT JOIN prov_state s ON s.source = p.source
WHERE p.removed_at IS NULL;

CREATE VIEW v_prov_duty AS
SELECT d.source, d.id, d.created, d.modified, d.person_id, d.duty_at, d.duty_role,
       d.provisioning_status, d.first_seen, COALESCE(s.last_complete_started, d.last_seen) AS last_seen,
       d.changed_at
FROM prov_duty d LEFT JOIN prov_state s ON s.source = d.source
WHERE d.removed_at IS NULL;

CREATE VIEW v_prov_group AS
SELECT g.source, g.id, g.created, g.modified, g.display_name, g.group_type, g.school_type,
       g.organisation, g.provisioning_status, g.first_seen,
       COALESCE(s.last_complete_started, g.last_seen) AS last_seen, g.changed_at
FROM prov_group g LEFT JOIN prov_state s ON s.source = g.source
WHERE g.removed_at IS NULL;

CREATE VIEW v_prov_activity AS
SELECT a.source, a.id, a.created, a.modified, a.display_name, a.activity_type, a.organisation,
       a.parent_activity, a.provisioning_status, a.first_seen,
       COALESCE(s.last_complete_started, a.last_seen) AS last_seen, a.changed_at
FROM prov_activity a LEFT JOIN prov_state s ON s.source = a.source
WHERE a.removed_at IS NULL;

-- The results' elev as the join views match it: braces dropped, lower case. Both databases
-- index the expression, so each join below is an index lookup per row, not a scan.
CREATE INDEX provomrade_elev_key ON provomrade (lower(replace(replace(elev, '{', ''), '}', '')));
CREATE INDEX prov_person_id ON prov_person (id);
CREATE INDEX prov_person_external_id_key
    ON prov_person_external_id (lower(replace(replace(value, '{', ''), '}', '')));

-- Every id a live person is known by, normalised as the results' elev is: the person's uuid and
-- its external identifiers, braces dropped, lower case.
CREATE VIEW v_prov_person_key AS
SELECT p.source, p.id AS person_id, p.id AS elev_key
FROM prov_person p WHERE p.removed_at IS NULL
UNION
SELECT p.source, p.id, lower(replace(replace(x.value, '{', ''), '}', ''))
FROM prov_person p
JOIN prov_person_external_id x ON x.source = p.source AND x.person_id = p.id
WHERE p.removed_at IS NULL;

-- Results joined to registered pupils: by the person's id, or by an external identifier.
CREATE VIEW v_prov_registered_result AS
SELECT r.source AS result_source, r.id AS provomrade_id, r.elev, r.kind, r.amne, r.arskurs,
       r.kurs, p.source AS provisioning_source, p.id AS person_id
FROM provomrade r
JOIN prov_person p ON p.id = lower(replace(replace(r.elev, '{', ''), '}', ''))
WHERE p.removed_at IS NULL
UNION
SELECT r.source, r.id, r.elev, r.kind, r.amne, r.arskurs, r.kurs, p.source, p.id
FROM provomrade r
JOIN prov_person_external_id x
  ON lower(replace(replace(x.value, '{', ''), '}', '')) = lower(replace(replace(r.elev, '{', ''), '}', ''))
JOIN prov_person p ON p.source = x.source AND p.id = x.person_id
WHERE p.removed_at IS NULL;

-- Registered pupils (a live person with an enrolment not cancelled) without any result.
CREATE VIEW v_prov_registered_without_result AS
SELECT p.source AS provisioning_source, p.id AS person_id
FROM prov_person p
WHERE p.removed_at IS NULL
  AND EXISTS (SELECT 1 FROM prov_person_enrolment e
              WHERE e.source = p.source AND e.person_id = p.id AND NOT e.cancelled)
  -- lower(p.id), not p.id (already lower case): SQLite gives a bare column's affinity to the
  -- comparison, and would then not use the index on the expression.
  AND NOT EXISTS (SELECT 1 FROM provomrade r
                  WHERE lower(replace(replace(r.elev, '{', ''), '}', '')) = lower(p.id))
  AND NOT EXISTS (SELECT 1 FROM prov_person_external_id x
                  JOIN provomrade r
                    ON lower(replace(replace(r.elev, '{', ''), '}', ''))
                       = lower(replace(replace(x.value, '{', ''), '}', ''))
                  WHERE x.source = p.source AND x.person_id = p.id);

-- Results whose pupil no provisioning source has registered.
CREATE VIEW v_prov_result_without_registration AS
SELECT r.source AS result_source, r.id AS provomrade_id, r.elev, r.kind, r.amne, r.arskurs, r.kurs
FROM provomrade r
WHERE NOT EXISTS (SELECT 1 FROM prov_person p
                  WHERE p.id = lower(replace(replace(r.elev, '{', ''), '}', ''))
                    AND p.removed_at IS NULL)
  AND NOT EXISTS (SELECT 1 FROM prov_person_external_id x
                  JOIN prov_person p ON p.source = x.source AND p.id = x.person_id
                  WHERE lower(replace(replace(x.value, '{', ''), '}', ''))
                        = lower(replace(replace(r.elev, '{', ''), '}', ''))
                    AND p.removed_at IS NULL);

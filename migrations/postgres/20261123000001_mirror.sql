-- The data contract warehouses query: the tables and columns of migrations/sqlite, in PostgreSQL's
-- native types. Instants are timestamptz, dates are date, flags are boolean; ids come from
-- identity sequences, so several writers can insert at once.

-- One row per source + student + provområde: the unit of replacement.
CREATE TABLE provomrade (
    id             bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source         text    NOT NULL,
    elev           text    NOT NULL,
    kind           text    NOT NULL CHECK (kind IN ('amne', 'kurs')),
    amne           text,
    arskurs        integer CHECK (arskurs IN (3, 6, 9)),
    kurs           text,
    namespace      text    NOT NULL,
    content_sha256 text    NOT NULL,
    changed_at     timestamptz NOT NULL,
    synced_at      timestamptz NOT NULL,
    -- Which parts of the natural key are set follows from kind, so NULLs cannot blur it.
    CHECK ((kind = 'amne' AND amne IS NOT NULL AND arskurs IS NOT NULL AND kurs IS NULL)
        OR (kind = 'kurs' AND kurs IS NOT NULL AND amne IS NULL AND arskurs IS NULL))
);
-- The natural key (source, elev, kind, amne/kurs, arskurs), enforced per kind: a plain UNIQUE
-- over nullable columns would let duplicates through, since NULLs never compare equal.
CREATE UNIQUE INDEX provomrade_amne_key ON provomrade (source, elev, amne, arskurs) WHERE kind = 'amne';
CREATE UNIQUE INDEX provomrade_kurs_key ON provomrade (source, elev, kurs) WHERE kind = 'kurs';
CREATE INDEX provomrade_changed_at ON provomrade (changed_at);

CREATE TABLE provtillfalle (
    id                   bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provomrade_id        bigint  NOT NULL REFERENCES provomrade (id) ON DELETE CASCADE,
    ordinal              integer NOT NULL CHECK (ordinal >= 0),
    skolform             text    NOT NULL,
    uppdaterat           date    NOT NULL,
    genomfort            date,
    intedeltagit         boolean NOT NULL,
    sammanvagt_provbetyg text,
    UNIQUE (provomrade_id, ordinal)
);

CREATE TABLE delprovsresultat (
    id               bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provtillfalle_id bigint  NOT NULL REFERENCES provtillfalle (id) ON DELETE CASCADE,
    ordinal          integer NOT NULL CHECK (ordinal >= 0),
    typ              text    NOT NULL,
    utfall           text    NOT NULL CHECK (utfall IN ('resultat', 'intedeltagit', 'borttappat')),
    betyg            text,
    poang            bigint,
    maluppfyllnad    boolean,
    CHECK (betyg IS NULL OR poang IS NULL),
    CHECK (utfall = 'resultat' OR (betyg IS NULL AND poang IS NULL AND maluppfyllnad IS NULL)),
    UNIQUE (provtillfalle_id, ordinal)
);

-- Records that broke the XSD, kept verbatim so nothing received is lost.
CREATE TABLE quarantine (
    id             bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source         text    NOT NULL,
    elev           text,
    reason         text    NOT NULL,
    error_code     text    NOT NULL,
    element        text    NOT NULL,
    location       text    NOT NULL,
    line           bigint  NOT NULL,
    "column"       bigint  NOT NULL,
    document       text    NOT NULL,
    namespace      text    NOT NULL,
    raw_xml        text    NOT NULL,
    quarantined_at timestamptz NOT NULL
);
CREATE INDEX quarantine_source_elev ON quarantine (source, elev);

-- Append-only feed of real changes, for warehouses that load incrementally: read everything with
-- seq greater than the last one you loaded. A sequence never hands out a value twice; writers
-- append under a lock held to their commit, so seq order is also commit order.
CREATE TABLE change_log (
    seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provomrade_id bigint NOT NULL REFERENCES provomrade (id),
    op            text   NOT NULL CHECK (op IN ('upsert', 'clear')),
    at            timestamptz NOT NULL
);
CREATE INDEX change_log_provomrade ON change_log (provomrade_id);

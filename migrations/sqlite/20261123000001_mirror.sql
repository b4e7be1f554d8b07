-- The data contract warehouses query. PostgreSQL gets the same tables and columns.
-- Timestamps are UTC text, RFC 3339 with microseconds and 'Z' (fixed width, so they sort);
-- dates are yyyy-mm-dd text; booleans are 0/1.

-- One row per source + student + provområde: the unit of replacement.
CREATE TABLE provomrade (
    id             INTEGER PRIMARY KEY,
    source         TEXT    NOT NULL,
    elev           TEXT    NOT NULL,
    kind           TEXT    NOT NULL CHECK (kind IN ('amne', 'kurs')),
    amne           TEXT,
    arskurs        INTEGER CHECK (arskurs IN (3, 6, 9)),
    kurs           TEXT,
    namespace      TEXT    NOT NULL,
    content_sha256 TEXT    NOT NULL,
    changed_at     TEXT    NOT NULL,
    synced_at      TEXT    NOT NULL,
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
    id                   INTEGER PRIMARY KEY,
    provomrade_id        INTEGER NOT NULL REFERENCES provomrade (id) ON DELETE CASCADE,
    ordinal              INTEGER NOT NULL CHECK (ordinal >= 0),
    skolform             TEXT    NOT NULL,
    uppdaterat           TEXT    NOT NULL,
    genomfort            TEXT,
    intedeltagit         INTEGER NOT NULL CHECK (intedeltagit IN (0, 1)),
    sammanvagt_provbetyg TEXT,
    UNIQUE (provomrade_id, ordinal)
);

CREATE TABLE delprovsresultat (
    id               INTEGER PRIMARY KEY,
    provtillfalle_id INTEGER NOT NULL REFERENCES provtillfalle (id) ON DELETE CASCADE,
    ordinal          INTEGER NOT NULL CHECK (ordinal >= 0),
    typ              TEXT    NOT NULL,
    utfall           TEXT    NOT NULL CHECK (utfall IN ('resultat', 'intedeltagit', 'borttappat')),
    betyg            TEXT,
    poang            INTEGER,
    maluppfyllnad    INTEGER CHECK (maluppfyllnad IN (0, 1)),
    CHECK (betyg IS NULL OR poang IS NULL),
    CHECK (utfall = 'resultat' OR (betyg IS NULL AND poang IS NULL AND maluppfyllnad IS NULL)),
    UNIQUE (provtillfalle_id, ordinal)
);

-- Records that broke the XSD, kept verbatim so nothing received is lost.
CREATE TABLE quarantine (
    id             INTEGER PRIMARY KEY,
    source         TEXT    NOT NULL,
    elev           TEXT,
    reason         TEXT    NOT NULL,
    error_code     TEXT    NOT NULL,
    element        TEXT    NOT NULL,
    location       TEXT    NOT NULL,
    line           INTEGER NOT NULL,
    "column"       INTEGER NOT NULL,
    document       TEXT    NOT NULL,
    namespace      TEXT    NOT NULL,
    raw_xml        TEXT    NOT NULL,
    quarantined_at TEXT    NOT NULL
);
CREATE INDEX quarantine_source_elev ON quarantine (source, elev);

-- Append-only feed of real changes, for warehouses that load incrementally: read everything with
-- seq greater than the last one you loaded. AUTOINCREMENT so that a seq is never reused.
CREATE TABLE change_log (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    provomrade_id INTEGER NOT NULL REFERENCES provomrade (id),
    op            TEXT    NOT NULL CHECK (op IN ('upsert', 'clear')),
    at            TEXT    NOT NULL
);
CREATE INDEX change_log_provomrade ON change_log (provomrade_id);

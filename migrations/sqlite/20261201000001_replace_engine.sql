-- The replace engine: an unchanged re-read writes nothing.
--
-- * synced_at ("last received") goes: a key whose content is already stored is no longer written
--   at all. How current a row is comes from its source's watermark: every row of a source is
--   current as of sync_watermark.watermark_utc, which the views show as current_as_of.
-- * raw_sha256: SHA-256 (32 bytes) of the bytes of the key's elements as last applied, seeded with
--   their namespace context, by which a re-read skips them without building them. NULL for rows
--   from before: those are compared by content once, then get theirs.
-- * mirror_clock goes with synced_at (it kept document timestamps unique for it).
-- * quarantine keeps one row per distinct element (its source and raw hash), with the key it
--   claims, when it was first and last received and how often. Rows from before are merged by
--   their raw XML; their hash is marked legacy.

DROP VIEW v_provresultat;
DROP VIEW v_delprovsresultat;
ALTER TABLE provomrade DROP COLUMN synced_at;
ALTER TABLE provomrade ADD COLUMN raw_sha256 BLOB;
DROP TABLE mirror_clock;

ALTER TABLE quarantine RENAME TO quarantine_old;
DROP INDEX quarantine_source_elev;
CREATE TABLE quarantine (
    id             INTEGER PRIMARY KEY,
    source         TEXT    NOT NULL,
    -- The key the element claims, as far as it could be read.
    elev           TEXT,
    kind           TEXT    CHECK (kind IN ('amne', 'kurs')),
    amne           TEXT,
    arskurs        INTEGER,
    kurs           TEXT,
    element_sha256 TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    error_code     TEXT    NOT NULL,
    element        TEXT    NOT NULL,
    location       TEXT    NOT NULL,
    line           INTEGER NOT NULL,
    "column"       INTEGER NOT NULL,
    -- The document (file or window) it came in last.
    document       TEXT    NOT NULL,
    namespace      TEXT    NOT NULL,
    -- NULL for the row that records elements of a held key that had been applied and were
    -- withdrawn (their bytes were not kept).
    raw_xml        TEXT,
    first_seen_at  TEXT    NOT NULL,
    last_seen_at   TEXT    NOT NULL,
    times_seen     INTEGER NOT NULL CHECK (times_seen >= 1),
    UNIQUE (source, element_sha256)
);
INSERT INTO quarantine (source, elev, element_sha256, reason, error_code, element, location, line,
                        "column", document, namespace, raw_xml, first_seen_at, last_seen_at,
                        times_seen)
SELECT q.source, q.elev, 'legacy:' || g.first_id, q.reason, q.error_code, q.element, q.location,
       q.line, q."column", q.document, q.namespace, q.raw_xml, g.first_seen, g.last_seen, g.times
FROM (SELECT source, raw_xml, MIN(id) AS first_id, MAX(id) AS last_id,
             MIN(quarantined_at) AS first_seen, MAX(quarantined_at) AS last_seen,
             COUNT(*) AS times
      FROM quarantine_old GROUP BY source, raw_xml) g
JOIN quarantine_old q ON q.id = g.last_id;
DROP TABLE quarantine_old;
CREATE INDEX quarantine_source_elev ON quarantine (source, elev);
CREATE INDEX quarantine_last_seen ON quarantine (last_seen_at);

CREATE VIEW v_provresultat AS
SELECT p.source, p.elev, p.kind, p.amne, p.arskurs, p.kurs, t.skolform, t.uppdaterat, t.genomfort,
       t.intedeltagit, t.sammanvagt_provbetyg, p.id AS provomrade_id, t.ordinal, p.changed_at,
       w.watermark_utc AS current_as_of
FROM provomrade p
JOIN provtillfalle t ON t.provomrade_id = p.id
LEFT JOIN sync_watermark w ON w.source = p.source;

CREATE VIEW v_delprovsresultat AS
SELECT p.source, p.elev, p.kind, p.amne, p.arskurs, p.kurs, t.skolform, t.uppdaterat, t.genomfort,
       t.intedeltagit, t.sammanvagt_provbetyg, p.id AS provomrade_id, t.ordinal, p.changed_at,
       w.watermark_utc AS current_as_of, d.ordinal AS delprov_ordinal, d.typ, d.utfall, d.betyg,
       d.poang, d.maluppfyllnad
FROM provomrade p
JOIN provtillfalle t ON t.provomrade_id = p.id
JOIN delprovsresultat d ON d.provtillfalle_id = t.id
LEFT JOIN sync_watermark w ON w.source = p.source;

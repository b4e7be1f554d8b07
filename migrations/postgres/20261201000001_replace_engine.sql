-- The replace engine: an unchanged re-read writes nothing. (The same change as in migrations/sqlite,
-- in PostgreSQL's types.)
--
-- * synced_at ("last received") goes: a key whose content is already stored is no longer written
--   at all. How current a row is comes from its source's watermark: every row of a source is
--   current as of sync_watermark.watermark_utc, which the views show as current_as_of.
-- * raw_sha256: SHA-256 (32 bytes) of the bytes of the key's elements as last applied, seeded with
--   their namespace context, by which a re-read skips them without building them. NULL for rows
--   from before: those are compared by content once, then get theirs.
-- * quarantine keeps one row per distinct element (its source and raw hash), with the key it
--   claims, when it was first and last received and how often. Rows from before are merged by
--   their raw XML; their hash is marked legacy.

DROP VIEW v_provresultat;
DROP VIEW v_delprovsresultat;
ALTER TABLE provomrade DROP COLUMN synced_at;
ALTER TABLE provomrade ADD COLUMN raw_sha256 bytea;

ALTER TABLE quarantine RENAME TO quarantine_old;
DROP INDEX quarantine_source_elev;
CREATE TABLE quarantine (
    id             bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source         text    NOT NULL,
    -- The key the element claims, as far as it could be read.
    elev           text,
    kind           text    CHECK (kind IN ('amne', 'kurs')),
    amne           text,
    arskurs        integer,
    kurs           text,
    element_sha256 text    NOT NULL,
    reason         text    NOT NULL,
    error_code     text    NOT NULL,
    element        text    NOT NULL,
    location       text    NOT NULL,
    line           bigint  NOT NULL,
    "column"       bigint  NOT NULL,
    -- The document (file or window) it came in last.
    document       text    NOT NULL,
    namespace      text    NOT NULL,
    -- NULL for the row that records elements of a held key that had been applied and were
    -- withdrawn (their bytes were not kept).
    raw_xml        text,
    first_seen_at  timestamptz NOT NULL,
    last_seen_at   timestamptz NOT NULL,
    times_seen     bigint  NOT NULL CHECK (times_seen >= 1),
    UNIQUE (source, element_sha256)
);
INSERT INTO quarantine (source, elev, element_sha256, reason, error_code, element, location, line,
                        "column", document, namespace, raw_xml, first_seen_at, last_seen_at,
                        times_seen)
SELECT q.source, q.elev, 'legacy:' || g.first_id::text, q.reason, q.error_code, q.element, q.location,
       q.line, q."column", q.document, q.namespace, q.raw_xml, g.first_seen, g.last_seen, g.times
FROM (SELECT source, raw_xml, min(id) AS first_id, max(id) AS last_id,
             min(quarantined_at) AS first_seen, max(quarantined_at) AS last_seen,
             count(*) AS times
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

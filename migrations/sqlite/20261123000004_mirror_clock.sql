-- The synced_at of the last document applied. A document's timestamp is made strictly later than
-- this one, so `synced_at = <this document's timestamp>` tells, mid-document, which keys the
-- document has already applied — whatever the wall clock does.
CREATE TABLE mirror_clock (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    last_synced_at TEXT    NOT NULL
);
INSERT INTO mirror_clock (id, last_synced_at)
    SELECT 1, COALESCE(MAX(synced_at), '') FROM provomrade;

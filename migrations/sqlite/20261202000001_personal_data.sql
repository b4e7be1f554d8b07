-- Personal data: erasure, retention and a self-describing file.
--
-- * change_log no longer references provomrade: `nprov-sync forget` and `source drop` remove a
--   provområde and append an 'erase' entry naming its id, so a warehouse that loads
--   incrementally learns to delete it too; an entry must outlive the row it names. (Deleting by
--   hand is then no longer order-sensitive either.) SQLite cannot drop a constraint: the table is
--   rebuilt, seq values and the AUTOINCREMENT counter kept (seq is never reused).
-- * erasure: the audit of `forget`, without the pupil's id.
-- * data_contract: what every table and column means (SQLite has no COMMENT ON); its rows are
--   written by the program after every migration, from src/store/contract.rs.
-- * indexes for retention, which prunes by age.

CREATE TABLE change_log_new (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    provomrade_id INTEGER NOT NULL,
    op            TEXT    NOT NULL CHECK (op IN ('upsert', 'clear', 'erase')),
    at            TEXT    NOT NULL
);
INSERT INTO change_log_new (seq, provomrade_id, op, at)
    SELECT seq, provomrade_id, op, at FROM change_log ORDER BY seq;
DELETE FROM sqlite_sequence WHERE name = 'change_log_new';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'change_log_new', seq FROM sqlite_sequence WHERE name = 'change_log';
DROP TABLE change_log;
ALTER TABLE change_log_new RENAME TO change_log;
CREATE INDEX change_log_provomrade ON change_log (provomrade_id);
CREATE INDEX change_log_at ON change_log (at);

CREATE INDEX sync_run_started ON sync_run (started_at);

CREATE TABLE erasure (
    id               INTEGER PRIMARY KEY,
    erased_at        TEXT    NOT NULL,
    source           TEXT,
    reason           TEXT,
    provomrade       INTEGER NOT NULL,
    provtillfalle    INTEGER NOT NULL,
    delprovsresultat INTEGER NOT NULL,
    change_log       INTEGER NOT NULL,
    quarantine       INTEGER NOT NULL
);

CREATE TABLE data_contract (
    object      TEXT NOT NULL,
    column_name TEXT,
    description TEXT NOT NULL
);

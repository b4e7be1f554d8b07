-- Personal data: erasure and retention. (The same change as in migrations/sqlite, in
-- PostgreSQL's types; the data contract lives in COMMENT ON here, written by the program after
-- every migration from src/store/contract.rs.)
--
-- * change_log no longer references provomrade: `nprov-sync forget` and `source drop` remove a
--   provområde and append an 'erase' entry naming its id, so a warehouse that loads
--   incrementally learns to delete it too; an entry must outlive the row it names.
-- * erasure: the audit of `forget`, without the pupil's id.
-- * indexes for retention, which prunes by age.

ALTER TABLE change_log DROP CONSTRAINT change_log_provomrade_id_fkey;
ALTER TABLE change_log DROP CONSTRAINT change_log_op_check;
ALTER TABLE change_log ADD CONSTRAINT change_log_op_check CHECK (op IN ('upsert', 'clear', 'erase'));
CREATE INDEX change_log_at ON change_log (at);

CREATE INDEX sync_run_started ON sync_run (started_at);

CREATE TABLE erasure (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    erased_at        timestamptz NOT NULL,
    source           text,
    reason           text,
    provomrade       bigint NOT NULL,
    provtillfalle    bigint NOT NULL,
    delprovsresultat bigint NOT NULL,
    change_log       bigint NOT NULL,
    quarantine       bigint NOT NULL
);

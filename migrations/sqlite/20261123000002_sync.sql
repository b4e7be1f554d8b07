-- Sync bookkeeping. A window's data, its sync_run row and the watermark commit in one
-- transaction; a failed window gets its sync_run row in a transaction of its own.

-- Per source: the end of the last window fully committed. The instant is authoritative (local
-- wall-clock time repeats in autumn); the local text is kept for people.
CREATE TABLE sync_watermark (
    source          TEXT PRIMARY KEY,
    watermark_local TEXT NOT NULL,
    watermark_utc   TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

-- One row per window attempt.
CREATE TABLE sync_run (
    id          INTEGER PRIMARY KEY,
    source      TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('sync', 'backfill')),
    from_local  TEXT    NOT NULL,
    tom_local   TEXT    NOT NULL,
    from_utc    TEXT    NOT NULL,
    tom_utc     TEXT    NOT NULL,
    started_at  TEXT    NOT NULL,
    finished_at TEXT    NOT NULL,
    outcome     TEXT    NOT NULL CHECK (outcome IN ('ok', 'failed')),
    http_status INTEGER,
    bytes       INTEGER NOT NULL DEFAULT 0,
    records     INTEGER NOT NULL DEFAULT 0,
    changed     INTEGER NOT NULL DEFAULT 0,
    unchanged   INTEGER NOT NULL DEFAULT 0,
    cleared     INTEGER NOT NULL DEFAULT 0,
    quarantined INTEGER NOT NULL DEFAULT 0,
    error       TEXT
);
CREATE INDEX sync_run_source_started ON sync_run (source, started_at);

-- Sync bookkeeping. A window's data, its sync_run row and the watermark commit in one
-- transaction; a failed window gets its sync_run row in a transaction of its own.

-- Per source: the end of the last window fully committed. The instant is authoritative (local
-- wall-clock time repeats in autumn); the local time, without zone, is kept for people.
CREATE TABLE sync_watermark (
    source          text        PRIMARY KEY,
    watermark_local timestamp   NOT NULL,
    watermark_utc   timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

-- One row per window attempt. from_local/tom_local are the platform's wall-clock times.
CREATE TABLE sync_run (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source      text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('sync', 'backfill')),
    from_local  timestamp   NOT NULL,
    tom_local   timestamp   NOT NULL,
    from_utc    timestamptz NOT NULL,
    tom_utc     timestamptz NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('ok', 'failed')),
    http_status integer,
    bytes       bigint      NOT NULL DEFAULT 0,
    records     bigint      NOT NULL DEFAULT 0,
    changed     bigint      NOT NULL DEFAULT 0,
    unchanged   bigint      NOT NULL DEFAULT 0,
    cleared     bigint      NOT NULL DEFAULT 0,
    quarantined bigint      NOT NULL DEFAULT 0,
    error       text
);
CREATE INDEX sync_run_source_started ON sync_run (source, started_at);

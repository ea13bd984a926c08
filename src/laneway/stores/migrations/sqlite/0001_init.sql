-- laneway SQLite schema, version 1: jobs, the per-session event log, ownership.

-- One row per accepted job. `num` is the acceptance order (recovery replays
-- unfinished jobs in this order); `id` is the public job id.
CREATE TABLE jobs (
    num             INTEGER PRIMARY KEY,
    id              TEXT    NOT NULL UNIQUE,
    session         TEXT    NOT NULL,
    handler         TEXT    NOT NULL,
    payload         TEXT    NOT NULL,              -- JSON
    priority        INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    state           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,    -- the fencing token of the running attempt
    lost            INTEGER NOT NULL DEFAULT 0,    -- attempts lost to crashes (poison_after)
    output          INTEGER NOT NULL DEFAULT 0,    -- the latest attempt emitted events
    result          TEXT    NOT NULL DEFAULT 'null', -- JSON
    error           TEXT,
    reason          TEXT,
    created_at      REAL    NOT NULL,
    updated_at      REAL    NOT NULL
);

-- A retried submit with the same key in the same session finds the first job.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (session, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_state ON jobs (state, num);
CREATE INDEX jobs_session ON jobs (session, num);

-- The append-only log; `seq` rises by one per session.
CREATE TABLE events (
    id      INTEGER PRIMARY KEY,
    session TEXT    NOT NULL,
    seq     INTEGER NOT NULL,
    job_id  TEXT,
    kind    TEXT    NOT NULL,
    data    TEXT    NOT NULL,                      -- JSON
    at      REAL    NOT NULL
);
CREATE UNIQUE INDEX events_session_seq ON events (session, seq);

-- The highest seq retention removed per session, so seq never goes back.
CREATE TABLE sessions (
    session   TEXT    PRIMARY KEY,
    seq_floor INTEGER NOT NULL
) WITHOUT ROWID;

-- Who owns the database (the lock file is the real guard; this row names it).
CREATE TABLE owner (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    pid          INTEGER NOT NULL,
    host         TEXT    NOT NULL,
    since        REAL    NOT NULL,
    heartbeat_at REAL    NOT NULL
);

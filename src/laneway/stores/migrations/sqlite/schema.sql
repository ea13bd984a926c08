-- The current SQLite schema in one place, for reading. It is not executed:
-- databases are built by the numbered migrations, and a test checks that
-- they add up to exactly this. Change both together.

CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL);

CREATE TABLE jobs (
    num INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    session TEXT NOT NULL,
    handler TEXT NOT NULL,
    payload TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0,
    output INTEGER NOT NULL DEFAULT 0,
    result TEXT NOT NULL DEFAULT 'null',
    error TEXT,
    reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (session, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_session ON jobs (session, num);
CREATE INDEX jobs_state ON jobs (state, num);
CREATE INDEX jobs_namespace ON jobs (substr(session, 1, instr(session, '/')), num);
CREATE INDEX jobs_namespace_state ON jobs (substr(session, 1, instr(session, '/')), state, num);

CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    session TEXT NOT NULL,
    seq INTEGER NOT NULL,
    job_id TEXT,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE UNIQUE INDEX events_session_seq ON events (session, seq);

CREATE TABLE sessions (session TEXT PRIMARY KEY, seq_floor INTEGER NOT NULL) WITHOUT ROWID;

CREATE TABLE owner (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    since REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);

-- laneway PostgreSQL schema, version 2: jobs by namespace.

-- A session's namespace is its key up to and including the first '/' (the
-- gateway stores a token's sessions as '<token>/<session>'). These let one
-- namespace's jobs be listed newest first, and paged, without reading any
-- other namespace's rows.
CREATE INDEX jobs_namespace ON jobs ((substr(session, 1, strpos(session, '/'))), num);
CREATE INDEX jobs_namespace_state ON jobs ((substr(session, 1, strpos(session, '/'))), state, num);

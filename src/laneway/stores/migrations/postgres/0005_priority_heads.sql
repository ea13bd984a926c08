-- laneway PostgreSQL schema, version 5: queued jobs with a priority, for claims.

-- Claims walk runnable session heads oldest first (sessions_ready). A head with a
-- priority must go before older heads without one, as in one process; this index
-- holds only such jobs, so finding them costs nothing while nobody uses priorities.
CREATE INDEX jobs_prioritized ON jobs (priority DESC, num)
    WHERE state = 'queued' AND priority <> 0;

-- laneway PostgreSQL schema, version 3: stop requests across nodes.

-- Set by any node's stop(session) or cancel(job) on a job running elsewhere;
-- the node that owns the attempt polls for its own flagged jobs and cancels
-- them. A new attempt starts with the flag cleared.
ALTER TABLE jobs ADD COLUMN stop_requested boolean NOT NULL DEFAULT false;

-- laneway PostgreSQL schema, version 4: the shared lanes each node wants more of.

-- Set by every claim: the lanes of the node's handlers while it has room for
-- more attempts than it got (empty once it is full). A node that frees slots
-- claims again in the same batch; while another live node wants a lane too, it
-- takes no more than its fair share of that lane, so the other is not starved.
ALTER TABLE nodes ADD COLUMN wants text[] NOT NULL DEFAULT '{}';

-- When a waiting call's job is next due at a worker: set when a worker
-- defers it (calling window, start time, paused account) and when a redial
-- is scheduled; NULL means "as soon as it was written" (`updated_at`).
-- The worker's sweeper re-publishes the job of a call that is overdue by
-- more than its stall time (see `calls::sweep`).
ALTER TABLE calls ADD COLUMN job_due_at timestamptz;

-- Jobs dead-lettered: the worker's sweeper drains the dead-letter queue
-- here so they can be counted per campaign (`producer status`, the API,
-- the `tocsin_dead_jobs` gauge) and put back with `producer requeue-dead`.
-- No foreign keys: a dead job may name a campaign or call that does not
-- exist, and an undecodable one names nothing.
CREATE TABLE dead_jobs (
    id          bigserial PRIMARY KEY,
    body        bytea NOT NULL,
    -- The same message drained twice (a crash between insert and ack) is one row.
    body_md5    text GENERATED ALWAYS AS (md5(body)) STORED UNIQUE,
    campaign_id uuid,
    call_id     uuid,
    attempt     integer,
    -- Why: the worker's reason, or the broker's (`delivery_limit`, ...).
    reason      text NOT NULL,
    dead_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_jobs_campaign ON dead_jobs (campaign_id);

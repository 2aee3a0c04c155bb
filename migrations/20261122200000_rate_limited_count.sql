-- Create-call requests answered 429 (not attempts: the job backs off and
-- tries again; the count drives the exponential backoff).
ALTER TABLE calls ADD COLUMN rate_limited integer NOT NULL DEFAULT 0;

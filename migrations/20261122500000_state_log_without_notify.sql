-- The call state trigger stops NOTIFYing. PostgreSQL serialises the commits
-- of all notifying transactions (PreCommit_Notify takes a cluster-wide lock
-- held through the WAL flush), so a NOTIFY on every state change turned the
-- workers' claim and record commits into a single file: measured with one
-- worker and the rate limit out of the way, 480 calls/s with most sessions
-- waiting on `Lock: object`. Live streams now poll the log instead
-- (webhook/src/api/live.rs: an indexed read per watched campaign every
-- 100 ms); the notifications for new calls and campaign status changes,
-- which are rare, stay and wake the feeds at once.

CREATE OR REPLACE FUNCTION log_call_state_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO call_state_log (campaign_id, call_id, state) VALUES (NEW.campaign_id, NEW.id, NEW.state);
    RETURN NULL;
END
$$;

-- A campaign's deadline (`--expires-at` / `--expires-in`): no call starts
-- after it, and its calls still waiting then end `expired` (the worker's
-- sweeper marks them at once; a worker that meets one does the same).
-- Calls in progress at the deadline finish.
ALTER TABLE campaigns ADD COLUMN expires_at timestamptz;

ALTER TABLE calls DROP CONSTRAINT calls_state_check;
ALTER TABLE calls ADD CONSTRAINT calls_state_check CHECK (state IN (
    'queued', 'retry_wait', 'dialing', 'placed', 'ringing',
    'answered', 'completed', 'busy', 'no_answer', 'rejected',
    'failed', 'cancelled', 'skipped', 'unknown', 'expired'));

DROP VIEW campaign_summary;

-- One row per campaign (as before, with `expired` and the deadline).
CREATE VIEW campaign_summary AS
SELECT
    c.name                                                                  AS campaign,
    c.status,
    c.provider,
    count(k.id)                                                             AS total,
    count(k.id) FILTER (WHERE call_state_rank(k.state) = 5)                 AS terminal,
    count(k.id) FILTER (WHERE k.state IN ('queued', 'retry_wait'))          AS queued,
    count(k.id) FILTER (WHERE k.state IN ('dialing', 'placed', 'ringing', 'answered')) AS in_progress,
    count(k.id) FILTER (WHERE k.state = 'completed')                        AS completed,
    count(k.id) FILTER (WHERE k.state = 'busy')                             AS busy,
    count(k.id) FILTER (WHERE k.state = 'no_answer')                        AS no_answer,
    count(k.id) FILTER (WHERE k.state = 'rejected')                         AS rejected,
    count(k.id) FILTER (WHERE k.state = 'failed')                           AS failed,
    count(k.id) FILTER (WHERE k.state = 'cancelled')                        AS cancelled,
    count(k.id) FILTER (WHERE k.state = 'skipped')                          AS skipped,
    count(k.id) FILTER (WHERE k.state = 'unknown')                          AS unknown,
    -- Of the calls that finished, the share answered (by a person or a machine).
    round(100.0 * count(k.id) FILTER (WHERE k.answered_at IS NOT NULL)
          / nullif(count(k.id) FILTER (WHERE call_state_rank(k.state) = 5), 0), 1) AS answered_pct,
    -- Of the answered calls, the share a machine answered (needs machine detection).
    round(100.0 * count(k.id) FILTER (WHERE k.answered_by = 'machine')
          / nullif(count(k.id) FILTER (WHERE k.answered_at IS NOT NULL), 0), 1) AS machine_pct,
    round(avg(k.duration_secs) FILTER (WHERE k.answered_at IS NOT NULL), 1) AS avg_talk_secs,
    coalesce(sum(k.price), 0)                                               AS total_cost,
    coalesce(sum(k.attempt), 0)                                             AS attempts,
    min(k.dialing_at)                                                       AS first_call,
    max(k.ended_at)                                                         AS last_call,
    -- Calls still waiting when the deadline passed.
    count(k.id) FILTER (WHERE k.state = 'expired')                          AS expired,
    c.expires_at
FROM campaigns c
LEFT JOIN calls k ON k.campaign_id = c.id
GROUP BY c.id;

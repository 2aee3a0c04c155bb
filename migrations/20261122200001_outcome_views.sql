-- Outcome views for operators, and the attempt each event belongs to.

-- The attempt named in the event URL (`&attempt=`); NULL when the provider
-- did not echo it. Events of an earlier attempt are kept but never move a
-- call that has been redialled.
ALTER TABLE call_events ADD COLUMN attempt integer;

DROP VIEW campaign_summary;

-- One row per campaign.
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
    max(k.ended_at)                                                         AS last_call
FROM campaigns c
LEFT JOIN calls k ON k.campaign_id = c.id
GROUP BY c.id;

-- Every event of every call, in order (ORDER BY campaign, number, seq).
CREATE VIEW call_timeline AS
SELECT
    c.name                                                                  AS campaign,
    k.number,
    k.id                                                                    AS call_id,
    e.attempt,
    row_number() OVER (PARTITION BY e.call_id ORDER BY coalesce(e.occurred_at, e.received_at), e.id) AS seq,
    e.provider,
    e.status                                                                AS provider_status,
    e.state,
    e.occurred_at,
    e.received_at,
    e.provider_call_id,
    e.payload
FROM call_events e
JOIN calls k ON k.id = e.call_id
JOIN campaigns c ON c.id = k.campaign_id;

-- Per contact: how many attempts and how it ended.
CREATE VIEW call_attempts AS
SELECT
    c.name                                                                  AS campaign,
    k.number,
    k.source_line,
    k.attempt                                                               AS attempts,
    c.max_attempts,
    k.state                                                                 AS final_state,
    call_state_rank(k.state) = 5                                            AS finished,
    k.answered_by,
    k.duration_secs,
    k.price,
    k.error_code,
    k.error_detail,
    k.dialing_at                                                            AS last_dialed_at,
    k.ended_at,
    (SELECT count(*) FROM call_events e WHERE e.call_id = k.id)             AS events
FROM calls k
JOIN campaigns c ON c.id = k.campaign_id;

-- Events flagged as naming no known call, for investigation.
CREATE INDEX call_events_unknown ON call_events (received_at) WHERE unknown_call;

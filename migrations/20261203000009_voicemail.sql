-- Voicemail drop: with `campaigns.voicemail` = 'drop' the call waits for an
-- answering machine's greeting to end (the beep) and leaves the voicemail
-- message (`voicemail_message`, NULL: the campaign's message and how to
-- reach the sender); the call ends in the new terminal state 'voicemail'
-- (`calls.voicemail_at`: when the voicemail started). 'hangup' ends a call
-- a machine answered; 'ignore' (the default) speaks as to a person.
ALTER TABLE campaigns
    ADD COLUMN voicemail         text NOT NULL DEFAULT 'ignore' CHECK (voicemail IN ('ignore', 'drop', 'hangup')),
    ADD COLUMN voicemail_message text CHECK (length(voicemail_message) BETWEEN 1 AND 1500);

ALTER TABLE calls ADD COLUMN voicemail_at timestamptz;

ALTER TABLE calls DROP CONSTRAINT calls_state_check;
ALTER TABLE calls ADD CONSTRAINT calls_state_check CHECK (state IN (
    'queued', 'retry_wait', 'dialing', 'placed', 'ringing',
    'answered', 'completed', 'busy', 'no_answer', 'rejected',
    'failed', 'cancelled', 'skipped', 'unknown', 'expired', 'voicemail'));

DROP VIEW campaign_summary;

-- One row per campaign (as before, with voicemails left and the voicemail mode).
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
    c.expires_at,
    -- Contacts who pressed the confirm key (in any attempt), and their share of all.
    count(k.id) FILTER (WHERE k.confirmed_at IS NOT NULL)                   AS confirmed,
    round(100.0 * count(k.id) FILTER (WHERE k.confirmed_at IS NOT NULL)
          / nullif(count(k.id), 0), 1)                                      AS confirmed_pct,
    count(k.id) FILTER (WHERE k.confirmed_late)                             AS confirmed_late,
    count(k.id) FILTER (WHERE k.opted_out_at IS NOT NULL)                   AS opted_out,
    -- Voicemails left after a machine's greeting (`--voicemail drop`).
    count(k.id) FILTER (WHERE k.state = 'voicemail')                        AS voicemail,
    -- Seconds from a contact's first call to its confirmation.
    round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM k.confirmed_at - k.first_dialing_at))
           FILTER (WHERE k.confirmed_at IS NOT NULL))::numeric, 1)          AS confirm_p50_secs,
    round((percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM k.confirmed_at - k.first_dialing_at))
           FILTER (WHERE k.confirmed_at IS NOT NULL))::numeric, 1)          AS confirm_p90_secs,
    c.confirm,
    c.until_confirmed,
    c.voicemail                                                             AS voicemail_mode
FROM campaigns c
LEFT JOIN calls k ON k.campaign_id = c.id
GROUP BY c.id;

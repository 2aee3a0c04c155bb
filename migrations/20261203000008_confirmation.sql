-- Heard and confirmed: after the message the callee is asked to press a
-- key (`campaigns.confirm`); each round's answer is a `keypresses` row
-- (one per call, attempt and round: a key reported twice is stored once),
-- and the call records whether, when and with which key it was confirmed,
-- or opted out. `until_confirmed` redials answered-but-unconfirmed calls
-- as well as busy and unanswered ones, within `max_attempts`.
ALTER TABLE campaigns
    ADD COLUMN confirm          boolean NOT NULL DEFAULT false,
    -- NULL: the default prompt (`confirm::DEFAULT_PROMPT`).
    ADD COLUMN confirm_prompt   text CHECK (length(confirm_prompt) BETWEEN 1 AND 500),
    ADD COLUMN confirm_key      text NOT NULL DEFAULT '1' CHECK (confirm_key ~ '^[0-9*#]$'),
    ADD COLUMN replay_key       text DEFAULT '*' CHECK (replay_key ~ '^[0-9*#]$'),
    ADD COLUMN opt_out_key      text CHECK (opt_out_key ~ '^[0-9*#]$'),
    ADD COLUMN max_replays      integer NOT NULL DEFAULT 2 CHECK (max_replays BETWEEN 0 AND 5),
    ADD COLUMN key_timeout_secs integer NOT NULL DEFAULT 8 CHECK (key_timeout_secs BETWEEN 3 AND 10),
    ADD COLUMN until_confirmed  boolean NOT NULL DEFAULT false;

ALTER TABLE calls
    -- When the first attempt was claimed (time to confirm counts from it).
    ADD COLUMN first_dialing_at  timestamptz,
    ADD COLUMN confirmed_at      timestamptz,
    ADD COLUMN confirmed_attempt integer,
    ADD COLUMN confirmed_key     text,
    -- Confirmed after the campaign's deadline (still recorded).
    ADD COLUMN confirmed_late    boolean,
    ADD COLUMN opted_out_at      timestamptz;

UPDATE calls SET first_dialing_at = dialing_at WHERE dialing_at IS NOT NULL;

-- One row per round of the dialogue that got an answer (a key, or none).
CREATE TABLE keypresses (
    call_id     uuid NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    round       integer NOT NULL,
    -- NULL: no key before the timeout.
    digit       text CHECK (digit ~ '^[0-9*#]$'),
    reply       text NOT NULL
                CHECK (reply IN ('confirmed', 'opted_out', 'replay', 'invalid', 'silence', 'gave_up')),
    provider    text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    payload     jsonb NOT NULL,
    PRIMARY KEY (call_id, attempt, round)
);

CREATE INDEX calls_confirmed ON calls (campaign_id, confirmed_at) WHERE confirmed_at IS NOT NULL;

DROP VIEW campaign_summary;

-- One row per campaign (as before, with confirmations, opt-outs and time to confirm).
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
    -- Seconds from a contact's first call to its confirmation.
    round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM k.confirmed_at - k.first_dialing_at))
           FILTER (WHERE k.confirmed_at IS NOT NULL))::numeric, 1)          AS confirm_p50_secs,
    round((percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM k.confirmed_at - k.first_dialing_at))
           FILTER (WHERE k.confirmed_at IS NOT NULL))::numeric, 1)          AS confirm_p90_secs,
    c.confirm,
    c.until_confirmed
FROM campaigns c
LEFT JOIN calls k ON k.campaign_id = c.id
GROUP BY c.id;

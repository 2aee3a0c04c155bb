-- Tocsin schema: campaigns, one call row per contact, and every provider event.
-- States and their forward-only order are documented in ARCHITECTURE.md and
-- mirrored by tocsin_core::state::CallState.

CREATE TABLE campaigns (
    id               uuid PRIMARY KEY,
    name             text NOT NULL UNIQUE CHECK (name <> '' AND length(name) <= 200),
    message          text NOT NULL CHECK (message <> '' AND length(message) <= 1500),
    language         text NOT NULL DEFAULT 'en-US',
    -- Provider-specific voice name (e.g. Telnyx 'female' or 'AWS.Polly.Joanna-Neural'); NULL = default.
    voice            text,
    provider         text NOT NULL DEFAULT 'vonage'
                     CHECK (provider IN ('vonage', 'twilio', 'telnyx')),
    from_number      text NOT NULL,
    status           text NOT NULL DEFAULT 'active'
                     CHECK (status IN ('active', 'paused', 'cancelled')),
    -- How many times the message is spoken per answered call (NCCO loop).
    repeat           integer NOT NULL DEFAULT 1 CHECK (repeat BETWEEN 1 AND 10),
    -- Redials of busy / no-answer outcomes: attempts in all, and the pause between.
    max_attempts     integer NOT NULL DEFAULT 1 CHECK (max_attempts BETWEEN 1 AND 10),
    retry_delay_secs integer NOT NULL DEFAULT 300 CHECK (retry_delay_secs >= 0),
    -- Ask the provider to tell humans from answering machines.
    machine_detection boolean NOT NULL DEFAULT false,
    -- No call before start_at; calls only between window_start and window_end
    -- (local time in `timezone`, an IANA name). NULL window = any time.
    start_at         timestamptz,
    window_start     time,
    window_end       time,
    timezone         text NOT NULL DEFAULT 'UTC',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Numbers that must never be called, whatever the campaign.
CREATE TABLE do_not_call (
    number           text PRIMARY KEY CHECK (number ~ '^\+[0-9]{7,15}$'),
    reason           text,
    added_at         timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION call_state_rank(state text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE state
        WHEN 'queued' THEN 0
        WHEN 'retry_wait' THEN 0
        WHEN 'dialing' THEN 1
        WHEN 'placed' THEN 2
        WHEN 'ringing' THEN 3
        WHEN 'answered' THEN 4
        ELSE 5
    END
$$;

CREATE TABLE calls (
    id               uuid PRIMARY KEY,
    campaign_id      uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    number           text NOT NULL CHECK (number ~ '^\+[0-9]{7,15}$'),
    -- Line of the contact list the number came from, and its other columns.
    source_line      integer,
    attributes       jsonb NOT NULL DEFAULT '{}',
    state            text NOT NULL DEFAULT 'queued' CHECK (state IN (
                         'queued', 'retry_wait', 'dialing', 'placed', 'ringing',
                         'answered', 'completed', 'busy', 'no_answer', 'rejected',
                         'failed', 'cancelled', 'skipped', 'unknown')),
    -- Attempts started (0 until a worker first claims the call).
    attempt          integer NOT NULL DEFAULT 0,
    -- Create-call requests that failed transiently (5xx, connection errors).
    transient_failures integer NOT NULL DEFAULT 0,
    provider         text,
    provider_call_id text,
    -- Set once the job is confirmed by the broker: a re-run publishes only rows without it.
    enqueued_at      timestamptz,
    dialing_at       timestamptz,
    placed_at        timestamptz,
    answered_at      timestamptz,
    ended_at         timestamptz,
    answered_by      text,
    duration_secs    integer,
    price            numeric(12, 6),
    error_code       text,
    error_detail     text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (campaign_id, number)
);

CREATE INDEX calls_campaign_state ON calls (campaign_id, state);
CREATE INDEX calls_provider_call_id ON calls (provider, provider_call_id)
    WHERE provider_call_id IS NOT NULL;
CREATE INDEX calls_not_enqueued ON calls (campaign_id) WHERE enqueued_at IS NULL;

CREATE TABLE call_events (
    id               bigserial PRIMARY KEY,
    -- The call the event named (from our ?call_id= or the provider's call id).
    -- An event for no call we know is stored with unknown_call = true, never dropped.
    call_id          uuid,
    provider         text NOT NULL,
    -- Provider-specific identity of the event; a redelivery is stored once.
    dedupe_key       text NOT NULL UNIQUE,
    provider_call_id text,
    -- The provider's own status word, and the call state it maps to (if any).
    status           text NOT NULL,
    state            text,
    occurred_at      timestamptz,
    received_at      timestamptz NOT NULL DEFAULT now(),
    unknown_call     boolean NOT NULL DEFAULT false,
    payload          jsonb NOT NULL
);

CREATE INDEX call_events_call ON call_events (call_id, occurred_at);

-- Per campaign: how many calls are in each state, and how far along it is.
CREATE VIEW campaign_summary AS
SELECT
    c.name                                                           AS campaign,
    c.status,
    c.provider,
    count(k.id)                                                      AS total,
    count(k.id) FILTER (WHERE call_state_rank(k.state) = 5)          AS terminal,
    count(k.id) FILTER (WHERE k.state IN ('queued', 'retry_wait'))   AS queued,
    count(k.id) FILTER (WHERE k.state IN ('dialing', 'placed', 'ringing', 'answered')) AS in_progress,
    count(k.id) FILTER (WHERE k.state = 'completed')                 AS completed,
    count(k.id) FILTER (WHERE k.state = 'busy')                      AS busy,
    count(k.id) FILTER (WHERE k.state = 'no_answer')                 AS no_answer,
    count(k.id) FILTER (WHERE k.state = 'rejected')                  AS rejected,
    count(k.id) FILTER (WHERE k.state = 'failed')                    AS failed,
    count(k.id) FILTER (WHERE k.state = 'cancelled')                 AS cancelled,
    count(k.id) FILTER (WHERE k.state = 'unknown')                   AS unknown,
    round(100.0 * count(k.id) FILTER (WHERE k.answered_at IS NOT NULL)
          / nullif(count(k.id) FILTER (WHERE call_state_rank(k.state) = 5), 0), 1) AS answered_pct,
    min(k.dialing_at)                                                AS first_call,
    max(k.ended_at)                                                  AS last_call
FROM campaigns c
LEFT JOIN calls k ON k.campaign_id = c.id
GROUP BY c.id;

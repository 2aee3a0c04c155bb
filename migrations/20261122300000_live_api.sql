-- The trigger API and live campaigns (issue 8): API keys, idempotent
-- requests, saved contact lists' place in the API, and the call state log
-- that feeds the live event stream.

-- API keys. The key itself is shown once by `producer apikey create` and
-- never stored: only its SHA-256. `key_id` is the public part of the key
-- (`tocsin_<key_id>_<secret>`), used to find the row; the hash is then
-- compared in constant time.
CREATE TABLE api_keys (
    key_id            text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{12}$'),
    name              text NOT NULL UNIQUE CHECK (name <> '' AND length(name) <= 200),
    hash              bytea NOT NULL CHECK (length(hash) = 32),
    scopes            text[] NOT NULL CHECK (scopes <@ ARRAY['campaigns:write', 'campaigns:read', 'campaigns:control']),
    -- Campaign names the key may touch start with one of these; empty = any campaign.
    campaign_prefixes text[] NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    last_used_at      timestamptz,
    revoked_at        timestamptz
);

-- `Idempotency-Key` of `POST /api/v1/campaigns`: the first request's answer,
-- returned again for a retry with the same key and body.
CREATE TABLE api_idempotency (
    key_id            text NOT NULL REFERENCES api_keys (key_id) ON DELETE CASCADE,
    idempotency_key   text NOT NULL CHECK (idempotency_key <> '' AND length(idempotency_key) <= 200),
    request_hash      bytea NOT NULL,
    -- NULL while the first request is still being served.
    status            integer,
    response          jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, idempotency_key)
);

-- Every change of a call's state, in commit order by transaction id, for the
-- live stream (`GET /api/v1/campaigns/{name}/events`). A listener's position
-- is a pg_snapshot: the rows of transactions visible in the new snapshot but
-- not in the old one are exactly those committed in between, so a resumed
-- stream has no gaps even though bigserial ids are not handed out in commit
-- order.
CREATE TABLE call_state_log (
    id                bigserial PRIMARY KEY,
    tx                xid8 NOT NULL DEFAULT pg_current_xact_id(),
    campaign_id       uuid NOT NULL,
    call_id           uuid NOT NULL,
    state             text NOT NULL,
    at                timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX call_state_log_campaign_tx ON call_state_log (campaign_id, tx);

-- Statement-level, with transition tables: the webhook's group commit
-- updates hundreds of calls in one statement, and this adds one INSERT …
-- SELECT and one NOTIFY per campaign to that statement, not a trigger call
-- per row. NOTIFY is delivered at commit, so a listener never reads ahead
-- of what is committed.
CREATE FUNCTION log_call_state_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO call_state_log (campaign_id, call_id, state)
    SELECT n.campaign_id, n.id, n.state
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE o.state IS DISTINCT FROM n.state;
    PERFORM pg_notify('tocsin_calls', d.campaign_id::text)
    FROM (SELECT DISTINCT n.campaign_id
          FROM new_rows n JOIN old_rows o ON o.id = n.id
          WHERE o.state IS DISTINCT FROM n.state) d;
    RETURN NULL;
END
$$;

CREATE TRIGGER calls_state_log
AFTER UPDATE ON calls
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION log_call_state_changes();

-- New calls and campaign status changes move the counters too: a notify only.
CREATE FUNCTION notify_new_calls() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tocsin_calls', d.campaign_id::text)
    FROM (SELECT DISTINCT campaign_id FROM new_rows) d;
    RETURN NULL;
END
$$;

CREATE TRIGGER calls_inserted_notify
AFTER INSERT ON calls
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION notify_new_calls();

CREATE FUNCTION notify_campaign_status() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        PERFORM pg_notify('tocsin_calls', NEW.id::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER campaigns_status_notify
AFTER UPDATE OF status ON campaigns
FOR EACH ROW EXECUTE FUNCTION notify_campaign_status();

-- Who did what: every operator action (campaign create / pause / resume /
-- cancel / delete, do-not-call add / remove / import, contact list import /
-- delete, API key create / revoke, Alertmanager-started broadcasts), with
-- who (the API key's name, or the OS user of the CLI), when, what (the
-- parameters, never a secret) and from where (the API client's address).
-- The application only ever INSERTs and SELECTs here; to enforce it, give
-- the application's role no other privilege (README, "Audit log").
CREATE TABLE audit_log (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    -- 'cli', 'api' or 'alertmanager'.
    via       text NOT NULL CHECK (via IN ('cli', 'api', 'alertmanager')),
    -- The API key's name, or the CLI's OS user.
    actor     text NOT NULL,
    -- The API client's address (NULL for the CLI).
    client    text,
    action    text NOT NULL,
    campaign  text,
    details   jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_campaign ON audit_log (campaign, at) WHERE campaign IS NOT NULL;

-- A new scope for reading it.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check
    CHECK (scopes <@ ARRAY['campaigns:write', 'campaigns:read', 'campaigns:control', 'audit:read']);

-- Provider routes: a campaign may name the accounts its calls go through
-- and how they are chosen (`failover:vonage:default,twilio:default`, or
-- `pool:…`); NULL: its provider's account alone. Each attempt's
-- `calls.provider` says which provider placed it.
ALTER TABLE campaigns
    ADD COLUMN route text CHECK (route ~ '^(failover|pool):[a-z0-9:_,-]+$');

-- Saved contact lists and Alertmanager-triggered broadcasts (issue 8).

-- A saved contact list (`producer list import NAME FILE`): contacts already
-- normalised to E.164, deduplicated and checked against the do-not-call
-- list when imported. A campaign made from it (`POST /api/v1/campaigns`
-- with `contact_list`, or an Alertmanager notification) streams it through
-- the producer's pipeline again, so numbers added to the do-not-call list
-- since the import are still never called. An import replaces the list's
-- contacts in one transaction: readers see the old list or the new one.
CREATE TABLE contact_lists (
    id                bigserial PRIMARY KEY,
    name              text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9._-]{1,200}$'),
    -- The file (or `<stdin>`) the contacts were imported from.
    source            text NOT NULL,
    contacts          bigint NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    imported_at       timestamptz NOT NULL DEFAULT now()
);

-- One contact of a list. `line` is the line it was on in the imported
-- file; a campaign made from the list keeps it as `calls.source_line`, so a
-- call still points at the operator's file. Numbers are unique within a
-- list because the import's reader drops duplicates (reported by line).
CREATE TABLE contact_list_entries (
    list_id           bigint NOT NULL REFERENCES contact_lists (id) ON DELETE CASCADE,
    line              bigint NOT NULL,
    number            text NOT NULL CHECK (number ~ '^\+[0-9]{7,15}$'),
    timezone          text,
    attributes        jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (list_id, line)
);

-- One firing period of an Alertmanager alert group: at most one broadcast.
-- Alertmanager re-sends a firing group every repeat_interval; a notification
-- whose firing alerts (fingerprint@startsAt) overlap the group's latest
-- period belongs to it and calls nobody again. A group that fires again
-- after resolving carries new startsAt values, hence a new period.
CREATE TABLE alert_periods (
    id                bigserial PRIMARY KEY,
    group_key         text NOT NULL,
    -- The broadcast's campaign name, derived from the group key and the
    -- period's first startsAt, so a retried request names the same campaign.
    campaign          text NOT NULL,
    contact_list      text NOT NULL,
    -- fingerprint@startsAt of every firing alert seen in this period.
    instances         text[] NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT now(),
    last_firing_at    timestamptz NOT NULL DEFAULT now(),
    -- Set once the broadcast's enqueue finished; until then a repeated
    -- notification runs the (idempotent) enqueue again.
    enqueued_at       timestamptz,
    -- A resolved notification, or a firing one that began a newer period.
    resolved_at       timestamptz,
    cancelled_calls   bigint
);

CREATE INDEX alert_periods_group ON alert_periods (group_key, id DESC);

-- Every notification received on `POST /api/v1/alertmanager`, with what was
-- done about it.
CREATE TABLE alert_notifications (
    id                bigserial PRIMARY KEY,
    received_at       timestamptz NOT NULL DEFAULT now(),
    key_id            text REFERENCES api_keys (key_id) ON DELETE SET NULL,
    group_key         text NOT NULL,
    status            text NOT NULL CHECK (status IN ('firing', 'resolved')),
    receiver          text NOT NULL,
    period_id         bigint REFERENCES alert_periods (id) ON DELETE SET NULL,
    -- started | repeated | resumed | late | resolved | cancelled | no_period
    action            text NOT NULL,
    payload           jsonb NOT NULL
);

CREATE INDEX alert_notifications_group ON alert_notifications (group_key, received_at);

-- Confirmed jobs are recorded per batch, not per row. The producer writes
-- each batch of new contacts with one batch id (from a sequence) and, once
-- the broker has confirmed every job of the batch, inserts that id here: one
-- row per thousand contacts instead of an UPDATE of every one (measured in
-- bench/producer.sh, BENCHMARKS.md). A call's job is confirmed when its
-- `enqueue_batch` is in this table; a re-run publishes the queued calls whose
-- batch is not. `calls.enqueue_batch` is NULL only for rows the producer did
-- not write (tests, load generators); it has no foreign key on purpose, so an
-- insert pays no lookup per row.
CREATE SEQUENCE enqueue_batch_id AS bigint;

CREATE TABLE enqueue_batches (
    id           bigint PRIMARY KEY,
    campaign_id  uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    confirmed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX enqueue_batches_campaign ON enqueue_batches (campaign_id);

ALTER TABLE calls ADD COLUMN enqueue_batch bigint;

-- Rows marked by the per-row scheme: one confirmed batch per campaign. Rows
-- it had not marked: one unconfirmed batch per campaign, so the next run
-- publishes them as before.
CREATE TEMPORARY TABLE legacy_batches AS
SELECT campaign_id, confirmed, nextval('enqueue_batch_id') AS id
FROM (SELECT DISTINCT campaign_id, enqueued_at IS NOT NULL AS confirmed FROM calls) d;
INSERT INTO enqueue_batches (id, campaign_id)
SELECT id, campaign_id FROM legacy_batches WHERE confirmed;
UPDATE calls c SET enqueue_batch = l.id
FROM legacy_batches l
WHERE l.campaign_id = c.campaign_id AND l.confirmed = (c.enqueued_at IS NOT NULL);
DROP TABLE legacy_batches;

ALTER TABLE calls DROP COLUMN enqueued_at;

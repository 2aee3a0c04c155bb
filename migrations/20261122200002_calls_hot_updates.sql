-- Marking a confirmed job (`enqueued_at`) should not rewrite index entries:
-- with room left in each page and no index depending on `enqueued_at`,
-- PostgreSQL updates the row in place (a HOT update). The producer's sweep
-- for unconfirmed rows uses calls_campaign_state (campaign_id, state) and
-- filters; it runs once per enqueue.
DROP INDEX calls_not_enqueued;
ALTER TABLE calls SET (fillfactor = 85);

-- Redials wait here between the transaction that moves their call to
-- `retry_wait` and the broker's confirm of their job: an event batch no
-- longer depends on RabbitMQ being up (it used to answer 503, and the
-- provider gave up on the events). The webhook service publishes and
-- deletes them (FOR UPDATE SKIP LOCKED, so replicas share the work).
CREATE TABLE redial_outbox (
    id          bigserial PRIMARY KEY,
    call_id     uuid NOT NULL,
    job         bytea NOT NULL,   -- the encoded CallJob
    delay_tier  text NOT NULL,    -- DelayTier::name
    created_at  timestamptz NOT NULL DEFAULT now()
);

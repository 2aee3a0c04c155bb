-- The calls in progress per provider, counted under a per-provider advisory
-- lock by a worker that claims a call of a provider with a concurrent-call
-- cap (`TOCSIN_MAX_CONCURRENT_CALLS`): few rows, found without a scan.
CREATE INDEX calls_in_progress ON calls (provider)
    WHERE state IN ('dialing', 'placed', 'ringing', 'answered');

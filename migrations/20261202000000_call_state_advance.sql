-- The forward-only rule of call states, stated once in SQL and mirrored by
-- tocsin_core::CallState::advance (a test in core/tests/core/calls.rs compares the
-- two for every pair of states). Every UPDATE of `calls.state` that takes an
-- event or a create-call result goes through it (core/src/calls.rs).
--
-- A state moves forward only (call_state_rank). One exception: a call
-- recorded `completed` that nobody saw answered may still be refined by a
-- specific failure (busy, no_answer, rejected, failed): some providers send
-- `completed` before the event that says why the call ended.
CREATE FUNCTION call_state_advance(current text, current_answered boolean, next text, next_answered boolean)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN next IS NULL THEN current
        WHEN call_state_rank(next) > call_state_rank(current) THEN next
        WHEN current = 'completed' AND NOT current_answered AND NOT next_answered
             AND next IN ('busy', 'no_answer', 'rejected', 'failed') THEN next
        ELSE current
    END
$$;

-- Whether a state is final (nothing but the exception above moves it).
CREATE FUNCTION call_state_terminal(state text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT call_state_rank(state) = 5
$$;

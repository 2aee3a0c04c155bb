-- A call whose message was never spoken ends `failed`, even when it was
-- answered and its hang-up's `completed` was stored first: Vonage's `error`
-- event (an NCCO it refused) and a speak command Telnyx refused are both
-- reported apart from, and possibly after, the call's own end. Mirrored by
-- tocsin_core::CallState::advance (core/tests/core/calls.rs compares them).
CREATE OR REPLACE FUNCTION call_state_advance(current text, current_answered boolean, next text, next_answered boolean)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN next IS NULL THEN current
        WHEN call_state_rank(next) > call_state_rank(current) THEN next
        WHEN current = 'completed' AND next = 'failed' THEN next
        WHEN current = 'completed' AND NOT current_answered AND NOT next_answered
             AND next IN ('busy', 'no_answer', 'rejected') THEN next
        ELSE current
    END
$$;

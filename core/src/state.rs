//! The call state machine's vocabulary: the states, their forward-only
//! rank and the rule that moves a call (`CallState::advance`, mirrored by
//! the SQL functions `call_state_rank` and `call_state_advance`). Every
//! write of a call's state goes through `crate::calls`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallState {
    Queued,
    RetryWait,
    Dialing,
    Placed,
    Ringing,
    Answered,
    Completed,
    Busy,
    NoAnswer,
    Rejected,
    Failed,
    Cancelled,
    Skipped,
    Unknown,
    /// Still waiting when its campaign's deadline passed: never dialled.
    Expired,
    /// An answering machine took the call and the voicemail was left after
    /// its greeting (a campaign with `--voicemail drop`).
    Voicemail,
}

impl CallState {
    pub const ALL: [CallState; 16] = [
        Self::Queued,
        Self::RetryWait,
        Self::Dialing,
        Self::Placed,
        Self::Ringing,
        Self::Answered,
        Self::Completed,
        Self::Busy,
        Self::NoAnswer,
        Self::Rejected,
        Self::Failed,
        Self::Cancelled,
        Self::Skipped,
        Self::Unknown,
        Self::Expired,
        Self::Voicemail,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::RetryWait => "retry_wait",
            Self::Dialing => "dialing",
            Self::Placed => "placed",
            Self::Ringing => "ringing",
            Self::Answered => "answered",
            Self::Completed => "completed",
            Self::Busy => "busy",
            Self::NoAnswer => "no_answer",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::Voicemail => "voicemail",
        }
    }

    /// Position in the forward-only order. Must match `call_state_rank` in SQL.
    pub fn rank(self) -> u8 {
        match self {
            Self::Queued | Self::RetryWait => 0,
            Self::Dialing => 1,
            Self::Placed => 2,
            Self::Ringing => 3,
            Self::Answered => 4,
            _ => 5,
        }
    }

    pub fn is_terminal(self) -> bool {
        self.rank() == 5
    }

    /// The state after `next` is reported for a call now in `self`: the
    /// forward-only rule. `answered` says whether the call was seen
    /// answered (now or by the report). A `completed` call nobody saw
    /// answered may still be refined by a specific failure, since some
    /// providers send `completed` before the event that says why the call
    /// ended. And a `completed` call becomes `failed` even when answered:
    /// its message was never spoken (Vonage's `error` event, a refused
    /// Telnyx speak), reported apart from the call's own end. The SQL
    /// function `call_state_advance` states the same rule (migrations);
    /// `core/tests/core/calls.rs` checks that they agree.
    pub fn advance(self, next: CallState, answered: bool) -> CallState {
        let refines = self == Self::Completed
            && (next == Self::Failed
                || (!answered && matches!(next, Self::Busy | Self::NoAnswer | Self::Rejected)));
        if next.rank() > self.rank() || refines { next } else { self }
    }
}

/// Calls of a campaign by state: every state listed (zeros included), the
/// total, and how many have finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateCounts {
    pub by_state: BTreeMap<&'static str, i64>,
    pub total: i64,
    pub finished: i64,
}

impl StateCounts {
    /// Tallies `(state, count)` pairs as read from the database; names that
    /// are not a call state are ignored.
    pub fn tally<S: AsRef<str>>(pairs: impl IntoIterator<Item = (S, i64)>) -> Self {
        let mut by_state: BTreeMap<&'static str, i64> =
            CallState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        let (mut total, mut finished) = (0, 0);
        for (name, n) in pairs {
            if let Ok(state) = name.as_ref().parse::<CallState>() {
                by_state.insert(state.as_str(), n);
                total += n;
                if state.is_terminal() {
                    finished += n;
                }
            }
        }
        Self { by_state, total, finished }
    }
}

impl fmt::Display for CallState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown call state {0:?}")]
pub struct UnknownState(String);

impl FromStr for CallState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| UnknownState(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_list_every_state_and_count_the_finished() {
        let c = StateCounts::tally([("queued", 3), ("completed", 2), ("busy", 1), ("nonsense", 9)]);
        assert_eq!(c.by_state.len(), CallState::ALL.len());
        assert_eq!((c.by_state["queued"], c.by_state["dialing"], c.by_state["busy"]), (3, 0, 1));
        assert_eq!((c.total, c.finished), (6, 3));
    }

    #[test]
    fn names_round_trip_and_order_is_forward_only() {
        for state in CallState::ALL {
            assert_eq!(state.as_str().parse::<CallState>().unwrap(), state);
        }
        assert!(CallState::Ringing.rank() > CallState::Placed.rank());
        assert!(CallState::Completed.rank() > CallState::Answered.rank());
        assert!(CallState::Busy.is_terminal() && !CallState::RetryWait.is_terminal());
        assert!("ringin".parse::<CallState>().is_err());
    }
}

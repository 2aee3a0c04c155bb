//! The confirmation dialogue, owned once: what a callee hears after the
//! message, which keys do what, and what follows each answer. The three
//! providers only render its steps in their own formats (NCCO `talk` +
//! `input`, TwiML `<Gather>`, Telnyx `gather_using_speak`) and carry its
//! `Turn` through the call (our URL, or Telnyx's `client_state`); the
//! webhook asks `Confirmation::next` what a key (or the silence) means,
//! and `calls::keypress` records it.
//!
//! The rules: the confirm key ends the call confirmed; the opt-out key (if
//! any) ends it and puts the number on the do-not-call list; the replay key
//! plays the message and the prompt again, `max_replays` times at most; no
//! key within the timeout repeats the prompt once, then the call ends
//! unconfirmed; any other key repeats the prompt, for `MAX_ROUNDS` rounds
//! in all.

use std::fmt;
use std::str::FromStr;

/// The prompt heard after the message when the campaign sets none.
pub const DEFAULT_PROMPT: &str = "Press 1 to confirm you received this message. Press star to hear it again.";
/// Heard after the confirm key, before the call ends.
pub const THANKS: &str = "Thank you, your confirmation has been recorded. Goodbye.";
/// Heard after the opt-out key, before the call ends.
pub const OPTED_OUT: &str = "You will not be called again by this service. Goodbye.";
/// Heard when the call ends without a confirmation.
pub const GOODBYE: &str = "We did not receive your confirmation. Goodbye.";
/// Said before the prompt again after a key that does nothing.
pub const NOT_AN_OPTION: &str = "That key is not an option.";
/// Rounds of prompting in one call at most, whatever is pressed.
pub const MAX_ROUNDS: u32 = 6;

/// What an operator may set, and the ranges.
pub mod limits {
    use std::ops::RangeInclusive;
    pub const PROMPT_CHARS: RangeInclusive<usize> = 1..=500;
    pub const MAX_REPLAYS: RangeInclusive<i64> = 0..=5;
    /// Vonage takes an `input` `timeOut` of at most 10 s (its Java SDK's
    /// `DtmfSettings`; `fixtures/vonage/input.json`): the bound for all three.
    pub const KEY_TIMEOUT_SECS: RangeInclusive<i64> = 3..=10;
}

/// What a call does when an answering machine takes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Voicemail {
    /// Speak as to a person (the machine records the message and the prompt).
    #[default]
    Ignore,
    /// Wait for the end of the greeting (the beep), then leave the
    /// voicemail message: the call ends `voicemail`.
    Drop,
    /// End the call.
    Hangup,
}

impl Voicemail {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ignore => "ignore",
            Self::Drop => "drop",
            Self::Hangup => "hangup",
        }
    }
}

impl FromStr for Voicemail {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Ignore, Self::Drop, Self::Hangup]
            .into_iter()
            .find(|v| v.as_str() == s.trim())
            .ok_or_else(|| format!("{s:?} is not drop, hangup or ignore"))
    }
}

impl fmt::Display for Voicemail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The voicemail left when a campaign sets no text of its own: the message,
/// and how to reach the sender.
pub fn default_voicemail(message: &str, from: &str) -> String {
    let digits: Vec<String> = from.trim_start_matches('+').chars().map(String::from).collect();
    format!("{message} This message was left by {}. Please call that number back.", digits.join(" "))
}

/// One key of a phone's keypad: `0`-`9`, `*` or `#`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key(char);

impl Key {
    pub const fn as_char(self) -> char {
        self.0
    }
}

impl FromStr for Key {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut chars = s.trim().chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) if c.is_ascii_digit() || c == '*' || c == '#' => Ok(Self(c)),
            _ => Err(format!("{s:?} is not one key of a phone's keypad (0-9, * or #)")),
        }
    }
}

/// A key that may be turned off: `none` (or nothing) is no key.
pub fn parse_optional_key(s: &str) -> Result<Option<Key>, String> {
    match s.trim() {
        "" | "none" => Ok(None),
        k => k.parse().map(Some).map_err(|e| format!("{e}, or none")),
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A campaign's confirmation settings (built and checked by
/// `campaign::Settings::apply`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confirmation {
    /// Heard after the message; `None` is `DEFAULT_PROMPT`.
    pub prompt: Option<String>,
    pub confirm_key: Key,
    pub replay_key: Option<Key>,
    pub opt_out_key: Option<Key>,
    pub max_replays: u32,
    /// How long the call waits for a key after the prompt.
    pub key_timeout_secs: u32,
}

impl Default for Confirmation {
    fn default() -> Self {
        Self {
            prompt: None,
            confirm_key: Key('1'),
            replay_key: Some(Key('*')),
            opt_out_key: None,
            max_replays: 2,
            key_timeout_secs: 8,
        }
    }
}

/// Where a call is in its dialogue: which round of prompting, how many
/// replays and silences so far. Carried by the provider between rounds,
/// written `round.replays.silences`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Turn {
    pub round: u32,
    pub replays: u32,
    pub silences: u32,
}

impl fmt::Display for Turn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.round, self.replays, self.silences)
    }
}

impl FromStr for Turn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a dialogue turn (round.replays.silences)");
        let mut parts = s.split('.').map(|p| p.parse::<u32>().ok().filter(|n| *n <= MAX_ROUNDS));
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Some(round)), Some(Some(replays)), Some(Some(silences)), None) => {
                Ok(Self { round, replays, silences })
            }
            _ => Err(bad()),
        }
    }
}

/// What the callee did in one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    Key(char),
    /// No key before the timeout.
    Nothing,
}

impl Heard {
    /// From the digits a provider reports (the first key counts; empty is nothing).
    pub fn from_digits(digits: Option<&str>) -> Self {
        digits.and_then(|d| d.trim().chars().next()).map_or(Self::Nothing, Self::Key)
    }

    /// The key, as stored.
    pub fn digit(self) -> Option<String> {
        match self {
            Self::Key(c) => Some(c.to_string()),
            Self::Nothing => None,
        }
    }
}

/// What one round's answer meant (`keypresses.reply`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    Confirmed,
    OptedOut,
    Replay,
    /// A key that does nothing: the prompt again.
    Invalid,
    /// No key: the prompt again, once.
    Silence,
    /// The call ends unconfirmed (silence twice, or too many rounds).
    GaveUp,
}

impl Reply {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "confirmed",
            Self::OptedOut => "opted_out",
            Self::Replay => "replay",
            Self::Invalid => "invalid",
            Self::Silence => "silence",
            Self::GaveUp => "gave_up",
        }
    }
}

/// What the call does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Speak (the message first, when `message`) then `prompt`, and collect
    /// one key for `turn`.
    Ask { message: bool, prompt: String, turn: Turn },
    /// Speak `text`, then end the call.
    Finish { text: String },
}

impl Step {
    /// The turn the step's key answers (a finish asks for none: the first).
    pub fn turn(&self) -> Turn {
        match self {
            Self::Ask { turn, .. } => *turn,
            Self::Finish { .. } => Turn::default(),
        }
    }
}

impl Confirmation {
    /// The prompt as heard.
    pub fn prompt(&self) -> &str {
        self.prompt.as_deref().unwrap_or(DEFAULT_PROMPT)
    }

    /// The keys a callee may usefully press, in the order a provider's
    /// `valid_digits` lists them.
    pub fn keys(&self) -> Vec<Key> {
        [Some(self.confirm_key), self.replay_key, self.opt_out_key].into_iter().flatten().collect()
    }

    /// The call's first step, once answered: the message, then the prompt.
    pub fn first(&self) -> Step {
        Step::Ask { message: true, prompt: self.prompt().to_owned(), turn: Turn::default() }
    }

    /// The question of `turn` without the message: what follows a
    /// recording played apart from the question (Telnyx plays it before its
    /// gather). Only steps with the message play a recording, and their
    /// prompt is always the plain one.
    pub fn question(&self, turn: Turn) -> Step {
        Step::Ask { message: false, prompt: self.prompt().to_owned(), turn }
    }

    /// What `heard` in `turn` means, and what the call does next.
    pub fn next(&self, turn: Turn, heard: Heard) -> (Reply, Step) {
        let finish = |text: &str| Step::Finish { text: text.to_owned() };
        let again = |message: bool, prompt: String, replays: u32, silences: u32| Step::Ask {
            message,
            prompt,
            turn: Turn { round: turn.round + 1, replays, silences },
        };
        let key = match heard {
            Heard::Key(c) => Some(Key(c)),
            Heard::Nothing => None,
        };
        if key == Some(self.confirm_key) {
            return (Reply::Confirmed, finish(THANKS));
        }
        if key.is_some() && key == self.opt_out_key {
            return (Reply::OptedOut, finish(OPTED_OUT));
        }
        if turn.round + 1 >= MAX_ROUNDS {
            return (Reply::GaveUp, finish(GOODBYE));
        }
        match key {
            None if turn.silences == 0 => {
                (Reply::Silence, again(false, self.prompt().to_owned(), turn.replays, turn.silences + 1))
            }
            None => (Reply::GaveUp, finish(GOODBYE)),
            Some(k) if Some(k) == self.replay_key && turn.replays < self.max_replays => {
                (Reply::Replay, again(true, self.prompt().to_owned(), turn.replays + 1, turn.silences))
            }
            Some(_) => (
                Reply::Invalid,
                again(false, format!("{NOT_AN_OPTION} {}", self.prompt()), turn.replays, turn.silences),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf() -> Confirmation {
        Confirmation { opt_out_key: Some(Key('9')), ..Confirmation::default() }
    }

    #[test]
    fn keys_parse_and_refuse_what_no_keypad_has() {
        assert_eq!("1".parse::<Key>(), Ok(Key('1')));
        assert_eq!("#".parse::<Key>(), Ok(Key('#')));
        assert!("12".parse::<Key>().is_err());
        assert!("a".parse::<Key>().is_err());
        assert!("".parse::<Key>().is_err());
    }

    #[test]
    fn turns_round_trip_and_bad_ones_are_refused() {
        let t = Turn { round: 3, replays: 1, silences: 1 };
        assert_eq!(t.to_string().parse::<Turn>(), Ok(t));
        assert!("1.2".parse::<Turn>().is_err());
        assert!("99.0.0".parse::<Turn>().is_err());
        assert!("a.b.c".parse::<Turn>().is_err());
    }

    #[test]
    fn the_confirm_key_confirms_and_the_opt_out_key_opts_out() {
        let c = conf();
        assert_eq!(c.next(Turn::default(), Heard::Key('1')).0, Reply::Confirmed);
        assert_eq!(c.next(Turn::default(), Heard::Key('9')).0, Reply::OptedOut);
        // Without an opt-out key, 9 does nothing.
        assert_eq!(Confirmation::default().next(Turn::default(), Heard::Key('9')).0, Reply::Invalid);
    }

    #[test]
    fn silence_repeats_the_prompt_once_then_the_call_ends() {
        let c = conf();
        let (reply, step) = c.next(Turn::default(), Heard::Nothing);
        assert_eq!(reply, Reply::Silence);
        let Step::Ask { message: false, turn, .. } = step else { panic!("{step:?}") };
        assert_eq!(c.next(turn, Heard::Nothing).0, Reply::GaveUp);
    }

    #[test]
    fn replay_is_bounded_and_then_a_wrong_key() {
        let c = conf();
        let mut turn = Turn::default();
        for _ in 0..c.max_replays {
            let (reply, step) = c.next(turn, Heard::Key('*'));
            assert_eq!(reply, Reply::Replay);
            let Step::Ask { message: true, turn: t, .. } = step else { panic!("{step:?}") };
            turn = t;
        }
        assert_eq!(c.next(turn, Heard::Key('*')).0, Reply::Invalid);
    }

    #[test]
    fn wrong_keys_end_the_call_after_the_last_round() {
        let c = conf();
        let mut turn = Turn::default();
        let mut replies = Vec::new();
        loop {
            let (reply, step) = c.next(turn, Heard::Key('5'));
            replies.push(reply);
            match step {
                Step::Ask { turn: t, prompt, .. } => {
                    assert!(prompt.starts_with(NOT_AN_OPTION));
                    turn = t;
                }
                Step::Finish { .. } => break,
            }
        }
        assert_eq!(replies.len() as u32, MAX_ROUNDS);
        assert_eq!(replies.last(), Some(&Reply::GaveUp));
        // The confirm key still works in the last round.
        assert_eq!(c.next(turn, Heard::Key('1')).0, Reply::Confirmed);
    }
}

//! A campaign, typed: its status and provider as enums, its time zone and
//! caller id parsed, its calling window one type with one `is_open` /
//! `opens_in`. Workers, `producer status` and the API read campaigns as
//! this type (`db::campaign`); a row that does not parse is an error, never
//! a silent default.
//!
//! The rules for what an operator may set live here too, once: `Settings`
//! is built only by `Settings::new` and changed only by `Settings::apply`,
//! which check every range and name each bad field, so the CLI, the API
//! and the Alertmanager route share them. The SQL `CHECK`s stay as the last
//! line of defence. (Past 500 lines with its tests; one concern.)

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};

use crate::confirm::{self, Confirmation, Key, Voicemail};
use crate::provider::Provider;
use crate::route::Route;
use crate::{CampaignId, PhoneNumber};

/// Whether a campaign dials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignStatus {
    Active,
    /// Dials nothing new until resumed; calls in progress finish.
    Paused,
    /// For good: waiting calls are cancelled, no new contacts are taken.
    Cancelled,
}

impl CampaignStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for CampaignStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CampaignStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Active, Self::Paused, Self::Cancelled]
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown campaign status {s:?}"))
    }
}

/// A daily calling window in local time, `[open, close)`; a window whose
/// close is before its open spans midnight (e.g. 20:00–08:00).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallingWindow {
    pub open: NaiveTime,
    pub close: NaiveTime,
}

impl CallingWindow {
    pub fn new(open: NaiveTime, close: NaiveTime) -> Result<Self, String> {
        if open == close {
            return Err("the window opens and closes at the same time".into());
        }
        Ok(Self { open, close })
    }

    /// `HH:MM-HH:MM`, e.g. `09:00-20:00`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not a window; write it as HH:MM-HH:MM, e.g. 09:00-20:00"))?;
        let time = |t: &str| {
            NaiveTime::parse_from_str(t.trim(), "%H:%M")
                .map_err(|_| format!("{t:?} is not a time of day (HH:MM, 24-hour)"))
        };
        Self::new(time(a)?, time(b)?)
    }

    /// Whether `at` falls inside the window, in local time in `tz`.
    pub fn is_open(&self, at: DateTime<Utc>, tz: Tz) -> bool {
        let t = at.with_timezone(&tz).time();
        if self.open <= self.close {
            t >= self.open && t < self.close
        } else {
            t >= self.open || t < self.close
        }
    }

    /// Time until the window next opens in `tz`, or `None` if it is open at `at`.
    pub fn opens_in(&self, at: DateTime<Utc>, tz: Tz) -> Option<Duration> {
        if self.is_open(at, tz) {
            return None;
        }
        let local = at.with_timezone(&tz);
        // The next local date on which `open` lies ahead.
        let mut date = local.date_naive();
        if local.time() >= self.open {
            date = date.succ_opt()?;
        }
        // A DST gap can skip `open`; look a few days ahead at most.
        for _ in 0..3 {
            if let Some(next) = tz.from_local_datetime(&date.and_time(self.open)).earliest()
                && next > local
            {
                return (next.with_timezone(&Utc) - at).to_std().ok();
            }
            date = date.succ_opt()?;
        }
        Some(Duration::from_secs(3600))
    }
}

impl fmt::Display for CallingWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.open.format("%H:%M"), self.close.format("%H:%M"))
    }
}

/// An IANA time zone name, e.g. `Europe/London`.
pub fn parse_timezone(s: &str) -> Result<Tz, String> {
    s.parse::<Tz>().map_err(|_| format!("unknown time zone {s:?} (use an IANA name such as Europe/London)"))
}

/// An RFC 3339 time, e.g. `2026-11-22T18:00:00+01:00`.
pub fn parse_start_at(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{s:?} is not an RFC 3339 time ({e}); e.g. 2026-11-22T18:00:00+01:00"))
}

/// The ranges an operator's settings must fall in (the SQL `CHECK`s are a
/// looser last line of defence). A retry delay beyond a day would wait only
/// an hour anyway: the longest delay tier is 1 h.
pub mod limits {
    use super::RangeInclusive;
    /// The longest any provider speaks at once (Twilio with a Google voice);
    /// each provider's own limit is checked by `speech::check`.
    pub const MESSAGE_CHARS: RangeInclusive<usize> = 1..=5000;
    pub const REPEAT: RangeInclusive<i64> = 1..=10;
    pub const MAX_ATTEMPTS: RangeInclusive<i64> = 1..=10;
    pub const RETRY_DELAY_SECS: RangeInclusive<i64> = 0..=86_400;
    pub const NAME_CHARS: usize = 200;
}

/// A bad setting, named by its field (`repeat`, `from` …); the CLI shows
/// it as its flag (`--repeat`), the API as the JSON field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }

    /// The same message naming the command-line flag instead (`--max-attempts: …`;
    /// `retry_delay_secs` is the CLI's `--retry-delay`).
    pub fn as_flag(&self) -> String {
        let flag = self.field.strip_suffix("_secs").unwrap_or(self.field).replace('_', "-");
        format!("--{flag}: {}", self.message)
    }
}

/// Whether `name` can name a campaign or a saved contact list: 1–200
/// letters, digits, '-', '_' or '.'.
pub fn check_name(field: &'static str, name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= limits::NAME_CHARS
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(()) } else { Err(FieldError::new(field, "must be 1-200 letters, digits, '-', '_' or '.'")) }
}

/// Every setting of a campaign an operator controls, valid by construction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The words spoken; with `audio_url`, the recording's transcript for
    /// operators (not spoken; may be empty).
    pub message: String,
    /// A recording played instead of speaking `message` (http/https; the
    /// provider fetches it when the call reaches it).
    pub audio_url: Option<String>,
    pub language: String,
    pub voice: Option<String>,
    /// The provider of a campaign without a route (with one: its first account's).
    pub provider: Provider,
    /// The accounts its calls go through and how they are chosen (`None`:
    /// the provider's account alone). See `tocsin_core::route`.
    pub route: Option<Route>,
    pub from: PhoneNumber,
    pub repeat: i32,
    pub max_attempts: i32,
    pub retry_delay_secs: i32,
    pub machine_detection: bool,
    pub start_at: Option<DateTime<Utc>>,
    /// The deadline: no call starts after it; calls still waiting end `expired`.
    pub expires_at: Option<DateTime<Utc>>,
    pub window: Option<CallingWindow>,
    pub timezone: Tz,
    /// Ask the callee to press a key after the message (`confirmation` says how).
    pub confirm: bool,
    /// The dialogue's prompt and keys, kept while `confirm` is off.
    pub confirmation: Confirmation,
    /// Redial answered-but-unconfirmed calls too (needs `confirm`).
    pub until_confirmed: bool,
    /// What a call does when a machine answers (other than `Ignore`
    /// turns machine detection on).
    pub voicemail: Voicemail,
    /// The voicemail left by `Voicemail::Drop`; `None`: `confirm::default_voicemail`.
    pub voicemail_message: Option<String>,
}

/// Requested changes to `Settings`: `None` keeps the current value. Values
/// arrive parsed as far as their type allows; ranges are checked by `apply`.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    pub message: Option<String>,
    /// An audio URL; `""` or `"none"` goes back to speaking the message.
    pub audio_url: Option<String>,
    pub language: Option<String>,
    pub voice: Option<String>,
    pub provider: Option<Provider>,
    /// `Some(None)`: no route (the provider's account alone).
    pub route: Option<Option<Route>>,
    pub from: Option<PhoneNumber>,
    pub repeat: Option<i64>,
    pub max_attempts: Option<i64>,
    pub retry_delay_secs: Option<i64>,
    pub machine_detection: Option<bool>,
    pub start_at: Option<DateTime<Utc>>,
    pub expires_at: Option<Deadline>,
    pub window: Option<CallingWindow>,
    pub timezone: Option<Tz>,
    pub confirm: Option<bool>,
    pub confirm_prompt: Option<String>,
    pub confirm_key: Option<Key>,
    /// `Some(None)`: no replay key.
    pub replay_key: Option<Option<Key>>,
    /// `Some(None)`: no opt-out key.
    pub opt_out_key: Option<Option<Key>>,
    pub max_replays: Option<i64>,
    pub key_timeout_secs: Option<i64>,
    pub until_confirmed: Option<bool>,
    pub voicemail: Option<Voicemail>,
    pub voicemail_message: Option<String>,
}

/// A deadline as asked for: a time, or a span from when it is applied. A
/// span never moves a deadline the campaign already has, so re-running the
/// same `--expires-in 2h` command changes nothing; a time does (with
/// `--update-settings` for an existing campaign).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    At(DateTime<Utc>),
    In(Duration),
}

fn in_range(
    field: &'static str,
    v: i64,
    range: RangeInclusive<i64>,
    errors: &mut Vec<FieldError>,
) -> Option<i32> {
    if range.contains(&v) {
        i32::try_from(v).ok()
    } else {
        let unit = if field.ends_with("_secs") { " seconds" } else { "" };
        errors
            .push(FieldError::new(field, format!("must be from {} to {}{unit}", range.start(), range.end())));
        None
    }
}

/// What a call plays as its message (or its voicemail): words the provider
/// speaks, or a recording it fetches and plays. The providers' renderers
/// take this, so the choice is made once, here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Text(String),
    Audio(String),
}

/// A recording's URL: absolute http(s), at most 2048 characters, no spaces
/// (the providers fetch it as given: Vonage's `streamUrl`, Twilio's
/// `<Play>`, Telnyx's `audio_url`).
pub fn check_audio_url(text: &str) -> Result<String, FieldError> {
    let text = text.trim();
    let bad = |why: &str| Err(FieldError::new("audio_url", format!("{text:?} {why}")));
    if text.len() > 2048 {
        return Err(FieldError::new("audio_url", "must be at most 2048 characters"));
    }
    let Ok(url) = reqwest::Url::parse(text) else {
        return bad("is not a URL (e.g. https://example.com/alert.mp3)");
    };
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return bad("must be an http or https URL the provider can fetch");
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("must not contain spaces or control characters");
    }
    Ok(text.to_owned())
}

/// The message as spoken: trimmed, 1–5000 characters (the provider's own,
/// often lower, limit is checked with the rest of the settings), its
/// `{{column}}` placeholders well formed.
pub fn check_message(text: &str) -> Result<String, FieldError> {
    let text = text.trim();
    if text.contains('\0') {
        return Err(FieldError::new("message", "must not contain a NUL character"));
    }
    let chars = text.chars().count();
    if limits::MESSAGE_CHARS.contains(&chars) {
        crate::template::Template::parse(text).map_err(|e| FieldError::new("message", e))?;
        Ok(text.to_owned())
    } else {
        Err(FieldError::new(
            "message",
            format!("must be 1 to {} characters (it is {chars})", limits::MESSAGE_CHARS.end()),
        ))
    }
}

impl Settings {
    /// A new campaign's settings: the defaults with `changes` applied. The
    /// message and the caller id are required.
    pub fn new(changes: Changes) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let audio = changes.audio_url.as_deref().is_some_and(|u| !matches!(u.trim(), "" | "none"));
        if changes.message.is_none() && !audio {
            errors.push(FieldError::new("message", "required (or an audio_url to play instead)"));
        }
        if changes.from.is_none() {
            errors.push(FieldError::new(
                "from",
                "required for a new campaign: the caller id, in E.164 form (e.g. +14155550100)",
            ));
        }
        let (true, Some(from)) = (changes.message.is_some() || audio, changes.from.clone()) else {
            // Still name every other bad field at once.
            if let Err(more) = Self::placeholder().apply(changes) {
                errors.extend(more);
            }
            return Err(errors);
        };
        let message = if changes.message.is_some() { "-".into() } else { String::new() };
        let base = Self { from, message, ..Self::placeholder() };
        base.apply(changes)
    }

    fn placeholder() -> Self {
        Self {
            message: "-".into(),
            audio_url: None,
            language: "en-US".into(),
            voice: None,
            provider: Provider::Vonage,
            route: None,
            from: PhoneNumber::from_e164("+10000000000").unwrap_or_else(|_| unreachable!()),
            repeat: 1,
            max_attempts: 1,
            retry_delay_secs: 300,
            machine_detection: false,
            start_at: None,
            expires_at: None,
            window: None,
            timezone: chrono_tz::UTC,
            confirm: false,
            confirmation: Confirmation::default(),
            until_confirmed: false,
            voicemail: Voicemail::Ignore,
            voicemail_message: None,
        }
    }

    /// These settings with `changes` applied, every range checked; the
    /// errors name every bad field, not just the first.
    pub fn apply(&self, changes: Changes) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut s = self.clone();
        let dialogue = ConfirmChanges::take(&changes);
        match changes.audio_url.as_deref().map(str::trim) {
            Some("" | "none") => s.audio_url = None,
            Some(u) => match check_audio_url(u) {
                Ok(u) => s.audio_url = Some(u),
                Err(e) => errors.push(e),
            },
            None => {}
        }
        match changes.message {
            // With a recording the message is its transcript, which may be empty.
            Some(m) if m.trim().is_empty() && s.audio_url.is_some() => s.message = String::new(),
            Some(m) => match check_message(&m) {
                Ok(m) => s.message = m,
                Err(e) => errors.push(e),
            },
            None if s.message.is_empty() && s.audio_url.is_none() && changes.audio_url.is_some() => {
                errors.push(FieldError::new("message", "required once audio_url is removed"));
            }
            None => {}
        }
        // (PostgreSQL refuses NUL in text: named here, not a 500 later.)
        match changes.language {
            Some(l) if l.contains('\0') => {
                errors.push(FieldError::new("language", "must not contain a NUL character"))
            }
            Some(l) => s.language = l,
            None => {}
        }
        match changes.voice {
            Some(v) if v.contains('\0') => {
                errors.push(FieldError::new("voice", "must not contain a NUL character"))
            }
            Some(v) => s.voice = Some(v),
            None => {}
        }
        if let Some(p) = changes.provider {
            s.provider = p;
        }
        match changes.route {
            Some(Some(route)) if route.accounts.is_empty() => {
                errors.push(FieldError::new("route", "names no account"));
            }
            Some(Some(route)) => {
                // The route decides the provider: a different one asked for with it is a mistake.
                let first = route.accounts[0].provider;
                if changes.provider.is_some_and(|p| !route.providers().contains(&p)) {
                    errors.push(FieldError::new(
                        "provider",
                        format!("{} is not in the route {route}", s.provider),
                    ));
                }
                s.provider = first;
                s.route = Some(route);
            }
            Some(None) => s.route = None,
            None => {}
        }
        if let Some(f) = changes.from {
            s.from = f;
        }
        if let Some(v) = changes.repeat.and_then(|v| in_range("repeat", v, limits::REPEAT, &mut errors)) {
            s.repeat = v;
        }
        if let Some(v) =
            changes.max_attempts.and_then(|v| in_range("max_attempts", v, limits::MAX_ATTEMPTS, &mut errors))
        {
            s.max_attempts = v;
        }
        if let Some(v) = changes
            .retry_delay_secs
            .and_then(|v| in_range("retry_delay_secs", v, limits::RETRY_DELAY_SECS, &mut errors))
        {
            s.retry_delay_secs = v;
        }
        if let Some(v) = changes.machine_detection {
            s.machine_detection = v;
        }
        if let Some(v) = changes.start_at {
            s.start_at = Some(v);
        }
        let deadline = match changes.expires_at {
            Some(Deadline::In(_)) if s.expires_at.is_some() => None,
            Some(Deadline::In(span)) => match chrono::Duration::from_std(span) {
                Ok(span) => Some(Utc::now() + span),
                Err(_) => {
                    errors.push(FieldError::new("expires_at", "is too far ahead"));
                    None
                }
            },
            Some(Deadline::At(t)) => Some(t),
            None => None,
        };
        if let Some(v) = deadline {
            // A deadline set now must lie ahead: one already past would
            // expire every waiting call at once.
            if v <= Utc::now() {
                errors.push(FieldError::new("expires_at", format!("{} is already past", v.to_rfc3339())));
            } else {
                s.expires_at = Some(v);
            }
        }
        if let (Some(start), Some(end)) = (s.start_at, s.expires_at)
            && end <= start
        {
            errors.push(FieldError::new(
                "expires_at",
                format!("{} is not after the start ({})", end.to_rfc3339(), start.to_rfc3339()),
            ));
        }
        if let Some(w) = changes.window {
            s.window = Some(w);
        }
        if let Some(tz) = changes.timezone {
            s.timezone = tz;
        }
        dialogue.apply(&mut s, &mut errors);
        if let Some(v) = changes.voicemail {
            s.voicemail = v;
        }
        if let Some(m) = changes.voicemail_message {
            match check_message(&m) {
                Ok(m) if m.chars().count() <= 1500 => s.voicemail_message = Some(m),
                Ok(_) => errors.push(FieldError::new("voicemail_message", "must be 1 to 1500 characters")),
                Err(e) => errors.push(FieldError::new("voicemail_message", e.message)),
            }
        }
        if s.voicemail != Voicemail::Ignore {
            if changes.machine_detection == Some(false) {
                errors.push(FieldError::new(
                    "machine_detection",
                    format!("--voicemail {} needs machine detection on", s.voicemail),
                ));
            }
            s.machine_detection = true;
        }
        // What the provider can say, once the message is within the general bound.
        if !errors.iter().any(|e| e.field == "message") {
            // Every provider of the route must say it (the language as the first maps it).
            let mut mapped = None;
            for provider in s.route().providers() {
                match crate::speech::check(provider, s.spoken_message(), &s.language, s.voice.as_deref()) {
                    Ok(language) => {
                        mapped.get_or_insert(language);
                    }
                    Err(more) => errors.extend(more.into_iter().map(|e| FieldError {
                        message: if s.route.is_some() {
                            format!("{} (through {provider})", e.message)
                        } else {
                            e.message
                        },
                        ..e
                    })),
                }
            }
            if let Some(language) = mapped {
                s.language = language;
            }
        }
        if errors.is_empty() { Ok(s) } else { Err(errors) }
    }

    /// How long an answered call of this campaign may last: the message
    /// spoken `repeat` times at a slow 10 characters a second (as often as
    /// the dialogue may replay it, with its rounds of waiting for a key),
    /// plus two minutes, within 1-120 minutes. The providers end the call
    /// there if its hang-up never comes.
    pub fn call_time_limit_secs(&self) -> u32 {
        // A recording's length is not known here: allowed five minutes.
        let chars = match self.audio_url {
            Some(_) => 3000,
            None => u32::try_from(self.message.chars().count()).unwrap_or(u32::MAX),
        };
        let repeat = u32::try_from(self.repeat.max(1)).unwrap_or(1);
        let mut secs = chars.saturating_mul(repeat) / 10;
        if let Some(c) = self.confirmation() {
            let prompt = u32::try_from(c.prompt().chars().count()).unwrap_or(u32::MAX) / 10;
            secs = secs
                .saturating_mul(c.max_replays + 1)
                .saturating_add((prompt + c.key_timeout_secs).saturating_mul(confirm::MAX_ROUNDS));
        }
        secs.saturating_add(120).clamp(60, 7200)
    }

    /// Answering-machine detection as the adapters are asked for it.
    pub fn machine_detection_mode(&self) -> crate::provider::MachineDetection {
        use crate::provider::MachineDetection;
        match (self.voicemail, self.machine_detection) {
            (Voicemail::Drop, _) => MachineDetection::Beep,
            (Voicemail::Hangup, _) => MachineDetection::HangUp,
            (Voicemail::Ignore, true) => MachineDetection::Detect,
            (Voicemail::Ignore, false) => MachineDetection::Off,
        }
    }

    /// The voicemail `Voicemail::Drop` leaves, as text: its own, or the
    /// message and how to call back.
    pub fn voicemail_text(&self) -> String {
        self.voicemail_message
            .clone()
            .unwrap_or_else(|| confirm::default_voicemail(&self.message, self.from.as_str()))
    }

    /// The route the campaign's calls take: its own, or its provider's account alone.
    pub fn route(&self) -> Route {
        self.route.clone().unwrap_or_else(|| Route::single(self.provider))
    }

    /// What a person hears as the message: the recording, or the words.
    pub fn content(&self) -> Content {
        match &self.audio_url {
            Some(url) => Content::Audio(url.clone()),
            None => Content::Text(self.message.clone()),
        }
    }

    /// What `Voicemail::Drop` leaves: the campaign's own voicemail words;
    /// without them, the recording when there is one, else the message and
    /// how to call back.
    pub fn voicemail_content(&self) -> Content {
        match (&self.voicemail_message, &self.audio_url) {
            (None, Some(url)) => Content::Audio(url.clone()),
            _ => Content::Text(self.voicemail_text()),
        }
    }

    /// The text the provider speaks as the message (none with a recording):
    /// what its speech rules are checked against.
    pub fn spoken_message(&self) -> &str {
        if self.audio_url.is_some() { "" } else { &self.message }
    }

    /// The confirmation dialogue, when the campaign asks for one.
    pub fn confirmation(&self) -> Option<&Confirmation> {
        self.confirm.then_some(&self.confirmation)
    }

    /// Human-readable differences from `old`, message excluded.
    pub fn changes_from(&self, old: &Settings) -> Vec<String> {
        let mut out = Vec::new();
        let mut diff = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name}: {a} → {b}"));
            }
        };
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "(default)".into());
        let time = |t: Option<DateTime<Utc>>| t.map_or("(none)".into(), |t| t.to_rfc3339());
        let window = |w: Option<CallingWindow>| w.map_or("(any time)".into(), |w| w.to_string());
        diff("provider", old.provider.to_string(), self.provider.to_string());
        diff("route", old.route().to_string(), self.route().to_string());
        diff("from", old.from.to_string(), self.from.to_string());
        diff("language", old.language.clone(), self.language.clone());
        diff("voice", opt(&old.voice), opt(&self.voice));
        let audio = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none: the message is spoken)".into());
        diff("audio", audio(&old.audio_url), audio(&self.audio_url));
        diff("repeat", old.repeat.to_string(), self.repeat.to_string());
        diff("max attempts", old.max_attempts.to_string(), self.max_attempts.to_string());
        diff("retry delay", format!("{}s", old.retry_delay_secs), format!("{}s", self.retry_delay_secs));
        diff("machine detection", old.machine_detection.to_string(), self.machine_detection.to_string());
        diff("start at", time(old.start_at), time(self.start_at));
        diff("expires at", time(old.expires_at), time(self.expires_at));
        diff("window", window(old.window), window(self.window));
        diff("time zone", old.timezone.name().to_owned(), self.timezone.name().to_owned());
        let key = |k: Option<Key>| k.map_or("(none)".into(), |k| k.to_string());
        let (a, b) = (&old.confirmation, &self.confirmation);
        diff("confirm", old.confirm.to_string(), self.confirm.to_string());
        diff("confirm prompt", a.prompt().to_owned(), b.prompt().to_owned());
        diff("confirm key", a.confirm_key.to_string(), b.confirm_key.to_string());
        diff("replay key", key(a.replay_key), key(b.replay_key));
        diff("opt-out key", key(a.opt_out_key), key(b.opt_out_key));
        diff("max replays", a.max_replays.to_string(), b.max_replays.to_string());
        diff("key timeout", format!("{}s", a.key_timeout_secs), format!("{}s", b.key_timeout_secs));
        diff("until confirmed", old.until_confirmed.to_string(), self.until_confirmed.to_string());
        diff("voicemail", old.voicemail.to_string(), self.voicemail.to_string());
        // (The default voicemail follows the message, which changes apart.)
        diff("voicemail message", opt(&old.voicemail_message), opt(&self.voicemail_message));
        out
    }
}

/// A campaign as stored: its identity, status and settings.
#[derive(Clone, Debug)]
pub struct Campaign {
    pub id: CampaignId,
    pub name: String,
    pub status: CampaignStatus,
    pub settings: Settings,
}

impl Campaign {
    /// How long to wait before this campaign may call a contact whose own
    /// time zone is `contact_zone` (else the campaign's), or `None` if it
    /// may call now: not before `start_at`, and only inside the window.
    pub fn wait_before_calling(&self, contact_zone: Option<Tz>, now: DateTime<Utc>) -> Option<Duration> {
        if let Some(start) = self.settings.start_at
            && start > now
        {
            return (start - now).to_std().ok();
        }
        let window = self.settings.window?;
        window.opens_in(now, contact_zone.unwrap_or(self.settings.timezone))
    }

    /// The campaign's words for one contact: `{{column}}` placeholders in
    /// the message and the voicemail filled from its attributes (JSON text).
    pub fn personalise(&mut self, attributes: &str) {
        // A contact's own `language` / `voice` columns (checked when it was
        // enqueued: `contact_speech`) override the campaign's.
        if attributes.contains("\"language\"") || attributes.contains("\"voice\"") {
            let columns: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(attributes).unwrap_or_default();
            if let Ok((language, voice)) = contact_speech(&self.settings, &columns) {
                self.settings.language = language;
                self.settings.voice = voice;
            }
        }
        let s = &mut self.settings;
        // The default voicemail follows the message: fill it before the
        // message changes (with a recording, the recording is the voicemail).
        if s.audio_url.is_none() || s.voicemail_message.is_some() {
            let voicemail = s.voicemail_message.clone().unwrap_or_else(|| s.voicemail_text());
            s.voicemail_message = Some(crate::template::personalise(&voicemail, attributes));
        }
        s.message = crate::template::personalise(&s.message, attributes);
    }

    /// Whether the campaign's deadline has passed at `now`: no call starts.
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.settings.expires_at.is_some_and(|end| end <= now)
    }

    /// The schedule in words, with whether the window is open now.
    pub fn schedule(&self, now: DateTime<Utc>) -> String {
        let mut parts = Vec::new();
        let human = |d: chrono::Duration| {
            humantime::format_duration(Duration::from_secs(d.num_seconds().max(0) as u64)).to_string()
        };
        match self.settings.start_at {
            Some(t) if t > now => parts.push(format!("starts {} (in {})", t.to_rfc3339(), human(t - now))),
            Some(t) => parts.push(format!("started {}", t.to_rfc3339())),
            None => {}
        }
        match self.settings.window {
            Some(w) => parts.push(format!(
                "window {w} {} ({} there now; contacts with their own time zone follow theirs)",
                self.settings.timezone.name(),
                if w.is_open(now, self.settings.timezone) { "open" } else { "closed" }
            )),
            None => parts.push("any time of day".into()),
        }
        match self.settings.expires_at {
            Some(t) if t > now => parts.push(format!("expires {} (in {})", t.to_rfc3339(), human(t - now))),
            Some(t) => {
                parts.push(format!("expired {} (no call starts; waiting calls are expired)", t.to_rfc3339()))
            }
            None => {}
        }
        parts.join("; ")
    }
}

/// The language and voice a contact is called in: its own `language` and
/// `voice` columns when it has them, else the campaign's; `Err` says why
/// the campaign's provider cannot speak the message so (the contact is
/// rejected at enqueue).
pub fn contact_speech(
    settings: &Settings,
    columns: &serde_json::Map<String, serde_json::Value>,
) -> Result<(String, Option<String>), String> {
    let text = |key: &str| columns.get(key).and_then(|v| v.as_str()).map(str::trim).filter(|v| !v.is_empty());
    let (language, voice) = (text("language"), text("voice"));
    if language.is_none() && voice.is_none() {
        return Ok((settings.language.clone(), settings.voice.clone()));
    }
    let language = language.unwrap_or(&settings.language);
    let voice = voice.map(str::to_owned).or_else(|| settings.voice.clone());
    match crate::speech::check(settings.provider, settings.spoken_message(), language, voice.as_deref()) {
        Ok(mapped) => Ok((mapped, voice)),
        Err(errors) => {
            Err(errors.iter().map(|e| format!("{} {}", e.field, e.message)).collect::<Vec<_>>().join("; "))
        }
    }
}

/// What a control command did to a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// The status changed (for a cancel: with this many waiting calls cancelled).
    Changed { cancelled_calls: u64 },
    /// It already had the status asked for.
    Unchanged,
}

/// Why a control command did not apply.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The campaign's status forbids it (a cancelled campaign cannot resume).
    #[error("{0}")]
    Refused(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// What a control command needs of a campaign: its identity and status,
/// read without its settings, so a row whose settings do not parse can
/// still be paused or cancelled (the emergency stop must always work).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Handle {
    pub id: CampaignId,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub status: CampaignStatus,
}

impl TryFrom<String> for CampaignStatus {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// The campaign named `name`, for a control command.
pub async fn handle(pool: &sqlx::PgPool, name: &str) -> Result<Option<Handle>, sqlx::Error> {
    sqlx::query_as("SELECT id, name, status FROM campaigns WHERE id = $1")
        .bind(CampaignId::from_name(name))
        .fetch_optional(pool)
        .await
}

/// Pauses (`paused = true`) or resumes campaign `c`; shared by the CLI and
/// the HTTP API. A cancelled campaign can do neither.
pub async fn set_paused(pool: &sqlx::PgPool, c: &Handle, paused: bool) -> Result<Control, ControlError> {
    let name = &c.name;
    let (wanted, doing) =
        if paused { (CampaignStatus::Paused, "pause") } else { (CampaignStatus::Active, "resume") };
    if c.status == CampaignStatus::Cancelled {
        return Err(ControlError::Refused(format!("campaign {name:?} is cancelled; it cannot {doing}")));
    }
    if c.status == wanted {
        return Ok(Control::Unchanged);
    }
    // Never revive a campaign cancelled in the meantime.
    let done =
        sqlx::query("UPDATE campaigns SET status = $2, updated_at = now() WHERE id = $1 AND status <> $3")
            .bind(c.id)
            .bind(wanted.as_str())
            .bind(CampaignStatus::Cancelled.as_str())
            .execute(pool)
            .await?;
    if done.rows_affected() == 0 {
        return Err(ControlError::Refused(format!("campaign {name:?} was cancelled meanwhile")));
    }
    Ok(Control::Changed { cancelled_calls: 0 })
}

/// Changes the route of campaign `c` (running or paused): checked as an
/// enqueue checks it — the accounts configured (`configured`: the providers
/// set up here, as the workers are), every provider able to say the
/// message. Workers read the campaign at most a second old, so the next
/// call everywhere takes the new route; calls in flight finish where they
/// are. `None` goes back to the provider's account alone.
pub async fn set_route(
    pool: &sqlx::PgPool,
    c: &Campaign,
    route: Option<Route>,
    configured: &[crate::route::AccountName],
) -> Result<Control, ControlError> {
    if c.status == CampaignStatus::Cancelled {
        return Err(ControlError::Refused(format!(
            "campaign {:?} is cancelled; its route no longer matters",
            c.name
        )));
    }
    let changes = Changes { route: Some(route), ..Changes::default() };
    let s = c.settings.apply(changes).map_err(|errors| {
        ControlError::Refused(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
    })?;
    crate::route::check_configured(&s, configured).map_err(ControlError::Refused)?;
    if s.route() == c.settings.route() {
        return Ok(Control::Unchanged);
    }
    let done = sqlx::query(
        "UPDATE campaigns SET route = $2, provider = $3, language = $4, updated_at = now() \
         WHERE id = $1 AND status <> 'cancelled'",
    )
    .bind(c.id)
    .bind(s.route.as_ref().map(ToString::to_string))
    .bind(s.provider.as_str())
    .bind(&s.language)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ControlError::Refused(format!("campaign {:?} was cancelled meanwhile", c.name)));
    }
    Ok(Control::Changed { cancelled_calls: 0 })
}

/// Cancels campaign `c` for good and ends its waiting calls (calls in
/// progress finish); shared by the CLI (after its confirmation), the API
/// and the Alertmanager receiver.
pub async fn cancel(pool: &sqlx::PgPool, c: &Handle) -> Result<Control, ControlError> {
    if c.status == CampaignStatus::Cancelled {
        return Ok(Control::Unchanged);
    }
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE campaigns SET status = $2, updated_at = now() WHERE id = $1")
        .bind(c.id)
        .bind(CampaignStatus::Cancelled.as_str())
        .execute(&mut *tx)
        .await?;
    // Calls not yet claimed by a worker end now, so status shows it at once;
    // workers would otherwise do the same as each job arrives.
    let cancelled = crate::calls::cancel_campaign_waiting(&mut *tx, c.id).await?;
    tx.commit().await?;
    Ok(Control::Changed { cancelled_calls: cancelled })
}

fn decode_err(column: &str, message: String) -> sqlx::Error {
    sqlx::Error::ColumnDecode { index: column.to_owned(), source: message.into() }
}

fn key_column(row: &PgRow, column: &str) -> Result<Option<Key>, sqlx::Error> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| t.parse::<Key>().map_err(|e| decode_err(column, e))).transpose()
}

/// The confirmation part of `Changes`, checked together (keys must differ,
/// `until_confirmed` needs `confirm`).
struct ConfirmChanges {
    confirm: Option<bool>,
    prompt: Option<String>,
    confirm_key: Option<Key>,
    replay_key: Option<Option<Key>>,
    opt_out_key: Option<Option<Key>>,
    max_replays: Option<i64>,
    key_timeout_secs: Option<i64>,
    until_confirmed: Option<bool>,
}

impl ConfirmChanges {
    fn take(c: &Changes) -> Self {
        Self {
            confirm: c.confirm,
            prompt: c.confirm_prompt.clone(),
            confirm_key: c.confirm_key,
            replay_key: c.replay_key,
            opt_out_key: c.opt_out_key,
            max_replays: c.max_replays,
            key_timeout_secs: c.key_timeout_secs,
            until_confirmed: c.until_confirmed,
        }
    }

    fn apply(self, s: &mut Settings, errors: &mut Vec<FieldError>) {
        let c = &mut s.confirmation;
        if let Some(v) = self.confirm {
            s.confirm = v;
        }
        if let Some(p) = self.prompt {
            let p = p.trim();
            let chars = p.chars().count();
            if p.contains('\0') {
                errors.push(FieldError::new("confirm_prompt", "must not contain a NUL character"));
            } else if !confirm::limits::PROMPT_CHARS.contains(&chars) {
                errors.push(FieldError::new(
                    "confirm_prompt",
                    format!(
                        "must be 1 to {} characters (it is {chars})",
                        confirm::limits::PROMPT_CHARS.end()
                    ),
                ));
            } else {
                c.prompt = Some(p.to_owned());
            }
        }
        if let Some(k) = self.confirm_key {
            c.confirm_key = k;
        }
        if let Some(k) = self.replay_key {
            c.replay_key = k;
        }
        if let Some(k) = self.opt_out_key {
            c.opt_out_key = k;
        }
        if let Some(v) =
            self.max_replays.and_then(|v| in_range("max_replays", v, confirm::limits::MAX_REPLAYS, errors))
        {
            c.max_replays = u32::try_from(v).unwrap_or(0);
        }
        if let Some(v) = self
            .key_timeout_secs
            .and_then(|v| in_range("key_timeout_secs", v, confirm::limits::KEY_TIMEOUT_SECS, errors))
        {
            c.key_timeout_secs = u32::try_from(v).unwrap_or(8);
        }
        if c.replay_key == Some(c.confirm_key) {
            errors
                .push(FieldError::new("replay_key", format!("{} is already the confirm key", c.confirm_key)));
        }
        if c.opt_out_key == Some(c.confirm_key) {
            errors.push(FieldError::new(
                "opt_out_key",
                format!("{} is already the confirm key", c.confirm_key),
            ));
        } else if c.opt_out_key.is_some() && c.opt_out_key == c.replay_key {
            errors.push(FieldError::new("opt_out_key", "is already the replay key"));
        }
        if let Some(v) = self.until_confirmed {
            s.until_confirmed = v;
        }
        if s.until_confirmed && !s.confirm {
            errors.push(FieldError::new(
                "until_confirmed",
                "needs confirmation on (--confirm): without a key to press, nobody can confirm",
            ));
        }
    }
}

/// A campaign row parses or fails naming its bad column: a bad zone is an
/// error, never silently UTC.
impl<'r> FromRow<'r, PgRow> for Campaign {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        let provider: String = row.try_get("provider")?;
        let from: String = row.try_get("from_number")?;
        let status: String = row.try_get("status")?;
        let timezone: String = row.try_get("timezone")?;
        let window = match (row.try_get("window_start")?, row.try_get("window_end")?) {
            (Some(open), Some(close)) => {
                Some(CallingWindow::new(open, close).map_err(|e| decode_err("window_end", e))?)
            }
            _ => None,
        };
        let settings = Settings {
            message: row.try_get("message")?,
            audio_url: row.try_get("audio_url")?,
            language: row.try_get("language")?,
            voice: row.try_get("voice")?,
            provider: provider.parse().map_err(|e| decode_err("provider", format!("{e}")))?,
            route: row
                .try_get::<Option<String>, _>("route")?
                .map(|r| r.parse::<Route>())
                .transpose()
                .map_err(|e| decode_err("route", e))?,
            from: PhoneNumber::from_e164(&from).map_err(|e| decode_err("from_number", e.to_string()))?,
            repeat: row.try_get("repeat")?,
            max_attempts: row.try_get("max_attempts")?,
            retry_delay_secs: row.try_get("retry_delay_secs")?,
            machine_detection: row.try_get("machine_detection")?,
            start_at: row.try_get("start_at")?,
            expires_at: row.try_get("expires_at")?,
            window,
            timezone: parse_timezone(&timezone).map_err(|e| decode_err("timezone", e))?,
            confirm: row.try_get("confirm")?,
            confirmation: Confirmation {
                prompt: row.try_get("confirm_prompt")?,
                confirm_key: key_column(row, "confirm_key")?
                    .ok_or_else(|| decode_err("confirm_key", "missing".into()))?,
                replay_key: key_column(row, "replay_key")?,
                opt_out_key: key_column(row, "opt_out_key")?,
                max_replays: u32::try_from(row.try_get::<i32, _>("max_replays")?)
                    .map_err(|e| decode_err("max_replays", e.to_string()))?,
                key_timeout_secs: u32::try_from(row.try_get::<i32, _>("key_timeout_secs")?)
                    .map_err(|e| decode_err("key_timeout_secs", e.to_string()))?,
            },
            until_confirmed: row.try_get("until_confirmed")?,
            voicemail: row
                .try_get::<String, _>("voicemail")?
                .parse()
                .map_err(|e| decode_err("voicemail", e))?,
            voicemail_message: row.try_get("voicemail_message")?,
        };
        Ok(Self {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            status: status.parse().map_err(|e| decode_err("status", e))?,
            settings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn w(a: (u32, u32), b: (u32, u32)) -> CallingWindow {
        CallingWindow::new(t(a.0, a.1), t(b.0, b.1)).unwrap()
    }

    #[test]
    fn inside_the_window_calls_now() {
        assert_eq!(w((9, 0), (20, 0)).opens_in(utc("2026-11-22T12:00:00Z"), chrono_tz::UTC), None);
        // Overnight window.
        assert_eq!(w((20, 0), (8, 0)).opens_in(utc("2026-11-22T23:00:00Z"), chrono_tz::UTC), None);
        assert_eq!(w((20, 0), (8, 0)).opens_in(utc("2026-11-22T07:59:00Z"), chrono_tz::UTC), None);
        assert!(w((20, 0), (8, 0)).is_open(utc("2026-11-22T07:59:00Z"), chrono_tz::UTC));
    }

    #[test]
    fn outside_the_window_waits_until_it_opens_in_the_given_zone() {
        // 07:00 UTC = 08:00 in Paris (winter): opens at 09:00 Paris, in one hour.
        let wait = w((9, 0), (20, 0)).opens_in(utc("2026-11-22T07:00:00Z"), chrono_tz::Europe::Paris);
        assert_eq!(wait, Some(Duration::from_secs(3600)));
        // 21:00 UTC: closed until 09:00 UTC tomorrow.
        let wait = w((9, 0), (20, 0)).opens_in(utc("2026-11-22T21:00:00Z"), chrono_tz::UTC);
        assert_eq!(wait, Some(Duration::from_secs(12 * 3600)));
        // Overnight window, midday: opens at 20:00.
        let wait = w((20, 0), (8, 0)).opens_in(utc("2026-11-22T12:00:00Z"), chrono_tz::UTC);
        assert_eq!(wait, Some(Duration::from_secs(8 * 3600)));
    }

    #[test]
    fn windows_parse() {
        let win = CallingWindow::parse("09:00-20:00").unwrap();
        assert_eq!((win.open, win.close), (t(9, 0), t(20, 0)));
        assert_eq!(win.to_string(), "09:00-20:00");
        assert!(CallingWindow::parse("22:00-06:30").is_ok());
        assert!(CallingWindow::parse("9-20").is_err());
        assert!(CallingWindow::parse("09:00-09:00").is_err());
        assert!(CallingWindow::parse("25:00-26:00").is_err());
    }

    #[test]
    fn settings_name_every_bad_field_at_once() {
        let errors = Settings::new(Changes {
            message: Some("  ".into()),
            repeat: Some(11),
            max_attempts: Some(0),
            retry_delay_secs: Some(-1),
            ..Changes::default()
        })
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["from", "message", "repeat", "max_attempts", "retry_delay_secs"]);
        assert_eq!(errors[2].as_flag(), "--repeat: must be from 1 to 10");
        assert_eq!(errors[4].as_flag(), "--retry-delay: must be from 0 to 86400 seconds");

        let s = Settings::new(Changes {
            message: Some(" Storm warning. ".into()),
            from: Some(PhoneNumber::from_e164("+14155550100").unwrap()),
            repeat: Some(3),
            ..Changes::default()
        })
        .unwrap();
        assert_eq!((s.message.as_str(), s.repeat, s.max_attempts), ("Storm warning.", 3, 1));
        let changed = s.apply(Changes { max_attempts: Some(4), ..Changes::default() }).unwrap();
        assert_eq!(changed.changes_from(&s), ["max attempts: 1 → 4"]);
    }

    #[test]
    fn a_deadline_lies_ahead_after_the_start_and_a_span_never_moves_one() {
        let base = Settings::new(Changes {
            message: Some("m".into()),
            from: Some(PhoneNumber::from_e164("+14155550100").unwrap()),
            ..Changes::default()
        })
        .unwrap();
        let past = Utc::now() - chrono::Duration::minutes(1);
        let errors =
            base.apply(Changes { expires_at: Some(Deadline::At(past)), ..Changes::default() }).unwrap_err();
        assert_eq!(errors[0].field, "expires_at");
        assert!(errors[0].message.contains("already past"), "{}", errors[0].message);

        let soon = base
            .apply(Changes {
                expires_at: Some(Deadline::In(Duration::from_secs(7200))),
                ..Changes::default()
            })
            .unwrap();
        let deadline = soon.expires_at.unwrap();
        assert!((deadline - Utc::now() - chrono::Duration::hours(2)).num_seconds().abs() < 5);
        // The same span again (a re-run) keeps the deadline; a time moves it.
        let again = soon
            .apply(Changes {
                expires_at: Some(Deadline::In(Duration::from_secs(7200))),
                ..Changes::default()
            })
            .unwrap();
        assert_eq!(again.expires_at, Some(deadline));
        assert!(again.changes_from(&soon).is_empty());
        let later = deadline + chrono::Duration::hours(1);
        let moved =
            soon.apply(Changes { expires_at: Some(Deadline::At(later)), ..Changes::default() }).unwrap();
        assert_eq!(moved.changes_from(&soon).len(), 1, "{:?}", moved.changes_from(&soon));

        let start = Utc::now() + chrono::Duration::hours(3);
        let errors = base
            .apply(Changes {
                start_at: Some(start),
                expires_at: Some(Deadline::In(Duration::from_secs(3600))),
                ..Changes::default()
            })
            .unwrap_err();
        assert!(errors[0].message.contains("not after the start"), "{}", errors[0].message);

        let campaign = Campaign {
            id: CampaignId::from_name("d"),
            name: "d".into(),
            status: CampaignStatus::Active,
            settings: soon,
        };
        assert!(!campaign.expired(Utc::now()));
        assert!(campaign.expired(deadline));
        assert!(campaign.schedule(Utc::now()).contains("expires "), "{}", campaign.schedule(Utc::now()));
        assert!(campaign.schedule(deadline).contains("expired "), "{}", campaign.schedule(deadline));
    }

    #[test]
    fn names_are_checked_once() {
        assert!(check_name("name", "storm-warning_2.b").is_ok());
        assert!(check_name("name", "bad name!").is_err());
        assert!(check_name("name", "").is_err());
        assert!(check_name("name", &"x".repeat(201)).is_err());
    }

    #[test]
    fn statuses_round_trip() {
        for s in [CampaignStatus::Active, CampaignStatus::Paused, CampaignStatus::Cancelled] {
            assert_eq!(s.as_str().parse::<CampaignStatus>().unwrap(), s);
        }
        assert!("stopped".parse::<CampaignStatus>().is_err());
    }
    #[test]
    fn a_recording_replaces_the_message_and_its_url_is_checked() {
        let from = || Some(PhoneNumber::from_e164("+14155550100").unwrap());
        // A recording alone: no message needed; it is the message and the voicemail.
        let s = Settings::new(Changes {
            audio_url: Some(" https://media.example/alert.mp3 ".into()),
            from: from(),
            ..Changes::default()
        })
        .unwrap();
        assert_eq!(s.content(), Content::Audio("https://media.example/alert.mp3".into()));
        assert_eq!(s.voicemail_content(), s.content());
        assert_eq!((s.message.as_str(), s.spoken_message()), ("", ""));
        // Its own voicemail words win over the recording.
        let v =
            s.apply(Changes { voicemail_message: Some("Call us.".into()), ..Changes::default() }).unwrap();
        assert_eq!(v.voicemail_content(), Content::Text("Call us.".into()));
        // Back to speech needs a message.
        let err = s.apply(Changes { audio_url: Some("none".into()), ..Changes::default() }).unwrap_err();
        assert_eq!(err[0].field, "message");
        let back = s
            .apply(Changes {
                audio_url: Some("none".into()),
                message: Some("Words.".into()),
                ..Changes::default()
            })
            .unwrap();
        assert_eq!(back.content(), Content::Text("Words.".into()));
        // Bad URLs are named.
        for bad in
            ["ftp://x/a.mp3", "alert.mp3", "https://x/a b.mp3", &format!("https://x/{}", "a".repeat(2048))]
        {
            let err =
                Settings::new(Changes { audio_url: Some(bad.into()), from: from(), ..Changes::default() })
                    .unwrap_err();
            assert!(err.iter().any(|e| e.field == "audio_url"), "{bad}: {err:?}");
        }
        // Neither message nor recording: the message is required.
        let err = Settings::new(Changes { from: from(), ..Changes::default() }).unwrap_err();
        assert!(err[0].message.contains("audio_url"), "{err:?}");
    }
}

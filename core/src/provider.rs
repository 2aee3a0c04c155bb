//! What every provider adapter shares: the request to place a call, the
//! outcome type whose variants are the worker's decisions, and what a
//! provider says of the calls we placed (listed, or one looked up).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::{CallId, CallState, PhoneNumber};

/// The voice providers Tocsin can place calls through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Provider {
    Vonage,
    Twilio,
    Telnyx,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vonage => "vonage",
            Self::Twilio => "twilio",
            Self::Telnyx => "telnyx",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown provider {0:?} (expected vonage, twilio or telnyx)")]
pub struct UnknownProvider(pub String);

impl FromStr for Provider {
    type Err = UnknownProvider;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vonage" => Ok(Self::Vonage),
            "twilio" => Ok(Self::Twilio),
            "telnyx" => Ok(Self::Telnyx),
            other => Err(UnknownProvider(other.to_owned())),
        }
    }
}

/// For provider event fields Tocsin reads: a string, or a number written as
/// one; anything else reads as absent, so a well-signed event of an
/// unexpected shape is stored raw, never refused.
pub(crate) fn lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::Deserialize;
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// Answering-machine detection, as a campaign asks for it
/// (`campaign::Settings::machine_detection_mode`); each adapter says it in
/// its provider's terms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MachineDetection {
    #[default]
    Off,
    /// Tell people from machines (`answered_by`), and go on either way.
    Detect,
    /// Wait for a machine's greeting to end (the beep), for a voicemail
    /// drop: Vonage `advanced_machine_detection` with `detect_beep`, Twilio
    /// `DetectMessageEnd`, Telnyx `detect_beep`.
    Beep,
    /// End calls a machine answers (Vonage `machine_detection: hangup`;
    /// Twilio and Telnyx detect, and the webhook hangs up).
    HangUp,
}

/// Everything an adapter needs to place one call.
#[derive(Clone, Debug)]
pub struct CallRequest {
    pub call_id: CallId,
    pub attempt: u32,
    pub to: PhoneNumber,
    pub from: PhoneNumber,
    /// Base URL of the webhook service (`TOCSIN_PUBLIC_URL`, no trailing
    /// slash). Each adapter appends its provider's routes and `?call_id=`.
    pub webhook_base: String,
    /// This attempt's secret (`calls::claim`), carried by every URL.
    pub url_token: String,
    /// Seconds to let the phone ring before giving up.
    pub ringing_timeout_secs: u32,
    /// Whether and how the provider tells people from answering machines.
    pub machine_detection: MachineDetection,
    /// Longest the call may last once answered, so a call whose hang-up
    /// never comes cannot run for the provider's default (Telnyx: 4 h).
    pub time_limit_secs: u32,
}

impl CallRequest {
    /// `{webhook_base}{path}?call_id={call_id}&attempt={attempt}&token={url_token}`:
    /// every event names its call and attempt, so a late event of an earlier
    /// attempt never moves a redial, and proves it with the attempt's token.
    pub fn webhook_url(&self, path: &str) -> String {
        format!(
            "{}{path}?call_id={}&attempt={}&token={}",
            self.webhook_base, self.call_id, self.attempt, self.url_token
        )
    }
}

/// A call the provider reports, as listed for crash reconciliation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteCall {
    pub provider_call_id: String,
    /// The provider's status word.
    pub status: String,
    /// When the provider created it, where its listing says (Twilio's
    /// `date_created`); `None` where the provider filtered by time itself
    /// (Vonage's `date_start`/`date_end`).
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The time in which one attempt's create-call request can have reached
/// the provider: from its claim to the end of its dialing lease, widened by
/// the clock difference we allow between our database and the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallWindow {
    pub from: chrono::DateTime<chrono::Utc>,
    pub until: chrono::DateTime<chrono::Utc>,
}

impl CallWindow {
    /// The clock difference allowed between our database and a provider.
    pub const CLOCK_SKEW: Duration = Duration::from_secs(10);

    /// The window of an attempt claimed at `claimed_at` whose request had
    /// `lease` to be sent and answered.
    pub fn of_attempt(claimed_at: chrono::DateTime<chrono::Utc>, lease: Duration) -> Self {
        let skew = chrono::Duration::from_std(Self::CLOCK_SKEW).unwrap_or_default();
        let lease = chrono::Duration::from_std(lease).unwrap_or_default();
        Self { from: claimed_at - skew, until: claimed_at + lease + skew }
    }

    /// Whether a listed call can be this attempt's: created inside the
    /// window, or listed by a provider that filtered by the window itself.
    pub fn admits(&self, call: &RemoteCall) -> bool {
        call.created_at.is_none_or(|t| self.from <= t && t <= self.until)
    }
}

/// Why asking the provider about its calls (listing them, or one call's
/// status) failed: nothing is known, ask again later.
#[derive(Debug, thiserror::Error)]
#[error("asking the provider about its calls failed: {0}")]
pub struct ListCallsError(pub String);

/// What the provider says about one call we placed, asked by its own call id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteStatus {
    /// The provider has no such call (404), or no longer keeps it (Telnyx
    /// keeps a call's status for 10 minutes after it ends).
    Gone,
    /// Still in progress at the provider (queued, dialing, ringing or answered).
    Live,
    /// Ended at the provider.
    Ended {
        /// The terminal state the provider's status maps to (completed,
        /// busy, no_answer, rejected, failed, cancelled), by the same table
        /// as its events; `None` where the provider does not say how the
        /// call ended (Telnyx).
        state: Option<CallState>,
        /// The provider's own status word (`timeout`, `no-answer`, …):
        /// several words map to one state.
        detail: Option<String>,
        /// How long the call lasted, in seconds, where the provider says.
        duration_secs: Option<i32>,
    },
}

impl RemoteStatus {
    /// The answer for a provider status word: `Ended` when `state` (its
    /// mapping) is terminal, `Live` when it is a state on the way there.
    pub(crate) fn of_status(
        status: &str,
        state: Option<CallState>,
        duration_secs: Option<i32>,
    ) -> Option<Self> {
        let state = state?;
        Some(if state.is_terminal() {
            Self::Ended { state: Some(state), detail: Some(status.to_owned()), duration_secs }
        } else {
            Self::Live
        })
    }
}

/// `base` (an API's base URL) with `segments` appended, each percent-encoded
/// as one path segment: an id from a provider never shapes the path.
pub(crate) fn api_url(base: &str, segments: &[&str]) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(base).map_err(|e| format!("bad API URL {base:?}: {e}"))?;
    url.path_segments_mut()
        .map_err(|()| format!("API URL {base:?} cannot take a path"))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A voice provider's create-call API, as the worker uses it.
pub trait VoiceProvider: Send + Sync {
    fn provider(&self) -> Provider;

    /// The account the global rate limit is keyed on (`vonage:APPID`, …).
    fn account(&self) -> String;

    /// Places one call.
    fn place_call<'a>(
        &'a self,
        request: &'a CallRequest,
    ) -> BoxFuture<'a, Result<PlacedCall, PlaceCallError>>;

    /// Calls to `to` that may have been created in `window` (for
    /// reconciling a call whose create-call request was interrupted). A
    /// provider that cannot filter by time exactly lists more, with each
    /// call's `created_at`; `CallWindow::admits` keeps the ones that fit.
    fn list_calls<'a>(
        &'a self,
        to: &'a PhoneNumber,
        window: CallWindow,
    ) -> BoxFuture<'a, Result<Vec<RemoteCall>, ListCallsError>>;

    /// What the provider says about one call we placed, by the provider's
    /// call id recorded at create-call (for a call whose final event never
    /// came). 404 (no such call, or no longer kept; Telnyx's 422 90015
    /// too) is `Gone`; 5xx, 429, other refusals, unreadable answers, status
    /// words Tocsin does not know and connection failures are errors.
    fn call_status<'a>(
        &'a self,
        provider_call_id: &'a str,
    ) -> BoxFuture<'a, Result<RemoteStatus, ListCallsError>>;

    /// How long the provider treats a repeated create-call request for the
    /// same call and attempt as the same request (Telnyx's `command_id`: 60 s).
    /// Within it, an ambiguous request may be sent again without risking a
    /// second call; `None` when the provider offers no such guarantee.
    fn idempotency_window(&self) -> Option<Duration> {
        None
    }
}

/// A call the provider accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacedCall {
    pub provider_call_id: String,
}

/// Why a create-call request did not produce a call. Each variant is a
/// decision for the worker (design: retry policy).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlaceCallError {
    /// 429: never processed, safe to retry after a global cool-down.
    #[error("rate limited by the provider (retry after {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },
    /// 5xx or a connection that never carried the request: retry later.
    #[error("transient provider failure: {0}")]
    Transient(String),
    /// 4xx other than 429: the request is wrong and will stay wrong.
    #[error("provider refused the call ({status} {code}): {detail}")]
    Permanent { status: u16, code: String, detail: String },
    /// The request was sent but no answer came: the call may exist.
    #[error("no answer after the request was sent: {0}")]
    Ambiguous(String),
}

impl PlaceCallError {
    /// Classifies a transport error from reqwest: failures before the
    /// request left are transient, everything after is ambiguous.
    pub fn from_transport(e: &reqwest::Error) -> Self {
        if e.is_connect() || e.is_builder() {
            Self::Transient(e.to_string())
        } else {
            Self::Ambiguous(e.to_string())
        }
    }
}

/// How long a 429 asks us to wait: `Retry-After` when present, else an
/// `x-ratelimit-reset` header (Telnyx). The reset header is read as seconds
/// from now, or as a Unix time when it is that large (providers differ and
/// Telnyx does not document which it sends).
pub fn rate_limit_wait(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    retry_after(headers).or_else(|| {
        let value = headers.get("x-ratelimit-reset")?.to_str().ok()?.trim().parse::<f64>().ok()?;
        if !value.is_finite() || value < 0.0 {
            return None;
        }
        if value > 1_000_000_000.0 {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?;
            return Some(Duration::from_secs_f64((value - now.as_secs_f64()).max(0.0)));
        }
        Some(Duration::from_secs_f64(value))
    })
}

/// Parses a `Retry-After` header given in seconds (the HTTP-date form is
/// not used by the voice providers).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn rate_limit_wait_reads_retry_after_then_reset() {
        let mut h = HeaderMap::new();
        assert_eq!(rate_limit_wait(&h), None);
        h.insert("x-ratelimit-reset", HeaderValue::from_static("3"));
        assert_eq!(rate_limit_wait(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after", HeaderValue::from_static("1.5"));
        assert_eq!(rate_limit_wait(&h), Some(Duration::from_millis(1500)));
        let mut epoch = HeaderMap::new();
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 10;
        epoch.insert("x-ratelimit-reset", HeaderValue::from_str(&at.to_string()).unwrap());
        let wait = rate_limit_wait(&epoch).unwrap();
        assert!(wait <= Duration::from_secs(10) && wait >= Duration::from_secs(8), "{wait:?}");
    }
}

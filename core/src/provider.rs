//! What every provider adapter shares: the request to place a call and the
//! outcome type whose variants are the worker's decisions.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::{CallId, PhoneNumber};

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

/// Everything an adapter needs to place one call.
#[derive(Clone, Debug)]
pub struct CallRequest {
    pub call_id: CallId,
    pub attempt: u32,
    pub to: PhoneNumber,
    pub from: PhoneNumber,
    /// Where the provider fetches what to say (carries `?call_id=`).
    pub answer_url: String,
    /// Where the provider posts call events (carries `?call_id=`).
    pub event_url: String,
    /// Seconds to let the phone ring before giving up.
    pub ringing_timeout_secs: u32,
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
    Permanent {
        status: u16,
        code: String,
        detail: String,
    },
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

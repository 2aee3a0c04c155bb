//! Simulated Telnyx Call Control (v2): `POST /v2/calls` (dial) with Bearer
//! API-key auth, validation with Telnyx's error codes (10009, 10015, 10016,
//! …), the dial rate per rolling window (429 code 90103 with
//! `x-ratelimit-*` headers) and `command_id` idempotency (a repeat within
//! 60 s returns the first answer and dials nothing); the speak and
//! hang-up actions; and a call's status (`GET /v2/calls/{id}`), told until
//! 10 simulated minutes after the call ends. A call emits `call.initiated`,
//! then `call.answered` and waits for the speak command, then
//! `call.speak.started`/`ended`, and waits for the hang-up; or a
//! `call.hangup` with the cause of its outcome. Events are Ed25519-signed
//! with a timestamp, as Telnyx signs them.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::accounts::TelnyxAccount;
use crate::deliver::{Emitter, Outgoing, Signer};
use crate::faults::{self, Fault};
use crate::stats::{Line, NewCall};
use crate::{Outcome, Sim, now_iso};

pub type Limiter = DefaultKeyedRateLimiter<String, StateInformationMiddleware>;

/// `per_window` dials per `window` per API key: a GCRA with a burst of the
/// whole window's allowance, refilling evenly.
pub fn limiter(per_window: u32, window: Duration) -> Limiter {
    let burst = NonZeroU32::new(per_window).unwrap_or(NonZeroU32::MIN);
    let period = window / burst.get();
    let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(burst)).allow_burst(burst);
    governor::RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>()
}

/// Telnyx remembers `command_id`s this long.
const COMMAND_ID_WINDOW: Duration = Duration::from_secs(60);

enum Command {
    /// What the callee hears: the payload as often as `loop` says.
    Speak {
        heard: String,
        client_state: Option<String>,
        /// When the command arrived.
        at: Instant,
    },
    /// `gather_using_speak`: the payload, then one key.
    Gather {
        heard: String,
        valid_digits: String,
        timeout_secs: f64,
        client_state: Option<String>,
        at: Instant,
    },
    /// `playback_start`: the recording at `url`, `times` times.
    Play {
        url: String,
        times: u32,
        client_state: Option<String>,
        at: Instant,
    },
    Hangup,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ringing,
    Answered,
    Ended,
}

struct LiveCall {
    /// The account that dialled it: only its key may command or ask about it.
    account: String,
    commands: mpsc::UnboundedSender<Command>,
    phase: Mutex<Phase>,
    command_ids: Mutex<HashSet<String>>,
    /// What the status endpoint reports besides the call control id.
    call_leg_id: String,
    call_session_id: String,
    client_state: Option<String>,
}

/// The calls the simulated Telnyx knows, and recent dial `command_id`s
/// (per account: the key is the account name and the id).
#[derive(Default)]
pub struct Registry {
    calls: Mutex<HashMap<String, Arc<LiveCall>>>,
    dials: Mutex<HashMap<(String, String), (Instant, serde_json::Value)>>,
}

impl Registry {
    /// The call, if `account` dialled it.
    fn live(&self, account: &str, call_control_id: &str) -> Option<Arc<LiveCall>> {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.get(call_control_id).filter(|c| c.account == account).cloned()
    }
}

fn errors(status: StatusCode, code: &str, title: &str, detail: &str, pointer: Option<&str>) -> Response {
    let mut error = json!({ "code": code, "title": title, "detail": detail });
    if let Some(p) = pointer {
        error["source"] = json!({ "pointer": p });
    }
    (status, Json(json!({ "errors": [error] }))).into_response()
}

/// The account whose API key the request bears (a dial, `arrived`, is
/// attributed to it at once: the key is all there is to check).
fn authenticate(
    sim: &Sim,
    headers: &HeaderMap,
    arrived: Option<f64>,
) -> Result<Arc<TelnyxAccount>, Response> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given.and_then(|key| sim.accounts.telnyx_for(key.trim())) {
        Some(account) => {
            if let Some(at) = arrived {
                sim.stats.arrived(&account.name, at);
            }
            Ok(account.clone())
        }
        None => {
            sim.stats.rejected();
            Err(errors(
                StatusCode::UNAUTHORIZED,
                "10009",
                "Authentication failed",
                "The API key is missing or invalid.",
                None,
            ))
        }
    }
}

fn e164(n: &str) -> bool {
    n.strip_prefix('+').is_some_and(|d| {
        (7..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
    })
}

fn rate_headers(response: &mut Response, limit: u32, remaining: u32, reset: Duration) {
    let h = response.headers_mut();
    for (name, value) in [
        ("x-ratelimit-limit", limit.to_string()),
        ("x-ratelimit-remaining", remaining.to_string()),
        ("x-ratelimit-reset", reset.as_secs_f64().ceil().to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
}

#[derive(Deserialize)]
struct Dial {
    #[serde(default)]
    connection_id: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    webhook_url: Option<String>,
    #[serde(default)]
    webhook_url_method: Option<String>,
    #[serde(default)]
    client_state: Option<String>,
    #[serde(default)]
    command_id: Option<String>,
    #[serde(default)]
    timeout_secs: Option<u32>,
    /// From the answer; default and most 14,400 s (telnyx-ruby's dial params).
    #[serde(default)]
    time_limit_secs: Option<u32>,
    #[serde(default)]
    answering_machine_detection: Option<String>,
}

/// `POST /v2/calls`.
pub async fn dial(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let arrived = sim.stats.arrival();
    let account = match authenticate(&sim, &headers, Some(arrived)) {
        Ok(account) => account,
        Err(response) => return response,
    };
    let limit = account.dials_per_window;
    let remaining = match account.limiter.check_key(&account.name) {
        Ok(snapshot) => snapshot.remaining_burst_capacity(),
        Err(not_until) => {
            sim.stats.rate_limited(&account.name);
            let wait = not_until.wait_time_from(account.limiter.clock().now());
            let mut response = errors(
                StatusCode::TOO_MANY_REQUESTS,
                "90103",
                "Too many requests",
                "The dial rate limit was exceeded; retry after the reset.",
                None,
            );
            rate_headers(&mut response, limit, 0, wait);
            return response;
        }
    };
    match faults::before_create(&sim, &account.name).await {
        Err(status) => return errors(status, "90002", "Gateway timeout", "The request timed out.", None),
        Ok(Some(Fault::Unauthorized)) => {
            return errors(
                StatusCode::UNAUTHORIZED,
                "10009",
                "Authentication failed",
                "The API key is not valid.",
                None,
            );
        }
        Ok(Some(Fault::Storm)) => {
            let mut response = errors(
                StatusCode::TOO_MANY_REQUESTS,
                "90103",
                "Too many requests",
                "Rate limit exceeded.",
                None,
            );
            rate_headers(&mut response, limit, 0, sim.config.faults.storm_for);
            return response;
        }
        Ok(Some(Fault::ServerError(status))) => {
            return errors(status, "90001", "Unexpected error", "An unexpected error occurred.", None);
        }
        Ok(None) => {}
    }
    let invalid = |status: StatusCode, code: &str, title: &str, detail: &str, pointer: &str| {
        sim.stats.rejected();
        errors(status, code, title, detail, Some(pointer))
    };
    let request: Dial = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return invalid(StatusCode::BAD_REQUEST, "10002", "Invalid JSON", &e.to_string(), "/"),
    };
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let connection_id = match request.connection_id {
        Some(c) if account.connection_id.as_ref().is_none_or(|want| *want == c) => c,
        Some(_) => {
            return invalid(
                unprocessable,
                "10015",
                "Invalid connection",
                "connection_id is not valid",
                "/connection_id",
            );
        }
        None => {
            return invalid(
                unprocessable,
                "10004",
                "Missing required parameter",
                "connection_id is required",
                "/connection_id",
            );
        }
    };
    let Some(to) = request.to.filter(|t| e164(t)) else {
        return invalid(
            unprocessable,
            "10016",
            "Invalid phone number",
            "to must be in E.164 format (+…)",
            "/to",
        );
    };
    let Some(from) = request.from.filter(|f| e164(f)) else {
        return invalid(
            unprocessable,
            "10016",
            "Invalid phone number",
            "from must be in E.164 format (+…)",
            "/from",
        );
    };
    let Some(webhook_url) = request.webhook_url.filter(|u| reqwest::Url::parse(u).is_ok()) else {
        return invalid(
            unprocessable,
            "10004",
            "Invalid parameter",
            "webhook_url must be an absolute URL",
            "/webhook_url",
        );
    };
    if request.webhook_url_method.as_deref().is_some_and(|m| m != "POST" && m != "GET") {
        return invalid(
            unprocessable,
            "10004",
            "Invalid parameter",
            "webhook_url_method must be POST or GET",
            "/webhook_url_method",
        );
    }
    if let Some(state) = &request.client_state
        && base64::engine::general_purpose::STANDARD.decode(state).is_err()
    {
        return invalid(
            unprocessable,
            "90053",
            "Invalid client_state",
            "client_state must be base64",
            "/client_state",
        );
    }
    if request.timeout_secs.is_some_and(|t| !(5..=600).contains(&t)) {
        return invalid(
            unprocessable,
            "10004",
            "Invalid parameter",
            "timeout_secs must be between 5 and 600",
            "/timeout_secs",
        );
    }
    if request.time_limit_secs.is_some_and(|t| !(1..=14_400).contains(&t)) {
        return invalid(
            unprocessable,
            "10004",
            "Invalid parameter",
            "time_limit_secs must be at most 14400",
            "/time_limit_secs",
        );
    }
    let amd = request.answering_machine_detection.clone();
    if amd.as_deref().is_some_and(|a| {
        !["disabled", "detect", "detect_beep", "detect_words", "greeting_end", "premium"].contains(&a)
    }) {
        return invalid(
            unprocessable,
            "10004",
            "Invalid parameter",
            "answering_machine_detection is not a known mode",
            "/answering_machine_detection",
        );
    }

    // A command_id seen in the last 60 s names the same dial: answer as before.
    let dial_key = request.command_id.as_ref().map(|id| (account.name.clone(), id.clone()));
    if let Some(key) = &dial_key {
        let mut dials = sim.telnyx_calls.dials.lock().unwrap_or_else(|e| e.into_inner());
        dials.retain(|_, (at, _)| at.elapsed() < COMMAND_ID_WINDOW);
        if let Some((_, earlier)) = dials.get(key) {
            sim.stats.idempotent_replay();
            let mut response = (StatusCode::OK, Json(earlier.clone())).into_response();
            rate_headers(&mut response, limit, remaining, Duration::ZERO);
            return response;
        }
    }

    let random: [u8; 24] = rand::random();
    let call_control_id = format!("v3:{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random));
    let call_leg_id = uuid::Uuid::new_v4().to_string();
    let call_session_id = uuid::Uuid::new_v4().to_string();
    // Past the account's channel limit the call is created and fails:
    // "When the application attempts to establish a call that exceeds the
    // configured limit, Telnyx returns a SIP 403 error: 403 User channel
    // limit exceeded" (Telnyx, "Concurrent Call Limits",
    // developers.telnyx.com/docs/voice/sip-trunking/configuration/concurrent-limits).
    // The dial answers 200 as usual; the call sends `call.initiated`, then
    // `call.hangup` with `sip_hangup_cause` 403 (`call_rejected`), holding no
    // line; no outcome is drawn for a callee it never reaches.
    let line = sim.stats.take_line(&account.name, account.max_concurrent);
    let past_cap = line == Line::PastCap;
    let outcome = if past_cap { Outcome::Failed } else { sim.outcome_for(&to) };
    let data = json!({ "data": {
        "call_control_id": call_control_id, "call_leg_id": call_leg_id,
        "call_session_id": call_session_id, "is_alive": false, "record_type": "call",
    }});
    if let Some(key) = dial_key {
        let mut dials = sim.telnyx_calls.dials.lock().unwrap_or_else(|e| e.into_inner());
        dials.insert(key, (Instant::now(), data.clone()));
    }
    sim.stats.call_accepted(NewCall {
        arrived,
        provider: "telnyx",
        account: &account.name,
        line,
        provider_call_id: &call_control_id,
        to: &to,
        from: &from,
        outcome,
        status: "bridging",
        queue_secs: 0.0,
        conversation_uuid: None,
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let live = Arc::new(LiveCall {
        account: account.name.clone(),
        commands: tx,
        phase: Mutex::new(Phase::Ringing),
        command_ids: Mutex::new(HashSet::new()),
        call_leg_id: call_leg_id.clone(),
        call_session_id: call_session_id.clone(),
        client_state: request.client_state.clone(),
    });
    sim.telnyx_calls
        .calls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(call_control_id.clone(), live.clone());
    let life = CallLife {
        call_control_id,
        call_leg_id,
        call_session_id,
        connection_id,
        client_state: Mutex::new(request.client_state),
        to,
        from,
        webhook_url,
        outcome,
        timeout: f64::from(request.timeout_secs.unwrap_or(30)),
        time_limit: f64::from(request.time_limit_secs.unwrap_or(14_400)),
        amd: amd.filter(|a| a != "disabled"),
        live,
        account,
        past_cap,
    };
    let task_sim = sim.clone();
    sim.tasks.spawn(async move { life.run(&task_sim, rx).await });
    if faults::maybe_lose_response(&sim).await {
        return errors(StatusCode::GATEWAY_TIMEOUT, "90002", "Gateway timeout", "lost", None);
    }
    let mut response = (StatusCode::OK, Json(data)).into_response();
    rate_headers(&mut response, limit, remaining, Duration::ZERO);
    response
}

/// How long after a call ends Telnyx still tells its status: "data is
/// available 10 minutes after call ended" (telnyx-python
/// `src/telnyx/resources/calls/calls.py`, `retrieve_status`), in simulated
/// seconds.
const STATUS_KEPT_SECS: f64 = 600.0;

/// The endpoint's documented refusal of a call control id (its 422's
/// example 90015), for an id this simulator never gave or no longer keeps.
/// What Telnyx answers once a call's data has gone is not documented; this
/// is its one documented answer for an id it does not accept.
fn invalid_call_control_id() -> Response {
    errors(
        StatusCode::UNPROCESSABLE_ENTITY,
        "90015",
        "Invalid Call Control ID",
        "The call_control_id provided was not valid.",
        Some("/call_control_id"),
    )
}

/// `GET /v2/calls/{call_control_id}` ("Retrieve a call status"): the call as
/// telnyx-python's `CallRetrieveStatusResponse` lays it out
/// (`fixtures/telnyx/call-status.json`). Alive from the dial until the
/// hang-up; `end_time` only once it is not; `start_time` is the dial, and
/// `call_duration` the talk time (in the documented example the two spans
/// differ: 110 s from start to end, a duration of 50).
pub async fn call_status(
    State(sim): State<Arc<Sim>>,
    Path(call_control_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let account = match authenticate(&sim, &headers, None) {
        Ok(account) => account,
        Err(response) => return response,
    };
    let live = sim.telnyx_calls.live(&account.name, &call_control_id);
    let call =
        sim.stats.calls_of(&account.name, |c| c.provider_call_id == call_control_id).into_iter().next();
    let (Some(live), Some(call)) = (live, call) else {
        return invalid_call_control_id();
    };
    let now = chrono::Utc::now();
    let kept = chrono::Duration::from_std(sim.scaled(STATUS_KEPT_SECS)).unwrap_or(chrono::Duration::MAX);
    if call.ended_at.is_some_and(|end| now - end > kept) {
        return invalid_call_control_id();
    }
    let talk = match (call.ended, call.answered_at) {
        (true, _) => call.duration_secs.unwrap_or(0),
        (false, Some(answered)) => (now - answered).num_seconds(),
        (false, None) => 0,
    };
    let iso = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut data = json!({
        "call_control_id": call_control_id,
        "call_leg_id": live.call_leg_id,
        "call_session_id": live.call_session_id,
        "is_alive": !call.ended,
        "record_type": "call",
        "call_duration": talk,
        "start_time": iso(call.created),
    });
    if let Some(map) = data.as_object_mut() {
        if let Some(state) = &live.client_state {
            map.insert("client_state".into(), json!(state));
        }
        if let Some(end) = call.ended_at {
            map.insert("end_time".into(), json!(iso(end)));
        }
    }
    Json(json!({ "data": data })).into_response()
}

#[derive(Deserialize)]
struct ActionBody {
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    voice: Option<String>,
    /// "The number of times to play the audio file. Use `infinity` to loop
    /// indefinitely. Defaults to 1." (an integer or a string)
    #[serde(default, rename = "loop")]
    repeat: Option<serde_json::Value>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    command_id: Option<String>,
    #[serde(default)]
    client_state: Option<String>,
    /// Every other parameter, checked against the command's documented list.
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

/// `playback_start`'s parameters, from telnyx-python
/// `ActionStartPlaybackParams` (`fixtures/telnyx/playback.json`).
pub const PLAYBACK_PARAMETERS: [&str; 11] = [
    "audio_type",
    "audio_url",
    "cache_audio",
    "client_state",
    "command_id",
    "loop",
    "media_name",
    "overlay",
    "playback_content",
    "stop",
    "target_legs",
];

/// A `playback_start` request as Telnyx takes it: documented parameters
/// only, `audio_type` mp3 or wav, never `audio_url` with `media_name`.
/// Only `audio_url` is simulated (`media_name` needs Telnyx's media store).
fn check_playback(request: &ActionBody) -> Result<(String, u32), (String, &'static str)> {
    for key in request.rest.keys() {
        if !PLAYBACK_PARAMETERS.contains(&key.as_str()) {
            return Err((format!("{key} is not a playback_start parameter"), "/"));
        }
    }
    for key in ["payload", "voice", "language"] {
        let given = match key {
            "payload" => request.payload.is_some(),
            "voice" => request.voice.is_some(),
            _ => request.language.is_some(),
        };
        if given {
            return Err((format!("{key} is not a playback_start parameter"), "/"));
        }
    }
    let url = request.rest.get("audio_url").and_then(|v| v.as_str()).unwrap_or_default();
    if request.rest.contains_key("media_name") && !url.is_empty() {
        return Err(("media_name and audio_url cannot be used together".into(), "/media_name"));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(("audio_url must be an http(s) URL (media_name is not simulated)".into(), "/audio_url"));
    }
    if let Some(kind) = request.rest.get("audio_type")
        && !matches!(kind.as_str(), Some("mp3" | "wav"))
    {
        return Err(("audio_type must be mp3 or wav".into(), "/audio_type"));
    }
    let times = loop_count(request.repeat.as_ref())
        .ok_or_else(|| ("loop must be a positive number of times or \"infinity\"".to_owned(), "/loop"))?;
    Ok((url.to_owned(), times))
}

/// `gather_using_speak`'s parameters, from telnyx-python
/// `ActionGatherUsingSpeakParams` (`fixtures/telnyx/gather.json`).
pub const GATHER_PARAMETERS: [&str; 16] = [
    "client_state",
    "command_id",
    "inter_digit_timeout_millis",
    "invalid_payload",
    "language",
    "maximum_digits",
    "maximum_tries",
    "minimum_digits",
    "payload",
    "payload_type",
    "service_level",
    "terminating_digit",
    "timeout_millis",
    "valid_digits",
    "voice",
    "voice_settings",
];

/// Checks a `gather_using_speak` body as Telnyx's parameter list and ranges
/// say; returns the valid digits and the timeout in seconds.
fn check_gather(request: &ActionBody) -> Result<(String, f64), (String, &'static str)> {
    if let Some(other) = request.rest.keys().find(|k| !GATHER_PARAMETERS.contains(&k.as_str())) {
        return Err((format!("{other} is not a parameter of gather_using_speak"), "/"));
    }
    let int = |name: &str| request.rest.get(name).and_then(serde_json::Value::as_u64);
    if request.rest.get("minimum_digits").is_some_and(|_| int("minimum_digits").is_none_or(|n| n < 1)) {
        return Err(("minimum_digits must be at least 1".into(), "/minimum_digits"));
    }
    if request
        .rest
        .get("maximum_digits")
        .is_some_and(|_| int("maximum_digits").is_none_or(|n| !(1..=128).contains(&n)))
    {
        return Err(("maximum_digits must be 1-128".into(), "/maximum_digits"));
    }
    let valid_digits = match request.rest.get("valid_digits") {
        None => "0123456789#*".to_owned(),
        Some(serde_json::Value::String(v))
            if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '#' || c == '*') =>
        {
            v.clone()
        }
        Some(_) => return Err(("valid_digits must hold only 0-9, # and *".into(), "/valid_digits")),
    };
    let timeout_ms = match request.rest.get("timeout_millis") {
        None => 60_000,
        Some(v) => v
            .as_u64()
            .filter(|n| *n > 0)
            .ok_or(("timeout_millis must be a positive integer".into(), "/timeout_millis"))?,
    };
    Ok((valid_digits, timeout_ms as f64 / 1000.0))
}

/// The speak command's `language` values, from telnyx-python
/// `src/telnyx/types/calls/action_speak_params.py` (generated from Telnyx's
/// OpenAPI spec). Kept apart from Tocsin's own list on purpose: the
/// simulator is a second witness, not a copy of the adapter.
const SPEAK_LANGUAGES: &[&str] = &[
    "arb",
    "cmn-CN",
    "cy-GB",
    "da-DK",
    "de-DE",
    "en-AU",
    "en-GB",
    "en-GB-WLS",
    "en-IN",
    "en-US",
    "es-ES",
    "es-MX",
    "es-US",
    "fr-CA",
    "fr-FR",
    "hi-IN",
    "is-IS",
    "it-IT",
    "ja-JP",
    "ko-KR",
    "nb-NO",
    "nl-NL",
    "pl-PL",
    "pt-BR",
    "pt-PT",
    "ro-RO",
    "ru-RU",
    "sv-SE",
    "tr-TR",
];

/// How often a speak's `loop` plays the payload (`infinity`: heard here once
/// before the hang-up); `None` when it is neither a positive count nor
/// `infinity`.
fn loop_count(value: Option<&serde_json::Value>) -> Option<u32> {
    match value {
        None => Some(1),
        Some(serde_json::Value::Number(n)) => n.as_u64().filter(|n| *n >= 1).map(|n| n.min(100) as u32),
        Some(serde_json::Value::String(s)) if s == "infinity" => Some(1),
        Some(serde_json::Value::String(s)) => s.parse::<u32>().ok().filter(|n| *n >= 1).map(|n| n.min(100)),
        Some(_) => None,
    }
}

/// `POST /v2/calls/{call_control_id}/actions/{speak|hangup}`.
pub async fn action(
    State(sim): State<Arc<Sim>>,
    Path((call_control_id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let account = match authenticate(&sim, &headers, None) {
        Ok(account) => account,
        Err(response) => return response,
    };
    if !matches!(action.as_str(), "speak" | "hangup" | "gather_using_speak" | "playback_start") {
        return errors(
            StatusCode::NOT_FOUND,
            "10005",
            "Resource not found",
            "This action is not simulated.",
            None,
        );
    }
    let Some(live) = sim.telnyx_calls.live(&account.name, &call_control_id) else {
        return errors(
            StatusCode::NOT_FOUND,
            "10005",
            "Resource not found",
            "No call with that call_control_id.",
            None,
        );
    };
    let request: ActionBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return errors(StatusCode::BAD_REQUEST, "10002", "Invalid JSON", &e.to_string(), None),
    };
    let phase = *live.phase.lock().unwrap_or_else(|e| e.into_inner());
    if phase == Phase::Ended {
        return errors(
            StatusCode::UNPROCESSABLE_ENTITY,
            "90018",
            "Call has already ended",
            "This call is no longer active.",
            None,
        );
    }
    if let Some(id) = &request.command_id
        && !live.command_ids.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone())
    {
        // A repeated command_id: accepted, not run again.
        return Json(json!({ "data": { "result": "ok" } })).into_response();
    }
    let invalid = |detail: &str, pointer: &str| {
        errors(StatusCode::UNPROCESSABLE_ENTITY, "10004", "Invalid parameter", detail, Some(pointer))
    };
    let command = if action == "hangup" {
        Command::Hangup
    } else if action == "playback_start" {
        let (url, times) = match check_playback(&request) {
            Ok(v) => v,
            Err((detail, pointer)) => {
                sim.stats.answer_invalid(&call_control_id, detail.clone());
                return invalid(&detail, pointer);
            }
        };
        if phase != Phase::Answered {
            return errors(
                StatusCode::UNPROCESSABLE_ENTITY,
                "90034",
                "Call not answered",
                "Playback needs an answered call.",
                None,
            );
        }
        Command::Play { url, times, client_state: request.client_state, at: Instant::now() }
    } else {
        let payload = request.payload.clone().unwrap_or_default();
        if payload.trim().is_empty() || payload.chars().count() > 3000 {
            return invalid("payload must hold 1-3000 characters", "/payload");
        }
        if request.language.as_deref().is_some_and(|l| !SPEAK_LANGUAGES.contains(&l)) {
            return invalid("language is not one Telnyx speaks", "/language");
        }
        if request.voice.as_deref().is_none_or(|v| v.trim().is_empty()) {
            return errors(
                StatusCode::UNPROCESSABLE_ENTITY,
                "10004",
                "Missing required parameter",
                "voice is required",
                Some("/voice"),
            );
        }
        if phase != Phase::Answered {
            return errors(
                StatusCode::UNPROCESSABLE_ENTITY,
                "90034",
                "Call not answered",
                "Speak needs an answered call.",
                None,
            );
        }
        if action == "speak" {
            let Some(times) = loop_count(request.repeat.as_ref()) else {
                return invalid("loop must be a positive number of times or \"infinity\"", "/loop");
            };
            Command::Speak {
                heard: vec![payload.trim(); times as usize].join(" "),
                client_state: request.client_state,
                at: Instant::now(),
            }
        } else {
            let (valid_digits, timeout_secs) = match check_gather(&request) {
                Ok(v) => v,
                Err((detail, pointer)) => {
                    sim.stats.input_invalid(&call_control_id, detail.clone());
                    return invalid(&detail, pointer);
                }
            };
            Command::Gather {
                heard: payload.trim().to_owned(),
                valid_digits,
                timeout_secs,
                client_state: request.client_state,
                at: Instant::now(),
            }
        }
    };
    sim.stats.command();
    if live.commands.send(command).is_err() {
        return errors(
            StatusCode::UNPROCESSABLE_ENTITY,
            "90018",
            "Call has already ended",
            "This call is no longer active.",
            None,
        );
    }
    Json(json!({ "data": { "result": "ok" } })).into_response()
}

struct CallLife {
    call_control_id: String,
    call_leg_id: String,
    call_session_id: String,
    connection_id: String,
    /// The dial's, then the last command's that set one.
    client_state: Mutex<Option<String>>,
    to: String,
    from: String,
    webhook_url: String,
    outcome: Outcome,
    timeout: f64,
    /// Seconds from the answer after which Telnyx ends the call (`time_limit`).
    time_limit: f64,
    /// `answering_machine_detection`, when on.
    amd: Option<String>,
    live: Arc<LiveCall>,
    /// Its events are signed with this account's key.
    account: Arc<TelnyxAccount>,
    /// Dialled past the account's channel limit: rejected with SIP 403.
    past_cap: bool,
}

impl CallLife {
    async fn run(self, sim: &Sim, mut commands: mpsc::UnboundedReceiver<Command>) {
        let ring = sim.uniform(1.0..4.0);
        let talk = sim.uniform(5.0..15.0);
        let mut events = Emitter::default();
        events.emit(sim, self.event("call.initiated", "bridging", json!({}))).await;
        let (cause, sip, source, answered_at) = match self.outcome {
            _ if self.past_cap => {
                tokio::time::sleep(sim.scaled(0.5)).await;
                ("call_rejected", Some("403"), "unknown", None)
            }
            Outcome::Busy | Outcome::BusyThenConfirm => {
                tokio::time::sleep(sim.scaled(ring / 2.0)).await;
                ("user_busy", Some("486"), "callee", None)
            }
            Outcome::Unanswered => {
                tokio::time::sleep(sim.scaled((ring * 3.0).min(self.timeout))).await;
                ("timeout", Some("487"), "caller", None)
            }
            Outcome::Failed => {
                tokio::time::sleep(sim.scaled(0.5)).await;
                ("not_found", Some("404"), "callee", None)
            }
            Outcome::Answered
            | Outcome::Machine
            | Outcome::MachineNoBeep
            | Outcome::NoKey
            | Outcome::WrongKey
            | Outcome::Replay
            | Outcome::OptOut => {
                tokio::time::sleep(sim.scaled(ring)).await;
                *self.live.phase.lock().unwrap_or_else(|e| e.into_inner()) = Phase::Answered;
                sim.stats.answered(&self.call_control_id);
                sim.stats.status(&self.call_control_id, "answered");
                let answered_at = now_iso();
                let answered = self.event("call.answered", "answered", json!({ "start_time": answered_at }));
                events.emit_now(sim, answered).await;
                // Detection ends first; with `detect_beep` (or `greeting_end`)
                // a machine's greeting then ends (fixtures/telnyx/gather.json
                // `call.machine.greeting.ended`: beep_detected, or ended without one).
                let machine = self.outcome.machine();
                let mut greeting_end = None;
                if let Some(mode) = &self.amd {
                    let result = if machine { "machine" } else { "human" };
                    let amd =
                        self.event("call.machine.detection.ended", "answered", json!({ "result": result }));
                    events.emit_now(sim, amd).await;
                    if machine && matches!(mode.as_str(), "detect_beep" | "greeting_end") {
                        tokio::time::sleep(sim.scaled(Outcome::GREETING_SECS)).await;
                        greeting_end = Some(Instant::now());
                        let result = if self.outcome == Outcome::Machine { "beep_detected" } else { "ended" };
                        let ended = self.event(
                            "call.machine.greeting.ended",
                            "answered",
                            json!({ "result": result }),
                        );
                        events.emit_now(sim, ended).await;
                    }
                }
                let limit = sim.scaled(self.time_limit);
                match tokio::time::timeout(
                    limit,
                    self.converse(sim, &mut events, &mut commands, talk, greeting_end),
                )
                .await
                {
                    Ok(source) => ("normal_clearing", None, source, Some(answered_at)),
                    Err(_) => ("time_limit", None, "unknown", Some(answered_at)),
                }
            }
        };
        *self.live.phase.lock().unwrap_or_else(|e| e.into_inner()) = Phase::Ended;
        commands.close();
        let end = now_iso();
        let duration = answered_at.as_deref().and_then(|a| {
            let a = chrono::DateTime::parse_from_rfc3339(a).ok()?;
            let e = chrono::DateTime::parse_from_rfc3339(&end).ok()?;
            Some((e - a).num_seconds())
        });
        sim.stats.ended(&self.call_control_id, cause, duration);
        // No end time in the payload: Telnyx's `call.hangup` has the start
        // only, the end is the event's `occurred_at` (telnyx-python
        // `types/call_hangup_webhook_event.py`).
        let mut extra = json!({ "hangup_cause": cause, "hangup_source": source });
        if let Some(sip) = sip {
            extra["sip_hangup_cause"] = json!(sip);
        }
        if let Some(start) = answered_at {
            extra["start_time"] = json!(start);
        }
        events.emit(sim, self.event("call.hangup", "hangup", extra)).await;
        events.flush(sim).await;
    }

    /// An answered call: run the commands as they come — speak (then
    /// `call.speak.started` / `call.speak.ended`), gather (the callee's key
    /// or the timeout, reported by `call.dtmf.received` and
    /// `call.gather.ended`, as Telnyx reports a key twice), hang up — until
    /// the hang-up, or no command for `--telnyx-command-wait`. Returns who
    /// hung up.
    async fn converse(
        &self,
        sim: &Sim,
        events: &mut Emitter,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        talk: f64,
        greeting_end: Option<Instant>,
    ) -> &'static str {
        let wait = sim.config.telnyx_command_wait;
        let mut nth = 0;
        let mut spoken = false;
        // A machine records what it hears; with a greeting to wait for, a
        // speech sent before its end is cut by the detector (`cancelled_amd`).
        let machine = self.outcome.machine();
        let beeped = self.outcome == Outcome::Machine;
        let after_beep = |at: Instant| machine.then(|| beeped && greeting_end.is_some_and(|g| at >= g));
        loop {
            match tokio::time::timeout(wait, commands.recv()).await {
                Ok(Some(Command::Speak { at, .. })) if machine && greeting_end.is_some_and(|g| at < g) => {
                    let cut =
                        self.event("call.speak.ended", "answered", json!({ "status": "cancelled_amd" }));
                    events.emit_now(sim, cut).await;
                }
                Ok(Some(Command::Speak { heard, client_state, at })) => {
                    self.set_client_state(client_state);
                    sim.stats.heard_as(&self.call_control_id, &heard, false, after_beep(at));
                    events.emit(sim, self.event("call.speak.started", "answered", json!({}))).await;
                    let secs = if spoken { crate::speaking_secs(&heard) } else { talk };
                    tokio::time::sleep(sim.scaled(secs)).await;
                    let ended = self.event("call.speak.ended", "answered", json!({ "status": "completed" }));
                    events.emit_now(sim, ended).await;
                    spoken = true;
                }
                Ok(Some(Command::Play { at, .. })) if machine && greeting_end.is_some_and(|g| at < g) => {
                    let cut =
                        self.event("call.playback.ended", "answered", json!({ "status": "cancelled_amd" }));
                    events.emit_now(sim, cut).await;
                }
                Ok(Some(Command::Play { url, times, client_state, .. })) => {
                    // Telnyx fetches the file when the playback starts; one
                    // it cannot play ends the playback `file_not_found`.
                    self.set_client_state(client_state);
                    let playing =
                        crate::audio::play_all(sim, "telnyx", &self.call_control_id, &[(url.clone(), times)])
                            .await;
                    let found = playing > 0.0;
                    let media = json!({ "media_url": url, "overlay": false });
                    if found {
                        events
                            .emit(sim, self.event("call.playback.started", "answered", media.clone()))
                            .await;
                        let secs = if spoken { playing } else { talk.max(playing) };
                        tokio::time::sleep(sim.scaled(secs)).await;
                    }
                    let mut ended = media;
                    ended["status"] = json!(if found { "completed" } else { "file_not_found" });
                    events.emit_now(sim, self.event("call.playback.ended", "answered", ended)).await;
                    spoken = true;
                }
                Ok(Some(Command::Gather { heard, valid_digits, timeout_secs, client_state, at })) => {
                    self.set_client_state(client_state);
                    sim.stats.heard_as(&self.call_control_id, &heard, true, after_beep(at));
                    let key = self.outcome.key(nth, &sim.config.keys);
                    nth += 1;
                    tokio::time::sleep(sim.scaled(crate::key_after_secs(sim, &heard, key, timeout_secs)))
                        .await;
                    sim.stats.pressed(&self.call_control_id, key);
                    let (digits, status) = match key {
                        Some(k) if valid_digits.contains(k) => (k.to_string(), "valid"),
                        Some(k) => (k.to_string(), "invalid"),
                        None => (String::new(), "timeout"),
                    };
                    if let Some(k) = key {
                        let dtmf =
                            self.event("call.dtmf.received", "answered", json!({ "digit": k.to_string() }));
                        events.emit(sim, dtmf).await;
                    }
                    let ended = self.event(
                        "call.gather.ended",
                        "answered",
                        json!({ "digits": digits, "status": status }),
                    );
                    events.emit_now(sim, ended).await;
                    spoken = true;
                }
                Ok(Some(Command::Hangup)) => {
                    // (A machine may be hung up on without a word.)
                    if !spoken && !machine {
                        sim.stats.answer_invalid(&self.call_control_id, "hung up before speaking".into());
                    }
                    return "caller";
                }
                Ok(None) | Err(_) => {
                    if spoken {
                        info!(call = %self.call_control_id, "no further command; the callee hangs up");
                    } else {
                        warn!(call = %self.call_control_id, "no speak command after call.answered; the callee hangs up");
                        sim.stats.answer_invalid(&self.call_control_id, "no speak command".into());
                    }
                    return "callee";
                }
            }
        }
    }

    /// A command's `client_state` replaces the call's for every later event.
    fn set_client_state(&self, state: Option<String>) {
        if let Some(state) = state {
            *self.client_state.lock().unwrap_or_else(|e| e.into_inner()) = Some(state);
        }
    }

    fn event(&self, event_type: &str, state: &str, extra: serde_json::Value) -> Outgoing {
        // Each event type has its own payload fields (telnyx-python's
        // webhook event types; fixtures/telnyx/events.json): the call's
        // ids everywhere, `from`/`to` where the type has them, `state` on
        // initiated, answered and hang-up, `direction` on initiated only.
        let mut payload = json!({
            "call_control_id": self.call_control_id,
            "call_leg_id": self.call_leg_id,
            "call_session_id": self.call_session_id,
            "connection_id": self.connection_id,
            "client_state": self.client_state.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        });
        if let Some(map) = payload.as_object_mut() {
            if !event_type.starts_with("call.speak.") && !event_type.starts_with("call.playback.") {
                map.insert("from".into(), json!(self.from));
                map.insert("to".into(), json!(self.to));
            }
            if matches!(event_type, "call.initiated" | "call.answered" | "call.hangup") {
                map.insert("state".into(), json!(state));
            }
            if event_type == "call.initiated" {
                map.insert("direction".into(), json!("outgoing"));
            }
            if let serde_json::Value::Object(more) = extra {
                map.extend(more);
            }
        }
        let body = json!({ "data": {
            "record_type": "event",
            "event_type": event_type,
            "id": uuid::Uuid::new_v4().to_string(),
            "occurred_at": now_iso(),
            "payload": payload,
        }});
        // Events are always POSTed (a GET `webhook_url_method` is accepted, not simulated).
        Outgoing {
            method: reqwest::Method::POST,
            url: self.webhook_url.clone(),
            body: body.to_string().into_bytes(),
            content_type: "application/json",
            signer: Signer::Telnyx(self.account.clone()),
            provider_call_id: self.call_control_id.clone(),
        }
    }
}

//! Vonage: the answer URL (an NCCO speaking the campaign's message) and the
//! event URL (signed JSON events).
//!
//! Vonage signs voice callbacks only when the application has
//! `signed_callbacks` on, and documents that a callback may come unsigned
//! after an internal error. An unsigned event is not trusted: its call's
//! uuid is looked up with Vonage (`GET /v1/calls/{uuid}`, rate-limited) and
//! only what Vonage answers is stored and applied; when Vonage cannot be
//! asked we answer 503 and Vonage sends the event again. A call Vonage does
//! not know, or one to another number than the call named in the URL, is
//! refused 401 (forged). `--vonage-unsigned-events refuse` refuses every
//! unsigned event instead.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use tocsin_core::CallId;
use tocsin_core::calls;
use tocsin_core::campaign::Campaign;
use tocsin_core::config::VonageCredentials;
use tocsin_core::confirm::{Step, Voicemail};
use tocsin_core::http::ApiError;
use tocsin_core::provider::Provider;
use tocsin_core::vonage::{self, VonageEvent};
use tracing::{error, warn};

use super::{
    HookState, Reason, attempt, call_id, campaign_for_answer, dialogue, missing_call_id, rejected, store,
    url_token,
};
use crate::store::{CallProof, StoredEvent};

/// `GET|POST /vonage/answer?call_id=…`: the NCCO for the call's campaign.
pub async fn answer(
    State(state): State<Arc<HookState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(id) = call_id(&query) else {
        return missing_call_id();
    };
    match campaign_for_answer(&state, id, &query, "vonage answer").await {
        // Beep detection ends before the NCCO starts (Vonage's advanced
        // machine detection, synchronous): a machine's event is in by now.
        Ok(Some(campaign)) if campaign.settings.voicemail == Voicemail::Drop => {
            let attempt = attempt(&query).unwrap_or(1);
            match calls::machine_answered(&state.pool, id, attempt).await {
                Ok(true) => match super::record_voicemail(&state, id, attempt, Provider::Vonage).await {
                    Ok(()) => Json(voicemail_ncco(&campaign)).into_response(),
                    Err(response) => response,
                },
                Ok(false) => Json(first_ncco(&state, &campaign, id, &query)).into_response(),
                Err(_) => ApiError::unavailable().into_response(),
            }
        }
        Ok(Some(campaign)) => Json(first_ncco(&state, &campaign, id, &query)).into_response(),
        Ok(None) => ApiError::not_found("no such call").into_response(),
        Err(response) => response,
    }
}

/// The voicemail, spoken once to the machine.
fn voicemail_ncco(campaign: &Campaign) -> serde_json::Value {
    let s = &campaign.settings;
    let style = vonage::speech::style(s.voice.as_deref()).unwrap_or(0);
    vonage::ncco(&s.voicemail_content(), &s.language, style, 1)
}

/// What a person hears first: the message, and the dialogue's first question when it has one.
fn first_ncco(
    state: &HookState,
    campaign: &Campaign,
    id: CallId,
    query: &HashMap<String, String>,
) -> serde_json::Value {
    match campaign.settings.confirmation() {
        Some(c) => {
            let (attempt, token) = (attempt(query).unwrap_or(1), url_token(query).unwrap_or_default());
            step_ncco(state, campaign, &c.first(), id, attempt, &token)
        }
        None => {
            let s = &campaign.settings;
            let repeat = u32::try_from(s.repeat).unwrap_or(1);
            // Checked when the campaign was saved (`speech::check`); a row
            // written before that check speaks in the default style.
            let style = vonage::speech::style(s.voice.as_deref()).unwrap_or(0);
            vonage::ncco(&s.content(), &s.language, style, repeat)
        }
    }
}

fn header_auth(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
}

/// Checks Vonage's signature on a body (401 otherwise). Without a secret
/// (Vonage not configured here) nothing verifies.
fn verify_signed(state: &HookState, auth: Option<&str>, body: &[u8]) -> Result<(), Response> {
    // Signed by whichever of our accounts placed the call.
    let mut verified = Err("TOCSIN_VONAGE_SIGNATURE_SECRET is not set on this service".to_owned());
    for secret in &state.vonage_secrets {
        verified = vonage::verify_webhook(auth, secret, body).map(|_| ()).map_err(|e| e.to_string());
        if verified.is_ok() {
            break;
        }
    }
    verified.map_err(|e| rejected(Provider::Vonage, Reason::Signature, &e))
}

/// The NCCO of a dialogue step, its `input` posting to `/vonage/input`.
fn step_ncco(
    state: &HookState,
    campaign: &Campaign,
    step: &Step,
    id: CallId,
    attempt: i32,
    token: &str,
) -> serde_json::Value {
    let s = &campaign.settings;
    let url = dialogue::next_url(state, "/vonage/input", id, attempt, token, step.turn());
    let style = vonage::speech::style(s.voice.as_deref()).unwrap_or(0);
    let repeat = u32::try_from(s.repeat).unwrap_or(1);
    vonage::dialogue_ncco(step, &s.confirmation, &s.content(), &s.language, style, repeat, &url)
}

/// `POST /vonage/input?call_id=…&turn=…`: a round's key (or its timeout),
/// signed like every event (an unsigned one is refused: there is no call
/// state to confirm it against), carrying the attempt's token; answered
/// with the next step's NCCO.
pub async fn input(
    State(state): State<Arc<HookState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !state.skip_signatures
        && let Err(response) = verify_signed(&state, header_auth(&headers), &body)
    {
        return response;
    }
    let payload: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return rejected(Provider::Vonage, Reason::Malformed, &e.to_string()),
    };
    let input: vonage::InputEvent = match serde_json::from_value(payload.clone()) {
        Ok(e) => e,
        Err(e) => return rejected(Provider::Vonage, Reason::Malformed, &e.to_string()),
    };
    let Some(id) = call_id(&query) else {
        return missing_call_id();
    };
    let turn = match dialogue::turn(&query) {
        Ok(t) => t,
        Err(response) => return response,
    };
    // The signature covers the body, not our query: the token proves the call.
    let campaign = match campaign_for_answer(&state, id, &query, "vonage input").await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return rejected(Provider::Vonage, Reason::Signature, "input for a call without its token");
        }
        Err(response) => return response,
    };
    let attempt = attempt(&query).unwrap_or(1);
    let round = dialogue::Round { call: id, attempt, turn, heard: input.heard() };
    let step = match dialogue::answer(&state, &campaign, round, Provider::Vonage, &payload).await {
        Ok(step) => step,
        Err(response) => return response,
    };
    let token = url_token(&query).unwrap_or_default();
    Json(step_ncco(&state, &campaign, &step, id, attempt, &token)).into_response()
}

/// `POST /vonage/events?call_id=…`: verify, store, advance the call.
pub async fn events(
    State(state): State<Arc<HookState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !state.skip_signatures {
        let auth = header_auth(&headers);
        if auth.is_none()
            && let Some(confirmer) = &state.vonage_confirm
        {
            return confirm_unsigned(&state, confirmer, &query, &body).await;
        }
        if let Err(response) = verify_signed(&state, auth, &body) {
            return response;
        }
    }
    let payload: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return rejected(Provider::Vonage, Reason::Malformed, &e.to_string()),
    };
    let event: VonageEvent = match serde_json::from_value(payload.clone()) {
        Ok(e) => e,
        Err(e) => return rejected(Provider::Vonage, Reason::Malformed, &e.to_string()),
    };
    let occurred_at = event
        .timestamp
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let answered_by = match event.kind() {
        kind @ ("human" | "machine") => Some(kind.to_owned()),
        _ => None,
    };
    let stored = StoredEvent {
        // Vonage's signature covers the body, not our query string.
        proof: CallProof::Token(url_token(&query)),
        provider: Provider::Vonage.as_str(),
        dedupe_key: event.dedupe_key(),
        status: event.kind().to_owned(),
        payload,
        call: calls::Event {
            call_id: call_id(&query),
            attempt: attempt(&query),
            provider_call_id: event.call_uuid().map(str::to_owned),
            state: event.state(),
            occurred_at,
            duration_secs: event.duration_secs(),
            price: event.price(),
            answered_by,
            detail: event.failure_detail(),
        },
    };
    store(&state, stored).await
}

/// Looks up the calls of unsigned events with Vonage, within a rate.
pub struct Confirmer {
    client: vonage::Client,
    limiter: governor::DefaultDirectRateLimiter,
}

impl Confirmer {
    pub fn new(credentials: &VonageCredentials, per_second: u32) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .build()?;
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        Ok(Self {
            client: vonage::Client::new(http, credentials)?,
            limiter: governor::RateLimiter::direct(governor::Quota::per_second(rate)),
        })
    }
}

fn unsigned(result: &'static str) {
    metrics::counter!("tocsin_webhook_unsigned_events_total", "provider" => "vonage", "result" => result)
        .increment(1);
}

/// An unsigned event: only the call uuid is taken from it; the state stored
/// and applied is Vonage's own answer for that call.
async fn confirm_unsigned(
    state: &HookState,
    confirmer: &Confirmer,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Response {
    let claimed: Option<VonageEvent> = serde_json::from_slice(body).ok();
    let Some(uuid) = claimed.as_ref().and_then(|e| e.call_uuid()).map(str::to_owned) else {
        unsigned("unconfirmable");
        return rejected(
            Provider::Vonage,
            Reason::Signature,
            "unsigned event without a call uuid to confirm",
        );
    };
    let id = call_id(query);
    let call = match id {
        Some(id) => match calls::number_and_end(&state.pool, id).await {
            Ok(call) => call,
            Err(e) => {
                error!(error = %e, "database unavailable while confirming an unsigned event");
                return ApiError::unavailable().into_response();
            }
        },
        None => None,
    };
    if call.as_ref().is_some_and(|(_, ended)| *ended) {
        // An ended call learns nothing more from Vonage: no look-up spent.
        unsigned("already_ended");
        return StatusCode::NO_CONTENT.into_response();
    }
    if confirmer.limiter.check().is_err() {
        unsigned("rate_limited");
        warn!(%uuid, "unsigned Vonage event: look-up rate reached; answering 503 so Vonage sends it again");
        return ApiError::unavailable().into_response();
    }
    let detail = match confirmer.client.fetch_call(&uuid).await {
        Ok(Some(detail)) => detail,
        Ok(None) => {
            unsigned("unknown_to_vonage");
            return rejected(
                Provider::Vonage,
                Reason::Signature,
                "unsigned event for a call Vonage does not have",
            );
        }
        Err(e) => {
            unsigned("unavailable");
            error!(%uuid, error = %e, "unsigned Vonage event not confirmed; answering 503 so Vonage sends it again");
            return ApiError::unavailable().into_response();
        }
    };
    // The uuid must be a call to the number of the call the URL names: a
    // real uuid replayed to another call's URL changes nothing.
    if let Some((number, _)) = &call {
        let to = detail.to.as_ref().map(|t| t.number.trim_start_matches('+'));
        if to != Some(number.trim_start_matches('+')) {
            unsigned("other_call");
            return rejected(Provider::Vonage, Reason::Signature, "unsigned event for another call");
        }
    }
    unsigned("confirmed");
    // Vonage's answer, read as an event: its status, duration and price.
    let confirmed = VonageEvent {
        uuid: Some(detail.uuid.clone()),
        status: detail.status.clone(),
        duration: detail.duration.clone(),
        price: detail.price.clone(),
        ..VonageEvent::default()
    };
    let kind = confirmed.kind().to_owned();
    let claimed_json: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(body).into()));
    let stored = StoredEvent {
        proof: CallProof::Token(url_token(query)),
        provider: Provider::Vonage.as_str(),
        dedupe_key: format!("vonage:{}:{kind}:confirmed", detail.uuid),
        status: kind,
        payload: serde_json::json!({ "unsigned_event": claimed_json, "confirmed_by_vonage": detail }),
        call: calls::Event {
            call_id: id,
            attempt: attempt(query),
            provider_call_id: Some(detail.uuid.clone()),
            state: confirmed.state(),
            occurred_at: Some(Utc::now()),
            duration_secs: confirmed.duration_secs(),
            price: confirmed.price(),
            answered_by: None,
            detail: None,
        },
    };
    store(state, stored).await
}

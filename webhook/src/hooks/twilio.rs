//! Twilio: the TwiML answer document (`POST /twilio/twiml`) and the status
//! callbacks (`POST /twilio/status`). Twilio signs both with
//! `X-Twilio-Signature` over the URL it was given, which is our *public*
//! URL (`TOCSIN_PUBLIC_URL`), not the one this process sees behind a proxy.

// Helpers return the finished error response as `Err`; it is built once
// per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use tocsin_core::CallId;
use tocsin_core::calls;
use tocsin_core::campaign::Campaign;
use tocsin_core::confirm::{Heard, Step, Voicemail};
use tocsin_core::provider::Provider;
use tocsin_core::twilio::{self, TwilioStatus};
use tracing::warn;

use super::{
    HookState, Reason, attempt, call_id, campaign_for_answer, dialogue, missing_call_id, rejected, store,
    url_token,
};
use crate::store::{CallProof, StoredEvent};

fn refused(reason: Reason, detail: &str) -> Response {
    rejected(Provider::Twilio, reason, detail)
}

const HANG_UP: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Hangup/></Response>";

/// Parses the form body and checks its signature against the public URL.
fn verified_params(
    state: &HookState,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<(String, String)>, Response> {
    let params = twilio::parse_form(body).map_err(|e| refused(Reason::Malformed, &e))?;
    if state.skip_signatures {
        return Ok(params);
    }
    if state.twilio_auth_tokens.is_empty() {
        return Err(refused(Reason::Signature, "no TOCSIN_TWILIO_AUTH_TOKEN configured"));
    }
    let path_and_query = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let url = format!("{}{path_and_query}", state.public_url);
    let signature = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok());
    // Signed by whichever of our accounts placed the call.
    let mut verified = Err(String::new());
    for token in &state.twilio_auth_tokens {
        verified = twilio::verify_signature(signature, token, &url, &params).map_err(|e| e.to_string());
        if verified.is_ok() {
            break;
        }
    }
    verified.map_err(|e| refused(Reason::Signature, &e))?;
    Ok(params)
}

/// `POST /twilio/twiml?call_id=…`: the TwiML that speaks the campaign's message.
pub async fn twiml(
    State(state): State<Arc<HookState>>,
    Query(query): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = match verified_params(&state, &uri, &headers, &body) {
        Ok(p) => p,
        Err(response) => return response,
    };
    let Some(id) = call_id(&query) else {
        return missing_call_id();
    };
    // With machine detection, Twilio fetches the TwiML knowing who answered
    // (`AnsweredBy`; with DetectMessageEnd, once a machine's greeting ended).
    let answered_by = params.iter().find(|(k, _)| k == "AnsweredBy").map(|(_, v)| v.as_str());
    let machine = answered_by.is_some_and(|by| by.starts_with("machine") || by == "fax");
    let document = match campaign_for_answer(&state, id, &query, "twiml").await {
        Ok(Some(campaign)) if machine && campaign.settings.voicemail == Voicemail::Hangup => {
            HANG_UP.to_owned()
        }
        Ok(Some(campaign))
            if machine && campaign.settings.voicemail == Voicemail::Drop && answered_by != Some("fax") =>
        {
            let attempt = attempt(&query).unwrap_or(1);
            if let Err(response) = super::record_voicemail(&state, id, attempt, Provider::Twilio).await {
                return response;
            }
            let s = &campaign.settings;
            twilio::twiml(&s.voicemail_content(), &s.language, 1, s.voice.as_deref())
        }
        Ok(Some(campaign)) if machine && campaign.settings.voicemail == Voicemail::Drop => HANG_UP.to_owned(),
        Ok(Some(campaign)) => match campaign.settings.confirmation() {
            Some(c) => step_twiml(&state, &campaign, &c.first(), id, &query),
            None => {
                let repeat = u32::try_from(campaign.settings.repeat).unwrap_or(1);
                twilio::twiml(
                    &campaign.settings.content(),
                    &campaign.settings.language,
                    repeat,
                    campaign.settings.voice.as_deref(),
                )
            }
        },
        Ok(None) => {
            // Hang up rather than let Twilio play its application-error message.
            warn!(call_id = %id, "twiml requested for an unknown call; hanging up");
            HANG_UP.to_owned()
        }
        Err(response) => return response,
    };
    ([(header::CONTENT_TYPE, "application/xml")], document).into_response()
}

/// The TwiML of a dialogue step, its `<Gather>` posting to `/twilio/gather`.
fn step_twiml(
    state: &HookState,
    campaign: &Campaign,
    step: &Step,
    id: CallId,
    query: &HashMap<String, String>,
) -> String {
    let s = &campaign.settings;
    let (attempt, token) = (attempt(query).unwrap_or(1), url_token(query).unwrap_or_default());
    let url = dialogue::next_url(state, "/twilio/gather", id, attempt, &token, step.turn());
    let repeat = u32::try_from(s.repeat).unwrap_or(1);
    twilio::dialogue_twiml(step, &s.confirmation, &s.content(), &s.language, repeat, s.voice.as_deref(), &url)
}

/// `POST /twilio/gather?call_id=…&turn=…`: a `<Gather>`'s action — the key
/// (`Digits`), or none after the timeout — signed over its URL like every
/// Twilio request; answered with the next step's TwiML.
pub async fn gather(
    State(state): State<Arc<HookState>>,
    Query(query): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = match verified_params(&state, &uri, &headers, &body) {
        Ok(p) => p,
        Err(response) => return response,
    };
    let Some(id) = call_id(&query) else {
        return missing_call_id();
    };
    let turn = match dialogue::turn(&query) {
        Ok(t) => t,
        Err(response) => return response,
    };
    let campaign = match campaign_for_answer(&state, id, &query, "twilio gather").await {
        Ok(Some(c)) => c,
        Ok(None) => return refused(Reason::Signature, "gather action for a call without its token"),
        Err(response) => return response,
    };
    let digits = params.iter().find(|(k, _)| k == "Digits").map(|(_, v)| v.as_str());
    let payload: serde_json::Map<String, serde_json::Value> =
        params.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    let payload = serde_json::Value::Object(payload);
    let attempt_no = attempt(&query).unwrap_or(1);
    let heard = Heard::from_digits(digits);
    let round = dialogue::Round { call: id, attempt: attempt_no, turn, heard };
    let step = match dialogue::answer(&state, &campaign, round, Provider::Twilio, &payload).await {
        Ok(step) => step,
        Err(response) => return response,
    };
    let document = step_twiml(&state, &campaign, &step, id, &query);
    ([(header::CONTENT_TYPE, "application/xml")], document).into_response()
}

/// `POST /twilio/status?call_id=…`: verify, store, advance the call.
pub async fn status(
    State(state): State<Arc<HookState>>,
    Query(query): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = match verified_params(&state, &uri, &headers, &body) {
        Ok(p) => p,
        Err(response) => return response,
    };
    let callback = match TwilioStatus::from_params(&params) {
        Ok(c) => c,
        Err(e) => return refused(Reason::Malformed, &e),
    };
    let payload: serde_json::Map<String, serde_json::Value> =
        params.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    let event = StoredEvent {
        // Twilio signs the URL with its query: the call id cannot be forged.
        proof: CallProof::Signed,
        provider: Provider::Twilio.as_str(),
        dedupe_key: callback.dedupe_key(),
        status: callback.call_status.clone(),
        payload: serde_json::Value::Object(payload),
        call: calls::Event {
            call_id: call_id(&query),
            attempt: attempt(&query),
            provider_call_id: Some(callback.call_sid.clone()),
            state: callback.state(),
            occurred_at: callback.occurred_at(),
            duration_secs: callback.call_duration,
            price: None,
            answered_by: callback.answered_by(),
            detail: callback.detail(),
        },
    };
    store(&state, event).await
}

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
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tocsin_core::http::ApiError;
use tocsin_core::twilio::{self, TwilioStatus};
use tocsin_core::{CallId, db};
use tracing::{error, warn};

use crate::AppState;
use crate::config::WebhookConfig;
use crate::store::{Stored, StoredEvent};
use tocsin_core::calls;

/// Start-up check: an account SID without its auth token cannot verify
/// anything Twilio sends.
pub fn check_config(config: &WebhookConfig) -> anyhow::Result<()> {
    let twilio = &config.twilio;
    if twilio.twilio_account_sid.is_some()
        && twilio.twilio_auth_token.is_none()
        && !config.insecure_skip_signature_check
    {
        anyhow::bail!(
            "TOCSIN_TWILIO_ACCOUNT_SID is set but TOCSIN_TWILIO_AUTH_TOKEN is not: \
             Twilio's webhooks cannot be verified without it"
        );
    }
    Ok(())
}

fn call_id(query: &HashMap<String, String>) -> Option<CallId> {
    query.get("call_id")?.parse().ok()
}

/// The attempt the worker named in the URL (`&attempt=`), if any.
pub(crate) fn attempt(query: &HashMap<String, String>) -> Option<i32> {
    query.get("attempt")?.parse().ok()
}

fn rejected(reason: &'static str, detail: &str) -> Response {
    warn!(%detail, reason, "twilio request rejected");
    metrics::counter!("tocsin_webhook_rejected_total", "provider" => "twilio", "reason" => reason)
        .increment(1);
    match reason {
        "signature" => ApiError::unauthorized("webhook signature verification failed").into_response(),
        _ => ApiError::bad_request(format!("malformed request: {detail}")).into_response(),
    }
}

/// Parses the form body and checks its signature against the public URL.
fn verified_params(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<(String, String)>, Response> {
    let params = twilio::parse_form(body).map_err(|e| rejected("malformed", &e))?;
    if state.skip_signatures {
        return Ok(params);
    }
    let Some(token) = &state.twilio_auth_token else {
        return Err(rejected("signature", "no TOCSIN_TWILIO_AUTH_TOKEN configured"));
    };
    let path_and_query = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let url = format!("{}{path_and_query}", state.public_url);
    let signature = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok());
    twilio::verify_signature(signature, token, &url, &params)
        .map_err(|e| rejected("signature", &e.to_string()))?;
    Ok(params)
}

/// `POST /twilio/twiml?call_id=…`: the TwiML that speaks the campaign's message.
pub async fn twiml(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(response) = verified_params(&state, &uri, &headers, &body) {
        return response;
    }
    let Some(id) = call_id(&query) else {
        return ApiError::bad_request("missing or malformed call_id query parameter").into_response();
    };
    let document = match db::campaign_of_call(&state.pool, id).await {
        Ok(Some(campaign)) => {
            let repeat = u32::try_from(campaign.settings.repeat).unwrap_or(1);
            twilio::twiml(
                &campaign.settings.message,
                &campaign.settings.language,
                repeat,
                campaign.settings.voice.as_deref(),
            )
        }
        Ok(None) => {
            // Hang up rather than let Twilio play its application-error message.
            warn!(call_id = %id, "twiml requested for an unknown call; hanging up");
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Hangup/></Response>".to_owned()
        }
        Err(e) => {
            error!(error = %e, call_id = %id, "twiml: database unavailable");
            return ApiError::unavailable().into_response();
        }
    };
    ([(header::CONTENT_TYPE, "application/xml")], document).into_response()
}

/// `POST /twilio/status?call_id=…`: verify, store, advance the call.
pub async fn status(
    State(state): State<Arc<AppState>>,
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
        Err(e) => return rejected("malformed", &e),
    };
    let payload: serde_json::Map<String, serde_json::Value> =
        params.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    let event = StoredEvent {
        provider: "twilio",
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

/// Stores an event and answers: 204 once committed, 503 when the database
/// is unavailable (so the provider retries). Shared with Telnyx.
pub(crate) async fn store(state: &AppState, event: StoredEvent) -> Response {
    match store_event(state, event).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(response) => response,
    }
}

/// Stores an event, counting the result; `Err` is the 503 to answer.
pub(crate) async fn store_event(state: &AppState, event: StoredEvent) -> Result<Stored, Response> {
    let provider = event.provider;
    let dedupe_key = event.dedupe_key.clone();
    match state.store.store(event).await {
        Ok(result) => {
            let label = match result {
                Stored::Applied => "applied",
                Stored::Duplicate => "duplicate",
                Stored::UnknownCall => "unknown_call",
            };
            if result == Stored::UnknownCall {
                warn!(%dedupe_key, provider, "event for an unknown call stored and flagged");
            }
            metrics::counter!("tocsin_webhook_events_total", "provider" => provider, "result" => label)
                .increment(1);
            Ok(result)
        }
        Err(e) => {
            error!(error = %e, provider, "event not stored: database unavailable; answering 503 so the provider retries");
            metrics::counter!("tocsin_webhook_events_total", "provider" => provider, "result" => "unavailable")
                .increment(1);
            Err(ApiError::unavailable().into_response())
        }
    }
}

//! Telnyx: call events (`POST /telnyx/events`), Ed25519-signed. Telnyx has
//! no answer URL, so this is also where the message is spoken: on
//! `call.answered` we send the speak command, on `call.speak.ended` the
//! hang-up. Both carry a `command_id` derived from the call leg, and are
//! sent after the event is stored and before we answer; when Telnyx cannot
//! take the command right now we answer 503, Telnyx redelivers the event
//! (stored once), and the repeated command is ignored by Telnyx if the first
//! one did arrive.

// Helpers return the finished error response as `Err`; it is built once
// per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tocsin_core::http::ApiError;
use tocsin_core::telnyx::{self, CommandError, PublicKey, Speak, TelnyxEvent, TelnyxWebhook};
use tocsin_core::{CallId, db};
use tracing::{error, info, warn};

use crate::AppState;
use crate::config::WebhookConfig;
use crate::store::StoredEvent;
use tocsin_core::calls;

/// What the webhook needs to verify Telnyx events and command calls.
#[derive(Clone)]
pub struct TelnyxHooks {
    /// `None` only with `--insecure-skip-signature-check`.
    pub public_key: Option<PublicKey>,
    pub client: Arc<telnyx::Client>,
}

/// Longest a speak or hang-up command may take before we give up and let
/// Telnyx redeliver the event.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the Telnyx side from the configuration: `None` when no Telnyx
/// setting is given; an error naming the variable when one is missing.
pub fn hooks(config: &WebhookConfig) -> anyhow::Result<Option<TelnyxHooks>> {
    let t = &config.telnyx;
    let any = t.telnyx_connection_id.is_some() || t.telnyx_api_key.is_some() || t.telnyx_public_key.is_some();
    if !any {
        return Ok(None);
    }
    let public_key = match &t.telnyx_public_key {
        Some(key) => Some(
            PublicKey::from_base64(key)
                .map_err(|e| anyhow::anyhow!("TOCSIN_TELNYX_PUBLIC_KEY is not a Telnyx public key: {e}"))?,
        ),
        None if config.insecure_skip_signature_check => None,
        None => anyhow::bail!(
            "Telnyx is configured but TOCSIN_TELNYX_PUBLIC_KEY is not set: \
             Telnyx's webhooks cannot be verified without it"
        ),
    };
    let Some(api_key) = t.telnyx_api_key.clone() else {
        anyhow::bail!(
            "Telnyx is configured but TOCSIN_TELNYX_API_KEY is not set: the webhook service \
             needs it to send the speak and hang-up commands"
        );
    };
    let credentials = tocsin_core::config::TelnyxCredentials {
        api_url: t.telnyx_api_url.trim_end_matches('/').to_owned(),
        api_key,
        connection_id: t.telnyx_connection_id.clone().unwrap_or_default(),
    };
    let client = telnyx::Client::from_credentials(&credentials, COMMAND_TIMEOUT)?;
    Ok(Some(TelnyxHooks { public_key, client: Arc::new(client) }))
}

fn rejected(reason: &'static str, detail: &str) -> Response {
    warn!(%detail, reason, "telnyx event rejected");
    metrics::counter!("tocsin_webhook_rejected_total", "provider" => "telnyx", "reason" => reason)
        .increment(1);
    match reason {
        "signature" => ApiError::unauthorized("webhook signature verification failed").into_response(),
        _ => ApiError::bad_request(format!("malformed event body: {detail}")).into_response(),
    }
}

/// `POST /telnyx/events?call_id=…`: verify, store, then speak or hang up.
pub async fn events(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(hooks) = &state.telnyx else {
        return rejected("signature", "Telnyx is not configured on this webhook service");
    };
    if !state.skip_signatures {
        let Some(key) = &hooks.public_key else {
            return rejected("signature", "no TOCSIN_TELNYX_PUBLIC_KEY configured");
        };
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Err(e) =
            telnyx::verify_webhook(header("telnyx-signature-ed25519"), header("telnyx-timestamp"), key, &body)
        {
            return rejected("signature", &e.to_string());
        }
    }
    let payload: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return rejected("malformed", &e.to_string()),
    };
    let event = match serde_json::from_value::<TelnyxWebhook>(payload.clone()) {
        Ok(w) => w.data,
        Err(e) => return rejected("malformed", &e.to_string()),
    };
    let call_id = query.get("call_id").and_then(|s| s.parse().ok()).or_else(|| event.call_id());
    let state_change = event.state();
    let failed =
        matches!(state_change, Some(tocsin_core::CallState::Failed | tocsin_core::CallState::Rejected));
    let stored = StoredEvent {
        provider: "telnyx",
        dedupe_key: event.dedupe_key(),
        status: event.event_type.clone(),
        payload,
        call: calls::Event {
            call_id,
            attempt: crate::twilio::attempt(&query),
            provider_call_id: event.payload.call_control_id.clone(),
            state: state_change,
            occurred_at: event.occurred_at(),
            duration_secs: event.duration_secs(),
            price: None,
            answered_by: event.answered_by(),
            detail: if failed { event.detail() } else { None },
        },
    };
    if let Err(response) = crate::twilio::store_event(&state, stored).await {
        return response;
    }
    match command(&state, hooks, call_id, &event).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(response) => response,
    }
}

/// The command an event calls for, sent now. Duplicates of the event send it
/// again with the same `command_id`, which Telnyx ignores.
async fn command(
    state: &AppState,
    hooks: &TelnyxHooks,
    call_id: Option<CallId>,
    event: &TelnyxEvent,
) -> Result<(), Response> {
    let Some(leg) = event.payload.call_control_id.as_deref() else {
        return Ok(());
    };
    let sent = match event.event_type.as_str() {
        "call.answered" => {
            let campaign = match call_id {
                Some(id) => db::campaign_of_call(&state.pool, id).await.map_err(|e| {
                    error!(error = %e, call_id = %id, "speak: database unavailable");
                    ApiError::unavailable().into_response()
                })?,
                None => None,
            };
            match campaign {
                Some(campaign) => {
                    // Telnyx's speak has no loop: say the message as often as the campaign asks.
                    let times = usize::try_from(campaign.settings.repeat).unwrap_or(1).clamp(1, 10);
                    let speak = Speak {
                        payload: vec![campaign.settings.message.as_str(); times].join(" "),
                        voice: campaign.settings.voice.clone().unwrap_or_else(|| "female".into()),
                        language: campaign.settings.language.clone(),
                        command_id: telnyx::call_command_id(leg, "speak"),
                    };
                    hooks.client.speak(leg, &speak).await.map(|()| "speak")
                }
                None => {
                    warn!(?call_id, "answered call we do not know; hanging up");
                    hooks.client.hangup(leg, &telnyx::call_command_id(leg, "hangup")).await.map(|()| "hangup")
                }
            }
        }
        "call.speak.ended" => {
            hooks.client.hangup(leg, &telnyx::call_command_id(leg, "hangup")).await.map(|()| "hangup")
        }
        _ => return Ok(()),
    };
    match sent {
        Ok(kind) => {
            info!(?call_id, command = kind, "telnyx command sent");
            Ok(())
        }
        Err(CommandError::Refused { status, code, detail }) => {
            // E.g. the callee hung up first (90018): nothing left to do.
            warn!(?call_id, status, %code, %detail, "telnyx refused the command");
            Ok(())
        }
        Err(CommandError::Transient(detail)) => {
            warn!(?call_id, %detail, "telnyx command failed; answering 503 so the event is redelivered");
            Err(ApiError::unavailable().into_response())
        }
    }
}

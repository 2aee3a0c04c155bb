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
use tocsin_core::provider::Provider;
use tocsin_core::telnyx::{self, CommandError, PublicKey, Speak, TelnyxEvent, TelnyxWebhook};
use tocsin_core::{CallId, calls};
use tracing::{info, warn};

use super::{HookState, Reason, attempt, campaign_of_call, rejected, store_event};
use crate::config::TelnyxSettings;
use crate::store::StoredEvent;

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

impl TelnyxHooks {
    /// The command client for the checked settings (`WebhookConfig::telnyx_settings`).
    pub fn new(settings: TelnyxSettings) -> anyhow::Result<Self> {
        let client = telnyx::Client::from_credentials(&settings.credentials, COMMAND_TIMEOUT)?;
        Ok(Self { public_key: settings.public_key, client: Arc::new(client) })
    }
}

fn refused(reason: Reason, detail: &str) -> Response {
    rejected(Provider::Telnyx, reason, detail)
}

/// `POST /telnyx/events?call_id=…`: verify, store, then speak or hang up.
pub async fn events(
    State(state): State<Arc<HookState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(hooks) = &state.telnyx else {
        return refused(Reason::Signature, "Telnyx is not configured on this webhook service");
    };
    if !state.skip_signatures {
        let Some(key) = &hooks.public_key else {
            return refused(Reason::Signature, "no TOCSIN_TELNYX_PUBLIC_KEY configured");
        };
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Err(e) =
            telnyx::verify_webhook(header("telnyx-signature-ed25519"), header("telnyx-timestamp"), key, &body)
        {
            return refused(Reason::Signature, &e.to_string());
        }
    }
    let payload: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return refused(Reason::Malformed, &e.to_string()),
    };
    let event = match serde_json::from_value::<TelnyxWebhook>(payload.clone()) {
        Ok(w) => w.data,
        Err(e) => return refused(Reason::Malformed, &e.to_string()),
    };
    let call_id = super::call_id(&query).or_else(|| event.call_id());
    let state_change = event.state();
    let failed =
        matches!(state_change, Some(tocsin_core::CallState::Failed | tocsin_core::CallState::Rejected));
    let stored = StoredEvent {
        provider: Provider::Telnyx.as_str(),
        dedupe_key: event.dedupe_key(),
        status: event.event_type.clone(),
        payload,
        call: calls::Event {
            call_id,
            attempt: attempt(&query),
            provider_call_id: event.payload.call_control_id.clone(),
            state: state_change,
            occurred_at: event.occurred_at(),
            duration_secs: event.duration_secs(),
            price: None,
            answered_by: event.answered_by(),
            detail: if failed { event.detail() } else { None },
        },
    };
    if let Err(response) = store_event(&state, stored).await {
        return response;
    }
    match command(&state, hooks, call_id, &event).await {
        // 200, not 204: Telnyx delivers to the failover URL on any answer
        // but 200 OK (its Voice API "Receiving Webhooks" page).
        Ok(()) => StatusCode::OK.into_response(),
        Err(response) => response,
    }
}

/// The command an event calls for, sent now. Duplicates of the event send it
/// again with the same `command_id`, which Telnyx ignores.
async fn command(
    state: &HookState,
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
                Some(id) => campaign_of_call(state, id, "telnyx speak").await?,
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

//! The provider hooks: the answer documents providers fetch and the call
//! events they post, one module per provider (`vonage`, `twilio`,
//! `telnyx`), and what they share here: reading `call_id` and `attempt`
//! from the URL the worker gave the provider, the 401/400 answer to a
//! refused request, and the one path by which every verified event is
//! stored (`store`): through the group-commit `EventStore`, counted in
//! `tocsin_webhook_events_total`, answered 204 once committed or 503 so the
//! provider retries.

// Helpers return the finished error response as `Err`; it is built once
// per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

mod dialogue;
pub mod telnyx;
pub mod twilio;
pub mod vonage;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::SecretString;
use sqlx::PgPool;
use tocsin_core::CallId;
use tocsin_core::campaign::Campaign;
use tocsin_core::db;
use tocsin_core::http::ApiError;
use tocsin_core::provider::Provider;
use tracing::{error, warn};

use crate::store::{EventStore, Stored, StoredEvent};

/// What every hook handler shares.
#[derive(Clone)]
pub struct HookState {
    pub pool: PgPool,
    pub store: EventStore,
    /// Every Vonage account's signature secret (an event verifies with
    /// any); empty when Vonage is not configured, or checks are off.
    pub vonage_secrets: Vec<SecretString>,
    /// Confirms unsigned Vonage events with Vonage; `None` in strict mode
    /// (or without Vonage credentials), where they are refused 401.
    pub vonage_confirm: Option<Arc<vonage::Confirmer>>,
    /// `TOCSIN_PUBLIC_URL`: Twilio signs the URL it was given, which is this
    /// one, not the address a proxy forwards to.
    pub public_url: String,
    /// Every Twilio account's auth token (a request verifies with any);
    /// empty when Twilio is not configured.
    pub twilio_auth_tokens: Vec<SecretString>,
    /// Telnyx's public key and command client; `None` when Telnyx is not configured.
    pub telnyx: Option<telnyx::TelnyxHooks>,
    /// The accounts' shared state (Redis): a call refused past its
    /// account's channel limit counts against the account.
    pub shared: Option<Arc<crate::api::accounts::Shared>>,
    /// `--insecure-skip-signature-check` (Twilio and Telnyx handlers; Vonage
    /// reads it from `vonage_secrets`).
    pub skip_signatures: bool,
}

/// The provider routes. `max_body_bytes` bounds every request body (413 above).
pub fn router(state: HookState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/vonage/answer", get(vonage::answer).post(vonage::answer))
        .route("/vonage/events", post(vonage::events))
        .route("/vonage/input", post(vonage::input))
        .route("/twilio/twiml", post(twilio::twiml).get(twilio::twiml))
        .route("/twilio/gather", post(twilio::gather))
        .route("/twilio/status", post(twilio::status))
        .route("/telnyx/events", post(telnyx::events))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(Arc::new(state))
}

/// The call the worker named in the URL (`?call_id=`), if any.
pub(crate) fn call_id(query: &HashMap<String, String>) -> Option<CallId> {
    query.get("call_id")?.parse().ok()
}

/// The attempt's URL token the worker put in the URL (`&token=`), if any.
pub(crate) fn url_token(query: &HashMap<String, String>) -> Option<String> {
    query.get("token").cloned()
}

/// The campaign of the call an answer document is for, if the request
/// carries the URL token of the call's current attempt (checked in constant
/// time): the message is disclosed to nobody else. `Ok(None)` for an unknown
/// call or a wrong token alike; `Err` is the 503 when the database is down.
pub(crate) async fn campaign_for_answer(
    state: &HookState,
    id: CallId,
    query: &HashMap<String, String>,
    doing: &'static str,
) -> Result<Option<Campaign>, Response> {
    let token = query.get("token").map(String::as_str);
    match db::campaign_of_call_with_token(&state.pool, id).await {
        Ok(Some(found))
            if tocsin_core::calls::url_token_ok(found.url_token.as_deref(), &found.call_state, token) =>
        {
            Ok(Some(found.campaign))
        }
        Ok(found) => {
            if found.is_some() {
                warn!(call_id = %id, doing, "answer document asked for without the call's URL token");
                metrics::counter!("tocsin_webhook_rejected_total", "provider" => "any", "reason" => "token")
                    .increment(1);
            }
            Ok(None)
        }
        Err(e) => {
            error!(error = %e, call_id = %id, doing, "database unavailable");
            Err(ApiError::unavailable().into_response())
        }
    }
}

/// The attempt the worker named in the URL (`&attempt=`), if any.
pub(crate) fn attempt(query: &HashMap<String, String>) -> Option<i32> {
    query.get("attempt")?.parse().ok()
}

/// 400 when the URL names no call: an answer document is per call.
pub(crate) fn missing_call_id() -> Response {
    ApiError::bad_request("missing or malformed call_id query parameter").into_response()
}

/// Why a provider request was refused (the `reason` label of
/// `tocsin_webhook_rejected_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Unsigned, forged, stale, or no key to check it with: 401.
    Signature,
    /// Not the provider's format: 400.
    Malformed,
}

/// A refused request: logged, counted, answered 401 or 400 in the standard
/// body. Twilio's form posts are "requests"; the others post event bodies.
pub(crate) fn rejected(provider: Provider, reason: Reason, detail: &str) -> Response {
    let label = match reason {
        Reason::Signature => "signature",
        Reason::Malformed => "malformed",
    };
    warn!(%detail, provider = provider.as_str(), reason = label, "webhook request rejected");
    metrics::counter!("tocsin_webhook_rejected_total", "provider" => provider.as_str(), "reason" => label)
        .increment(1);
    match (reason, provider) {
        (Reason::Signature, _) => {
            ApiError::unauthorized("webhook signature verification failed").into_response()
        }
        (Reason::Malformed, Provider::Twilio) => {
            ApiError::bad_request(format!("malformed request: {detail}")).into_response()
        }
        (Reason::Malformed, _) => {
            ApiError::bad_request(format!("malformed event body: {detail}")).into_response()
        }
    }
}

/// The campaign of the call a speak command is for, its words filled in
/// for the call's contact; `Err` is the 503 to answer when the database is
/// unavailable.
pub(crate) async fn campaign_of_call(
    state: &HookState,
    id: CallId,
    doing: &'static str,
) -> Result<Option<Campaign>, Response> {
    match db::campaign_of_call_with_token(&state.pool, id).await {
        Ok(found) => Ok(found.map(|f| f.campaign)),
        Err(e) => {
            error!(error = %e, call_id = %id, doing, "database unavailable");
            Err(ApiError::unavailable().into_response())
        }
    }
}

/// Records that the voicemail of attempt `attempt` is being left (counted
/// once in `tocsin_voicemails_total`); `Err` is the 503 to answer when the
/// database is unavailable.
pub(crate) async fn record_voicemail(
    state: &HookState,
    id: CallId,
    attempt: i32,
    provider: Provider,
) -> Result<(), Response> {
    match tocsin_core::calls::record_voicemail(&state.pool, id, attempt).await {
        Ok(true) => {
            metrics::counter!("tocsin_voicemails_total", "provider" => provider.as_str()).increment(1);
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(e) => {
            error!(error = %e, call_id = %id, "voicemail not recorded: database unavailable; answering 503");
            Err(ApiError::unavailable().into_response())
        }
    }
}

/// Stores an event and answers: 204 once committed, 503 when the database
/// is unavailable (so the provider retries).
pub(crate) async fn store(state: &HookState, event: StoredEvent) -> Response {
    match store_event(state, event).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(response) => response,
    }
}

/// Stores an event, counting the result; `Err` is the 503 to answer. For
/// handlers that have more to do once the event is stored (Telnyx's commands).
pub(crate) async fn store_event(state: &HookState, event: StoredEvent) -> Result<Stored, Response> {
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

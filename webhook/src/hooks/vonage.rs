//! Vonage: the answer URL (an NCCO speaking the campaign's message) and the
//! event URL (signed JSON events).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use tocsin_core::calls;
use tocsin_core::http::ApiError;
use tocsin_core::provider::Provider;
use tocsin_core::vonage::{self, VonageEvent};

use super::{HookState, Reason, attempt, call_id, campaign_of_call, missing_call_id, rejected, store};
use crate::store::StoredEvent;

/// `GET|POST /vonage/answer?call_id=…`: the NCCO for the call's campaign.
pub async fn answer(
    State(state): State<Arc<HookState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(id) = call_id(&query) else {
        return missing_call_id();
    };
    match campaign_of_call(&state, id, "vonage answer").await {
        Ok(Some(campaign)) => {
            let s = &campaign.settings;
            let repeat = u32::try_from(s.repeat).unwrap_or(1);
            // Checked when the campaign was saved (`speech::check`); a row
            // written before that check speaks in the default style.
            let style = vonage::speech::style(s.voice.as_deref()).unwrap_or(0);
            Json(vonage::ncco(&s.message, &s.language, style, repeat)).into_response()
        }
        Ok(None) => ApiError::not_found("no such call").into_response(),
        Err(response) => response,
    }
}

/// `POST /vonage/events?call_id=…`: verify, store, advance the call.
pub async fn events(
    State(state): State<Arc<HookState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !state.skip_signatures {
        let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        // Without a secret (Vonage not configured here) nothing verifies.
        let verified = match &state.vonage_secret {
            Some(secret) => {
                vonage::verify_webhook(auth, secret, &body).map(|_| ()).map_err(|e| e.to_string())
            }
            None => Err("TOCSIN_VONAGE_SIGNATURE_SECRET is not set on this service".to_owned()),
        };
        if let Err(e) = verified {
            return rejected(Provider::Vonage, Reason::Signature, &e);
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

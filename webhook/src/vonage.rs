//! Vonage: the answer URL (an NCCO speaking the campaign's message) and the
//! event URL (signed JSON events).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use tocsin_core::http::ApiError;
use tocsin_core::vonage::{self, VonageEvent};
use tocsin_core::{CallId, db};
use tracing::{error, warn};

use crate::AppState;
use crate::store::{Stored, StoredEvent};
use tocsin_core::calls;

fn call_id(query: &HashMap<String, String>) -> Option<CallId> {
    query.get("call_id")?.parse().ok()
}

/// `GET|POST /vonage/answer?call_id=…`: the NCCO for the call's campaign.
pub async fn answer(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(id) = call_id(&query) else {
        return ApiError::bad_request("missing or malformed call_id query parameter").into_response();
    };
    match db::campaign_of_call(&state.pool, id).await {
        Ok(Some(campaign)) => {
            let repeat = u32::try_from(campaign.settings.repeat).unwrap_or(1);
            Json(vonage::ncco(&campaign.settings.message, &campaign.settings.language, repeat))
                .into_response()
        }
        Ok(None) => ApiError::not_found("no such call").into_response(),
        Err(e) => {
            error!(error = %e, call_id = %id, "answer: database unavailable");
            ApiError::unavailable().into_response()
        }
    }
}

/// `POST /vonage/events?call_id=…`: verify, store, advance the call.
pub async fn events(
    State(state): State<Arc<AppState>>,
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
            warn!(error = %e, "vonage event rejected: signature");
            metrics::counter!("tocsin_webhook_rejected_total", "provider" => "vonage", "reason" => "signature")
                .increment(1);
            return ApiError::unauthorized("webhook signature verification failed").into_response();
        }
    }
    let payload: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return malformed(&e.to_string()),
    };
    let event: VonageEvent = match serde_json::from_value(payload.clone()) {
        Ok(e) => e,
        Err(e) => return malformed(&e.to_string()),
    };
    let occurred_at = event
        .timestamp
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let answered_by = match event.status.as_str() {
        "human" | "machine" => Some(event.status.clone()),
        _ => None,
    };
    let stored = StoredEvent {
        provider: "vonage",
        dedupe_key: event.dedupe_key(),
        status: event.status.clone(),
        payload,
        call: calls::Event {
            call_id: call_id(&query),
            attempt: query.get("attempt").and_then(|a| a.parse().ok()),
            provider_call_id: event.call_uuid().map(str::to_owned),
            state: event.state(),
            occurred_at,
            duration_secs: event.duration_secs(),
            price: event.price(),
            answered_by,
            detail: event.detail.clone(),
        },
    };
    let dedupe_key = stored.dedupe_key.clone();
    match state.store.store(stored).await {
        Ok(result) => {
            let label = match result {
                Stored::Applied => "applied",
                Stored::Duplicate => "duplicate",
                Stored::UnknownCall => "unknown_call",
            };
            if result == Stored::UnknownCall {
                warn!(%dedupe_key, "event for an unknown call stored and flagged");
            }
            metrics::counter!("tocsin_webhook_events_total", "provider" => "vonage", "result" => label)
                .increment(1);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => {
            error!(error = %e, "event not stored: database unavailable; answering 503 so the provider retries");
            metrics::counter!("tocsin_webhook_events_total", "provider" => "vonage", "result" => "unavailable")
                .increment(1);
            ApiError::unavailable().into_response()
        }
    }
}

fn malformed(detail: &str) -> Response {
    warn!(%detail, "vonage event rejected: malformed body");
    metrics::counter!("tocsin_webhook_rejected_total", "provider" => "vonage", "reason" => "malformed")
        .increment(1);
    ApiError::bad_request(format!("malformed event body: {detail}")).into_response()
}

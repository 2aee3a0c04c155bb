//! Injected faults on the create-call endpoints (`--fault-*`): added
//! latency, 5xx answers, requests that hang and then time out without a
//! call, 429 storms, and lost responses (the call is created, the answer
//! never arrives — the ambiguous case a worker must reconcile).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::Sim;

/// An account's outage, set through `POST /_sim/outage`: every create-call
/// request to it fails so until it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutageMode {
    /// 503, nothing created.
    ServerErrors,
    /// The request hangs, then 504 (after `--fault-timeout-after`).
    Timeouts,
    /// 401: the credentials are refused.
    Unauthorized,
    /// No answer at all: the request hangs until the outage ends.
    Silent,
}

/// Outages by account (`PROVIDER:LABEL`).
#[derive(Default)]
pub struct Outages(std::sync::Mutex<HashMap<String, (OutageMode, Option<Instant>)>>);

impl Outages {
    fn current(&self, account: &str) -> Option<OutageMode> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(account) {
            Some((_, Some(until))) if *until <= Instant::now() => {
                map.remove(account);
                None
            }
            Some((mode, _)) => Some(*mode),
            None => None,
        }
    }
}

#[derive(Deserialize)]
pub struct OutageRequest {
    /// An account's name, `PROVIDER:LABEL` (a bare provider name is its
    /// `default` account).
    account: String,
    /// 5xx, timeout, 401, silent, or none (ends it).
    mode: String,
    /// How long it lasts; absent: until cleared.
    secs: Option<f64>,
}

/// `POST /_sim/outage {"account": "twilio:b", "mode": "5xx", "secs": 30}`:
/// starts (or with `"mode": "none"` ends) one account's outage; the
/// provider's other accounts go on. An account not configured is a 404
/// whose message lists the configured ones.
pub async fn outage(State(sim): State<Arc<Sim>>, Json(mut request): Json<OutageRequest>) -> Response {
    let names = sim.accounts.names();
    match crate::accounts::parse_name(&request.account) {
        Ok(name) if names.contains(&name) => request.account = name,
        _ => {
            let message = format!(
                "no account {:?} is configured; the accounts are {}",
                request.account,
                names.join(", ")
            );
            let body = serde_json::json!({ "error": {
                "code": "unknown_account", "message": message, "accounts": names,
            }});
            return (StatusCode::NOT_FOUND, Json(body)).into_response();
        }
    }
    let mode = match request.mode.as_str() {
        "5xx" => OutageMode::ServerErrors,
        "timeout" => OutageMode::Timeouts,
        "401" => OutageMode::Unauthorized,
        "silent" => OutageMode::Silent,
        "none" => {
            sim.outages.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&request.account);
            tracing::info!(account = %request.account, "outage ended");
            return StatusCode::NO_CONTENT.into_response();
        }
        _ => return (StatusCode::BAD_REQUEST, "mode: 5xx, timeout, 401, silent or none").into_response(),
    };
    let until = request
        .secs
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    tracing::warn!(account = %request.account, ?mode, secs = request.secs, "outage started");
    sim.outages.0.lock().unwrap_or_else(|e| e.into_inner()).insert(request.account, (mode, until));
    StatusCode::NO_CONTENT.into_response()
}

/// A fault to answer with instead of processing the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 500 or 503, nothing created.
    ServerError(StatusCode),
    /// Every request in a storm gets the provider's 429.
    Storm,
    /// The account's credentials are refused (an outage).
    Unauthorized,
}

/// Runs before a create-call request of `account` (`PROVIDER:LABEL`) is
/// processed: answers as its outage says, sleeps the added latency, hangs
/// (then 504) for a timeout, or picks a fault to answer with. `Err` is the
/// response of a request that hung.
pub async fn before_create(sim: &Sim, account: &str) -> Result<Option<Fault>, StatusCode> {
    if let Some(mode) = sim.outages.current(account) {
        sim.stats.outage_refused(account);
        match mode {
            OutageMode::ServerErrors => return Ok(Some(Fault::ServerError(StatusCode::SERVICE_UNAVAILABLE))),
            OutageMode::Unauthorized => return Ok(Some(Fault::Unauthorized)),
            OutageMode::Timeouts => {
                hang(sim).await;
                return Err(StatusCode::GATEWAY_TIMEOUT);
            }
            OutageMode::Silent => {
                while sim.outages.current(account) == Some(OutageMode::Silent) && !sim.shutdown.is_cancelled()
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                return Err(StatusCode::GATEWAY_TIMEOUT);
            }
        }
    }
    let f = &sim.config.faults;
    if !f.latency.is_zero() {
        tokio::time::sleep(f.latency).await;
    }
    if let Some(every) = f.storm_every.filter(|e| !e.is_zero()) {
        // Storms end each period: quiet first, then `storm_for` of 429s.
        let phase = sim.elapsed() % every.as_secs_f64();
        if phase >= every.as_secs_f64() - f.storm_for.as_secs_f64() {
            sim.stats.storm_429(account);
            return Ok(Some(Fault::Storm));
        }
    }
    if sim.chance(f.error_5xx_rate) {
        sim.stats.server_error();
        let status =
            if sim.chance(0.5) { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::SERVICE_UNAVAILABLE };
        return Ok(Some(Fault::ServerError(status)));
    }
    if sim.chance(f.timeout_rate) {
        sim.stats.timeout();
        hang(sim).await;
        return Err(StatusCode::GATEWAY_TIMEOUT);
    }
    Ok(None)
}

/// Decides, after a call was created, whether its response is lost; if so
/// hangs until the client has surely given up (or the simulator stops).
pub async fn maybe_lose_response(sim: &Sim) -> bool {
    if !sim.chance(sim.config.faults.lost_response_rate) {
        return false;
    }
    sim.stats.lost_response();
    hang(sim).await;
    true
}

async fn hang(sim: &Sim) {
    tokio::select! {
        () = sim.shutdown.cancelled() => {}
        () = tokio::time::sleep(sim.config.faults.timeout_after) => {}
    }
}

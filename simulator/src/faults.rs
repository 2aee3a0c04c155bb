//! Injected faults on the create-call endpoints (`--fault-*`): added
//! latency, 5xx answers, requests that hang and then time out without a
//! call, 429 storms, and lost responses (the call is created, the answer
//! never arrives — the ambiguous case a worker must reconcile).

use axum::http::StatusCode;

use crate::Sim;

/// A fault to answer with instead of processing the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 500 or 503, nothing created.
    ServerError(StatusCode),
    /// Every request in a storm gets the provider's 429.
    Storm,
}

/// Runs before a create-call request is processed: sleeps the added
/// latency, hangs (then 504) for a timeout, or picks a fault to answer with.
/// `Err` is the response of a request that hung.
pub async fn before_create(sim: &Sim) -> Result<Option<Fault>, StatusCode> {
    let f = &sim.config.faults;
    if !f.latency.is_zero() {
        tokio::time::sleep(f.latency).await;
    }
    if let Some(every) = f.storm_every.filter(|e| !e.is_zero()) {
        // Storms end each period: quiet first, then `storm_for` of 429s.
        let phase = sim.elapsed() % every.as_secs_f64();
        if phase >= every.as_secs_f64() - f.storm_for.as_secs_f64() {
            sim.stats.storm_429();
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

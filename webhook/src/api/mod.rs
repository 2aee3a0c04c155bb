//! The HTTP API, `/api/v1`: campaigns created and controlled by machines
//! (alerting systems, scripts) and watched live.
//!
//! Every request carries `Authorization: Bearer tocsin_…` (a key from
//! `producer apikey create`). Errors use the standard body
//! `{"error":{"code","message"}}`: 401 missing or unknown key, 403 scope or
//! campaign prefix, 400 invalid body (each invalid field named), 404 unknown
//! campaign, 409 a state that forbids the request, 413 body too large.
//!
//! Handlers name the scope they need in their signature (`auth::Auth<Read>`
//! and so on), return `api::Result`, whose error turns a database failure
//! into a logged 503 with `?`, and check request bodies in one pass that
//! names every invalid field (`body`).
//!
//! Creating a campaign runs the producer's own pipeline: the same
//! validation, dedupe, do-not-call check and idempotency as `producer
//! enqueue`, on inline contacts or a saved contact list. Every call into the
//! producer goes through `enqueue`, the API's one seam with that crate
//! (`auth` checks keys with `tocsin_core::apikey`).
//! `alertmanager` receives Prometheus Alertmanager notifications and starts
//! one broadcast per alert group and firing period; `live` streams a
//! campaign's call state changes as Server-Sent Events.

pub mod accounts;
pub mod alertmanager;
pub mod audit;
pub mod auth;
pub mod body;
pub mod calls;
pub mod campaigns;
pub mod enqueue;
mod error;
pub mod lists;
pub mod live;

pub use error::{Error, Result};

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use sqlx::PgPool;
use tocsin_config::AmqpArgs;
use tocsin_core::http::ApiError;
use tocsin_core::provider::Provider;

/// What the API's handlers share.
pub struct ApiState {
    pub pool: PgPool,
    /// Where created campaigns' jobs are published.
    pub amqp: AmqpArgs,
    /// Providers a campaign created here may use.
    pub providers: Vec<Provider>,
    /// Accounts its route may name.
    pub accounts: Vec<tocsin_core::route::AccountName>,
    /// Every account configured here, with its limits (`/api/v1/accounts`).
    pub known_accounts: Vec<accounts::KnownAccount>,
    /// The workers' shared state of the accounts (Redis).
    pub shared: Option<Arc<accounts::Shared>>,
    /// Fan-out of committed call state changes (one LISTEN per process).
    pub hub: live::Hub,
    /// The workers' calls-per-second limit, for the rate chart's line.
    pub rate_per_sec: Option<f64>,
    /// Peers whose `X-Forwarded-For` names the client (`--trusted-proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// The `/api/v1` routes. `max_body_bytes` bounds every request body (413 above).
pub fn router(state: Arc<ApiState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/api/v1/campaigns", post(campaigns::create).get(campaigns::list))
        .route("/api/v1/campaigns/{name}", get(campaigns::show))
        .route("/api/v1/campaigns/{name}/pause", post(campaigns::pause))
        .route("/api/v1/campaigns/{name}/resume", post(campaigns::resume))
        .route("/api/v1/campaigns/{name}/cancel", post(campaigns::cancel))
        .route("/api/v1/campaigns/{name}/route", post(campaigns::route))
        .route("/api/v1/campaigns/{name}/events", get(live::events))
        .route("/api/v1/alertmanager", post(alertmanager::receive))
        .route("/api/v1/audit", get(audit::list))
        .route("/api/v1/accounts", get(accounts::list))
        .route("/api/v1/lists", get(lists::list))
        .route("/api/v1/lists/{name}", axum::routing::put(lists::import))
        .route("/api/v1/campaigns/{name}/calls", get(calls::list))
        .route("/api/v1/campaigns/{name}/calls.csv", get(calls::export))
        .route("/api/v1/campaigns/{name}/series", get(calls::series))
        .route("/api/v1/campaigns/{name}/calls/{id}", get(calls::show))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such API route")
}

/// 403 with the standard body.
pub fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// 409 with the standard body.
pub fn conflict(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "conflict", message)
}

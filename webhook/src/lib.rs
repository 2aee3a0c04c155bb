//! The webhook service: answer documents and call events.
//!
//! Routes: `GET|POST /vonage/answer`, `POST /vonage/events`, plus
//! `/healthz`, `/readyz`, `/metrics`. An event is committed to PostgreSQL
//! before the 2xx goes out; when the database is unreachable the answer is
//! 503 so the provider retries.

pub mod api;
pub mod config;
pub mod store;
pub mod telnyx;
pub mod twilio;
pub mod ui;
pub mod vonage;

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tocsin_core::{db, http};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::WebhookConfig;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub store: store::EventStore,
    /// `None` only with the explicit development flag.
    pub vonage_secret: Option<SecretString>,
    /// `TOCSIN_PUBLIC_URL`: Twilio signs the URL it was given, which is this
    /// one, not the address a proxy forwards to.
    pub public_url: String,
    /// Twilio's auth token (signature key); `None` when Twilio is not configured.
    pub twilio_auth_token: Option<SecretString>,
    /// Telnyx's public key and command client; `None` when Telnyx is not configured.
    pub telnyx: Option<telnyx::TelnyxHooks>,
    /// `--insecure-skip-signature-check` (Twilio and Telnyx handlers; Vonage
    /// reads it from `vonage_secret`).
    pub skip_signatures: bool,
}

/// The full router (webhook routes and ops routes), for `run` and for tests.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let ready_pool = state.pool.clone();
    let ready: http::ReadyCheck = Arc::new(move || {
        let pool = ready_pool.clone();
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(&pool)
                .await
                .map(|_| ())
                .map_err(|_| "PostgreSQL is unreachable".to_owned())
        })
    });
    let hooks = Router::new()
        .route("/vonage/answer", get(vonage::answer).post(vonage::answer))
        .route("/vonage/events", post(vonage::events))
        .route("/twilio/twiml", post(twilio::twiml).get(twilio::twiml))
        .route("/twilio/status", post(twilio::status))
        .route("/telnyx/events", post(telnyx::events))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(Arc::new(state));
    hooks.merge(http::ops_router(ready))
}

/// Builds the service from its configuration on an open, migrated pool:
/// the redial publisher (connected now, so a missing broker fails at
/// start), the group-commit event store and the router.
pub async fn app(config: &WebhookConfig, pool: PgPool) -> anyhow::Result<Router> {
    let redials = Arc::new(store::RedialPublisher::new(
        config.amqp.amqp_url.expose_secret().to_owned(),
        tocsin_core::queue::Topology::new(&config.amqp.queue_prefix),
    ));
    redials.connect().await.context("connecting to RabbitMQ (TOCSIN_AMQP_URL) for redials")?;
    let batch = store::BatchConfig {
        window: config.batch_window,
        max_events: config.batch_max.max(1),
        writers: config.batch_writers.max(1),
    };
    if config.insecure_skip_signature_check {
        warn!("webhook signature checks are DISABLED (--insecure-skip-signature-check): development only");
    }
    let telnyx_hooks = telnyx::hooks(config)?;
    let state = AppState {
        public_url: config.public_url.trim_end_matches('/').to_owned(),
        twilio_auth_token: config.twilio.twilio_auth_token.clone(),
        telnyx: telnyx_hooks,
        skip_signatures: config.insecure_skip_signature_check,
        pool: pool.clone(),
        store: store::EventStore::start(pool.clone(), Some(redials), batch),
        vonage_secret: if config.insecure_skip_signature_check {
            None
        } else {
            config.vonage_signature_secret.clone()
        },
    };
    let api = Arc::new(api::ApiState {
        hub: api::live::Hub::start(pool.clone()),
        pool,
        amqp: config.amqp.clone(),
        providers: config.api_providers(),
    });
    Ok(router(state, config.max_body_bytes)
        .merge(api::router(api, config.api_max_body_bytes))
        .merge(ui::router()))
}

/// Serves on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: WebhookConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // One connection per batch writer, plus a few for answer documents and
    // readiness, plus the live stream's LISTEN connection (held for good).
    let pool = db::connect(&config.database.database_url, (config.batch_writers as u32 + 4).min(64))
        .await
        .context("connecting to PostgreSQL (TOCSIN_DATABASE_URL)")?;
    db::migrate(&pool).await.context("applying database migrations")?;
    let app =
        app(&config, pool.clone()).await?.layer(axum::Extension(api::live::EndStreams(shutdown.clone())));
    info!(addr = %listener.local_addr()?, "webhook listening");
    http::serve(listener, app, shutdown.cancelled_owned()).await.context("serving HTTP")?;
    pool.close().await;
    info!("webhook stopped");
    Ok(())
}

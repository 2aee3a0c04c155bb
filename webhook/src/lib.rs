//! The webhook service: everything Tocsin serves over HTTP.
//!
//! - `hooks`: the provider hooks. Answer documents (`/vonage/answer`,
//!   `/twilio/twiml`; Telnyx speaks by command instead) and signed call
//!   events (`/vonage/events`, `/twilio/status`, `/telnyx/events`), each
//!   verified, then stored through the event store. An event is committed to
//!   PostgreSQL before the 2xx goes out; when the database is unreachable
//!   the answer is 503 so the provider retries.
//! - `store`: the event store, which group-commits events, moves their calls
//!   forward and publishes the redials of busy or unanswered calls.
//! - `api`: the HTTP API under `/api/v1`, for machines holding an API key:
//!   campaigns created (through the producer's pipeline), listed, shown,
//!   paused, resumed and cancelled; their calls with their timelines; a
//!   Server-Sent Events live stream of call state changes; and a Prometheus
//!   Alertmanager receiver that turns a firing alert group into a broadcast.
//! - `ui`: the dashboard at `/ui`, static pages that read the API.
//! - `config`: the one typed configuration, checked at start.
//!
//! Plus `/healthz`, `/readyz` and `/metrics`. `run` serves all of it until
//! its shutdown token is cancelled.

pub mod api;
pub mod config;
pub mod hooks;
pub mod store;
pub mod ui;

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tocsin_core::{db, http};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::WebhookConfig;
use crate::hooks::HookState;

/// The provider hooks and the ops routes (`/healthz`, `/readyz`, `/metrics`).
pub fn router(state: HookState, max_body_bytes: usize) -> Router {
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
    hooks::router(state, max_body_bytes).merge(http::ops_router(ready))
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
    let file_accounts = config.file_accounts()?;
    let telnyx = hooks::telnyx::TelnyxHooks::new(config.telnyx_settings()?, &file_accounts)?;
    // Each provider's keys: its `default` account's, then the file's.
    let keys = |provider: tocsin_core::provider::Provider, default: Option<secrecy::SecretString>| {
        let file = file_accounts.iter().filter(|a| a.name.provider == provider);
        default.into_iter().chain(file.filter_map(|a| a.webhook_key.clone())).collect::<Vec<_>>()
    };
    let shared = Arc::new(
        api::accounts::Shared::new(
            config.redis.redis_url.expose_secret(),
            &config.redis.redis_prefix,
            config.health.rules(std::time::Duration::from_secs(15)),
        )
        .context("TOCSIN_REDIS_URL")?,
    );
    let state = HookState {
        shared: Some(shared.clone()),
        public_url: config.public_url.trim_end_matches('/').to_owned(),
        twilio_auth_tokens: keys(
            tocsin_core::provider::Provider::Twilio,
            config.twilio.twilio_auth_token.clone(),
        ),
        telnyx,
        skip_signatures: config.insecure_skip_signature_check,
        pool: pool.clone(),
        store: store::EventStore::start(pool.clone(), Some(redials), batch),
        vonage_secrets: if config.insecure_skip_signature_check {
            Vec::new()
        } else {
            keys(tocsin_core::provider::Provider::Vonage, config.vonage_secret())
        },
        vonage_confirm: config
            .vonage_confirm()?
            .map(|credentials| hooks::vonage::Confirmer::new(&credentials, config.vonage_confirm_rate))
            .transpose()?
            .map(Arc::new),
    };
    let api = Arc::new(api::ApiState {
        hub: api::live::Hub::start(pool.clone()),
        pool,
        amqp: config.amqp.clone(),
        providers: config.api_providers(),
        accounts: config.api_accounts(&file_accounts),
        known_accounts: config.known_accounts(),
        shared: Some(shared.clone()),
        rate_per_sec: config.rate_per_sec.filter(|r| r.is_finite() && *r > 0.0),
        trusted_proxies: config.trusted_proxies.clone(),
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

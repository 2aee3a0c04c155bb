//! The webhook service: answer documents and call events.
//!
//! Routes: `GET|POST /vonage/answer`, `POST /vonage/events`, plus
//! `/healthz`, `/readyz`, `/metrics`. An event is committed to PostgreSQL
//! before the 2xx goes out; when the database is unreachable the answer is
//! 503 so the provider retries.

pub mod config;
pub mod store;
pub mod vonage;

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use secrecy::SecretString;
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
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(Arc::new(state));
    hooks.merge(http::ops_router(ready))
}

/// Serves on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: WebhookConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pool = db::connect(&config.database.database_url, 16)
        .await
        .context("connecting to PostgreSQL (TOCSIN_DATABASE_URL)")?;
    db::migrate(&pool).await.context("applying database migrations")?;
    if config.insecure_skip_signature_check {
        warn!("webhook signature checks are DISABLED (--insecure-skip-signature-check): development only");
    }
    let state = AppState {
        pool: pool.clone(),
        store: store::EventStore::new(pool.clone()),
        vonage_secret: if config.insecure_skip_signature_check {
            None
        } else {
            config.vonage_signature_secret.clone()
        },
    };
    info!(addr = %listener.local_addr()?, "webhook listening");
    http::serve(listener, router(state, config.max_body_bytes), shutdown.cancelled_owned())
        .await
        .context("serving HTTP")?;
    pool.close().await;
    info!("webhook stopped");
    Ok(())
}

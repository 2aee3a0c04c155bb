//! The provider simulator: Vonage's create-call API with its JWT auth,
//! request validation and rate limit; a simulated call lifecycle that
//! fetches the answer NCCO and posts signed events; and `/_sim/*` endpoints
//! that report what happened, for tests and benchmarks.

pub mod config;
pub mod keygen;
pub mod stats;
pub mod vonage;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::config::SimConfig;
use crate::stats::Stats;

/// How a simulated call ends. Pinned by the number's last digit so tests
/// are deterministic: 7 busy, 8 unanswered, anything else answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Answered,
    Busy,
    Unanswered,
}

impl Outcome {
    pub fn for_number(number: &str) -> Self {
        match number.bytes().last() {
            Some(b'7') => Self::Busy,
            Some(b'8') => Self::Unanswered,
            _ => Self::Answered,
        }
    }
}

pub struct Sim {
    pub config: SimConfig,
    pub vonage_public_key: Vec<u8>,
    pub vonage_limiter: vonage::Limiter,
    pub stats: Stats,
    pub http: reqwest::Client,
    pub tasks: TaskTracker,
    pub rng: std::sync::Mutex<rand::rngs::StdRng>,
}

impl Sim {
    /// A simulated duration: `secs` scaled by `--time-scale`.
    pub fn scaled(&self, secs: f64) -> Duration {
        Duration::from_secs_f64((secs * self.config.time_scale).max(0.0))
    }
}

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/v1/calls", post(vonage::create_call))
        .route("/_sim/stats", get(stats::stats))
        .route("/_sim/calls", get(stats::calls))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
        .with_state(sim)
}

/// Serves on `listener` until `shutdown` is cancelled, then waits (briefly)
/// for simulated calls in progress.
pub async fn run(
    config: SimConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use rand::SeedableRng;
    let vonage_public_key = std::fs::read(&config.vonage_public_key_path)
        .with_context(|| format!("reading {}", config.vonage_public_key_path.display()))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let sim = Arc::new(Sim {
        vonage_limiter: vonage::limiter(config.vonage_rate),
        rng: std::sync::Mutex::new(rand::rngs::StdRng::seed_from_u64(config.seed)),
        config,
        vonage_public_key,
        stats: Stats::default(),
        http,
        tasks: TaskTracker::new(),
    });
    info!(addr = %listener.local_addr()?, rate = sim.config.vonage_rate, "simulator listening");
    tocsin_core::http::serve(listener, router(sim.clone()), shutdown.cancelled_owned())
        .await
        .context("serving HTTP")?;
    sim.tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), sim.tasks.wait()).await;
    Ok(())
}

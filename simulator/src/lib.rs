//! The provider simulator: the Vonage, Twilio and Telnyx voice APIs with
//! their own auth, request validation, error bodies and rate semantics; a
//! simulated call lifecycle per call that fetches and validates the answer
//! document (NCCO, TwiML) or waits for Telnyx's speak command, and posts
//! events in each provider's format, signed as that provider signs them;
//! injectable faults; and `/_sim/*` endpoints that report what happened,
//! for tests, the demo and benchmarks.

// Handlers' helpers return the finished error response as `Err`: it is
// built once per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

pub mod accounts;
pub mod audio;
pub mod config;
pub mod deliver;
pub mod faults;
pub mod keygen;
pub mod ncco;
pub mod schema;
pub mod stats;
pub mod telnyx;
pub mod twilio;
pub mod twiml;
pub mod vonage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::routing::{get, post};
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::config::SimConfig;
use crate::stats::Stats;

/// How a simulated call goes: the callee's behaviour. Pinned by the
/// number's last digit (`--pin`, default 7 busy, 8 unanswered) or drawn
/// from `--outcome-mix`. The keys a callee presses when a call asks for one
/// are the `--callee-*-key` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A person answers, hears the message and, when asked, presses the confirm key.
    Answered,
    /// A person answers and listens, but presses no key.
    NoKey,
    /// A person presses a key that does nothing, then the confirm key.
    WrongKey,
    /// A person presses the replay key, hears it all again, then confirms.
    Replay,
    /// A person presses the opt-out key.
    OptOut,
    /// Busy on the first call to the number; answers and confirms on the next.
    BusyThenConfirm,
    Busy,
    /// Rings until the provider gives up.
    Unanswered,
    /// The network cannot complete the call (e.g. number out of service).
    Failed,
    /// An answering machine picks up: a greeting, then the beep; it records
    /// what it hears and presses nothing.
    Machine,
    /// An answering machine whose greeting ends without a beep (Vonage's
    /// `beep_timeout`, Twilio's `machine_end_silence`, Telnyx's greeting `ended`).
    MachineNoBeep,
}

impl Outcome {
    pub fn machine(self) -> bool {
        matches!(self, Self::Machine | Self::MachineNoBeep)
    }

    /// Seconds of a machine's greeting before its beep (or its silence).
    pub const GREETING_SECS: f64 = 4.0;

    pub fn answered(self) -> bool {
        !matches!(self, Self::Busy | Self::Unanswered | Self::Failed | Self::BusyThenConfirm)
    }

    /// The key this callee presses in the `nth` round it is asked (from 0),
    /// or `None` to let the timeout pass.
    pub fn key(self, nth: u32, keys: &config::CalleeKeys) -> Option<char> {
        match self {
            Self::Answered | Self::BusyThenConfirm => Some(keys.confirm),
            Self::NoKey
            | Self::Machine
            | Self::MachineNoBeep
            | Self::Busy
            | Self::Unanswered
            | Self::Failed => None,
            Self::WrongKey if nth == 0 => Some(keys.wrong),
            Self::Replay if nth == 0 => Some(keys.replay),
            Self::WrongKey | Self::Replay => Some(keys.confirm),
            Self::OptOut => Some(keys.opt_out),
        }
    }
}

pub struct Sim {
    pub config: SimConfig,
    /// Every simulated account, with its credentials, keys and limiters.
    pub accounts: accounts::Accounts,
    pub telnyx_calls: telnyx::Registry,
    pub stats: Stats,
    /// Accounts in an outage (`POST /_sim/outage`).
    pub outages: faults::Outages,
    pub http: reqwest::Client,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    pub started: Instant,
    pub rng: Mutex<rand::rngs::StdRng>,
    /// Calls placed so far per number (the n-th call of a number draws its own outcome).
    seen: Mutex<HashMap<String, u64>>,
}

impl Sim {
    /// A simulated duration: `secs` scaled by `--time-scale`.
    pub fn scaled(&self, secs: f64) -> Duration {
        Duration::from_secs_f64((secs * self.config.time_scale).max(0.0))
    }

    /// True with probability `p`, from the seeded RNG.
    pub fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().unwrap_or_else(|e| e.into_inner()).random_bool(p.min(1.0))
    }

    /// A uniform draw from `range`, from the seeded RNG.
    pub fn uniform(&self, range: std::ops::Range<f64>) -> f64 {
        self.rng.lock().unwrap_or_else(|e| e.into_inner()).random_range(range)
    }

    /// The outcome of a call to `number` (digits, with or without `+`): the
    /// pin of its last digit, else a draw seeded by `--seed`, the number and
    /// how often it was called before — the same in every run whatever the
    /// order calls arrive in.
    pub fn outcome_for(&self, number: &str) -> Outcome {
        let nth = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let n = seen.entry(number.trim_start_matches('+').to_owned()).or_default();
            *n += 1;
            *n
        };
        let outcome = self.drawn(number, nth);
        // Busy the first time only.
        match outcome {
            Outcome::BusyThenConfirm if nth == 1 => Outcome::Busy,
            Outcome::BusyThenConfirm => Outcome::Answered,
            other => other,
        }
    }

    fn drawn(&self, number: &str, nth: u64) -> Outcome {
        if let Some(last) = number.bytes().last()
            && let Some((_, outcome)) = self.config.pins.iter().find(|(d, _)| *d == last)
        {
            return *outcome;
        }
        let mix = &self.config.outcome_mix.0;
        let total: f64 = mix.iter().map(|(_, w)| w).sum();
        let nth = if self.config.callee_draw == "per-number" { 0 } else { nth };
        let seed = fnv1a(number.trim_start_matches('+').as_bytes()) ^ self.config.seed.rotate_left(17) ^ nth;
        let mut draw = rand::rngs::StdRng::seed_from_u64(seed).random_range(0.0..total);
        for (outcome, weight) in mix {
            if draw < *weight {
                return *outcome;
            }
            draw -= weight;
        }
        Outcome::Answered
    }

    /// Seconds since the simulator started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// Rounds of asking for a key one simulated call goes through at most.
pub const MAX_KEY_ROUNDS: u32 = 12;

/// How long speaking `text` takes, at about 15 characters a second.
pub fn speaking_secs(text: &str) -> f64 {
    (text.chars().count() as f64 / 15.0).max(1.0)
}

/// Seconds from the start of `text` to the callee's answer: a key a moment
/// into the speech (a key interrupts it), or the whole speech and the
/// timeout when no key comes.
pub fn key_after_secs(sim: &Sim, text: &str, key: Option<char>, timeout_secs: f64) -> f64 {
    match key {
        Some(_) => sim.uniform(1.0..3.0).min(speaking_secs(text)),
        None => speaking_secs(text) + timeout_secs,
    }
}

/// FNV-1a: a stable hash (std's hasher may change between Rust versions).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/v1/calls", post(vonage::create_call).get(vonage::list_calls))
        .route("/v1/calls/{uuid}", get(vonage::fetch_call))
        .route("/v2/applications/{id}", get(vonage::application).put(vonage::update_application))
        .route(
            "/2010-04-01/Accounts/{account_sid}/Calls.json",
            post(twilio::create_call).get(twilio::list_calls),
        )
        .route("/2010-04-01/Accounts/{account_sid}/Calls/{call}", get(twilio::fetch_call))
        .route("/v2/calls", post(telnyx::dial))
        .route("/v2/calls/{call_control_id}", get(telnyx::call_status))
        .route("/v2/calls/{call_control_id}/actions/{action}", post(telnyx::action))
        .route("/_sim/stats", get(stats::stats))
        .route("/_sim/calls", get(stats::calls))
        .route("/_sim/audio/alert.wav", get(audio::alert))
        .route("/_sim/outage", post(faults::outage))
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
    let accounts = accounts::Accounts::load(&config)?;
    let stats = Stats::default();
    for (name, limits) in accounts.limits() {
        stats.register(&name, limits);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let sim = Arc::new(Sim {
        accounts,
        telnyx_calls: telnyx::Registry::default(),
        rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(config.seed)),
        seen: Mutex::new(HashMap::new()),
        config,
        stats,
        outages: faults::Outages::default(),
        http,
        tasks: TaskTracker::new(),
        shutdown: shutdown.clone(),
        started: Instant::now(),
    });
    info!(
        addr = %listener.local_addr()?,
        vonage_rate = sim.config.vonage_rate,
        twilio_cps = sim.config.twilio_cps,
        telnyx_dials_per_window = sim.config.telnyx_dials_per_window,
        accounts = %sim.accounts.names().join(","),
        "simulator listening"
    );
    tocsin_core::http::serve(listener, router(sim.clone()), shutdown.cancelled_owned())
        .await
        .context("serving HTTP")?;
    sim.tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), sim.tasks.wait()).await;
    Ok(())
}

/// Now as ISO 8601 with milliseconds (Vonage and Telnyx timestamps).
pub fn now_iso() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

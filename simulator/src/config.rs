//! The simulator's configuration (`simulator --help` lists it).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tocsin_core::config::TelemetryArgs;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "simulator",
    version,
    about = "A local stand-in for the voice providers' APIs: same endpoints, auth and rate limits, \
             simulated call outcomes and signed event webhooks.",
    after_help = "Examples:\n  simulator keygen --out .tocsin\n  simulator serve --vonage-public-key-path .tocsin/vonage_public.pem --vonage-signature-secret dev"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Clone, Debug)]
pub enum Command {
    /// Serve the simulated provider APIs.
    Serve(SimConfig),
    /// Write a fresh RSA key pair for a (simulated) Vonage application.
    Keygen {
        /// Directory for vonage_private.pem and vonage_public.pem.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

#[derive(clap::Args, Clone, Debug)]
pub struct SimConfig {
    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// Listen address.
    #[arg(long = "http-addr", env = "TOCSIN_HTTP_ADDR", default_value = "127.0.0.1:8090")]
    pub http_addr: SocketAddr,

    /// PEM public key of the Vonage application; application JWTs must verify against it.
    #[arg(long = "vonage-public-key-path", env = "TOCSIN_SIM_VONAGE_PUBLIC_KEY_PATH")]
    pub vonage_public_key_path: PathBuf,

    /// The Vonage application id JWTs must name (any, when unset).
    #[arg(long = "vonage-application-id", env = "TOCSIN_VONAGE_APPLICATION_ID")]
    pub vonage_application_id: Option<String>,

    /// Secret the simulated Vonage signs event webhooks with (HS256).
    #[arg(long = "vonage-signature-secret", env = "TOCSIN_VONAGE_SIGNATURE_SECRET")]
    pub vonage_signature_secret: String,

    /// Vonage create-call requests accepted per second per application; more get 429.
    #[arg(long = "vonage-rate", env = "TOCSIN_SIM_VONAGE_RATE", default_value_t = 2.0)]
    pub vonage_rate: f64,

    /// Multiplies every simulated duration (ringing, talking): 0.1 runs ten times faster.
    #[arg(long = "time-scale", env = "TOCSIN_SIM_TIME_SCALE", default_value_t = 1.0)]
    pub time_scale: f64,

    /// Seed of the random durations.
    #[arg(long, env = "TOCSIN_SIM_SEED", default_value_t = 42)]
    pub seed: u64,
}

impl SimConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.vonage_rate.is_finite() && self.vonage_rate > 0.0) {
            anyhow::bail!("--vonage-rate must be positive");
        }
        if !(self.time_scale.is_finite() && self.time_scale >= 0.0) {
            anyhow::bail!("--time-scale must be zero or positive");
        }
        Ok(())
    }
}

//! The webhook service's configuration (`webhook --help` lists it).

use std::net::SocketAddr;

use clap::Parser;
use secrecy::SecretString;
use tocsin_core::config::{DatabaseArgs, TelemetryArgs};

#[derive(Parser, Clone, Debug)]
#[command(
    name = "webhook",
    version,
    about = "Serves the answer documents providers fetch and stores every call event they post, \
             verified, in PostgreSQL.",
    after_help = "Example:\n  TOCSIN_VONAGE_SIGNATURE_SECRET=... webhook --http-addr 0.0.0.0:8080"
)]
pub struct WebhookConfig {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// Listen address of the webhook routes, /healthz, /readyz and /metrics.
    #[arg(long = "http-addr", env = "TOCSIN_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Secret Vonage signs its event webhooks with (HS256). Required unless
    /// signature checks are disabled.
    #[arg(long = "vonage-signature-secret", env = "TOCSIN_VONAGE_SIGNATURE_SECRET", value_parser = secret)]
    pub vonage_signature_secret: Option<SecretString>,

    /// DEVELOPMENT ONLY: accept unsigned and forged webhooks.
    #[arg(long = "insecure-skip-signature-check", env = "TOCSIN_INSECURE_SKIP_SIGNATURE_CHECK")]
    pub insecure_skip_signature_check: bool,

    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long = "max-body-bytes", env = "TOCSIN_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
}

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

impl WebhookConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.vonage_signature_secret.is_none() && !self.insecure_skip_signature_check {
            anyhow::bail!(
                "TOCSIN_VONAGE_SIGNATURE_SECRET is not set: webhooks cannot be verified \
                 (set it, or pass --insecure-skip-signature-check for local development only)"
            );
        }
        Ok(())
    }
}

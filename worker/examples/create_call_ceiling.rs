//! Baseline for `bench/throughput.sh`: the create-call rate a bare closed
//! loop gets from the simulator (same Vonage client, same concurrency, no
//! queue, no database, no limiter). The worker's throughput is reported as a
//! share of this ceiling.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use clap::Parser;
use secrecy::SecretString;
use tocsin_core::config::VonageCredentials;
use tocsin_core::provider::{CallRequest, VoiceProvider};
use tocsin_core::{CallId, PhoneNumber, vonage};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    api_url: String,
    #[arg(long)]
    private_key_path: std::path::PathBuf,
    #[arg(long, default_value = "bench-app")]
    application_id: String,
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tocsin_core::telemetry::install_crypto_provider();
    let args = Args::parse();
    let credentials = VonageCredentials {
        api_url: args.api_url.clone(),
        application_id: args.application_id.clone(),
        private_key_pem: SecretString::from(std::fs::read_to_string(&args.private_key_path)?),
    };
    let client = Arc::new(vonage::Client::new(reqwest::Client::new(), &credentials)?);
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, next, ok) = (client.clone(), next.clone(), ok.clone());
        let total = args.requests;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let to = PhoneNumber::from_e164(&format!("+1{}", 4_156_000_000u64 + i as u64)).unwrap();
                let request = CallRequest {
                    call_id: CallId(uuid::Uuid::new_v4()),
                    attempt: 1,
                    to,
                    from: PhoneNumber::from_e164("+14155550100").unwrap(),
                    // Nothing listens here: the simulator's event deliveries fail fast.
                    webhook_base: "http://127.0.0.1:9".into(),
                    url_token: "t".into(),
                    ringing_timeout_secs: 45,
                    machine_detection: tocsin_core::provider::MachineDetection::Off,
                    time_limit_secs: 300,
                };
                if client.place_call(&request).await.is_ok() {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({ "label": "create-call-ceiling", "requests": args.requests, "ok": ok, "seconds": secs, "per_sec": ok as f64 / secs })
    );
    Ok(())
}

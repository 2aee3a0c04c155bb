//! Load generator for `bench/webhook.sh`: sends signed Vonage events for
//! calls it creates itself, either as fast as the server takes them
//! (`--concurrency`) or at a fixed rate (`--rate`, open loop: latency is
//! measured from each request's scheduled start, so a slow server cannot
//! hide its queueing). Prints one JSON line of results.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tocsin_core::{CallId, CampaignId, PhoneNumber};

#[derive(Parser)]
struct Args {
    /// Base URL of the webhook service.
    #[arg(long)]
    url: String,
    /// Database the webhook writes to (calls are created here first).
    #[arg(long)]
    database_url: String,
    /// Vonage signature secret the webhook verifies with.
    #[arg(long)]
    secret: String,
    /// Events to send (four per call: started, ringing, answered, completed).
    #[arg(long, default_value_t = 40_000)]
    events: usize,
    /// Requests in flight (closed loop). Ignored with --rate.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Requests per second (open loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Campaign name for the generated calls.
    #[arg(long, default_value = "bench-webhook")]
    campaign: String,
    /// Write the signed requests to this file (one `path<TAB>authorization<TAB>body`
    /// line each, for `bench/webhook.lua`) instead of sending them.
    #[arg(long)]
    emit: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tocsin_core::telemetry::install_crypto_provider();
    let args = Args::parse();
    let pool = sqlx::PgPool::connect(&args.database_url).await?;
    let campaign = CampaignId::from_name(&args.campaign);
    sqlx::query(
        "INSERT INTO campaigns (id, name, message, from_number) VALUES ($1, $2, 'bench', '+14155550100') \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(campaign)
    .bind(&args.campaign)
    .execute(&pool)
    .await?;
    let calls = args.events.div_ceil(4);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut ids = Vec::with_capacity(calls);
    let mut numbers = Vec::with_capacity(calls);
    for i in 0..calls {
        // The bench runs on a fresh database; numbers only need to be distinct.
        let n = PhoneNumber::from_e164(&format!("+1{}", 2_000_000_000u64 + i as u64))?;
        ids.push(CallId::derive(campaign, &n).0);
        numbers.push(n.as_str().to_owned());
    }
    for (chunk_ids, chunk_numbers) in ids.chunks(5000).zip(numbers.chunks(5000)) {
        sqlx::query(
            "INSERT INTO calls (id, campaign_id, number, state, attempt) \
             SELECT id, $3, number, 'placed', 1 FROM unnest($1::uuid[], $2::text[]) AS t(id, number) \
             ON CONFLICT DO NOTHING",
        )
        .bind(chunk_ids)
        .bind(chunk_numbers)
        .bind(campaign)
        .execute(&pool)
        .await?;
    }
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM call_events").fetch_one(&pool).await?;

    // Pre-sign every request so the generator spends its time sending.
    let statuses = ["started", "ringing", "answered", "completed"];
    let mut requests = Vec::with_capacity(args.events);
    for (i, id) in ids.iter().enumerate() {
        for (j, status) in statuses.iter().enumerate() {
            if requests.len() == args.events {
                break;
            }
            let body = serde_json::json!({
                "uuid": format!("{run}-{i}"), "conversation_uuid": format!("CON-{run}-{i}"),
                "status": status, "direction": "outbound", "to": numbers[i].trim_start_matches('+'),
                "from": "14155550100", "timestamp": format!("2026-11-22T10:00:0{j}.000Z"),
            })
            .to_string();
            let token = tocsin_core::vonage::sign_webhook(&args.secret, "bench", body.as_bytes());
            let url = format!("{}/vonage/events?call_id={id}&attempt=1", args.url);
            requests.push((url, format!("Bearer {token}"), body));
        }
    }
    // Interleave calls so concurrent requests touch different calls, as real traffic does.
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&k| (k % 4, k / 4));
    let requests: Arc<Vec<(String, String, String)>> =
        Arc::new(order.into_iter().map(|k| requests[k].clone()).collect());
    if let Some(path) = &args.emit {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for (url, auth, body) in requests.iter() {
            let path = url.strip_prefix(&args.url).unwrap_or(url);
            writeln!(out, "{path}\t{auth}\t{body}")?;
        }
        out.flush()?;
        println!("{}", serde_json::json!({ "emitted": requests.len(), "stored_before": before }));
        return Ok(());
    }

    let client = reqwest::Client::builder().pool_max_idle_per_host(1024).build()?;
    let started = Instant::now();
    let mut latencies: Vec<Duration> = Vec::with_capacity(requests.len());
    let mut ok = 0usize;
    let mut failed = 0usize;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(bool, Duration)>();
    match args.rate {
        Some(rate) => {
            let interval = Duration::from_secs_f64(1.0 / rate);
            for k in 0..requests.len() {
                let scheduled = started + interval.mul_f64(k as f64);
                tokio::time::sleep_until(scheduled.into()).await;
                let (client, requests, tx) = (client.clone(), requests.clone(), tx.clone());
                tokio::spawn(async move {
                    let (url, auth, body) = &requests[k];
                    let r = client
                        .post(url)
                        .header("authorization", auth)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    let good = r.is_ok_and(|r| r.status().is_success());
                    let _ = tx.send((good, scheduled.elapsed()));
                });
            }
        }
        None => {
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            for _ in 0..args.concurrency {
                let (client, requests, tx, next) =
                    (client.clone(), requests.clone(), tx.clone(), next.clone());
                tokio::spawn(async move {
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((url, auth, body)) = requests.get(k) else { return };
                        let t = Instant::now();
                        let r = client
                            .post(url)
                            .header("authorization", auth)
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .await;
                        let good = r.is_ok_and(|r| r.status().is_success());
                        let _ = tx.send((good, t.elapsed()));
                    }
                });
            }
        }
    }
    drop(tx);
    while let Some((good, latency)) = rx.recv().await {
        if good {
            ok += 1;
        } else {
            failed += 1;
        }
        latencies.push(latency);
    }
    let elapsed = started.elapsed();
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM call_events").fetch_one(&pool).await?;
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{}",
        serde_json::json!({
            "mode": if args.rate.is_some() { "fixed_rate" } else { "full_speed" },
            "requests": requests.len(),
            "ok_2xx": ok,
            "failed": failed,
            "stored": after - before,
            "seconds": elapsed.as_secs_f64(),
            "events_per_sec": ok as f64 / elapsed.as_secs_f64(),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": pct(1.0),
        })
    );
    Ok(())
}

//! Load client for `bench/live.sh`: N concurrent listeners of one
//! campaign's live stream (`GET /api/v1/campaigns/{name}/events`) while
//! the campaign's calls change state in committed transactions at a set
//! rate, against a running webhook service.
//!
//! Reports, as one JSON line: whether every listener received every
//! change (its `call` events against the campaign's `call_state_log` rows,
//! duplicates counted apart), the delay from each change's
//! `call_state_log.at` (the trigger's clock_timestamp, inside the
//! transaction, so a little before its commit: the figure errs high) to
//! its arrival at a listener (p50/p99/max), and the webhook process's RSS
//! idle and with the listeners connected (`--webhook-pid`, from /proc).
//!
//! The campaign and its calls are written with SQL (no worker, no
//! provider): the stream's cost is what is measured, not the dialling.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::json;
use sqlx::PgPool;
use tocsin_core::{CallState, CampaignId};

#[derive(Parser)]
struct Args {
    /// The webhook service's base URL.
    #[arg(long)]
    url: String,
    /// The webhook's database (the campaign and the API key are written there).
    #[arg(long)]
    database_url: String,
    /// The webhook's process id, for its RSS.
    #[arg(long)]
    webhook_pid: u32,
    #[arg(long, default_value_t = 1000)]
    listeners: usize,
    #[arg(long, default_value_t = 2000)]
    calls: i64,
    /// State changes per second (each call moves dialing → placed → completed).
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// State changes per transaction.
    #[arg(long, default_value_t = 10)]
    batch: i64,
    #[arg(long, default_value = "bench-live")]
    campaign: String,
}

/// What one listener saw.
#[derive(Default)]
struct Seen {
    seqs: Vec<i64>,
    /// Milliseconds from the change's `at` to its arrival.
    delays: Vec<f32>,
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading the webhook's RSS")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS line")
}

/// One `call` frame's seq and `at` (epoch ms), found without a JSON parse:
/// the client must keep up with a thousand streams on a shared machine.
fn parse_call(frame: &str) -> Option<(i64, f64)> {
    let data = &frame[frame.find("data: ")? + 6..];
    let seq_at = data.find("\"seq\":")? + 6;
    let seq_end = data[seq_at..].find([',', '}'])? + seq_at;
    let seq = data[seq_at..seq_end].trim().parse().ok()?;
    let at_at = data.find("\"at\":\"")? + 6;
    let at_end = data[at_at..].find('"')? + at_at;
    let at = chrono::DateTime::parse_from_rfc3339(&data[at_at..at_end]).ok()?;
    Some((seq, at.timestamp_micros() as f64 / 1000.0))
}

/// Reads one stream until `done` says the run is over.
async fn listen(
    client: reqwest::Client,
    url: String,
    key: Arc<String>,
    ready: Arc<AtomicUsize>,
    done: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Seen> {
    let mut response = client
        .get(&url)
        .bearer_auth(key.as_str())
        .send()
        .await
        .context("opening the stream")?
        .error_for_status()
        .context("opening the stream")?;
    let mut seen = Seen::default();
    let mut buf = String::new();
    let mut counted = false;
    loop {
        let chunk = tokio::select! {
            c = response.chunk() => c.context("reading the stream")?,
            () = done.cancelled() => return Ok(seen),
        };
        let Some(chunk) = chunk else { bail!("the stream ended") };
        let arrived = now_ms();
        buf.push_str(std::str::from_utf8(&chunk).context("stream is not UTF-8")?);
        while let Some(end) = buf.find("\n\n") {
            {
                let frame = &buf[..end];
                if frame.starts_with("event: call") {
                    if let Some((seq, at)) = parse_call(frame) {
                        seen.seqs.push(seq);
                        seen.delays.push((arrived - at) as f32);
                    }
                } else if frame.starts_with("event: counts") && !counted {
                    counted = true;
                    ready.fetch_add(1, Ordering::Relaxed);
                }
            }
            buf.drain(..end + 2);
        }
    }
}

fn percentile(sorted: &[f32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool: PgPool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&args.database_url)
        .await
        .context("connecting to PostgreSQL")?;

    let key_name = format!("livelisten-{}-{}", args.campaign, std::process::id());
    let key = tocsin_core::apikey::create(&pool, &key_name, &["campaigns:read".to_owned()], &[])
        .await
        .context("creating the API key")?;
    let campaign = CampaignId::from_name(&args.campaign);
    sqlx::query(
        "INSERT INTO campaigns (id, name, message, from_number) VALUES ($1, $2, 'Live stream benchmark.', '+14155550100')",
    )
    .bind(campaign)
    .bind(&args.campaign)
    .execute(&pool)
    .await
    .context("creating the campaign")?;
    sqlx::query(
        "INSERT INTO calls (id, campaign_id, number) \
         SELECT gen_random_uuid(), $1, '+1415' || lpad(g::text, 7, '0') FROM generate_series(1, $2) g",
    )
    .bind(campaign)
    .bind(args.calls)
    .execute(&pool)
    .await
    .context("creating the calls")?;

    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = rss_kib(args.webhook_pid)?;

    // Connect the listeners, a hundred at a time, and wait for each one's first counters.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let url = format!("{}/api/v1/campaigns/{}/events", args.url.trim_end_matches('/'), args.campaign);
    let key = Arc::new(key);
    let ready = Arc::new(AtomicUsize::new(0));
    let done = tokio_util::sync::CancellationToken::new();
    let connect_started = Instant::now();
    let mut tasks = Vec::with_capacity(args.listeners);
    for i in 0..args.listeners {
        tasks.push(tokio::spawn(listen(
            client.clone(),
            url.clone(),
            Arc::clone(&key),
            Arc::clone(&ready),
            done.clone(),
        )));
        if i % 100 == 99 {
            while ready.load(Ordering::Relaxed) < i + 1 - 50 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    while ready.load(Ordering::Relaxed) < args.listeners {
        if connect_started.elapsed() > Duration::from_secs(120) {
            bail!(
                "only {} of {} listeners connected in 120 s",
                ready.load(Ordering::Relaxed),
                args.listeners
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_listening = rss_kib(args.webhook_pid)?;

    // Drive: every call dialing, placed, completed, `batch` changes per
    // transaction, paced to `rate` changes per second.
    let ids: Vec<tocsin_core::CallId> =
        sqlx::query_scalar("SELECT id FROM calls WHERE campaign_id = $1 ORDER BY number")
            .bind(campaign)
            .fetch_all(&pool)
            .await?;
    let per_tx = args.batch.max(1) as usize;
    let interval = Duration::from_secs_f64(per_tx as f64 / args.rate.max(1) as f64);
    let drive_started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rss_peak = rss_listening;
    for state in [CallState::Dialing, CallState::Placed, CallState::Completed] {
        for chunk in ids.chunks(per_tx) {
            ticker.tick().await;
            tocsin_core::calls::stage(&pool, chunk, state).await.context("changing call states")?;
        }
        rss_peak = rss_peak.max(rss_kib(args.webhook_pid)?);
    }
    let drive_secs = drive_started.elapsed().as_secs_f64();
    let expected: i64 = sqlx::query_scalar("SELECT count(*) FROM call_state_log WHERE campaign_id = $1")
        .bind(campaign)
        .fetch_one(&pool)
        .await?;

    // Give the streams time to deliver the tail, then stop.
    tokio::time::sleep(Duration::from_secs(5)).await;
    rss_peak = rss_peak.max(rss_kib(args.webhook_pid)?);
    done.cancel();
    let mut complete = 0usize;
    let (mut min_got, mut max_got, mut duplicates) = (usize::MAX, 0usize, 0usize);
    let mut delays: Vec<f32> = Vec::with_capacity(args.listeners * expected as usize);
    let mut failed = Vec::new();
    for t in tasks {
        match t.await? {
            Ok(mut seen) => {
                let got = seen.seqs.len();
                seen.seqs.sort_unstable();
                seen.seqs.dedup();
                duplicates += got - seen.seqs.len();
                let distinct = seen.seqs.len();
                min_got = min_got.min(distinct);
                max_got = max_got.max(distinct);
                if distinct as i64 == expected {
                    complete += 1;
                }
                delays.extend(seen.delays);
            }
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    delays.sort_unstable_by(f32::total_cmp);
    let per_listener_kib = (rss_listening as f64 - rss_idle as f64) / args.listeners as f64;
    let report = json!({
        "listeners": args.listeners,
        "calls": args.calls,
        "changes": expected,
        "rate_per_sec": args.rate,
        "changes_per_tx": per_tx,
        "connect_secs": (connect_secs * 10.0).round() / 10.0,
        "drive_secs": (drive_secs * 10.0).round() / 10.0,
        "listeners_with_every_change": complete,
        "distinct_changes_per_listener_min": if min_got == usize::MAX { 0 } else { min_got },
        "distinct_changes_per_listener_max": max_got,
        "duplicates": duplicates,
        "failed_listeners": failed.len(),
        "first_failure": failed.first(),
        "deliveries": delays.len(),
        "delay_ms_p50": (percentile(&delays, 0.50) * 10.0).round() / 10.0,
        "delay_ms_p99": (percentile(&delays, 0.99) * 10.0).round() / 10.0,
        "delay_ms_max": (percentile(&delays, 1.0) * 10.0).round() / 10.0,
        "rss_idle_kib": rss_idle,
        "rss_listening_kib": rss_listening,
        "rss_peak_kib": rss_peak,
        "rss_per_listener_kib": (per_listener_kib * 10.0).round() / 10.0,
    });
    println!("{report}");
    Ok(())
}

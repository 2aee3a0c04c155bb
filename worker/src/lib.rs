//! The worker: consumes call jobs and places calls.
//!
//! `run` connects to PostgreSQL and Redis, serves `/healthz`, `/readyz` and
//! `/metrics`, and consumes the work queue with manual acks and a bounded
//! prefetch. When the broker connection drops it reconnects with backoff and
//! carries on (jobs in flight are redelivered by the broker and their claims
//! make the redelivery harmless). On shutdown it stops consuming, lets
//! in-flight jobs finish within the grace period, and returns.

pub mod config;
pub mod process;
pub mod sweep;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use secrecy::ExposeSecret;
use tocsin_core::account::Rate;
use tocsin_core::config::Credentials;
use tocsin_core::limiter::{Limiter, RedisLimiter};
use tocsin_core::lines::Lines;
use tocsin_core::provider::VoiceProvider;
use tocsin_core::queue::{self, DelayTier, Publisher, Topology};
use tocsin_core::{CallJob, db, http, vonage};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::WorkerConfig;
use crate::process::{Account, Deps, Outcome, Settings, process};

/// Runs a worker until `shutdown` is cancelled.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = db::connect(&config.database.database_url, config.db_pool.max(2))
        .await
        .context("connecting to PostgreSQL (TOCSIN_DATABASE_URL)")?;
    db::migrate(&pool).await.context("applying database migrations")?;

    let redis = RedisLimiter::connect(config.redis.redis_url.expose_secret())
        .await
        .context("connecting to Redis (TOCSIN_REDIS_URL)")?;
    let lines_conn = redis.clone();
    let health = tocsin_core::health::Health::new(
        redis.clone(),
        &config.redis.redis_prefix,
        config.health.rules(config.provider_timeout + Duration::from_secs(5)),
    );
    let limiter = match config.limiter {
        config::LimiterMode::Redis => Limiter::new(
            RedisLimiter::with_guard(
                redis,
                &config.redis.redis_prefix,
                config.rate_per_sec,
                config.limiter_max_wait,
                config.rate_guard,
            ),
            config.rate_per_sec,
            config.expected_workers,
            config.limiter_max_wait,
        ),
        config::LimiterMode::None => {
            warn!("TOCSIN_LIMITER=none: no shared rate limit (benchmark baseline only)");
            Limiter::disabled()
        }
    };

    let http_client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(config.provider_timeout)
        .build()
        .context("building the HTTP client")?;
    let accounts = accounts(&config, &http_client)?;
    if accounts.is_empty() {
        warn!("no provider account is configured (e.g. TOCSIN_VONAGE_APPLICATION_ID); every call will fail");
    }
    let settings = Settings {
        public_url: config.public_url().to_owned(),
        ringing_timeout_secs: config.ringing_timeout_secs,
        dialing_lease: config.dialing_lease,
        max_transient_retries: config.max_transient_retries,
        account_slow: config.account_slow,
        ..Settings::default()
    };
    let mut deps = Deps::new(pool.clone(), limiter, accounts, settings, shutdown.clone());
    deps.health = Some(health);
    deps.lines = Some(Lines::new(lines_conn, &config.redis.redis_prefix));
    let deps = Arc::new(deps);

    // Health and metrics; ready once the broker is connected and the database answers.
    let broker: Arc<Mutex<Option<lapin::ConnectionStatus>>> = Arc::new(Mutex::new(None));
    let ready_pool = pool.clone();
    let ready_broker = broker.clone();
    let ready: http::ReadyCheck = Arc::new(move || {
        let pool = ready_pool.clone();
        let connected = ready_broker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(lapin::ConnectionStatus::connected);
        Box::pin(async move {
            if !connected {
                return Err("RabbitMQ connection is down".to_owned());
            }
            sqlx::query("SELECT 1")
                .execute(&pool)
                .await
                .map_err(|_| "PostgreSQL is unreachable".to_owned())?;
            Ok(())
        })
    });
    let (listener, addr) =
        http::bind(config.http_addr).await.with_context(|| format!("binding {}", config.http_addr))?;
    let http_stop = CancellationToken::new();
    let http_task =
        tokio::spawn(http::serve(listener, http::ops_router(ready), http_stop.clone().cancelled_owned()));
    info!(%addr, "health and metrics listening");

    let tracker = TaskTracker::new();
    let in_flight = Arc::new(Semaphore::new(usize::from(config.prefetch)));
    let mut backoff = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        match session(&config, &deps, &broker, &tracker, &in_flight, &shutdown).await {
            Ok(()) => break,
            Err(e) => {
                error!(error = format!("{e:#}"), retry_in = ?backoff, "broker session ended; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(15));
            }
        }
    }

    info!("stopping: no new jobs; waiting for in-flight calls");
    tracker.close();
    if tokio::time::timeout(config.shutdown_grace, tracker.wait()).await.is_err() {
        warn!(grace = ?config.shutdown_grace, "grace period over with calls still in flight; their jobs will be redelivered");
    }
    http_stop.cancel();
    let _ = http_task.await;
    pool.close().await;
    info!("worker stopped");
    Ok(())
}

/// One broker connection: declare, consume until shutdown (`Ok`) or until
/// the connection is lost (`Err`). In-flight jobs keep running on the
/// tracker; the channel is closed once they are done.
async fn session(
    config: &WorkerConfig,
    deps: &Arc<Deps>,
    broker: &Arc<Mutex<Option<lapin::ConnectionStatus>>>,
    tracker: &TaskTracker,
    in_flight: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let amqp = queue::connect(config.amqp.amqp_url.expose_secret(), "tocsin-worker")
        .await
        .context("connecting to RabbitMQ (TOCSIN_AMQP_URL)")?;
    let topology = Topology::new(&config.amqp.queue_prefix);
    let channel = amqp.create_channel().await.context("opening a RabbitMQ channel")?;
    topology.declare(&channel).await.context("declaring the queue topology")?;
    let publisher = Publisher::new(&amqp, topology.clone()).await.context("opening the publish channel")?;
    let consume_channel = amqp.create_channel().await.context("opening the consume channel")?;
    consume_channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await
        .context("setting the prefetch")?;
    let tag = format!("worker-{}", uuid::Uuid::new_v4());
    let mut consumer = consume_channel
        .basic_consume(
            topology.work_queue().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("starting to consume the work queue")?;
    *broker.lock().unwrap_or_else(|p| p.into_inner()) = Some(amqp.status().clone());
    info!(queue = %topology.work_queue(), prefetch = config.prefetch, "consuming");
    // How many workers really share the rate (the work queue's consumers),
    // for the local fallback limiter while Redis is down.
    let counter =
        tokio::spawn(count_workers(channel.clone(), topology.work_queue(), deps.clone(), shutdown.clone()));
    let sweep_channel = amqp.create_channel().await.context("opening the sweeper's channel")?;
    let sweeper = tokio::spawn(sweep::run(
        deps.clone(),
        config.sweep_settings(),
        sweep_channel,
        publisher.clone(),
        shutdown.clone(),
    ));

    let result = loop {
        let delivery = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            next = consumer.next() => next,
        };
        let delivery = match delivery {
            Some(Ok(d)) => d,
            Some(Err(e)) => break Err(anyhow::Error::new(e).context("consuming from RabbitMQ")),
            None => break Err(anyhow::anyhow!("RabbitMQ closed the consumer")),
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break Ok(());
        };
        let deps = deps.clone();
        let publisher = publisher.clone();
        tracker.spawn(async move {
            handle(&deps, &publisher, delivery).await;
            drop(permit);
        });
    };

    counter.abort();
    sweeper.abort();
    if result.is_ok() {
        // Stop deliveries; unacked jobs we never started go back when the channel closes.
        let _ = consume_channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
        // In-flight jobs still need this connection to ack and to publish delays.
        let _ = tokio::time::timeout(config.shutdown_grace, wait_idle(in_flight, config.prefetch)).await;
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            consume_channel.close(200, "worker stopping".into()),
        )
        .await;
        queue::close(&amqp, "worker stopping").await;
    }
    result
}

/// Every few seconds, the work queue's consumer count (a passive declare)
/// goes to the limiter: the workers sharing the rate, counted by the broker.
async fn count_workers(channel: lapin::Channel, queue: String, deps: Arc<Deps>, shutdown: CancellationToken) {
    loop {
        let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        if let Ok(q) = channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await {
            deps.limiter.set_workers_running(q.consumer_count());
            metrics::gauge!("tocsin_workers_running").set(f64::from(q.consumer_count()));
        }
        tokio::select! {
            () = tokio::time::sleep(WORKER_COUNT_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

const WORKER_COUNT_EVERY: Duration = Duration::from_secs(5);

/// Resolves when no job holds an in-flight permit.
async fn wait_idle(in_flight: &Arc<Semaphore>, prefetch: u16) {
    if let Ok(all) = in_flight.acquire_many(u32::from(prefetch)).await {
        drop(all);
    }
}

/// A client for every provider account this worker has credentials for.
fn accounts(config: &WorkerConfig, http: &reqwest::Client) -> anyhow::Result<Vec<Account>> {
    let mut out = Vec::new();
    for account in config.providers.accounts(Rate::per_second(config.rate_per_sec), &config.limits)? {
        let client: Arc<dyn VoiceProvider> = match &account.credentials {
            Credentials::Vonage(c) => Arc::new(
                vonage::Client::new(http.clone(), c)
                    .with_context(|| format!("account {}: the Vonage private key", account.name))?,
            ),
            Credentials::Twilio(c) => Arc::new(tocsin_core::twilio::Client::new(http.clone(), c)),
            Credentials::Telnyx(c) => Arc::new(tocsin_core::telnyx::Client::new(http.clone(), c)),
        };
        info!(
            account = %account.name,
            rate = %account.limits.rate,
            max_concurrent = account.limits.max_concurrent,
            "provider account configured"
        );
        out.push(Account { name: account.name, client, limits: account.limits });
    }
    Ok(out)
}

/// Runs one job and settles its delivery according to the outcome.
async fn handle(deps: &Deps, publisher: &Publisher, delivery: Delivery) {
    metrics::counter!("tocsin_jobs_consumed_total").increment(1);
    let job = match CallJob::decode(&delivery.data) {
        Ok(job) => job,
        Err(e) => {
            error!(error = %e, "undecodable job; dead-lettering");
            dead_letter(publisher, &delivery, &e.to_string()).await;
            return;
        }
    };
    // Returned by workers that died holding it (or gave it back): a fresh
    // copy goes to the back of the queue before the delivery limit could
    // dead-letter a job that did nothing wrong.
    let redelivered = queue::delivery_count(&delivery.properties);
    if redelivered >= queue::RECYCLE_AFTER {
        match publisher.publish(&job).await {
            Ok(()) => {
                warn!(call_id = %job.call_id, redelivered, "job returned by workers that died holding it (or gave it back): re-published fresh");
                metrics::counter!("tocsin_jobs_recycled_total").increment(1);
                ack(&delivery).await;
            }
            Err(e) => {
                error!(error = %e, call_id = %job.call_id, "could not re-publish a redelivered job; returning it to the queue");
                requeue(&delivery).await;
            }
        }
        return;
    }
    let outcome = match process(deps, &job).await {
        Ok(outcome) => outcome,
        Err(e) => {
            // Infrastructure trouble (database down): retry the whole job
            // later through a delay queue, which does not count against the
            // delivery limit, so an outage does not dead-letter jobs.
            error!(error = %e, call_id = %job.call_id, "job failed; retrying in 5 s");
            metrics::counter!("tocsin_retries_total", "reason" => "infrastructure").increment(1);
            Outcome::Delay(DelayTier::S5)
        }
    };
    match outcome {
        Outcome::Ack => ack(&delivery).await,
        Outcome::Delay(tier) => match publisher.publish_delayed(&job, tier).await {
            Ok(()) => {
                metrics::counter!("tocsin_jobs_delayed_total", "tier" => tier.name()).increment(1);
                ack(&delivery).await;
            }
            Err(e) => {
                error!(error = %e, call_id = %job.call_id, "could not delay job; returning it to the queue");
                requeue(&delivery).await;
            }
        },
        Outcome::DeadLetter(reason) => {
            error!(%reason, call_id = %job.call_id, "dead-lettering job");
            dead_letter(publisher, &delivery, &reason).await;
        }
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
        error!(error = %e, "ack failed; the job will be redelivered");
    }
}

async fn requeue(delivery: &Delivery) {
    // Back off a little so a broker in trouble does not get a hot loop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let options = BasicNackOptions { requeue: true, ..Default::default() };
    if let Err(e) = delivery.nack(options).await {
        error!(error = %e, "nack failed; the job will be redelivered");
    }
}

/// Sends the message to the dead-letter queue with its reason (the broker
/// dead-letters a rejected one without it if that publish fails).
async fn dead_letter(publisher: &Publisher, delivery: &Delivery, reason: &str) {
    metrics::counter!("tocsin_jobs_dead_lettered_total").increment(1);
    if publisher.publish_dead(&delivery.data, reason).await.is_ok() {
        ack(delivery).await;
        return;
    }
    let options = BasicNackOptions { requeue: false, ..Default::default() };
    if let Err(e) = delivery.nack(options).await {
        error!(error = %e, "nack failed; the job will be redelivered");
    }
}

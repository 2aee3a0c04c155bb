//! The sweeper: calls that stopped moving are moved on, independently of
//! the queue. One worker at a time sweeps (it holds a PostgreSQL advisory
//! lock on a connection of its own; when it dies, the connection and the
//! lock go with it and another worker takes over at its next tick).
//!
//! Every tick the leader
//! 1. drains the dead-letter queue into `dead_jobs` (see `tocsin_core::dead`;
//!    every worker shows their count as the `tocsin_dead_jobs` gauge), and
//!    expires the waiting calls of campaigns past their deadline;
//! 2. re-publishes the job of every call left `dialing` past its lease and
//!    the stall time (its next worker reconciles it with the provider);
//! 3. when the work queue has no job ready (none is waiting its turn),
//!    re-publishes the job of every waiting call overdue by the stall time;
//! 4. asks the provider about each call in progress from which no event
//!    came for longer than it rings plus the stall time, and records what
//!    the provider says (or `unknown` when it cannot say).
//!
//! Re-publishing is safe whatever the job's fate: the claim lets one copy
//! dial, reconciliation settles an interrupted dial, and a copy that finds
//! its call handled is dropped.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use sqlx::{Connection, PgConnection};
use tocsin_core::calls::sweep::{self, Silent};
use tocsin_core::provider::RemoteStatus;
use tocsin_core::queue::{self, Publisher};
use tocsin_core::{CallJob, dead};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::process::Deps;

/// Tunables of the sweeper, from the worker's configuration.
#[derive(Clone, Debug)]
pub struct SweepSettings {
    /// How often the leader sweeps (and others try to become it).
    pub every: Duration,
    /// How long past its due time a call may stand still before it is swept.
    pub stall_after: Duration,
}

/// Calls handled per class and tick (the next tick takes the rest).
const BATCH: i64 = 500;
/// Provider look-ups per tick, one at a time at most this often: well under
/// every provider's REST limit (Vonage documents 15 requests/s).
const LOOKUPS: i64 = 100;
const LOOKUP_EVERY: Duration = Duration::from_millis(200);
/// Dead-lettered messages drained per tick.
const DRAIN: usize = 1000;

/// Sweeps every `settings.every` while this worker holds the sweeper lock,
/// until `shutdown` (or until the caller aborts it with its broker session).
pub async fn run(
    deps: Arc<Deps>,
    settings: SweepSettings,
    channel: lapin::Channel,
    publisher: Publisher,
    shutdown: CancellationToken,
) {
    let lock = format!("tocsin.sweeper:{}", publisher.topology().exchange());
    let mut leader = Leadership { lock, conn: None, held: false };
    loop {
        tokio::select! {
            () = tokio::time::sleep(settings.every) => {}
            () = shutdown.cancelled() => return,
        }
        // Every worker shows the store's count (a worker that stopped
        // leading must not keep an old figure alive).
        if let Ok(n) = dead::total(&deps.pool).await {
            metrics::gauge!("tocsin_dead_jobs").set(n as f64);
        }
        if !leader.hold(&deps).await {
            continue;
        }
        if let Err(e) = tick(&deps, &settings, &channel, &publisher).await {
            warn!(error = format!("{e:#}"), "sweep failed; trying again at the next tick");
        }
    }
}

/// The advisory lock that makes one worker the sweeper.
struct Leadership {
    lock: String,
    conn: Option<PgConnection>,
    held: bool,
}

impl Leadership {
    /// Whether this worker is the sweeper now (taking the lock if free).
    async fn hold(&mut self, deps: &Deps) -> bool {
        let was = self.held;
        self.held = self.try_hold(deps).await.unwrap_or(false);
        if self.held != was {
            metrics::gauge!("tocsin_sweeper_leader").set(if self.held { 1.0 } else { 0.0 });
            if self.held {
                info!("this worker is the sweeper now");
            }
        }
        self.held
    }

    async fn try_hold(&mut self, deps: &Deps) -> Result<bool, sqlx::Error> {
        if let Some(conn) = self.conn.as_mut() {
            if conn.ping().await.is_err() {
                // The connection (and any lock on it) is gone.
                self.conn = None;
                self.held = false;
            } else if self.held {
                return Ok(true);
            }
        }
        if self.conn.is_none() {
            self.conn = Some(deps.pool.acquire().await?.detach());
        }
        let Some(conn) = self.conn.as_mut() else { return Ok(false) };
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(&self.lock)
            .fetch_one(conn)
            .await
    }
}

async fn tick(
    deps: &Deps,
    settings: &SweepSettings,
    channel: &lapin::Channel,
    publisher: &Publisher,
) -> anyhow::Result<()> {
    drain_dead(deps, channel, publisher).await?;
    let expired = sweep::expire_past_deadlines(&deps.pool).await?;
    if expired > 0 {
        info!(calls = expired, "campaign deadlines passed: waiting calls expired");
        metrics::counter!("tocsin_calls_expired_total").increment(expired);
    }

    let lease = deps.settings.dialing_lease + settings.stall_after;
    republish(deps, publisher, Stalled::Dialing(lease)).await?;

    // Jobs ready in the work queue may be the waiting calls' own, in line
    // behind others: only an empty line proves them lost.
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let work = channel
        .queue_declare(publisher.topology().work_queue().as_str().into(), passive, FieldTable::default())
        .await?;
    if work.message_count() == 0 {
        republish(deps, publisher, Stalled::Waiting(settings.stall_after)).await?;
    }

    let quiet = Duration::from_secs(u64::from(deps.settings.ringing_timeout_secs)) + settings.stall_after;
    for call in sweep::silent_in_progress(&deps.pool, quiet, LOOKUPS).await? {
        settle(deps, publisher, &call).await?;
        tokio::time::sleep(LOOKUP_EVERY).await;
    }
    Ok(())
}

/// Calls whose jobs the sweeper publishes again, and how long they stood still.
#[derive(Clone, Copy)]
enum Stalled {
    Dialing(Duration),
    Waiting(Duration),
}

/// Takes the stalled calls and publishes their jobs in one transaction: if
/// the broker does not confirm them, the calls are not marked swept.
async fn republish(deps: &Deps, publisher: &Publisher, stalled: Stalled) -> anyhow::Result<()> {
    let mut tx = deps.pool.begin().await?;
    let (label, jobs): (&'static str, Vec<CallJob>) = match stalled {
        Stalled::Dialing(quiet) => ("dialing", sweep::abandoned_dialing(&mut tx, quiet, BATCH).await?),
        Stalled::Waiting(quiet) => ("waiting", sweep::overdue_waiting(&mut tx, quiet, BATCH).await?),
    };
    if jobs.is_empty() {
        return Ok(());
    }
    publisher.publish_all(&jobs).await?;
    tx.commit().await?;
    info!(state = label, calls = jobs.len(), "re-published the jobs of calls that stopped moving");
    metrics::counter!("tocsin_sweeper_republished_total", "state" => label).increment(jobs.len() as u64);
    Ok(())
}

/// Moves the dead-letter queue's messages into `dead_jobs`, acking each
/// once it is stored.
async fn drain_dead(deps: &Deps, channel: &lapin::Channel, publisher: &Publisher) -> anyhow::Result<()> {
    let queue = publisher.topology().dead_queue();
    for _ in 0..DRAIN {
        let Some(message) =
            channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }).await?
        else {
            break;
        };
        let delivery = message.delivery;
        let reason = queue::dead_reason(&delivery.properties);
        if dead::record(&deps.pool, &delivery.data, &reason).await? {
            error!(%reason, "a job was dead-lettered; see `producer status` and `producer requeue-dead`");
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

/// Asks the call's provider what became of it, and records the answer.
async fn settle(deps: &Deps, publisher: &Publisher, call: &Silent) -> anyhow::Result<()> {
    let Some(account) = deps.accounts.get(&call.account) else {
        // Another worker holds this account's credentials; it sweeps too
        // when it leads. Nothing to learn here.
        return Ok(());
    };
    let client = &account.client;
    let outcome = match client.call_status(&call.provider_call_id).await {
        Err(e) => {
            warn!(call_id = %call.call_id, error = %e, "cannot ask the provider about a silent call; asking again later");
            "lookup_failed"
        }
        Ok(RemoteStatus::Live) => "live",
        Ok(RemoteStatus::Ended { state: Some(state), detail, duration_secs }) => {
            let mut tx = deps.pool.begin().await?;
            let redials = sweep::ended(&mut tx, call, state, detail, duration_secs).await?;
            for (tier, jobs) in redials {
                for job in jobs {
                    publisher.publish_delayed(&job, tier).await?;
                }
            }
            tx.commit().await?;
            info!(call_id = %call.call_id, %state, "no final event came; the provider says the call ended: recorded");
            "ended"
        }
        Ok(RemoteStatus::Ended { state: None, .. }) => {
            let detail =
                format!("the call's final event never came, and {} does not say how it ended", call.account);
            sweep::ended_unseen(&deps.pool, call, &detail).await?;
            "ended_unsaid"
        }
        Ok(RemoteStatus::Gone) => {
            let detail =
                format!("the call's final event never came, and {} no longer knows the call", call.account);
            sweep::ended_unseen(&deps.pool, call, &detail).await?;
            "gone"
        }
    };
    metrics::counter!("tocsin_sweeper_settled_total", "outcome" => outcome).increment(1);
    Ok(())
}

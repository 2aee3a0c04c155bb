//! Durable event storage with group commit.
//!
//! Handlers hand each event to the `EventStore` and wait. A batcher gathers
//! the events that arrive within a few milliseconds (up to a maximum batch)
//! and a writer stores the whole batch in one transaction: one multi-row
//! INSERT (deduplicated on the provider's event identity), one UPDATE that
//! moves every affected call forward, the redials the batch triggers
//! (published with confirms before the commit), then COMMIT. Only then does
//! each handler answer 2xx. A failed batch answers every one of its requests
//! 503, so the provider retries; nothing is half-stored.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tocsin_core::queue::{self, DelayTier, Publisher, Topology};
use tocsin_core::{CallId, CallJob, CallState, CampaignId, PhoneNumber};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};
use tracing::{error, info, warn};

/// A provider event in the form every provider's payload converts to.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub call_id: Option<CallId>,
    /// The attempt named in the event URL, when the provider echoes it.
    pub attempt: Option<i32>,
    pub provider: &'static str,
    pub dedupe_key: String,
    pub provider_call_id: Option<String>,
    /// The provider's own status word.
    pub status: String,
    /// The call state it maps to, if any.
    pub state: Option<CallState>,
    pub occurred_at: Option<DateTime<Utc>>,
    pub duration_secs: Option<i32>,
    pub price: Option<f64>,
    /// `human` or `machine`, from answering-machine detection.
    pub answered_by: Option<String>,
    pub detail: Option<String>,
    pub payload: serde_json::Value,
}

/// What storing did.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Stored {
    /// New event, applied to its call.
    Applied,
    /// Seen before (same dedupe key): nothing changed.
    Duplicate,
    /// Stored, but no call with that id exists.
    UnknownCall,
}

#[derive(Debug, thiserror::Error, Clone)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(String),
    /// PostgreSQL aborted the batch to break a deadlock: worth another try.
    #[error("database deadlock: {0}")]
    Deadlock(String),
    #[error("publishing a redial: {0}")]
    Publish(String),
    #[error("the event store is shutting down")]
    Closed,
}

/// Failure details of a provider `failed` event that make a redial worthwhile.
const TRANSIENT_FAILURES: [&str; 5] =
    ["internal_error", "carrier_timeout", "unavailable", "network_error", "timeout"];

/// Group-commit tuning.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// How long the first event of a batch waits for company.
    pub window: Duration,
    /// The most events in one batch.
    pub max_events: usize,
    /// Batches written at once (each on its own connection).
    pub writers: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { window: Duration::from_millis(2), max_events: 500, writers: 4 }
    }
}

struct Pending {
    event: StoredEvent,
    reply: oneshot::Sender<Result<Stored, StoreError>>,
}

/// Where handlers hand events over. Every provider's handler stores through
/// it, so batching and redials live in one place.
#[derive(Clone)]
pub struct EventStore {
    tx: mpsc::Sender<Pending>,
}

impl EventStore {
    /// Starts the batcher. `redials` publishes next attempts; `None` disables redials.
    pub fn start(pool: PgPool, redials: Option<Arc<RedialPublisher>>, config: BatchConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.max_events * 4);
        tokio::spawn(batcher(pool, redials, config, rx));
        Self { tx }
    }

    /// Stores `event` durably; returns once its batch is committed.
    pub async fn store(&self, event: StoredEvent) -> Result<Stored, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Pending { event, reply }).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn batcher(
    pool: PgPool,
    redials: Option<Arc<RedialPublisher>>,
    config: BatchConfig,
    mut rx: mpsc::Receiver<Pending>,
) {
    let writers = Arc::new(Semaphore::new(config.writers.max(1)));
    loop {
        // Wait for a free writer first: while all writers are busy, events
        // queue up and the next batch grows, which is what group commit is for.
        let Ok(permit) = writers.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + config.window;
        while batch.len() < config.max_events {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::select! {
                        next = rx.recv() => match next {
                            Some(p) => batch.push(p),
                            None => break,
                        },
                        () = tokio::time::sleep_until(deadline) => break,
                    }
                }
            }
        }
        let pool = pool.clone();
        let redials = redials.clone();
        tokio::spawn(async move {
            write_batch(&pool, redials.as_deref(), batch).await;
            drop(permit);
        });
    }
}

async fn write_batch(pool: &PgPool, redials: Option<&RedialPublisher>, batch: Vec<Pending>) {
    let started = Instant::now();
    metrics::histogram!("tocsin_webhook_batch_size").record(batch.len() as f64);
    let events: Vec<&StoredEvent> = batch.iter().map(|p| &p.event).collect();
    let mut result = store_batch(pool, redials, &events).await;
    // Another statement updating many of the same calls (`producer cancel`,
    // `dnc add`, a cancel on a resolved alert) can deadlock with a batch;
    // the aborted batch changed nothing, so it is simply written again.
    for attempt in 1..=3 {
        let Err(StoreError::Deadlock(e)) = &result else { break };
        warn!(error = %e, attempt, events = events.len(), "event batch hit a deadlock; retrying");
        result = store_batch(pool, redials, &events).await;
    }
    metrics::histogram!("tocsin_webhook_store_seconds").record(started.elapsed().as_secs_f64());
    match result {
        Ok(outcomes) => {
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                let _ = pending.reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            error!(error = %e, events = batch.len(), "event batch not stored; answering 503");
            for pending in batch {
                let _ = pending.reply.send(Err(e.clone()));
            }
        }
    }
}

/// Stores a batch in one transaction; returns each event's outcome, in order.
pub async fn store_batch(
    pool: &PgPool,
    redials: Option<&RedialPublisher>,
    events: &[&StoredEvent],
) -> Result<Vec<Stored>, StoreError> {
    let db = |e: sqlx::Error| match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("40P01") => {
            StoreError::Deadlock(e.to_string())
        }
        _ => StoreError::Database(e.to_string()),
    };
    let mut tx = pool.begin().await.map_err(db)?;

    let call_ids: Vec<Option<uuid::Uuid>> = events.iter().map(|e| e.call_id.map(|c| c.0)).collect();
    let attempts: Vec<Option<i32>> = events.iter().map(|e| e.attempt).collect();
    let providers: Vec<&str> = events.iter().map(|e| e.provider).collect();
    let keys: Vec<&str> = events.iter().map(|e| e.dedupe_key.as_str()).collect();
    let provider_call_ids: Vec<Option<&str>> = events.iter().map(|e| e.provider_call_id.as_deref()).collect();
    let statuses: Vec<&str> = events.iter().map(|e| e.status.as_str()).collect();
    let states: Vec<Option<&str>> = events.iter().map(|e| e.state.map(CallState::as_str)).collect();
    let occurred: Vec<Option<DateTime<Utc>>> = events.iter().map(|e| e.occurred_at).collect();
    let payloads: Vec<&serde_json::Value> = events.iter().map(|e| &e.payload).collect();
    let inserted: Vec<(String, bool)> = sqlx::query_as(
        "INSERT INTO call_events (call_id, attempt, provider, dedupe_key, provider_call_id, status, state, \
                                  occurred_at, unknown_call, payload) \
         SELECT u.call_id, u.attempt, u.provider, u.key, u.pcid, u.status, u.state, u.occurred, \
                u.call_id IS NULL OR NOT EXISTS (SELECT 1 FROM calls k WHERE k.id = u.call_id), u.payload \
         FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                     $8::timestamptz[], $9::jsonb[]) \
              AS u(call_id, attempt, provider, key, pcid, status, state, occurred, payload) \
         ON CONFLICT (dedupe_key) DO NOTHING \
         RETURNING dedupe_key, unknown_call",
    )
    .bind(&call_ids)
    .bind(&attempts)
    .bind(&providers)
    .bind(&keys)
    .bind(&provider_call_ids)
    .bind(&statuses)
    .bind(&states)
    .bind(&occurred)
    .bind(&payloads)
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;

    // Map back to requests: the first request with a newly inserted key wins;
    // later ones with the same key in this batch are duplicates.
    let mut fresh: HashMap<&str, bool> = inserted.iter().map(|(k, unknown)| (k.as_str(), *unknown)).collect();
    let mut outcomes = Vec::with_capacity(events.len());
    let mut applied: Vec<&StoredEvent> = Vec::new();
    for event in events {
        match fresh.remove(event.dedupe_key.as_str()) {
            Some(true) => outcomes.push(Stored::UnknownCall),
            Some(false) => {
                outcomes.push(Stored::Applied);
                applied.push(event);
            }
            None => outcomes.push(Stored::Duplicate),
        }
    }

    let updates = fold(&applied);
    if !updates.is_empty() {
        apply(&mut tx, &updates).await.map_err(db)?;
        let candidates: Vec<uuid::Uuid> =
            updates.iter().filter(|u| u.wants_redial()).map(|u| u.call_id.0).collect();
        if !candidates.is_empty() {
            redial(&mut tx, redials, &candidates).await?;
        }
    }
    tx.commit().await.map_err(db)?;
    Ok(outcomes)
}

/// Everything a batch does to one call.
#[derive(Debug)]
struct CallUpdate {
    call_id: CallId,
    attempt: Option<i32>,
    state: Option<CallState>,
    provider_call_id: Option<String>,
    answered_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    duration_secs: Option<i32>,
    price: Option<f64>,
    answered_by: Option<String>,
    detail: Option<String>,
}

impl CallUpdate {
    fn wants_redial(&self) -> bool {
        match self.state {
            Some(CallState::Busy | CallState::NoAnswer) => true,
            Some(CallState::Failed) => {
                self.detail.as_deref().is_some_and(|d| TRANSIENT_FAILURES.contains(&d))
            }
            _ => false,
        }
    }
}

fn is_specific_failure(s: CallState) -> bool {
    matches!(s, CallState::Busy | CallState::NoAnswer | CallState::Rejected | CallState::Failed)
}

/// Folds a batch's events into one update per call, in event order, with
/// the same forward-only rule the SQL applies against the stored state.
fn fold(events: &[&StoredEvent]) -> Vec<CallUpdate> {
    let mut by_call: BTreeMap<uuid::Uuid, Vec<&StoredEvent>> = BTreeMap::new();
    for e in events {
        if let Some(id) = e.call_id {
            by_call.entry(id.0).or_default().push(e);
        }
    }
    let mut out = Vec::with_capacity(by_call.len());
    for (id, mut evs) in by_call {
        // Only the newest attempt in the batch counts.
        let attempt = evs.iter().filter_map(|e| e.attempt).max();
        evs.retain(|e| e.attempt.is_none() || e.attempt == attempt);
        evs.sort_by_key(|e| e.occurred_at);
        let mut u = CallUpdate {
            call_id: CallId(id),
            attempt,
            state: None,
            provider_call_id: None,
            answered_at: None,
            ended_at: None,
            duration_secs: None,
            price: None,
            answered_by: None,
            detail: None,
        };
        for e in evs {
            let now = e.occurred_at.unwrap_or_else(Utc::now);
            if let Some(s) = e.state {
                let replace = match u.state {
                    None => true,
                    Some(cur) => {
                        s.rank() > cur.rank()
                            || (cur == CallState::Completed
                                && u.answered_at.is_none()
                                && is_specific_failure(s))
                    }
                };
                if replace {
                    u.state = Some(s);
                }
                if s == CallState::Answered && u.answered_at.is_none() {
                    u.answered_at = Some(now);
                }
                if s.is_terminal() && u.ended_at.is_none() {
                    u.ended_at = Some(now);
                }
            }
            u.provider_call_id = u.provider_call_id.take().or_else(|| e.provider_call_id.clone());
            u.duration_secs = e.duration_secs.or(u.duration_secs);
            u.price = e.price.or(u.price);
            u.answered_by = e.answered_by.clone().or(u.answered_by.take());
            u.detail = e.detail.clone().or(u.detail.take());
        }
        out.push(u);
    }
    out
}

/// One UPDATE for the whole batch; rows are visited in call-id order, so
/// concurrent batches lock rows in the same order and cannot deadlock.
async fn apply(tx: &mut sqlx::PgConnection, updates: &[CallUpdate]) -> Result<(), sqlx::Error> {
    let ids: Vec<uuid::Uuid> = updates.iter().map(|u| u.call_id.0).collect();
    let attempts: Vec<Option<i32>> = updates.iter().map(|u| u.attempt).collect();
    let states: Vec<Option<&str>> = updates.iter().map(|u| u.state.map(CallState::as_str)).collect();
    let pcids: Vec<Option<&str>> = updates.iter().map(|u| u.provider_call_id.as_deref()).collect();
    let answered: Vec<Option<DateTime<Utc>>> = updates.iter().map(|u| u.answered_at).collect();
    let ended: Vec<Option<DateTime<Utc>>> = updates.iter().map(|u| u.ended_at).collect();
    let durations: Vec<Option<i32>> = updates.iter().map(|u| u.duration_secs).collect();
    let prices: Vec<Option<f64>> = updates.iter().map(|u| u.price).collect();
    let by: Vec<Option<&str>> = updates.iter().map(|u| u.answered_by.as_deref()).collect();
    let details: Vec<Option<&str>> = updates.iter().map(|u| u.detail.as_deref()).collect();
    sqlx::query(
        "UPDATE calls k SET \
            state = CASE \
                WHEN call_state_rank(u.state) > call_state_rank(k.state) THEN u.state \
                WHEN k.state = 'completed' AND k.answered_at IS NULL AND u.answered_at IS NULL \
                     AND u.state IN ('busy', 'no_answer', 'rejected', 'failed') THEN u.state \
                ELSE k.state END, \
            provider_call_id = coalesce(k.provider_call_id, u.pcid), \
            answered_at = coalesce(k.answered_at, u.answered_at), \
            ended_at = CASE WHEN call_state_rank(u.state) = 5 THEN coalesce(k.ended_at, u.ended_at) \
                            ELSE k.ended_at END, \
            duration_secs = coalesce(u.duration, k.duration_secs), \
            price = CASE WHEN u.price IS NULL THEN k.price ELSE coalesce(k.price, 0) + u.price::numeric END, \
            answered_by = coalesce(u.answered_by, k.answered_by), \
            error_detail = CASE WHEN u.state IN ('failed', 'rejected') THEN coalesce(u.detail, k.error_detail) \
                                ELSE k.error_detail END, \
            updated_at = now() \
         FROM (SELECT * FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::text[], $5::timestamptz[], \
                                    $6::timestamptz[], $7::int4[], $8::float8[], $9::text[], $10::text[]) \
               AS t(id, attempt, state, pcid, answered_at, ended_at, duration, price, answered_by, detail) \
               ORDER BY id) AS u \
         WHERE k.id = u.id AND k.state <> 'retry_wait' AND (u.attempt IS NULL OR u.attempt = k.attempt)",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&states)
    .bind(&pcids)
    .bind(&answered)
    .bind(&ended)
    .bind(&durations)
    .bind(&prices)
    .bind(&by)
    .bind(&details)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Moves calls that ended busy / unanswered / failed transiently to
/// `retry_wait` when their campaign allows another attempt, and publishes
/// the next attempt to the delay tier nearest the campaign's retry delay.
/// Published before the commit: a failed commit leaves at most a job whose
/// claim will fail, never a redial without a job.
async fn redial(
    tx: &mut sqlx::PgConnection,
    redials: Option<&RedialPublisher>,
    candidates: &[uuid::Uuid],
) -> Result<(), StoreError> {
    let Some(publisher) = redials else { return Ok(()) };
    let rows: Vec<(CallId, CampaignId, String, i32, i32)> = sqlx::query_as(
        "UPDATE calls k SET state = 'retry_wait', updated_at = now() \
         FROM campaigns c \
         WHERE k.id = ANY($1) AND c.id = k.campaign_id AND c.status = 'active' \
           AND k.attempt < c.max_attempts \
           AND (k.state IN ('busy', 'no_answer') \
                OR (k.state = 'failed' AND k.error_detail = ANY($2))) \
         RETURNING k.id, k.campaign_id, k.number, k.attempt, c.retry_delay_secs",
    )
    .bind(candidates)
    .bind(TRANSIENT_FAILURES.as_slice())
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| StoreError::Database(e.to_string()))?;
    let mut by_tier: HashMap<&'static str, (DelayTier, Vec<CallJob>)> = HashMap::new();
    for (call_id, campaign_id, number, attempt, delay) in rows {
        let Ok(to) = PhoneNumber::from_e164(&number) else { continue };
        let next = u32::try_from(attempt).unwrap_or(0) + 1;
        let job = CallJob { v: tocsin_core::job::JOB_VERSION, call_id, campaign_id, to, attempt: next };
        let tier = DelayTier::nearest(Duration::from_secs(u64::try_from(delay).unwrap_or(0)));
        by_tier.entry(tier.name()).or_insert_with(|| (tier, Vec::new())).1.push(job);
    }
    for (tier, jobs) in by_tier.into_values() {
        publisher.publish(&jobs, tier).await?;
        metrics::counter!("tocsin_redials_total").increment(jobs.len() as u64);
        info!(count = jobs.len(), tier = tier.name(), "redials scheduled");
    }
    Ok(())
}

/// Publishes redial jobs, connecting (and reconnecting) to RabbitMQ as needed.
pub struct RedialPublisher {
    url: String,
    topology: Topology,
    inner: Mutex<Option<(lapin::Connection, Publisher)>>,
}

impl RedialPublisher {
    pub fn new(url: String, topology: Topology) -> Self {
        Self { url, topology, inner: Mutex::new(None) }
    }

    /// Connects and declares the topology now (start-up check).
    pub async fn connect(&self) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().await;
        if inner.is_none() {
            *inner = Some(self.open().await?);
        }
        Ok(())
    }

    async fn open(&self) -> Result<(lapin::Connection, Publisher), StoreError> {
        let e = |e: lapin::Error| StoreError::Publish(e.to_string());
        let conn = queue::connect(&self.url, "tocsin-webhook").await.map_err(e)?;
        let channel = conn.create_channel().await.map_err(e)?;
        self.topology.declare(&channel).await.map_err(e)?;
        let publisher = Publisher::new(&conn, self.topology.clone()).await.map_err(e)?;
        Ok((conn, publisher))
    }

    pub async fn publish(&self, jobs: &[CallJob], tier: DelayTier) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().await;
        if inner.as_ref().is_none_or(|(c, _)| !c.status().connected()) {
            *inner = Some(self.open().await?);
        }
        let Some((_, publisher)) = inner.as_ref() else { return Err(StoreError::Closed) };
        for job in jobs {
            if let Err(e) = publisher.publish_delayed(job, tier).await {
                warn!(error = %e, "redial publish failed; reconnecting next time");
                *inner = None;
                return Err(StoreError::Publish(e.to_string()));
            }
        }
        Ok(())
    }
}

//! Durable event storage with group commit.
//!
//! Handlers hand each event to the `EventStore` and wait. A batcher gathers
//! the events that arrive within a few milliseconds (up to a maximum batch)
//! and a writer stores the whole batch in one transaction: one multi-row
//! INSERT (deduplicated on the provider's event identity), then
//! `calls::apply_events` — one UPDATE that moves every affected call
//! forward, and the redials the call-state module's policy picks — the
//! redial jobs published with confirms, then COMMIT. Only then does
//! each handler answer 2xx. A failed batch answers every one of its requests
//! 503, so the provider retries; nothing is half-stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tocsin_core::calls;
use tocsin_core::queue::{self, DelayTier, Publisher, Topology};
use tocsin_core::{CallJob, CallState};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};
use tracing::{error, info, warn};

/// A provider event in the form every provider's payload converts to: its
/// identity and raw payload (stored as they are) and what it says about its
/// call (applied by `calls::apply_events`).
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// How the event proves it is for the call it names.
    pub proof: CallProof,
    pub provider: &'static str,
    pub dedupe_key: String,
    /// The provider's own status word.
    pub status: String,
    pub payload: serde_json::Value,
    pub call: calls::Event,
}

impl StoredEvent {
    /// Replaces every NUL in the event's texts (payload strings and keys
    /// included) with U+FFFD.
    fn clean_nul(&mut self) {
        fn text(s: &mut String) {
            if s.contains('\0') {
                *s = s.replace('\0', "\u{FFFD}");
            }
        }
        fn json(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::String(s) => text(s),
                serde_json::Value::Array(items) => items.iter_mut().for_each(json),
                serde_json::Value::Object(map) => {
                    if map.keys().any(|k| k.contains('\0')) {
                        let old = std::mem::take(map);
                        for (k, v) in old {
                            map.insert(k.replace('\0', "\u{FFFD}"), v);
                        }
                    }
                    map.values_mut().for_each(json);
                }
                _ => {}
            }
        }
        text(&mut self.dedupe_key);
        text(&mut self.status);
        json(&mut self.payload);
        for s in [&mut self.call.provider_call_id, &mut self.call.answered_by, &mut self.call.detail]
            .into_iter()
            .flatten()
        {
            text(s);
        }
        if let CallProof::Token(Some(t)) = &mut self.proof {
            text(t);
        }
    }
}

/// How an event proves the call it names (`call.call_id`) is its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallProof {
    /// The call id came from a part the provider signed (Twilio signs the
    /// URL with its query; Telnyx signs the body's `client_state`).
    Signed,
    /// The call id came from the URL's query, which the signature does not
    /// cover (Vonage): the URL must carry the attempt's token too.
    Token(Option<String>),
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
    /// PostgreSQL refused a value of the batch (a data exception, an
    /// integrity or size limit): one event's fault, not the database's.
    #[error("database refused a value: {0}")]
    Refused(String),
    #[error("publishing a redial: {0}")]
    Publish(String),
    #[error("the event store is shutting down")]
    Closed,
}

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
        if let Some(publisher) = &redials {
            tokio::spawn(publisher.clone().run_outbox(pool.clone()));
        }
        let (tx, rx) = mpsc::channel(config.max_events * 4);
        tokio::spawn(batcher(pool, redials, config, rx));
        Self { tx }
    }

    /// Stores `event` durably; returns once its batch is committed. NUL
    /// characters (which PostgreSQL refuses in text and JSONB) are replaced
    /// by U+FFFD first: a provider's event is stored, never refused for them.
    pub async fn store(&self, mut event: StoredEvent) -> Result<Stored, StoreError> {
        event.clean_nul();
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
    // One event the database refuses must not fail the others of its batch:
    // each is written again on its own, and answered for itself.
    if matches!(result, Err(StoreError::Refused(_))) && events.len() > 1 {
        warn!(
            events = events.len(),
            "the database refused a value in an event batch; storing each event alone"
        );
        let mut outcomes = Vec::with_capacity(events.len());
        for event in &events {
            outcomes.push(store_batch(pool, redials, std::slice::from_ref(event)).await.map(|o| o[0]));
        }
        metrics::histogram!("tocsin_webhook_store_seconds").record(started.elapsed().as_secs_f64());
        for (pending, outcome) in batch.into_iter().zip(outcomes) {
            if let Err(e) = &outcome {
                error!(error = %e, key = %pending.event.dedupe_key, "event not stored; answering 503");
            }
            let _ = pending.reply.send(outcome);
        }
        return;
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
        // Classes 22 (data exception), 23 (integrity), 54 (program limit).
        sqlx::Error::Database(d)
            if d.code().is_some_and(|c| ["22", "23", "54"].contains(&&c[..2.min(c.len())])) =>
        {
            StoreError::Refused(e.to_string())
        }
        _ => StoreError::Database(e.to_string()),
    };
    let mut tx = pool.begin().await.map_err(db)?;

    let call_ids: Vec<Option<uuid::Uuid>> = events.iter().map(|e| e.call.call_id.map(|c| c.0)).collect();
    let attempts: Vec<Option<i32>> = events.iter().map(|e| e.call.attempt).collect();
    let providers: Vec<&str> = events.iter().map(|e| e.provider).collect();
    let keys: Vec<&str> = events.iter().map(|e| e.dedupe_key.as_str()).collect();
    let provider_call_ids: Vec<Option<&str>> =
        events.iter().map(|e| e.call.provider_call_id.as_deref()).collect();
    let statuses: Vec<&str> = events.iter().map(|e| e.status.as_str()).collect();
    let states: Vec<Option<&str>> = events.iter().map(|e| e.call.state.map(CallState::as_str)).collect();
    let occurred: Vec<Option<DateTime<Utc>>> = events.iter().map(|e| e.call.occurred_at).collect();
    let payloads: Vec<&serde_json::Value> = events.iter().map(|e| &e.payload).collect();
    let signed: Vec<bool> = events.iter().map(|e| e.proof == CallProof::Signed).collect();
    let tokens: Vec<Option<&str>> = events
        .iter()
        .map(|e| match &e.proof {
            CallProof::Token(t) => t.as_deref(),
            CallProof::Signed => None,
        })
        .collect();
    // An event changes only the call it proves to be for: named in a signed
    // part, or with the URL token of the call's current attempt. Otherwise
    // (a signed event replayed to another call's URL, a forged query) it is
    // stored flagged `unknown_call` and changes nothing. Calls claimed before
    // tokens existed (none stored, no longer waiting) are let through.
    let inserted: Vec<(String, bool)> = sqlx::query_as(
        "INSERT INTO call_events (call_id, attempt, provider, dedupe_key, provider_call_id, status, state, \
                                  occurred_at, unknown_call, payload) \
         SELECT u.call_id, u.attempt, u.provider, u.key, u.pcid, u.status, u.state, u.occurred, \
                u.call_id IS NULL OR NOT EXISTS ( \
                    SELECT 1 FROM calls k WHERE k.id = u.call_id \
                      AND (u.signed OR u.token = k.url_token \
                           OR (k.url_token IS NULL AND k.state NOT IN ('queued', 'retry_wait')))), \
                u.payload \
         FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                     $8::timestamptz[], $9::jsonb[], $10::bool[], $11::text[]) \
              AS u(call_id, attempt, provider, key, pcid, status, state, occurred, payload, signed, token) \
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
    .bind(&signed)
    .bind(&tokens)
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;

    // Map back to requests: the first request with a newly inserted key wins;
    // later ones with the same key in this batch are duplicates.
    let mut fresh: HashMap<&str, bool> = inserted.iter().map(|(k, unknown)| (k.as_str(), *unknown)).collect();
    let mut outcomes = Vec::with_capacity(events.len());
    let mut applied: Vec<&calls::Event> = Vec::new();
    for event in events {
        match fresh.remove(event.dedupe_key.as_str()) {
            Some(true) => outcomes.push(Stored::UnknownCall),
            Some(false) => {
                outcomes.push(Stored::Applied);
                applied.push(&event.call);
            }
            None => outcomes.push(Stored::Duplicate),
        }
    }

    // The calls move on, and the redials the batch triggers go to the
    // outbox in the same transaction: whatever RabbitMQ does, the events are
    // stored and answered, and no call waits in `retry_wait` without its job
    // on its way (the outbox is published after the commit, and again until
    // the broker confirms).
    let redial_jobs = calls::apply_events(&mut tx, &applied, redials.is_some()).await.map_err(db)?;
    let mut queued = 0;
    for (tier, jobs) in &redial_jobs {
        let ids: Vec<uuid::Uuid> = jobs.iter().map(|j| j.call_id.0).collect();
        let bodies: Vec<Vec<u8>> = jobs.iter().map(CallJob::to_bytes).collect();
        sqlx::query(
            "INSERT INTO redial_outbox (call_id, job, delay_tier) \
             SELECT u.id, u.job, $3 FROM unnest($1::uuid[], $2::bytea[]) AS u(id, job)",
        )
        .bind(&ids)
        .bind(&bodies)
        .bind(tier.name())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        queued += jobs.len();
    }
    tx.commit().await.map_err(db)?;
    if let (Some(publisher), true) = (redials, queued > 0) {
        metrics::counter!("tocsin_redials_total").increment(queued as u64);
        info!(count = queued, "redials scheduled");
        publisher.wake.notify_one();
    }
    Ok(outcomes)
}

/// Publishes redial jobs, connecting (and reconnecting) to RabbitMQ as needed.
pub struct RedialPublisher {
    url: String,
    topology: Topology,
    inner: Mutex<Option<(lapin::Connection, Publisher)>>,
    /// Rung when a batch put redials in the outbox.
    wake: tokio::sync::Notify,
}

/// How often the outbox is looked at when nothing rings.
const OUTBOX_EVERY: Duration = Duration::from_secs(2);
/// The most redials one outbox pass publishes.
const OUTBOX_BATCH: i64 = 500;

impl RedialPublisher {
    pub fn new(url: String, topology: Topology) -> Self {
        Self { url, topology, inner: Mutex::new(None), wake: tokio::sync::Notify::new() }
    }

    /// Publishes the outbox until the process ends: when a batch rings, and
    /// every few seconds (redials left by a broker outage, or by a replica
    /// that stopped).
    pub async fn run_outbox(self: Arc<Self>, pool: PgPool) {
        let mut failing = false;
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(OUTBOX_EVERY) => {}
            }
            loop {
                match self.publish_outbox(&pool).await {
                    Ok(n) => {
                        if failing {
                            info!(
                                "RabbitMQ is reachable again: the redials kept in the outbox are being published"
                            );
                            failing = false;
                        }
                        if n < OUTBOX_BATCH as usize {
                            break;
                        }
                    }
                    Err(e) => {
                        if !failing {
                            error!(error = %e, "redials kept in the outbox: RabbitMQ is unreachable; the events are stored, the redials are published when it is back");
                        }
                        failing = true;
                        break;
                    }
                }
            }
        }
    }

    /// One pass: publishes up to `OUTBOX_BATCH` redials and deletes them
    /// once the broker confirmed them; returns how many.
    pub async fn publish_outbox(&self, pool: &PgPool) -> Result<usize, StoreError> {
        let db = |e: sqlx::Error| StoreError::Database(e.to_string());
        let mut tx = pool.begin().await.map_err(db)?;
        let rows: Vec<(i64, Vec<u8>, String)> = sqlx::query_as(
            "SELECT id, job, delay_tier FROM redial_outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(OUTBOX_BATCH)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut done = Vec::with_capacity(rows.len());
        for (id, body, tier) in &rows {
            // A row that cannot be read (never written by this code) is dropped, logged.
            let (Ok(job), Some(tier)) = (CallJob::decode(body), DelayTier::from_name(tier)) else {
                error!(id, "unreadable redial in the outbox; dropped");
                done.push(*id);
                continue;
            };
            self.publish(std::slice::from_ref(&job), tier).await?;
            done.push(*id);
        }
        sqlx::query("DELETE FROM redial_outbox WHERE id = ANY($1)")
            .bind(&done)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        metrics::gauge!("tocsin_redial_outbox_published").set(done.len() as f64);
        Ok(done.len())
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

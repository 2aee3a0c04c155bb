//! Durable event storage: insert the event (deduplicated), then move the
//! call forward, in one transaction committed before the provider gets 2xx.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tocsin_core::{CallId, CallState};

/// A provider event in the form every provider's payload converts to.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub call_id: Option<CallId>,
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
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    /// New event, applied to its call.
    Applied,
    /// Seen before (same dedupe key): nothing changed.
    Duplicate,
    /// Stored, but no call with that id exists.
    UnknownCall,
}

/// Where handlers hand events over. Every provider's handler stores through
/// it, so batching and redials live in one place.
#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
}

impl EventStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Stores `event` durably; returns once it is committed.
    pub async fn store(&self, event: StoredEvent) -> Result<Stored, sqlx::Error> {
        store_one(&self.pool, &event).await
    }
}

async fn store_one(pool: &PgPool, event: &StoredEvent) -> Result<Stored, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let known: bool = match event.call_id {
        Some(id) => {
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM calls WHERE id = $1)")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?
        }
        None => false,
    };
    let inserted = sqlx::query(
        "INSERT INTO call_events (call_id, provider, dedupe_key, provider_call_id, status, state, \
                                  occurred_at, unknown_call, payload) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (dedupe_key) DO NOTHING",
    )
    .bind(event.call_id)
    .bind(event.provider)
    .bind(&event.dedupe_key)
    .bind(&event.provider_call_id)
    .bind(&event.status)
    .bind(event.state.map(CallState::as_str))
    .bind(event.occurred_at)
    .bind(!known)
    .bind(&event.payload)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        tx.commit().await?;
        return Ok(Stored::Duplicate);
    }
    let Some(call_id) = event.call_id.filter(|_| known) else {
        tx.commit().await?;
        return Ok(Stored::UnknownCall);
    };
    // States only move forward; a specific failure may still replace a bare
    // `completed` for a call that was never answered (events arrive out of order).
    sqlx::query(
        "UPDATE calls SET \
            state = CASE \
                WHEN call_state_rank($2) > call_state_rank(state) THEN $2 \
                WHEN state = 'completed' AND answered_at IS NULL \
                     AND $2 IN ('busy', 'no_answer', 'rejected', 'failed') THEN $2 \
                ELSE state END, \
            provider_call_id = coalesce(provider_call_id, $3), \
            answered_at = coalesce(answered_at, CASE WHEN $2 = 'answered' THEN $4 END), \
            ended_at = CASE WHEN call_state_rank($2) = 5 THEN coalesce(ended_at, $4) ELSE ended_at END, \
            duration_secs = coalesce($5, duration_secs), \
            price = coalesce($6::float8::numeric, price), \
            answered_by = coalesce($7, answered_by), \
            error_detail = CASE WHEN $2 IN ('failed', 'rejected') THEN coalesce($8, error_detail) \
                                ELSE error_detail END, \
            updated_at = now() \
         WHERE id = $1",
    )
    .bind(call_id)
    .bind(event.state.map(CallState::as_str))
    .bind(&event.provider_call_id)
    .bind(event.occurred_at.unwrap_or_else(Utc::now))
    .bind(event.duration_secs)
    .bind(event.price)
    .bind(&event.answered_by)
    .bind(&event.detail)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Stored::Applied)
}

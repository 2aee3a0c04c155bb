//! `GET /api/v1/campaigns/{name}/events`: Server-Sent Events of a
//! campaign's call state changes and counters.
//!
//! Source: the `call_state_log` table, filled by a trigger on `calls`
//! (`AFTER UPDATE OF state … WHEN (OLD.state IS DISTINCT FROM NEW.state)`,
//! migration `20261122300001`), which also NOTIFYs `tocsin_calls` with the
//! campaign id. A trigger rather than a NOTIFY from the event store: every
//! writer of `calls` (workers, webhook replicas, producer cancels) is
//! covered, the log row commits atomically with the state it records, the
//! group commit gains no round trip (one log insert per changed call inside
//! its transaction; updates that change no state pay nothing), and NOTIFY is
//! delivered at commit, so listeners never read ahead of what is committed.
//!
//! Each process holds one LISTEN connection (`Hub`) and fans notifications
//! out to its streams; every stream then reads the log from its own
//! position. The position is a `pg_snapshot`: the rows of transactions
//! visible in the new snapshot but not in the previous one are exactly
//! those committed in between, so nothing is skipped even when sequence ids
//! commit out of order. A batch of `call` events ends with a `counts` event
//! whose SSE `id` is that snapshot; a client reconnecting with
//! `Last-Event-ID` gets every change after it (a batch cut short is sent
//! again in full, so changes are at least once: dedupe on `seq`). Within
//! a batch, changes are in log order (`seq`), which for any one call is the
//! order its state moved (its row lock orders the updates).
//! `Last-Event-ID: 0` replays the campaign from its start.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tocsin_core::CampaignId;
use tocsin_core::http::ApiError;
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use super::auth::{Scope, authenticate};
use super::campaigns::campaign_status;
use super::{ApiState, db_unavailable};

/// The NOTIFY channel the triggers use.
const CHANNEL: &str = "tocsin_calls";
/// A stream re-reads the log this often even without a notification (a
/// LISTEN connection that dropped and came back may have missed some).
const POLL: Duration = Duration::from_secs(5);
/// The snapshot before any transaction: replays everything.
const BEGINNING: &str = "3:3:";

/// One LISTEN connection per process, fanned out to every stream.
/// `Uuid::nil()` means "everyone re-read" (the connection was re-made).
#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Uuid>,
    _stop: Arc<DropGuard>,
}

impl Hub {
    /// Starts the listener task; it stops when the last clone is dropped.
    pub fn start(pool: PgPool) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let stop = CancellationToken::new();
        tokio::spawn(listen(pool, tx.clone(), stop.clone()));
        Self { tx, _stop: Arc::new(stop.drop_guard()) }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Uuid> {
        self.tx.subscribe()
    }
}

async fn listen(pool: PgPool, tx: broadcast::Sender<Uuid>, stop: CancellationToken) {
    let mut delay = Duration::from_millis(200);
    while !stop.is_cancelled() {
        let connected = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = match tokio::select! { r = connected => r, () = stop.cancelled() => return } {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN for live events failed; retrying");
                tokio::select! { () = tokio::time::sleep(delay) => {}, () = stop.cancelled() => return }
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        delay = Duration::from_millis(200);
        let _ = tx.send(Uuid::nil());
        loop {
            let next = tokio::select! { n = listener.try_recv() => n, () = stop.cancelled() => return };
            match next {
                Ok(Some(n)) => {
                    if let Ok(id) = n.payload().parse::<Uuid>() {
                        let _ = tx.send(id);
                    }
                }
                // The connection was lost; sqlx reconnects on the next call, and
                // notifications in between are lost: everyone re-reads.
                Ok(None) => {
                    let _ = tx.send(Uuid::nil());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "live events connection failed; reconnecting");
                    let _ = tx.send(Uuid::nil());
                    break;
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct EventsQuery {
    /// For clients that cannot set headers (`EventSource` on a first connect).
    last_event_id: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Change {
    seq: i64,
    call_id: Uuid,
    state: String,
    at: DateTime<Utc>,
}

/// `GET /api/v1/campaigns/{name}/events`.
pub async fn events(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state.pool, &headers, Scope::Read).await?;
    caller.check_campaign(&name)?;
    if campaign_status(&state.pool, &name).await?.is_none() {
        return Err(ApiError::not_found(format!("no campaign named {name:?}")));
    }
    // Subscribe before reading the starting position, so no notification
    // between the two is missed.
    let notifications = state.hub.subscribe();
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.last_event_id)
        .map(|s| s.trim().to_owned());
    let position: String = match resume.as_deref() {
        Some("0") => BEGINNING.to_owned(),
        Some(s) => sqlx::query_scalar("SELECT $1::pg_snapshot::text")
            .bind(s)
            .fetch_one(&state.pool)
            .await
            .map_err(|_| ApiError::bad_request("Last-Event-ID: not an event id from this stream"))?,
        None => sqlx::query_scalar("SELECT pg_current_snapshot()::text")
            .fetch_one(&state.pool)
            .await
            .map_err(|e| db_unavailable(e, "reading the current snapshot"))?,
    };
    let stream = Stream {
        pool: state.pool.clone(),
        campaign: CampaignId::from_name(&name),
        name,
        position,
        notifications,
        first: true,
    };
    let events = futures::stream::unfold(stream, |mut s| async move {
        let batch = s.next_batch().await;
        Some((futures::stream::iter(batch.into_iter().map(Ok::<_, Infallible>)), s))
    })
    .flatten();
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

struct Stream {
    pool: PgPool,
    campaign: CampaignId,
    name: String,
    position: String,
    notifications: broadcast::Receiver<Uuid>,
    first: bool,
}

impl Stream {
    /// Waits for a change to this campaign (or the poll interval), then
    /// returns the events since the stream's position and moves it on.
    async fn next_batch(&mut self) -> Vec<Event> {
        if !self.first {
            self.wait().await;
        }
        self.first = false;
        match self.read().await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, campaign = %self.name, "reading live events failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.first = true;
                Vec::new()
            }
        }
    }

    async fn wait(&mut self) {
        let campaign = self.campaign.0;
        let woken = async {
            loop {
                match self.notifications.recv().await {
                    Ok(id) if id == campaign || id.is_nil() => return,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        let _ = tokio::time::timeout(POLL, woken).await;
        // Changes that arrive together are read together.
        while self.notifications.try_recv().is_ok() {}
    }

    async fn read(&mut self) -> Result<Vec<Event>, sqlx::Error> {
        let now: String =
            sqlx::query_scalar("SELECT pg_current_snapshot()::text").fetch_one(&self.pool).await?;
        let changes: Vec<Change> = sqlx::query_as(
            "SELECT id AS seq, call_id, state, at FROM call_state_log \
             WHERE campaign_id = $1 AND tx >= pg_snapshot_xmin($2::pg_snapshot) \
               AND pg_visible_in_snapshot(tx, $3::pg_snapshot) \
               AND NOT pg_visible_in_snapshot(tx, $2::pg_snapshot) \
             ORDER BY id",
        )
        .bind(self.campaign)
        .bind(&self.position)
        .bind(&now)
        .fetch_all(&self.pool)
        .await?;
        let mut events = Vec::with_capacity(changes.len() + 1);
        for c in &changes {
            let data = json!({ "seq": c.seq, "call_id": c.call_id, "state": c.state, "at": c.at });
            events.push(Event::default().event("call").data(data.to_string()));
        }
        let counts = match campaign_status(&self.pool, &self.name).await {
            Ok(Some(status)) => Event::default().event("counts").data(status.to_string()),
            Ok(None) => Event::default().event("deleted").data("{}"),
            Err(_) => return Err(sqlx::Error::PoolTimedOut),
        };
        events.push(counts.id(now.clone()));
        self.position = now;
        Ok(events)
    }
}

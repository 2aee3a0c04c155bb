//! `GET /api/v1/campaigns/{name}/events`: Server-Sent Events of a
//! campaign's call state changes and counters.
//!
//! Source: the `call_state_log` table, filled by a trigger on `calls`
//! (`AFTER UPDATE OF state … WHEN (OLD.state IS DISTINCT FROM NEW.state)`,
//! migrations `20261122300001` and `20261122500000`). A trigger rather than
//! a write from the event store: every writer of `calls` (workers, webhook
//! replicas, producer cancels) is covered, the log row commits atomically
//! with the state it records, and updates that change no state pay nothing.
//! The trigger does not NOTIFY: PostgreSQL serialises the commits of all
//! notifying transactions through the WAL flush, which capped the workers
//! at ~500 calls/s. Feeds poll the log instead (`POLL`, an indexed read per
//! watched campaign); new calls and campaign status changes still NOTIFY
//! `tocsin_calls` and wake their feed at once.
//!
//! Fan-out: each process holds one LISTEN connection (`Hub`), and one
//! reader task per watched campaign (`Feed`). On a poll or a notification
//! the feed reads the log once — the rows of the transactions visible in the current
//! `pg_snapshot` but not in the feed's previous one, i.e. exactly those
//! committed in between, even when sequence ids commit out of order — and
//! the campaign's counters once, renders the SSE text once, and broadcasts
//! it (an `Arc`, not a copy) to every stream of that campaign. So a change
//! costs two queries per campaign however many listeners there are (the
//! first design read per stream: with 1,000 listeners, 3,000 queries per
//! change batch). A feed exists while its campaign has listeners.
//!
//! The log also holds the dialogue's milestones, written by
//! `calls::keypress` with the confirmation they record: a contact's
//! confirmation or opt-out goes out as a `confirmation` event (`reply`:
//! `confirmed` or `opted_out`) as it happens.
//!
//! A batch of `call` events ends with a `counts` event whose SSE `id` is
//! the snapshot it reaches. Every stream keeps its own position: a batch
//! that starts where the stream stands is forwarded as it is; otherwise
//! (a stream that just joined from `Last-Event-ID`, or one that fell behind
//! the broadcast buffer) the stream reads the gap itself, from its position
//! to the batch's end, and is back in step. A client reconnecting with
//! `Last-Event-ID` therefore gets every change after it (a batch cut short
//! is sent again in full, and a position from another replica may be
//! ahead of this one's, so changes are at least once: dedupe on `seq`).
//! Within a batch, changes are in log order (`seq`), which for any one call
//! is the order its state moved (its row lock orders the updates).
//! `Last-Event-ID: 0` replays the campaign from its start.

mod snapshot;

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tocsin_core::CampaignId;
use tocsin_core::http::ApiError;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

pub use self::snapshot::Snapshot;
use super::auth::{Auth, Read};
use super::campaigns::campaign_status;
use super::{ApiState, Result};

/// The NOTIFY channel of new calls and campaign status changes.
const CHANNEL: &str = "tocsin_calls";
/// A feed reads the log this often (state changes do not notify). The
/// counters are read only when the log moved or a notification came, so a
/// quiet poll is one indexed query that returns nothing.
const POLL: Duration = Duration::from_millis(100);
/// A stream with nothing to say sends an SSE comment this often, so
/// proxies and clients see a live connection.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Batches a feed holds for its slowest stream; a stream further behind
/// reads the gap itself.
const BUFFER: usize = 64;

/// One LISTEN connection per process, and a feed per watched campaign.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
    _stop: Arc<DropGuard>,
}

struct HubInner {
    pool: PgPool,
    feeds: Mutex<HashMap<Uuid, Arc<Feed>>>,
    stop: CancellationToken,
}

/// A campaign's shared reader: its position, the broadcast of its batches,
/// and the wake-up its notifications ring.
struct Feed {
    campaign: CampaignId,
    name: String,
    wake: Notify,
    state: Mutex<FeedState>,
}

struct FeedState {
    /// Where the last batch ended; only the feed's task moves it.
    position: Snapshot,
    /// The last counters sent, so an unchanged quiet poll sends nothing.
    counts: Option<Value>,
    tx: broadcast::Sender<Arc<Batch>>,
}

/// The changes between two snapshots, rendered once for every stream.
struct Batch {
    from: Snapshot,
    to: Snapshot,
    sse: Bytes,
}

/// A poisoned lock only means a panic elsewhere; the map and positions stay valid.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Hub {
    /// Starts the listener task; it and every feed stop when the last clone is dropped.
    pub fn start(pool: PgPool) -> Self {
        let stop = CancellationToken::new();
        let inner = Arc::new(HubInner { pool, feeds: Mutex::new(HashMap::new()), stop: stop.clone() });
        tokio::spawn(listen(Arc::clone(&inner)));
        Self { inner, _stop: Arc::new(stop.drop_guard()) }
    }

    /// Joins campaign `name`'s feed (starting it if nobody watches yet):
    /// a receiver of its batches and the position the next batch starts
    /// from, taken together under the feed's lock so nothing falls between.
    /// `start` is the position for a feed this call creates.
    fn join(
        &self,
        name: &str,
        start: impl FnOnce() -> Snapshot,
    ) -> (broadcast::Receiver<Arc<Batch>>, Snapshot) {
        let campaign = CampaignId::from_name(name);
        // The map's lock is held while subscribing, so a feed retiring for
        // want of listeners (which takes the same lock) cannot lose this one.
        let mut feeds = lock(&self.inner.feeds);
        if let Some(feed) = feeds.get(&campaign.0) {
            let state = lock(&feed.state);
            return (state.tx.subscribe(), state.position.clone());
        }
        let (tx, rx) = broadcast::channel(BUFFER);
        let position = start();
        let feed = Arc::new(Feed {
            campaign,
            name: name.to_owned(),
            wake: Notify::new(),
            state: Mutex::new(FeedState { position: position.clone(), counts: None, tx }),
        });
        feeds.insert(campaign.0, Arc::clone(&feed));
        tokio::spawn(run_feed(Arc::clone(&self.inner), feed));
        (rx, position)
    }
}

/// Rings the feed of the notified campaign; all of them after a reconnect
/// (notifications in between are lost).
fn wake(inner: &HubInner, campaign: Option<Uuid>) {
    let feeds = lock(&inner.feeds);
    match campaign {
        Some(id) => {
            if let Some(f) = feeds.get(&id) {
                f.wake.notify_one();
            }
        }
        None => feeds.values().for_each(|f| f.wake.notify_one()),
    }
}

async fn listen(inner: Arc<HubInner>) {
    let stop = inner.stop.clone();
    let mut delay = Duration::from_millis(200);
    while !stop.is_cancelled() {
        let connected = async {
            let mut l = PgListener::connect_with(&inner.pool).await?;
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
        wake(&inner, None);
        loop {
            let next = tokio::select! { n = listener.try_recv() => n, () = stop.cancelled() => return };
            match next {
                Ok(Some(n)) => {
                    if let Ok(id) = n.payload().parse::<Uuid>() {
                        wake(&inner, Some(id));
                    }
                }
                // The connection was lost; sqlx reconnects on the next call.
                Ok(None) => wake(&inner, None),
                Err(e) => {
                    tracing::warn!(error = %e, "live events connection failed; reconnecting");
                    wake(&inner, None);
                    break;
                }
            }
        }
    }
}

/// A feed's task: on each wake-up (or poll), one read for every listener.
async fn run_feed(hub: Arc<HubInner>, feed: Arc<Feed>) {
    loop {
        let notified = tokio::select! {
            () = feed.wake.notified() => true,
            () = tokio::time::sleep(POLL) => false,
            () = hub.stop.cancelled() => return,
        };
        if retire_if_unwatched(&hub, &feed) {
            return;
        }
        let (from, last_counts) = {
            let s = lock(&feed.state);
            (s.position.clone(), s.counts.clone())
        };
        let counts_needed = notified || last_counts.is_none();
        match read(&hub.pool, &feed.campaign, &feed.name, &from, None, counts_needed).await {
            Ok((to, changes, counts)) => {
                // A quiet poll did not read the counters: they are as last sent.
                let counts = if changes.is_empty() && !counts_needed { last_counts.clone() } else { counts };
                if changes.is_empty() && last_counts.is_some() && counts == last_counts {
                    // Nothing to say: keep the position, the next read covers the span.
                    continue;
                }
                let sse = render(&changes, counts.as_ref(), &to);
                let mut s = lock(&feed.state);
                s.position = to.clone();
                s.counts = counts;
                // No receivers is not an error: the next round retires the feed.
                let _ = s.tx.send(Arc::new(Batch { from, to, sse }));
            }
            Err(e) => {
                tracing::warn!(error = %e, campaign = %feed.name, "reading live events failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = hub.stop.cancelled() => return,
                }
                feed.wake.notify_one();
            }
        }
    }
}

/// Removes the feed when no stream listens to it any more.
fn retire_if_unwatched(hub: &HubInner, feed: &Feed) -> bool {
    let mut feeds = lock(&hub.feeds);
    if lock(&feed.state).tx.receiver_count() > 0 {
        return false;
    }
    feeds.remove(&feed.campaign.0);
    true
}

#[derive(sqlx::FromRow)]
struct Change {
    seq: i64,
    call_id: Uuid,
    state: String,
    at: DateTime<Utc>,
}

/// The log rows committed between `from` and `to` (the current snapshot
/// when `None`), and the counters (`None`: the campaign was deleted).
async fn read(
    pool: &PgPool,
    campaign: &CampaignId,
    name: &str,
    from: &Snapshot,
    to: Option<&Snapshot>,
    counts_if_unchanged: bool,
) -> Result<(Snapshot, Vec<Change>, Option<Value>), sqlx::Error> {
    let to = match to {
        Some(t) => t.clone(),
        None => {
            let now: String =
                sqlx::query_scalar("SELECT pg_current_snapshot()::text").fetch_one(pool).await?;
            Snapshot::parse(&now)
                .ok_or_else(|| sqlx::Error::Protocol(format!("unparsable snapshot {now}")))?
        }
    };
    let (from_text, to_text) = (from.to_string(), to.to_string());
    let changes: Vec<Change> = sqlx::query_as(
        "SELECT id AS seq, call_id, state, at FROM call_state_log \
         WHERE campaign_id = $1 AND tx >= pg_snapshot_xmin($2::pg_snapshot) \
           AND pg_visible_in_snapshot(tx, $3::pg_snapshot) \
           AND NOT pg_visible_in_snapshot(tx, $2::pg_snapshot) \
         ORDER BY id",
    )
    .bind(campaign)
    .bind(&from_text)
    .bind(&to_text)
    .fetch_all(pool)
    .await?;
    if changes.is_empty() && !counts_if_unchanged {
        return Ok((to, changes, None));
    }
    let counts = campaign_status(pool, name).await?;
    Ok((to, changes, counts))
}

/// The SSE text of a batch: `call` events, then `counts` (or `deleted`)
/// carrying the position as its id.
fn render(changes: &[Change], counts: Option<&Value>, to: &Snapshot) -> Bytes {
    let mut out = String::with_capacity(changes.len() * 160 + 400);
    for c in changes {
        // The log's milestones (`calls::keypress`) are not states.
        if matches!(c.state.as_str(), "confirmed" | "opted_out") {
            let data = json!({ "seq": c.seq, "call_id": c.call_id, "reply": c.state, "at": c.at });
            let _ = write!(out, "event: confirmation\ndata: {data}\n\n");
            continue;
        }
        let data = json!({ "seq": c.seq, "call_id": c.call_id, "state": c.state, "at": c.at });
        let _ = write!(out, "event: call\ndata: {data}\n\n");
    }
    match counts {
        Some(v) => {
            let _ = write!(out, "event: counts\ndata: {v}\nid: {to}\n\n");
        }
        None => {
            let _ = write!(out, "event: deleted\ndata: {{}}\nid: {to}\n\n");
        }
    }
    Bytes::from(out)
}

/// Ends every open stream when cancelled: installed by `webhook::run` as a
/// request extension with its shutdown token, because a graceful shutdown
/// waits for responses to finish, and a stream never would. (Clients
/// reconnect to another replica with `Last-Event-ID`.)
#[derive(Clone)]
pub struct EndStreams(pub CancellationToken);

#[derive(Deserialize)]
pub struct EventsQuery {
    /// For clients that cannot set headers (`EventSource` on a first connect).
    last_event_id: Option<String>,
}

/// `GET /api/v1/campaigns/{name}/events`.
pub async fn events(
    State(state): State<Arc<ApiState>>,
    end: Option<Extension<EndStreams>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<EventsQuery>,
    caller: Auth<Read>,
) -> Result<Response> {
    caller.check_campaign(&name)?;
    if campaign_status(&state.pool, &name).await?.is_none() {
        return Err(ApiError::not_found(format!("no campaign named {name:?}")).into());
    }
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.last_event_id)
        .map(|s| s.trim().to_owned());
    let resume = match resume.as_deref() {
        None => None,
        Some("0") => Some(Snapshot::beginning()),
        Some(s) => Some(
            Snapshot::parse(s)
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID: not an event id from this stream"))?,
        ),
    };
    // A feed that is not running yet starts at the current snapshot.
    let now: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text").fetch_one(&state.pool).await?;
    let now = Snapshot::parse(&now).ok_or_else(ApiError::unavailable)?;
    // A position ahead of the database was never given by this stream (and
    // past 2^63 PostgreSQL cannot even read it): refused, never a stream
    // that waits for transactions that will not come.
    if resume.as_ref().is_some_and(|r| r.is_after(&now)) {
        return Err(ApiError::bad_request(
            "Last-Event-ID: not an event id from this stream (it is ahead of the database)",
        )
        .into());
    }
    let (rx, joined_at) = state.hub.join(&name, || now);
    let stream = Listener {
        pool: state.pool.clone(),
        campaign: CampaignId::from_name(&name),
        name,
        // A fresh stream starts where the feed stands; a resumed one where it left off.
        position: resume.unwrap_or_else(|| joined_at.clone()),
        first: Some(joined_at),
        rx,
    };
    let end = end.map_or_else(CancellationToken::new, |Extension(e)| e.0);
    let body = futures::stream::unfold((stream, end), |(mut s, end)| async move {
        let chunk = tokio::select! {
            c = s.next_chunk() => c?,
            () = end.cancelled() => return None,
        };
        Some((Ok::<_, Infallible>(chunk), (s, end)))
    });
    let mut response = Body::from_stream(body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Reverse proxies (nginx) must not buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// One stream's state: its position and its receiver of the feed's batches.
struct Listener {
    pool: PgPool,
    campaign: CampaignId,
    name: String,
    position: Snapshot,
    /// Where the feed stood when the stream joined: the first chunk brings
    /// the stream there (the gap from `Last-Event-ID`, and the counters).
    first: Option<Snapshot>,
    rx: broadcast::Receiver<Arc<Batch>>,
}

impl Listener {
    /// The next SSE text to send; `None` ends the stream (the hub stopped).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(to) = self.first.take() {
            return Some(self.catch_up(&to).await);
        }
        loop {
            let batch = match tokio::time::timeout(KEEP_ALIVE, self.rx.recv()).await {
                Err(_) => return Some(Bytes::from_static(b":\n\n")),
                Ok(Ok(b)) => b,
                // Fell behind the buffer: the next batch received is not in
                // step, and `catch_up` reads the gap.
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            };
            if batch.from == self.position {
                self.position = batch.to.clone();
                return Some(batch.sse.clone());
            }
            return Some(self.catch_up(&batch.to).await);
        }
    }

    /// Reads the changes from the stream's position to `to` on its own.
    async fn catch_up(&mut self, to: &Snapshot) -> Bytes {
        loop {
            let read = if self.position == *to {
                // Nothing in between: only the counters.
                campaign_status(&self.pool, &self.name).await.map(|counts| (to.clone(), Vec::new(), counts))
            } else {
                read(&self.pool, &self.campaign, &self.name, &self.position, Some(to), true).await
            };
            match read {
                Ok((to, changes, counts)) => {
                    let sse = render(&changes, counts.as_ref(), &to);
                    self.position = to;
                    return sse;
                }
                Err(e) => {
                    tracing::warn!(error = %e, campaign = %self.name, "reading live events failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

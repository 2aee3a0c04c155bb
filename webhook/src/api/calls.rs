//! `GET /api/v1/campaigns/{name}/calls` (a page of a campaign's calls) and
//! `GET /api/v1/campaigns/{name}/calls/{id}` (one call with its timeline),
//! for the dashboard and for scripts. Scope `campaigns:read`.
//!
//! Pages are keyset-paginated on the number (unique within a campaign):
//! `?after=<last number of the previous page>&limit=N` (N ≤ 500), so a page
//! costs an index range scan however deep it is, `?state=` narrows to
//! one state and `?confirmed=false` to the contacts who have not confirmed. A call's timeline is its state history (`call_state_log`,
//! what the live stream sends) and the provider events stored for it (the
//! `call_timeline` view), each bounded.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use tocsin_core::http::ApiError;
use tocsin_core::{CallState, CampaignId};
use uuid::Uuid;

use super::auth::{Auth, Read};
use super::{ApiState, Result};

/// Calls on one page unless `limit` says otherwise, and the most it may say.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 500;
/// Rows of a call's timeline (state changes, provider events) returned at most.
const TIMELINE_LIMIT: i64 = 1000;

#[derive(Deserialize)]
pub struct CallsQuery {
    after: Option<String>,
    limit: Option<i64>,
    state: Option<String>,
    /// `false`: only contacts who have not confirmed (yet); `true`: only those who have.
    confirmed: Option<bool>,
}

#[derive(sqlx::FromRow)]
struct CallRow {
    id: Uuid,
    number: String,
    state: String,
    attempt: i32,
    provider_call_id: Option<String>,
    source_line: Option<i32>,
    dialing_at: Option<DateTime<Utc>>,
    placed_at: Option<DateTime<Utc>>,
    answered_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    answered_by: Option<String>,
    duration_secs: Option<i32>,
    error_code: Option<String>,
    error_detail: Option<String>,
    updated_at: DateTime<Utc>,
    confirmed_at: Option<DateTime<Utc>>,
    confirmed_attempt: Option<i32>,
    confirmed_key: Option<String>,
    confirmed_late: Option<bool>,
    opted_out_at: Option<DateTime<Utc>>,
}

fn call_json(c: &CallRow) -> Value {
    json!({
        "id": c.id,
        "number": c.number,
        "state": c.state,
        "attempt": c.attempt,
        "provider_call_id": c.provider_call_id,
        "source_line": c.source_line,
        "dialing_at": c.dialing_at,
        "placed_at": c.placed_at,
        "answered_at": c.answered_at,
        "ended_at": c.ended_at,
        "answered_by": c.answered_by,
        "duration_secs": c.duration_secs,
        "error_code": c.error_code,
        "error_detail": c.error_detail,
        "updated_at": c.updated_at,
        "confirmed_at": c.confirmed_at,
        "confirmed_attempt": c.confirmed_attempt,
        "confirmed_key": c.confirmed_key,
        "confirmed_late": c.confirmed_late,
        "opted_out_at": c.opted_out_at,
    })
}

/// The columns of `CallRow`, as a macro so statements stay `&'static str` literals.
macro_rules! call_columns {
    () => {
        "id, number, state, attempt, provider_call_id, source_line, dialing_at, placed_at, \
         answered_at, ended_at, answered_by, duration_secs, error_code, error_detail, updated_at, \
         confirmed_at, confirmed_attempt, confirmed_key, confirmed_late, opted_out_at"
    };
}

/// 404 unless the campaign exists (after the caller's prefix check).
async fn campaign_exists(state: &ApiState, name: &str) -> Result<CampaignId> {
    let id = CampaignId::from_name(name);
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM campaigns WHERE id = $1")
        .bind(id)
        .fetch_optional(&state.pool)
        .await?;
    Ok(found.map(|_| id).ok_or_else(|| ApiError::not_found(format!("no campaign named {name:?}")))?)
}

/// `GET /api/v1/campaigns/{name}/calls?after=&limit=&state=`.
pub async fn list(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(query): Query<CallsQuery>,
    caller: Auth<Read>,
) -> Result<Json<Value>> {
    caller.check_campaign(&name)?;
    let limit = match query.limit {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return Err(
                ApiError::bad_request(format!("limit: must be an integer from 1 to {MAX_LIMIT}")).into()
            );
        }
    };
    if let Some(s) = &query.state
        && s.parse::<CallState>().is_err()
    {
        return Err(ApiError::bad_request(format!("state: not a call state: {s:?}")).into());
    }
    let campaign = campaign_exists(&state, &name).await?;
    // One more row than asked tells whether there is a next page.
    let mut rows: Vec<CallRow> = sqlx::query_as(concat!(
        "SELECT ",
        call_columns!(),
        " FROM calls \
         WHERE campaign_id = $1 AND ($2::text IS NULL OR number > $2) AND ($3::text IS NULL OR state = $3) \
           AND ($5::bool IS NULL OR (confirmed_at IS NOT NULL) = $5) \
         ORDER BY number LIMIT $4"
    ))
    .bind(campaign)
    .bind(&query.after)
    .bind(&query.state)
    .bind(limit + 1)
    .bind(query.confirmed)
    .fetch_all(&state.pool)
    .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = if more { rows.last().map(|r| r.number.clone()) } else { None };
    Ok(Json(json!({
        "calls": rows.iter().map(call_json).collect::<Vec<_>>(),
        "next_after": next,
    })))
}

/// `GET /api/v1/campaigns/{name}/calls.csv`: every call of the campaign as
/// CSV (`tocsin_core::export`), streamed: a task reads the rows and hands
/// lines over a small channel, so neither side holds the campaign at once
/// and a slow client slows the reading.
pub async fn export(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    caller: Auth<Read>,
) -> Result<axum::response::Response> {
    use axum::response::IntoResponse;
    use futures::StreamExt;
    caller.check_campaign(&name)?;
    let campaign = campaign_exists(&state, &name).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<String, std::io::Error>>(64);
    let pool = state.pool.clone();
    tokio::spawn(async move {
        let mut lines = std::pin::pin!(tocsin_core::export::csv(&pool, campaign));
        while let Some(line) = lines.next().await {
            let line = line.map_err(|e| {
                tracing::error!(error = %e, %campaign, "export cut short: database error");
                std::io::Error::other("database error")
            });
            let failed = line.is_err();
            if tx.send(line).await.is_err() || failed {
                break;
            }
        }
    });
    let body = axum::body::Body::from_stream(tokio_stream_from(rx));
    let disposition = format!("attachment; filename=\"{}-calls.csv\"", name);
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (axum::http::header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

/// Points a series has at most (the bucket grows with the campaign's span).
const SERIES_POINTS: f64 = 300.0;

/// `GET /api/v1/campaigns/{name}/series`: the campaign over time, for the
/// dashboard's charts, from the state log: attempts started (`dialing`),
/// outcomes (each final state) and confirmations per bucket of `step_secs`
/// from `start` (unix seconds), and the workers' limit when configured.
pub async fn series(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    caller: Auth<Read>,
) -> Result<Json<Value>> {
    caller.check_campaign(&name)?;
    let campaign = campaign_exists(&state, &name).await?;
    let (t0, t1): (Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT extract(epoch FROM min(at))::float8, extract(epoch FROM max(at))::float8 \
         FROM call_state_log WHERE campaign_id = $1",
    )
    .bind(campaign)
    .fetch_one(&state.pool)
    .await?;
    let (Some(t0), Some(t1)) = (t0, t1) else {
        return Ok(Json(json!({ "start": null, "step_secs": 1, "limit": state.rate_per_sec, "series": {} })));
    };
    let start = t0.floor();
    let step = ((t1 - start) / SERIES_POINTS).ceil().max(1.0);
    let points = ((t1 - start) / step).floor() as usize + 1;
    let rows: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT floor((extract(epoch FROM at) - $2) / $3)::int8, state, count(*) FROM call_state_log \
         WHERE campaign_id = $1 GROUP BY 1, 2",
    )
    .bind(campaign)
    .bind(start)
    .bind(step)
    .fetch_all(&state.pool)
    .await?;
    let mut series: std::collections::BTreeMap<String, Vec<i64>> = std::collections::BTreeMap::new();
    for (bucket, name, n) in rows {
        let keep = name == "dialing"
            || matches!(name.as_str(), "confirmed" | "opted_out")
            || name.parse::<CallState>().is_ok_and(CallState::is_terminal);
        if let (true, Ok(i)) = (keep, usize::try_from(bucket)) {
            series.entry(name).or_insert_with(|| vec![0; points])[i.min(points - 1)] += n;
        }
    }
    let time_to_confirm = time_to_confirm(&state.pool, campaign).await?;
    Ok(Json(json!({
        "start": start, "step_secs": step, "limit": state.rate_per_sec, "series": series,
        "time_to_confirm": time_to_confirm,
    })))
}

/// Upper bounds (seconds) of the time-to-confirm histogram's buckets; the
/// last bucket holds everything slower.
const CONFIRM_BOUNDS_SECS: [f64; 8] = [15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];

/// How long confirmed contacts took, from their first call to their key:
/// a count per bucket of `CONFIRM_BOUNDS_SECS` (`null` while no one has
/// confirmed). The same interval as `campaign_summary.confirm_p50_secs`.
async fn time_to_confirm(pool: &sqlx::PgPool, campaign: tocsin_core::CampaignId) -> Result<Value> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT width_bucket(extract(epoch FROM confirmed_at - first_dialing_at)::float8, $2::float8[]), count(*) \
         FROM calls WHERE campaign_id = $1 AND confirmed_at IS NOT NULL AND first_dialing_at IS NOT NULL \
         GROUP BY 1",
    )
    .bind(campaign)
    .bind(&CONFIRM_BOUNDS_SECS[..])
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok(Value::Null);
    }
    let mut counts = vec![0i64; CONFIRM_BOUNDS_SECS.len() + 1];
    for (bucket, n) in rows {
        counts[usize::try_from(bucket).unwrap_or(0).min(CONFIRM_BOUNDS_SECS.len())] += n;
    }
    Ok(json!({ "bounds_secs": CONFIRM_BOUNDS_SECS, "counts": counts }))
}

/// The receiver as a stream (what `tokio-stream`'s wrapper does, in four lines).
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

#[derive(sqlx::FromRow)]
struct StateRow {
    seq: i64,
    state: String,
    at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    attempt: Option<i32>,
    seq: i64,
    provider: String,
    provider_status: String,
    state: Option<String>,
    occurred_at: Option<DateTime<Utc>>,
    received_at: DateTime<Utc>,
}

/// `GET /api/v1/campaigns/{name}/calls/{id}`: the call, its state changes
/// and its provider events.
pub async fn show(
    State(state): State<Arc<ApiState>>,
    Path((name, id)): Path<(String, String)>,
    caller: Auth<Read>,
) -> Result<Json<Value>> {
    caller.check_campaign(&name)?;
    let id: Uuid = id.parse().map_err(|_| ApiError::bad_request("call id: not a UUID"))?;
    let campaign = campaign_exists(&state, &name).await?;
    let call: Option<CallRow> =
        sqlx::query_as(concat!("SELECT ", call_columns!(), " FROM calls WHERE id = $1 AND campaign_id = $2"))
            .bind(id)
            .bind(campaign)
            .fetch_optional(&state.pool)
            .await?;
    let Some(call) = call else {
        return Err(ApiError::not_found(format!("campaign {name:?} has no call {id}")).into());
    };
    let states: Vec<StateRow> = sqlx::query_as(
        "SELECT id AS seq, state, at FROM call_state_log WHERE campaign_id = $1 AND call_id = $2 \
         ORDER BY id LIMIT $3",
    )
    .bind(campaign)
    .bind(id)
    .bind(TIMELINE_LIMIT)
    .fetch_all(&state.pool)
    .await?;
    let events: Vec<EventRow> = sqlx::query_as(
        "SELECT attempt, seq, provider, provider_status, state, occurred_at, received_at \
         FROM call_timeline WHERE call_id = $1 AND campaign = $2 ORDER BY seq LIMIT $3",
    )
    .bind(id)
    .bind(&name)
    .bind(TIMELINE_LIMIT)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(json!({
        "call": call_json(&call),
        "states": states.iter().map(|s| json!({"seq": s.seq, "state": s.state, "at": s.at})).collect::<Vec<_>>(),
        "events": events.iter().map(|e| json!({
            "seq": e.seq,
            "attempt": e.attempt,
            "provider": e.provider,
            "provider_status": e.provider_status,
            "state": e.state,
            "occurred_at": e.occurred_at,
            "received_at": e.received_at,
        })).collect::<Vec<_>>(),
    })))
}

//! `POST|GET /api/v1/campaigns`, `GET /api/v1/campaigns/{name}` and
//! `POST /api/v1/campaigns/{name}/pause|resume|cancel`.
//!
//! Creating a campaign checks the body (`request`), then runs the
//! producer's own pipeline through the API's seam with the producer
//! (`api::enqueue`); control actions go through the same seam.

mod request;

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use tocsin_core::http::ApiError;
use tocsin_core::{CampaignId, StateCounts};

use self::request::{CreateBody, CreateRequest};
use super::auth::{Auth, Caller, Control, Read, Write};
use super::enqueue::{self, Action, ControlError};
use super::{ApiState, Result, audit, body, conflict};
use tocsin_core::audit::Via;

/// Rejected contacts listed in a create answer; the counts cover all of them.
const LISTED_REJECTIONS: usize = 1000;

/// `POST /api/v1/campaigns`.
pub async fn create(
    State(state): State<Arc<ApiState>>,
    caller: Auth<Write>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let bytes = body::bytes(raw)?;
    let request = body::json_object::<CreateBody>(&bytes, "")?.check(&state.providers)?;
    caller.check_campaign(&request.enqueue.campaign)?;
    let campaign = request.enqueue.campaign.clone();
    let details = request.audit_details();
    let result = create_checked(&state, &caller, &headers, &bytes, request).await;
    if let Ok(response) = &result
        && response.status().is_success()
        && !response.headers().contains_key("idempotent-replayed")
        && !details["dry_run"].as_bool().unwrap_or(false)
    {
        audit::record(&state, &caller, Via::Api, "campaign.enqueue", Some(&campaign), details).await;
    }
    result
}

async fn create_checked(
    state: &Arc<ApiState>,
    caller: &Caller,
    headers: &HeaderMap,
    bytes: &Bytes,
    request: CreateRequest,
) -> Result<Response> {
    let state = state.clone();
    let idempotency = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str().ok().map(str::trim).filter(|k| !k.is_empty() && k.len() <= 200) {
            Some(k) => Some(k.to_owned()),
            None => {
                return Err(ApiError::bad_request(
                    "Idempotency-Key: must be 1 to 200 visible ASCII characters",
                )
                .into());
            }
        },
    };
    let Some(idem_key) = idempotency else {
        let (status, answer) = run_create(&state, request).await?;
        return Ok((status, Json(answer)).into_response());
    };
    let request_hash = enqueue::sha256(&String::from_utf8_lossy(bytes));
    let claimed = sqlx::query(
        "INSERT INTO api_idempotency (key_id, idempotency_key, request_hash) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&caller.key_id)
    .bind(&idem_key)
    .bind(&request_hash[..])
    .execute(&state.pool)
    .await?
    .rows_affected()
        == 1;
    if !claimed {
        let (hash, status, response): (Vec<u8>, Option<i32>, Option<Value>) = sqlx::query_as(
            "SELECT request_hash, status, response FROM api_idempotency WHERE key_id = $1 AND idempotency_key = $2",
        )
        .bind(&caller.key_id)
        .bind(&idem_key)
        .fetch_one(&state.pool)
        .await?;
        if hash != request_hash {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request body",
            )
            .into());
        }
        return match (status, response) {
            (Some(status), Some(body)) => {
                let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
                Ok((status, [("idempotent-replayed", "true")], Json(body)).into_response())
            }
            _ => Err(conflict("the first request with this Idempotency-Key is still running; retry shortly")
                .into()),
        };
    }
    let outcome = run_create(&state, request).await;
    match &outcome {
        Ok((status, answer)) => {
            let saved = sqlx::query(
                "UPDATE api_idempotency SET status = $3, response = $4 WHERE key_id = $1 AND idempotency_key = $2",
            )
            .bind(&caller.key_id)
            .bind(&idem_key)
            .bind(i32::from(status.as_u16()))
            .bind(answer)
            .execute(&state.pool)
            .await;
            if let Err(e) = saved {
                tracing::warn!(error = %e, "saving an idempotent answer failed; a retry re-runs the (idempotent) enqueue");
            }
        }
        Err(_) => {
            // Failed requests are not remembered: a retry runs again.
            let _ = sqlx::query("DELETE FROM api_idempotency WHERE key_id = $1 AND idempotency_key = $2")
                .bind(&caller.key_id)
                .bind(&idem_key)
                .execute(&state.pool)
                .await;
        }
    }
    let (status, answer) = outcome?;
    Ok((status, Json(answer)).into_response())
}

/// Runs the producer's pipeline on the request's contacts.
async fn run_create(state: &ApiState, request: CreateRequest) -> Result<(StatusCode, Value)> {
    let name = request.enqueue.campaign.clone();
    let existed = enqueue::handle(&state.pool, &name).await?.is_some();
    let field = request.contacts_field();
    let count = request.inline_count;
    let dry_run = request.enqueue.settings.dry_run;
    let outcome = enqueue::enqueue(state, request.enqueue, field, LISTED_REJECTIONS).await?;
    let inline = count.is_some();
    let rejected: Vec<Value> = outcome
        .rejected
        .iter()
        .map(|r| {
            // Inline contacts are named by index; a saved list's by the line of its imported file.
            let (key, at) = if inline { ("index", r.line.saturating_sub(1)) } else { ("line", r.line) };
            json!({
                key: at,
                "number": r.number,
                "reason": r.reason,
                "detail": r.detail,
            })
        })
        .collect();
    if dry_run {
        // Nothing was written: what would be, and how the first contacts would hear it.
        let mut report = outcome.counts(count.map_or(outcome.read, |n| n as u64));
        report.insert("rejected".into(), Value::Array(rejected));
        report.insert("preview".into(), json!(outcome.samples));
        report.insert("changes".into(), json!(outcome.changes));
        return Ok((StatusCode::OK, json!({ "dry_run": true, "enqueue": report })));
    }
    if !existed && outcome.new_contacts + outcome.already_enqueued == 0 {
        // Nothing could be enqueued into a new campaign, so none exists (the
        // pipeline removes one it created empty). Say why, contact by
        // contact, as the CLI does with exit 3. An existing campaign keeps
        // answering 200 with its report.
        let named: Vec<String> = rejected
            .iter()
            .take(20)
            .map(|r| match (r.get("index"), r.get("line")) {
                (Some(i), _) => format!("{field}[{i}]: {}", r["detail"].as_str().unwrap_or_default()),
                (None, l) => format!(
                    "line {}: {}",
                    l.unwrap_or(&Value::Null),
                    r["detail"].as_str().unwrap_or_default()
                ),
            })
            .collect();
        let more = rejected.len().saturating_sub(named.len());
        let more = if more > 0 { format!("; … and {more} more") } else { String::new() };
        let message = if named.is_empty() {
            format!("{field}: no contacts")
        } else {
            format!("every contact was rejected, nothing was created: {}{more}", named.join("; "))
        };
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "contacts_rejected", message)
            .with("rejected", Value::Array(rejected))
            .into());
    }
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    let campaign = campaign_json(&state.pool, &name).await?;
    let mut enqueue = outcome.counts(count.map_or(outcome.read, |n| n as u64));
    enqueue.insert("changes".into(), json!(outcome.changes));
    enqueue.insert("rejected".into(), Value::Array(rejected));
    Ok((status, json!({ "campaign": campaign, "enqueue": enqueue })))
}

/// `SELECT <every CampaignRow column> FROM campaigns c <rest>`: the
/// column list written once, the query still a literal.
macro_rules! select_campaign_row {
    ($rest:literal) => {
        concat!(
            "SELECT c.name, c.status, c.provider, c.created_at, c.expires_at, c.confirm, c.until_confirmed, c.voicemail, c.audio_url, c.route, ",
            "coalesce((SELECT jsonb_object_agg(state, n) FROM ",
            "(SELECT state, count(*) AS n FROM calls WHERE campaign_id = c.id GROUP BY state) s), '{}') AS counts, ",
            "(SELECT jsonb_build_object('confirmed', count(*) FILTER (WHERE confirmed_at IS NOT NULL), ",
            "'confirmed_late', count(*) FILTER (WHERE confirmed_late), ",
            "'opted_out', count(*) FILTER (WHERE opted_out_at IS NOT NULL)) ",
            "FROM calls WHERE campaign_id = c.id) AS confirmations, ",
            "(SELECT count(*) FROM dead_jobs d WHERE d.campaign_id = c.id) AS dead_jobs ",
            "FROM campaigns c ",
            $rest
        )
    };
}

#[derive(sqlx::FromRow)]
struct CampaignRow {
    name: String,
    status: String,
    provider: String,
    created_at: DateTime<Utc>,
    /// The deadline, if any: no call starts after it.
    expires_at: Option<DateTime<Utc>>,
    /// The callee is asked to press a key; redialled until they do.
    confirm: bool,
    until_confirmed: bool,
    /// ignore, drop or hangup.
    voicemail: String,
    /// The recording played instead of the message.
    audio_url: Option<String>,
    /// The accounts its calls go through (`None`: the provider's account alone).
    route: Option<String>,
    counts: Value,
    /// `confirmed`, `confirmed_late`, `opted_out`.
    confirmations: Value,
    /// Its jobs in the dead-letter store (`producer requeue-dead`).
    dead_jobs: i64,
}

fn render(row: CampaignRow) -> Value {
    let pairs = match &row.counts {
        Value::Object(m) => m.iter().map(|(k, v)| (k.as_str(), v.as_i64().unwrap_or(0))).collect(),
        _ => Vec::new(),
    };
    let StateCounts { by_state: states, total, finished } = StateCounts::tally(pairs);
    json!({
        "name": row.name,
        "status": row.status,
        "provider": row.provider,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "total": total,
        "finished": finished,
        "states": states,
        "dead_jobs": row.dead_jobs,
        "confirm": row.confirm,
        "until_confirmed": row.until_confirmed,
        "voicemail": row.voicemail,
        "audio_url": row.audio_url,
        "route": row.route.unwrap_or_else(|| format!("failover:{}:default", row.provider)),
        "confirmed": row.confirmations["confirmed"],
        "confirmed_late": row.confirmations["confirmed_late"],
        "opted_out": row.confirmations["opted_out"],
    })
}

/// A campaign's status and its calls by state; `None` when unknown.
pub async fn campaign_status(pool: &PgPool, name: &str) -> Result<Option<Value>, sqlx::Error> {
    let row: Option<CampaignRow> = sqlx::query_as(select_campaign_row!("WHERE c.id = $1"))
        .bind(CampaignId::from_name(name))
        .fetch_optional(pool)
        .await?;
    Ok(row.map(render))
}

async fn campaign_json(pool: &PgPool, name: &str) -> Result<Value> {
    Ok(campaign_status(pool, name).await?.ok_or_else(|| unknown(name))?)
}

fn unknown(name: &str) -> ApiError {
    ApiError::not_found(format!("no campaign named {name:?}"))
}

/// `GET /api/v1/campaigns`: the campaigns this key may see, newest first.
pub async fn list(State(state): State<Arc<ApiState>>, caller: Auth<Read>) -> Result<Json<Value>> {
    let rows: Vec<CampaignRow> = sqlx::query_as(select_campaign_row!(
        "WHERE cardinality($1::text[]) = 0 \
                OR EXISTS (SELECT 1 FROM unnest($1::text[]) p WHERE starts_with(c.name, p)) \
             ORDER BY c.created_at DESC LIMIT 500"
    ))
    .bind(&caller.campaign_prefixes)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(json!({ "campaigns": rows.into_iter().map(render).collect::<Vec<_>>() })))
}

/// `GET /api/v1/campaigns/{name}`.
pub async fn show(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    caller: Auth<Read>,
) -> Result<Json<Value>> {
    caller.check_campaign(&name)?;
    Ok(Json(campaign_json(&state.pool, &name).await?))
}

async fn control(state: &ApiState, caller: &Caller, name: &str, action: Action) -> Result<Json<Value>> {
    caller.check_campaign(name)?;
    let c = enqueue::handle(&state.pool, name).await?.ok_or_else(|| unknown(name))?;
    let done = enqueue::control(&state.pool, &c, action).await.map_err(|e| match e {
        ControlError::Conflict(m) => conflict(m),
        ControlError::Failed(e) => {
            tracing::error!(error = %format!("{e:#}"), campaign = %name, "campaign control failed");
            ApiError::unavailable()
        }
    })?;
    let verb = match action {
        Action::Pause => "campaign.pause",
        Action::Resume => "campaign.resume",
        Action::Cancel => "campaign.cancel",
    };
    let details = json!({ "changed": done.changed, "cancelled_calls": done.cancelled_calls });
    audit::record(state, caller, Via::Api, verb, Some(name), details).await;
    let campaign = campaign_json(&state.pool, name).await?;
    Ok(Json(
        json!({ "changed": done.changed, "cancelled_calls": done.cancelled_calls, "campaign": campaign }),
    ))
}

/// `POST /api/v1/campaigns/{name}/pause`.
pub async fn pause(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    caller: Auth<Control>,
) -> Result<Json<Value>> {
    control(&state, &caller, &name, Action::Pause).await
}

/// `POST /api/v1/campaigns/{name}/route` with `{"route": "failover:vonage,twilio"}`
/// (or `null`: the provider's account alone): the accounts its calls go
/// through from the next call on, on every worker within about a second.
pub async fn route(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    caller: Auth<Control>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<Value>> {
    caller.check_campaign(&name)?;
    let body = body.map_err(|e| ApiError::bad_request(format!("unreadable body: {e}")))?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let route = match value.get("route") {
        Some(Value::Null) => None,
        Some(Value::String(text)) => Some(
            text.parse::<tocsin_core::route::Route>()
                .map_err(|e| ApiError::bad_request(format!("route: {e}")))?,
        ),
        _ => {
            return Err(
                ApiError::bad_request("route: required, a string (failover:… or pool:…) or null").into()
            );
        }
    };
    let c = tocsin_core::db::campaign(&state.pool, CampaignId::from_name(&name))
        .await
        .map_err(|_| ApiError::unavailable())?
        .ok_or_else(|| unknown(&name))?;
    let done = tocsin_core::campaign::set_route(&state.pool, &c, route, &state.accounts).await.map_err(
        |e| match e {
            tocsin_core::campaign::ControlError::Refused(m) => conflict(m),
            tocsin_core::campaign::ControlError::Database(e) => {
                tracing::error!(error = %e, campaign = %name, "route change failed");
                ApiError::unavailable()
            }
        },
    )?;
    let changed = matches!(done, tocsin_core::campaign::Control::Changed { .. });
    let campaign = campaign_json(&state.pool, &name).await?;
    let details = json!({ "route": campaign["route"], "changed": changed });
    audit::record(&state, &caller, Via::Api, "campaign.route", Some(&name), details).await;
    Ok(Json(json!({ "changed": changed, "campaign": campaign })))
}

/// `POST /api/v1/campaigns/{name}/resume`.
pub async fn resume(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    caller: Auth<Control>,
) -> Result<Json<Value>> {
    control(&state, &caller, &name, Action::Resume).await
}

/// `POST /api/v1/campaigns/{name}/cancel`.
pub async fn cancel(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    caller: Auth<Control>,
) -> Result<Json<Value>> {
    control(&state, &caller, &name, Action::Cancel).await
}

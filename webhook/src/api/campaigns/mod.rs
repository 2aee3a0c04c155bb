//! `POST|GET /api/v1/campaigns`, `GET /api/v1/campaigns/{name}` and
//! `POST /api/v1/campaigns/{name}/pause|resume|cancel`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use producer::campaign::{self, Control};
use producer::config::{EnqueueArgs, ProviderArg};
use producer::input::{Format, Source};
use producer::{Fatal, Rejections};
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use tocsin_core::config::{ProviderArgs, TelnyxArgs, TwilioArgs, VonageArgs};
use tocsin_core::http::ApiError;
use tocsin_core::provider::Provider;
use tocsin_core::{CampaignId, StateCounts, db};
use tokio_util::sync::CancellationToken;

use super::auth::{Caller, Scope, authenticate};
use super::{ApiState, conflict, db_unavailable};

/// Rejected contacts listed in a create answer; the counts cover all of them.
const LISTED_REJECTIONS: usize = 1000;

/// The body as bytes, with over-size as 413 in the standard shape.
pub(crate) fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body is too large")
        } else {
            ApiError::bad_request(format!("unreadable body: {r}"))
        }
    })
}

/// A create request, checked field by field; `errors` names every bad field.
struct CreateRequest {
    args: EnqueueArgs,
    contacts: Contacts,
}

/// Where a create request's contacts come from.
enum Contacts {
    /// Inline, as JSON Lines for the producer's reader (line N is `contacts[N-1]`).
    Inline { jsonl: Vec<u8>, count: usize },
    /// A saved contact list (`producer list import`), by name.
    Saved(String),
}

fn field_str(obj: &Map<String, Value>, key: &str, errors: &mut Vec<String>) -> Option<String> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push(format!("{key}: must be a string"));
            None
        }
    }
}

fn field_int(
    obj: &Map<String, Value>,
    key: &str,
    range: std::ops::RangeInclusive<i64>,
    errors: &mut Vec<String>,
) -> Option<i64> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64().filter(|n| range.contains(n)) {
            Some(n) => Some(n),
            None => {
                errors.push(format!("{key}: must be an integer from {} to {}", range.start(), range.end()));
                None
            }
        },
    }
}

const KNOWN_FIELDS: [&str; 16] = [
    "name",
    "message",
    "from",
    "provider",
    "language",
    "voice",
    "repeat",
    "max_attempts",
    "retry_delay_secs",
    "machine_detection",
    "start_at",
    "window",
    "timezone",
    "default_region",
    "contacts",
    "contact_list",
];

/// Parses and checks a create body into the producer's arguments and an
/// in-memory JSON Lines contact list.
fn parse_create(bytes: &[u8], state: &ApiState) -> Result<CreateRequest, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    let mut errors = Vec::new();
    for key in obj.keys() {
        if !KNOWN_FIELDS.contains(&key.as_str()) {
            errors.push(format!("{key}: unknown field"));
        }
    }
    let name = field_str(&obj, "name", &mut errors);
    match &name {
        None if !errors.iter().any(|e| e.starts_with("name:")) => errors.push("name: required".into()),
        Some(n) if !campaign::valid_name(n) => {
            errors.push("name: must be 1-200 letters, digits, '-', '_' or '.'".into());
        }
        _ => {}
    }
    let message = field_str(&obj, "message", &mut errors);
    match &message {
        None if !errors.iter().any(|e| e.starts_with("message:")) => errors.push("message: required".into()),
        Some(m) if m.trim().is_empty() || m.trim().chars().count() > 1500 => {
            errors.push("message: must be 1 to 1500 characters".into());
        }
        _ => {}
    }
    let from = field_str(&obj, "from", &mut errors);
    if let Some(f) = &from
        && tocsin_core::PhoneNumber::parse(f, None).is_err()
    {
        errors.push("from: not a phone number in E.164 form (e.g. +14155550100)".into());
    }
    let provider = field_str(&obj, "provider", &mut errors)
        .and_then(|p| parse_provider(&p, state).map_err(|e| errors.push(format!("provider: {e}"))).ok());
    let language = field_str(&obj, "language", &mut errors);
    let voice = field_str(&obj, "voice", &mut errors);
    let repeat = field_int(&obj, "repeat", 1..=10, &mut errors);
    let max_attempts = field_int(&obj, "max_attempts", 1..=10, &mut errors);
    let retry_delay = field_int(&obj, "retry_delay_secs", 0..=86_400, &mut errors);
    let machine_detection = match obj.get("machine_detection") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            errors.push("machine_detection: must be true or false".into());
            None
        }
    };
    let start_at = field_str(&obj, "start_at", &mut errors).and_then(|s| {
        producer::config::parse_start_at(&s).map_err(|e| errors.push(format!("start_at: {e}"))).ok()
    });
    let window = field_str(&obj, "window", &mut errors).and_then(|s| {
        producer::config::parse_window(&s).map_err(|e| errors.push(format!("window: {e}"))).ok()
    });
    let timezone = field_str(&obj, "timezone", &mut errors).and_then(|s| {
        producer::config::parse_timezone(&s).map_err(|e| errors.push(format!("timezone: {e}"))).ok()
    });
    let default_region = field_str(&obj, "default_region", &mut errors);
    if let Some(r) = &default_region
        && let Err(tocsin_core::phone::PhoneNumberError::UnknownRegion(_)) =
            tocsin_core::PhoneNumber::parse("+14155552671", Some(r))
    {
        errors.push("default_region: not an ISO 3166 region code (e.g. US, GB)".into());
    }

    // Contacts become JSON Lines for the producer's reader: line N is contacts[N-1].
    let mut contacts = Vec::new();
    let mut count = 0;
    let saved = field_str(&obj, "contact_list", &mut errors);
    if let Some(list) = &saved
        && !campaign::valid_name(list)
    {
        errors.push("contact_list: must be the name of a saved contact list (producer list import)".into());
    }
    let has_list = obj.get("contact_list").is_some_and(|v| !v.is_null());
    match obj.get("contacts") {
        Some(_) if has_list => {
            errors.push("contacts: give either contacts or contact_list, not both".into());
        }
        None if has_list => {}
        Some(Value::Array(list)) if !list.is_empty() => {
            for (i, c) in list.iter().enumerate() {
                let ok = match c {
                    Value::Object(o) => o.get("number").is_some_and(Value::is_string),
                    _ => false,
                };
                if !ok {
                    errors.push(format!("contacts[{i}]: must be an object with a string \"number\""));
                    continue;
                }
                if serde_json::to_writer(&mut contacts, c).is_ok() {
                    contacts.push(b'\n');
                    count += 1;
                }
            }
        }
        Some(Value::Array(_)) => errors.push("contacts: must not be empty".into()),
        Some(_) => errors.push("contacts: must be an array of {\"number\": …} objects".into()),
        None => errors.push("contacts: required (or contact_list, the name of a saved contact list)".into()),
    }
    if !errors.is_empty() {
        return Err(ApiError::bad_request(format!("invalid fields: {}", errors.join("; "))));
    }
    let mut args = api_args(state, name.unwrap_or_default(), message.unwrap_or_default());
    args.from = from;
    args.provider = provider;
    args.language = language;
    args.voice = voice;
    args.repeat = repeat.map(|n| n as i32);
    args.start_at = start_at;
    args.window = window;
    args.timezone = timezone;
    args.max_attempts = max_attempts.map(|n| n as i32);
    args.retry_delay = retry_delay.map(|n| Duration::from_secs(n as u64));
    args.machine_detection = machine_detection;
    args.default_region = default_region;
    let contacts = match saved {
        Some(list) => Contacts::Saved(list),
        None => Contacts::Inline { jsonl: contacts, count },
    };
    Ok(CreateRequest { args, contacts })
}

/// A configured provider by name, for the `provider` field (or parameter).
pub(crate) fn parse_provider(p: &str, state: &ApiState) -> Result<ProviderArg, String> {
    match p.parse::<Provider>() {
        Ok(p) if state.providers.contains(&p) => Ok(match p {
            Provider::Vonage => ProviderArg::Vonage,
            Provider::Twilio => ProviderArg::Twilio,
            Provider::Telnyx => ProviderArg::Telnyx,
        }),
        Ok(p) => Err(format!("{p} is not configured on this service")),
        Err(_) => Err("must be vonage, twilio or telnyx".into()),
    }
}

/// The producer's arguments for a campaign created through the API, with
/// every optional setting at its default (the producer's, for a new
/// campaign; unchanged, for an existing one).
pub(crate) fn api_args(state: &ApiState, campaign: String, message: String) -> EnqueueArgs {
    EnqueueArgs {
        campaign,
        contacts: Some("-".into()),
        list: None,
        format: Some(Format::Jsonl),
        message: Some(message),
        message_file: None,
        from: None,
        provider: None,
        language: None,
        voice: None,
        repeat: None,
        start_at: None,
        window: None,
        timezone: None,
        timezone_column: None,
        max_attempts: None,
        retry_delay: None,
        machine_detection: None,
        number_column: "number".into(),
        delimiter: None,
        default_region: None,
        rejects: None,
        dry_run: false,
        json: false,
        update_message: false,
        update_settings: false,
        in_flight: 2048,
        amqp: state.amqp.clone(),
        // Not read by `enqueue_from`: the API passes its own provider list.
        providers: ProviderArgs {
            vonage: VonageArgs {
                vonage_api_url: String::new(),
                vonage_application_id: None,
                vonage_private_key_path: None,
                vonage_signature_secret: None,
            },
            twilio: TwilioArgs {
                twilio_api_url: String::new(),
                twilio_account_sid: None,
                twilio_auth_token: None,
            },
            telnyx: TelnyxArgs {
                telnyx_api_url: String::new(),
                telnyx_api_key: None,
                telnyx_connection_id: None,
                telnyx_public_key: None,
            },
        },
    }
}

/// `POST /api/v1/campaigns`.
pub async fn create(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state.pool, &headers, Scope::Write).await?;
    let bytes = body(raw)?;
    let request = parse_create(&bytes, &state)?;
    caller.check_campaign(&request.args.campaign)?;
    let idempotency = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str().ok().map(str::trim).filter(|k| !k.is_empty() && k.len() <= 200) {
            Some(k) => Some(k.to_owned()),
            None => {
                return Err(ApiError::bad_request(
                    "Idempotency-Key: must be 1 to 200 visible ASCII characters",
                ));
            }
        },
    };
    let Some(idem_key) = idempotency else {
        let (status, answer) = run_create(&state, request).await?;
        return Ok((status, Json(answer)).into_response());
    };
    let request_hash = producer::apikey::hash(&String::from_utf8_lossy(&bytes));
    let claimed = sqlx::query(
        "INSERT INTO api_idempotency (key_id, idempotency_key, request_hash) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&caller.key_id)
    .bind(&idem_key)
    .bind(&request_hash[..])
    .execute(&state.pool)
    .await
    .map_err(|e| db_unavailable(e, "claiming the idempotency key"))?
    .rows_affected()
        == 1;
    if !claimed {
        let (hash, status, response): (Vec<u8>, Option<i32>, Option<Value>) = sqlx::query_as(
            "SELECT request_hash, status, response FROM api_idempotency WHERE key_id = $1 AND idempotency_key = $2",
        )
        .bind(&caller.key_id)
        .bind(&idem_key)
        .fetch_one(&state.pool)
        .await
        .map_err(|e| db_unavailable(e, "reading the idempotency key"))?;
        if hash != request_hash {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request body",
            ));
        }
        return match (status, response) {
            (Some(status), Some(body)) => {
                let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
                Ok((status, [("idempotent-replayed", "true")], Json(body)).into_response())
            }
            _ => Err(conflict("the first request with this Idempotency-Key is still running; retry shortly")),
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
async fn run_create(state: &ApiState, request: CreateRequest) -> Result<(StatusCode, Value), ApiError> {
    let name = request.args.campaign.clone();
    let existed = db::campaign(&state.pool, CampaignId::from_name(&name))
        .await
        .map_err(|e| db_unavailable(e, "reading the campaign"))?
        .is_some();
    let rejections = Rejections::Collect(LISTED_REJECTIONS);
    let (result, count, field) = match request.contacts {
        Contacts::Inline { jsonl, count } => {
            let source = Source::Memory { name: "contacts".into(), data: jsonl.into() };
            let result = producer::enqueue_from(
                &state.pool,
                &request.args,
                source,
                &state.providers,
                rejections,
                CancellationToken::new(),
            )
            .await;
            (result, Some(count), "contacts")
        }
        Contacts::Saved(list) => {
            let result = producer::lists::enqueue_list(
                &state.pool,
                request.args,
                &list,
                &state.providers,
                rejections,
                CancellationToken::new(),
            )
            .await;
            (result, None, "contact_list")
        }
    };
    let (report, rejected) = result.map_err(|e| enqueue_error(&e, &name, field))?;
    let inline = count.is_some();
    let rejected: Vec<Value> = rejected
        .iter()
        .map(|r| {
            // Inline contacts are named by index; a saved list's by the line of its imported file.
            let (key, at) = if inline { ("index", r.line.saturating_sub(1)) } else { ("line", r.line) };
            json!({
                key: at,
                "number": r.value,
                "reason": r.reason.keyword(),
                "detail": r.reason.to_string(),
            })
        })
        .collect();
    if report.new_contacts + report.already_enqueued == 0 {
        // Nothing could be enqueued: the campaign was not created (or not
        // extended). Say why, contact by contact, as the CLI does with exit 3.
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
            .with("rejected", Value::Array(rejected)));
    }
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    let campaign = campaign_json(&state.pool, &name).await?;
    Ok((
        status,
        json!({
            "campaign": campaign,
            "enqueue": {
                "contacts": count.unwrap_or(report.read as usize),
                "new_contacts": report.new_contacts,
                "already_enqueued": report.already_enqueued,
                "published": report.published,
                "invalid": report.invalid,
                "duplicate": report.duplicate,
                "do_not_call": report.do_not_call,
                "malformed": report.malformed,
                "changes": report.changes,
                "rejected": rejected,
            }
        }),
    ))
}

/// The API's answer to a failed enqueue; `field` names where the contacts came from.
pub(crate) fn enqueue_error(e: &anyhow::Error, name: &str, field: &str) -> ApiError {
    match e.downcast_ref::<Fatal>() {
        Some(Fatal::Usage(m)) => conflict(m.clone()),
        Some(Fatal::InputRejected(m)) => ApiError::bad_request(format!("{field}: {m}")),
        Some(Fatal::Unreachable { service, .. }) => {
            tracing::error!(error = %e, "enqueue through the API failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{service} is unreachable; retry later"),
            )
        }
        _ => {
            tracing::error!(error = %format!("{e:#}"), campaign = %name, "enqueue through the API failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "enqueueing failed; see the service log",
            )
        }
    }
}

#[derive(sqlx::FromRow)]
struct CampaignRow {
    name: String,
    status: String,
    provider: String,
    created_at: DateTime<Utc>,
    counts: Value,
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
        "total": total,
        "finished": finished,
        "states": states,
    })
}

/// A campaign's status and its calls by state; `None` when unknown.
pub async fn campaign_status(pool: &PgPool, name: &str) -> Result<Option<Value>, ApiError> {
    let row: Option<CampaignRow> = sqlx::query_as(
        "SELECT c.name, c.status, c.provider, c.created_at, \
                coalesce((SELECT jsonb_object_agg(state, n) FROM \
                   (SELECT state, count(*) AS n FROM calls WHERE campaign_id = c.id GROUP BY state) s), '{}') AS counts \
         FROM campaigns c WHERE c.id = $1",
    )
    .bind(CampaignId::from_name(name))
    .fetch_optional(pool)
    .await
    .map_err(|e| db_unavailable(e, "reading the campaign"))?;
    Ok(row.map(render))
}

async fn campaign_json(pool: &PgPool, name: &str) -> Result<Value, ApiError> {
    campaign_status(pool, name).await?.ok_or_else(|| unknown(name))
}

fn unknown(name: &str) -> ApiError {
    ApiError::not_found(format!("no campaign named {name:?}"))
}

/// `GET /api/v1/campaigns`: the campaigns this key may see, newest first.
pub async fn list(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let caller = authenticate(&state.pool, &headers, Scope::Read).await?;
    let rows: Vec<CampaignRow> = sqlx::query_as(
        "SELECT c.name, c.status, c.provider, c.created_at, \
                coalesce((SELECT jsonb_object_agg(state, n) FROM \
                   (SELECT state, count(*) AS n FROM calls WHERE campaign_id = c.id GROUP BY state) s), '{}') AS counts \
         FROM campaigns c \
         WHERE cardinality($1::text[]) = 0 OR EXISTS (SELECT 1 FROM unnest($1::text[]) p WHERE starts_with(c.name, p)) \
         ORDER BY c.created_at DESC LIMIT 500",
    )
    .bind(&caller.campaign_prefixes)
    .fetch_all(&state.pool)
    .await
    .map_err(|e| db_unavailable(e, "listing campaigns"))?;
    Ok(Json(json!({ "campaigns": rows.into_iter().map(render).collect::<Vec<_>>() })))
}

/// `GET /api/v1/campaigns/{name}`.
pub async fn show(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = authenticate(&state.pool, &headers, Scope::Read).await?;
    caller.check_campaign(&name)?;
    Ok(Json(campaign_json(&state.pool, &name).await?))
}

#[derive(Clone, Copy)]
enum Action {
    Pause,
    Resume,
    Cancel,
}

async fn control(
    state: &ApiState,
    caller: &Caller,
    name: &str,
    action: Action,
) -> Result<Json<Value>, ApiError> {
    caller.check_campaign(name)?;
    let c = db::campaign(&state.pool, CampaignId::from_name(name))
        .await
        .map_err(|e| db_unavailable(e, "reading the campaign"))?
        .ok_or_else(|| unknown(name))?;
    let done = match action {
        Action::Pause => campaign::set_paused(&state.pool, &c, true).await,
        Action::Resume => campaign::set_paused(&state.pool, &c, false).await,
        Action::Cancel => campaign::cancel_now(&state.pool, &c).await,
    };
    let done = done.map_err(|e| match e.downcast_ref::<Fatal>() {
        Some(Fatal::Usage(m)) => conflict(m.clone()),
        _ => {
            tracing::error!(error = %format!("{e:#}"), campaign = %name, "campaign control failed");
            ApiError::unavailable()
        }
    })?;
    let (changed, cancelled_calls) = match done {
        Control::Changed { cancelled_calls } => (true, cancelled_calls),
        Control::Unchanged => (false, 0),
    };
    let campaign = campaign_json(&state.pool, name).await?;
    Ok(Json(json!({ "changed": changed, "cancelled_calls": cancelled_calls, "campaign": campaign })))
}

/// `POST /api/v1/campaigns/{name}/pause`.
pub async fn pause(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = authenticate(&state.pool, &headers, Scope::Control).await?;
    control(&state, &caller, &name, Action::Pause).await
}

/// `POST /api/v1/campaigns/{name}/resume`.
pub async fn resume(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = authenticate(&state.pool, &headers, Scope::Control).await?;
    control(&state, &caller, &name, Action::Resume).await
}

/// `POST /api/v1/campaigns/{name}/cancel`.
pub async fn cancel(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = authenticate(&state.pool, &headers, Scope::Control).await?;
    control(&state, &caller, &name, Action::Cancel).await
}

//! `POST /api/v1/alertmanager`: a Prometheus Alertmanager webhook receiver
//! (payload version 4). A *firing* notification starts a broadcast to a
//! saved contact list, speaking a message made from the alerts'
//! annotations; a *resolved* one is recorded and, when asked, cancels the
//! broadcast's calls not yet placed.
//!
//! Alertmanager sends the same firing group again every `repeat_interval`
//! (and retries on 5xx), so a broadcast is started at most once per group
//! key and firing period. A period is identified by its alerts: every
//! firing alert is `fingerprint@startsAt`, and a notification whose firing
//! alerts overlap the group's latest period belongs to it (an alert that
//! joins a firing group does not call anyone again). A group that resolves
//! and fires again has new `startsAt` values, so a new period and a new
//! broadcast, even if the resolved notification never arrived. Deliveries
//! of one group key are serialised by an advisory lock held from the claim
//! to the end of the enqueue, so concurrent deliveries (Alertmanager HA
//! peers, several webhook replicas) decide once and the later ones find the
//! broadcast done.
//!
//! The campaign name is derived from the group key and the period's first
//! `startsAt`, and the enqueue is the producer's own (idempotent); a period
//! whose enqueue did not finish (a 5xx, a crash) is enqueued again by the
//! next delivery of the same group, which Alertmanager makes on its own.
//!
//! The route's settings are query parameters of the receiver URL
//! (`?contact_list=oncall&from=%2B14155550100&cancel_on_resolve=true`); the
//! labels `tocsin_contact_list` and `tocsin_cancel_on_resolve` of the
//! group (its `commonLabels`) override them, so one receiver can serve alert
//! rules that name their own list.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use chrono::{DateTime, SecondsFormat, Utc};
use producer::Rejections;
use producer::campaign::{self, Control};
use producer::config::ProviderArg;
use serde_json::{Map, Value, json};
use tocsin_core::http::ApiError;
use tocsin_core::{CampaignId, db};
use tokio_util::sync::CancellationToken;

use super::auth::{Caller, Scope, authenticate};
use super::campaigns::{api_args, body, campaign_status, enqueue_error, parse_provider};
use super::{ApiState, db_unavailable};

/// The label naming the saved contact list (overrides `?contact_list=`).
pub const LIST_LABEL: &str = "tocsin_contact_list";
/// The label asking for waiting calls to be cancelled on resolve.
pub const CANCEL_LABEL: &str = "tocsin_cancel_on_resolve";
/// An annotation that, when present, is spoken as it is.
pub const MESSAGE_ANNOTATION: &str = "tocsin_message";
/// Spoken messages are cut (at a word) to this many characters: a call is
/// not the place for a runbook.
const MAX_SPOKEN: usize = 600;
const DEFAULT_PREFIX: &str = "alert-";

/// The receiver URL's query parameters: the route's configuration.
#[derive(Debug)]
struct Route {
    contact_list: Option<String>,
    from: Option<String>,
    provider: Option<ProviderArg>,
    language: Option<String>,
    voice: Option<String>,
    repeat: Option<i32>,
    max_attempts: Option<i32>,
    retry_delay_secs: Option<u64>,
    machine_detection: Option<bool>,
    campaign_prefix: String,
    cancel_on_resolve: bool,
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

fn parse_route(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    state: &ApiState,
) -> Result<Route, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::bad_request(format!("unreadable query string: {e}")))?;
    let mut route = Route {
        contact_list: None,
        from: None,
        provider: None,
        language: None,
        voice: None,
        repeat: None,
        max_attempts: None,
        retry_delay_secs: None,
        machine_detection: None,
        campaign_prefix: DEFAULT_PREFIX.into(),
        cancel_on_resolve: false,
    };
    let mut errors = Vec::new();
    let int = |key: &str, v: &str, range: std::ops::RangeInclusive<i64>, errors: &mut Vec<String>| {
        let n = v.parse::<i64>().ok().filter(|n| range.contains(n));
        if n.is_none() {
            errors.push(format!("{key}: must be an integer from {} to {}", range.start(), range.end()));
        }
        n
    };
    for (key, value) in pairs {
        let v = value.trim();
        match key.as_str() {
            "contact_list" => route.contact_list = Some(v.to_owned()),
            "from" => {
                if tocsin_core::PhoneNumber::parse(v, None).is_err() {
                    errors.push("from: not a phone number in E.164 form (e.g. %2B14155550100)".into());
                }
                route.from = Some(v.to_owned());
            }
            "provider" => match parse_provider(v, state) {
                Ok(p) => route.provider = Some(p),
                Err(e) => errors.push(format!("provider: {e}")),
            },
            "language" => route.language = Some(v.to_owned()),
            "voice" => route.voice = Some(v.to_owned()),
            "repeat" => route.repeat = int("repeat", v, 1..=10, &mut errors).map(|n| n as i32),
            "max_attempts" => {
                route.max_attempts = int("max_attempts", v, 1..=10, &mut errors).map(|n| n as i32)
            }
            "retry_delay_secs" => {
                route.retry_delay_secs =
                    int("retry_delay_secs", v, 0..=86_400, &mut errors).map(|n| n as u64);
            }
            "machine_detection" => match parse_bool(v) {
                Some(b) => route.machine_detection = Some(b),
                None => errors.push("machine_detection: must be true or false".into()),
            },
            "cancel_on_resolve" => match parse_bool(v) {
                Some(b) => route.cancel_on_resolve = b,
                None => errors.push("cancel_on_resolve: must be true or false".into()),
            },
            "campaign_prefix" => {
                if v.len() > 60 || !v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                    errors.push("campaign_prefix: at most 60 letters, digits, '-', '_' or '.'".into());
                }
                route.campaign_prefix = v.to_owned();
            }
            other => errors.push(format!("{other}: unknown query parameter")),
        }
    }
    if errors.is_empty() {
        Ok(route)
    } else {
        Err(ApiError::bad_request(format!("invalid query parameters: {}", errors.join("; "))))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Firing,
    Resolved,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }

    fn parse(v: Option<&Value>) -> Option<Self> {
        match v.and_then(Value::as_str) {
            Some("firing") => Some(Self::Firing),
            Some("resolved") => Some(Self::Resolved),
            _ => None,
        }
    }
}

type Labels = BTreeMap<String, String>;

/// One alert of a notification.
#[derive(Debug)]
struct Alert {
    status: Status,
    annotations: Labels,
    starts_at: DateTime<Utc>,
    fingerprint: String,
}

impl Alert {
    /// The alert's identity within one firing: a re-fired alert keeps its
    /// fingerprint (its labels) but starts at a new time.
    fn instance(&self) -> String {
        format!("{}@{}", self.fingerprint, self.starts_at.to_rfc3339_opts(SecondsFormat::Nanos, true))
    }
}

/// A checked Alertmanager notification (webhook payload version 4).
#[derive(Debug)]
struct Notification {
    group_key: String,
    status: Status,
    receiver: String,
    group_labels: Labels,
    common_labels: Labels,
    common_annotations: Labels,
    alerts: Vec<Alert>,
}

fn labels(obj: &Map<String, Value>, key: &str, errors: &mut Vec<String>) -> Labels {
    match obj.get(key) {
        None | Some(Value::Null) => Labels::new(),
        Some(Value::Object(m)) => {
            let mut out = Labels::new();
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        out.insert(k.clone(), s.clone());
                    }
                    _ => errors.push(format!("{key}.{k}: must be a string")),
                }
            }
            out
        }
        Some(_) => {
            errors.push(format!("{key}: must be an object of strings"));
            Labels::new()
        }
    }
}

/// Checks the payload field by field; the error names every bad field.
fn parse_notification(bytes: &[u8]) -> Result<Notification, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::bad_request("the body must be a JSON object (an Alertmanager notification)"));
    };
    let mut errors = Vec::new();
    match obj.get("version").and_then(Value::as_str) {
        Some("4") => {}
        _ => errors.push("version: must be \"4\" (Alertmanager's webhook payload version)".to_owned()),
    }
    let group_key = match obj.get("groupKey").and_then(Value::as_str) {
        Some(k) if !k.is_empty() => k.to_owned(),
        _ => {
            errors.push("groupKey: required, a non-empty string".into());
            String::new()
        }
    };
    let status = Status::parse(obj.get("status"));
    if status.is_none() {
        errors.push("status: must be \"firing\" or \"resolved\"".into());
    }
    let receiver = match obj.get("receiver") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            errors.push("receiver: must be a string".into());
            String::new()
        }
    };
    let group_labels = labels(&obj, "groupLabels", &mut errors);
    let common_labels = labels(&obj, "commonLabels", &mut errors);
    let common_annotations = labels(&obj, "commonAnnotations", &mut errors);
    let mut alerts = Vec::new();
    match obj.get("alerts") {
        Some(Value::Array(list)) if !list.is_empty() => {
            for (i, a) in list.iter().enumerate() {
                let Value::Object(a) = a else {
                    errors.push(format!("alerts[{i}]: must be an object"));
                    continue;
                };
                let before = errors.len();
                let status = Status::parse(a.get("status"));
                if status.is_none() {
                    errors.push(format!("alerts[{i}].status: must be \"firing\" or \"resolved\""));
                }
                let mut sub = Vec::new();
                let labels_ = labels(a, "labels", &mut sub);
                let annotations = labels(a, "annotations", &mut sub);
                errors.extend(sub.into_iter().map(|e| format!("alerts[{i}].{e}")));
                let starts_at =
                    match a.get("startsAt").and_then(Value::as_str).map(DateTime::parse_from_rfc3339) {
                        Some(Ok(t)) => Some(t.with_timezone(&Utc)),
                        _ => {
                            errors.push(format!("alerts[{i}].startsAt: required, an RFC 3339 time"));
                            None
                        }
                    };
                // Alertmanager always sends it; without one, the labels identify the alert.
                let fingerprint = match a.get("fingerprint") {
                    Some(Value::String(f)) if !f.is_empty() => f.clone(),
                    None | Some(Value::Null) => {
                        let text = serde_json::to_string(&labels_).unwrap_or_default();
                        hex(&producer::apikey::hash(&text)[..8])
                    }
                    Some(_) => {
                        errors.push(format!("alerts[{i}].fingerprint: must be a non-empty string"));
                        String::new()
                    }
                };
                if let (true, Some(status), Some(starts_at)) = (errors.len() == before, status, starts_at) {
                    alerts.push(Alert { status, annotations, starts_at, fingerprint });
                }
            }
        }
        Some(Value::Array(_)) => errors.push("alerts: must not be empty".into()),
        Some(_) => errors.push("alerts: must be an array of alerts".into()),
        None => errors.push("alerts: required".into()),
    }
    match status {
        Some(status) if errors.is_empty() => Ok(Notification {
            group_key,
            status,
            receiver,
            group_labels,
            common_labels,
            common_annotations,
            alerts,
        }),
        _ => Err(ApiError::bad_request(format!("invalid fields: {}", errors.join("; ")))),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Notification {
    /// The alerts that are firing; a firing group with none (which
    /// Alertmanager does not send) counts all of them.
    fn firing(&self) -> Vec<&Alert> {
        let firing: Vec<&Alert> = self.alerts.iter().filter(|a| a.status == Status::Firing).collect();
        if firing.is_empty() { self.alerts.iter().collect() } else { firing }
    }

    fn alertname(&self) -> Option<&str> {
        self.group_labels.get("alertname").or_else(|| self.common_labels.get("alertname")).map(String::as_str)
    }

    /// The campaign a period starting at `start` broadcasts as: readable
    /// (the alert's name), unique per group (a hash of the group key) and
    /// per period (its first `startsAt`).
    fn campaign_name(&self, prefix: &str, start: DateTime<Utc>) -> String {
        let slug: String = self
            .alertname()
            .unwrap_or("group")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' })
            .take(60)
            .collect();
        let group = hex(&producer::apikey::hash(&self.group_key)[..6]);
        format!("{prefix}{slug}-{group}-{}", start.format("%Y%m%dT%H%M%SZ"))
    }

    /// The message to speak: `tocsin_message` if the group has one, else
    /// the summary and description, whitespace collapsed and cut at a word
    /// to `MAX_SPOKEN` characters. Nothing is escaped here: this is text to
    /// be spoken, and each provider's answer document escapes it for its
    /// own format.
    fn message(&self) -> String {
        if let Some(m) = self.common_annotations.get(MESSAGE_ANNOTATION).map(|m| speakable(m))
            && !m.is_empty()
        {
            return cut(&m);
        }
        let firing = self.firing();
        let only = (firing.len() == 1).then(|| firing[0]);
        let annotation = |key: &str| {
            self.common_annotations
                .get(key)
                .or_else(|| only.and_then(|a| a.annotations.get(key)))
                .map(|s| speakable(s))
                .filter(|s| !s.is_empty())
        };
        let severity = self
            .common_labels
            .get("severity")
            .map(|s| speakable(s))
            .filter(|s| !s.is_empty())
            .map(|s| format!("{s} "))
            .unwrap_or_default();
        let head = match firing.len() {
            1 => format!("{severity}alert"),
            n => format!("{n} {severity}alerts firing"),
        };
        let head = capitalise(&head);
        let mut text = match (annotation("summary"), annotation("description")) {
            (Some(s), Some(d)) if s != d => format!("{head}: {}. {}", sentence(&s), sentence(&d)),
            (Some(s), _) | (None, Some(s)) => format!("{head}: {}", sentence(&s)),
            (None, None) => {
                let name = self.alertname().map(speakable).unwrap_or_else(|| "unnamed".into());
                format!("{head}: {name} is firing.")
            }
        };
        if !text.ends_with(['.', '!', '?']) {
            text.push('.');
        }
        cut(&text)
    }
}

/// Whitespace (newlines, tabs) collapsed to single spaces, control
/// characters dropped.
fn speakable(s: &str) -> String {
    s.split_whitespace()
        .map(|w| w.chars().filter(|c| !c.is_control()).collect::<String>())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A clause without its own final full stop (one is added after it).
fn sentence(s: &str) -> String {
    s.trim_end_matches('.').to_owned()
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// At most `MAX_SPOKEN` characters, cut at a word.
fn cut(s: &str) -> String {
    if s.chars().count() <= MAX_SPOKEN {
        return s.to_owned();
    }
    let head: String = s.chars().take(MAX_SPOKEN).collect();
    let head = match head.rfind(' ') {
        Some(i) if i > MAX_SPOKEN / 2 => head[..i].to_owned(),
        _ => head,
    };
    format!("{}.", head.trim_end_matches(['.', ',', ';', ':']))
}

/// The group's latest period, as the claim reads it.
#[derive(sqlx::FromRow)]
struct Period {
    id: i64,
    campaign: String,
    contact_list: String,
    instances: Vec<String>,
    enqueued_at: Option<DateTime<Utc>>,
    resolved_at: Option<DateTime<Utc>>,
}

/// `POST /api/v1/alertmanager`.
pub async fn receive(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = authenticate(&state.pool, &headers, Scope::Write).await?;
    let route = parse_route(query, &state)?;
    let bytes = body(raw)?;
    let notification = parse_notification(&bytes)?;
    // Stored as received (a checked notification is valid JSON).
    let payload: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    match notification.status {
        Status::Firing => firing(&state, &caller, &route, &notification, payload).await,
        Status::Resolved => resolved(&state, &caller, &route, &notification, payload).await,
    }
}

/// Where the contact list's name came from, for error messages.
fn contact_list<'a>(route: &'a Route, n: &'a Notification) -> Result<(&'a str, String), ApiError> {
    let (list, field) = match n.common_labels.get(LIST_LABEL) {
        Some(l) => (l.as_str(), format!("commonLabels.{LIST_LABEL}")),
        None => match &route.contact_list {
            Some(l) => (l.as_str(), "contact_list".to_owned()),
            None => {
                return Err(ApiError::bad_request(format!(
                    "contact_list: required: name a saved contact list with the label {LIST_LABEL} or \
                     ?contact_list= on the receiver URL"
                )));
            }
        },
    };
    if !campaign::valid_name(list) {
        return Err(ApiError::bad_request(format!("{field}: {list:?} is not a contact list name")));
    }
    Ok((list, field))
}

async fn firing(
    state: &ApiState,
    caller: &Caller,
    route: &Route,
    n: &Notification,
    payload: Value,
) -> Result<Json<Value>, ApiError> {
    let (list, field) = contact_list(route, n)?;
    let Some(from) = route.from.clone() else {
        return Err(ApiError::bad_request(
            "from: required: the caller id for broadcasts, ?from=%2B14155550100 on the receiver URL",
        ));
    };
    let known = producer::lists::find(&state.pool, list)
        .await
        .map_err(|e| db_unavailable(e, "reading the contact list"))?;
    if known.is_none() {
        return Err(ApiError::bad_request(format!(
            "{field}: no saved contact list named {list:?} (producer list import saves one)"
        )));
    }
    let firing = n.firing();
    let instances: Vec<String> = firing.iter().map(|a| a.instance()).collect();
    let start = firing.iter().map(|a| a.starts_at).min().unwrap_or_else(Utc::now);
    let derived = n.campaign_name(&route.campaign_prefix, start);
    caller.check_campaign(&derived)?;

    let mut lock = GroupLock::take(&state.pool, &n.group_key).await?;
    let mut tx = lock.begin().await?;
    let latest: Option<Period> = sqlx::query_as(
        "SELECT id, campaign, contact_list, instances, enqueued_at, resolved_at FROM alert_periods \
         WHERE group_key = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(&n.group_key)
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| db_unavailable(e, "reading the alert group"))?;
    let same = latest.filter(|p| p.instances.iter().any(|i| instances.contains(i)));
    let (period_id, campaign_name, list, action) = match same {
        Some(p) => {
            caller.check_campaign(&p.campaign)?;
            let action = if p.resolved_at.is_some() {
                // A late delivery of a period already resolved: nobody is called again.
                "late"
            } else if p.enqueued_at.is_some() {
                "repeated"
            } else {
                "resumed"
            };
            sqlx::query(
                "UPDATE alert_periods SET last_firing_at = now(), \
                 instances = ARRAY(SELECT DISTINCT unnest(instances || $2::text[])) WHERE id = $1",
            )
            .bind(p.id)
            .bind(&instances)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_unavailable(e, "recording the alert group"))?;
            (p.id, p.campaign, p.contact_list, action)
        }
        None => {
            // The group's previous period (if still open) ended without a resolved
            // notification reaching us: these alerts are a new firing.
            sqlx::query(
                "UPDATE alert_periods SET resolved_at = now() WHERE group_key = $1 AND resolved_at IS NULL",
            )
            .bind(&n.group_key)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_unavailable(e, "closing the previous period"))?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO alert_periods (group_key, campaign, contact_list, instances) \
                 VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(&n.group_key)
            .bind(&derived)
            .bind(list)
            .bind(&instances)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db_unavailable(e, "starting the alert period"))?;
            (id, derived, list.to_owned(), "started")
        }
    };
    record(&mut tx, caller, n, Some(period_id), action, payload).await?;
    tx.commit().await.map_err(|e| db_unavailable(e, "recording the notification"))?;

    let mut answer = json!({
        "status": "firing",
        "action": action,
        "campaign": campaign_name,
        "contact_list": list,
    });
    if action != "started" && action != "resumed" {
        lock.release().await;
        answer["broadcast"] = campaign_status(&state.pool, &campaign_name).await?.unwrap_or(Value::Null);
        return Ok(Json(answer));
    }

    // An interrupted earlier delivery may have created the campaign: keep its
    // message (a re-rendered one could differ, e.g. in the alert count).
    let existing = db::campaign(&state.pool, CampaignId::from_name(&campaign_name))
        .await
        .map_err(|e| db_unavailable(e, "reading the campaign"))?;
    let message = existing.map_or_else(|| n.message(), |c| c.message);
    let mut args = api_args(state, campaign_name.clone(), message);
    args.from = Some(from);
    args.provider = route.provider;
    args.language = route.language.clone();
    args.voice = route.voice.clone();
    args.repeat = route.repeat;
    args.max_attempts = route.max_attempts;
    args.retry_delay = route.retry_delay_secs.map(Duration::from_secs);
    args.machine_detection = route.machine_detection;
    let (report, _) = producer::lists::enqueue_list(
        &state.pool,
        args,
        &list,
        &state.providers,
        Rejections::Collect(0),
        CancellationToken::new(),
    )
    .await
    .map_err(|e| enqueue_error(&e, &campaign_name, &field))?;
    sqlx::query("UPDATE alert_periods SET enqueued_at = now() WHERE id = $1")
        .bind(period_id)
        .execute(&state.pool)
        .await
        .map_err(|e| db_unavailable(e, "recording the broadcast"))?;
    lock.release().await;
    tracing::info!(
        campaign = %campaign_name,
        new_contacts = report.new_contacts,
        published = report.published,
        action,
        "alert group broadcast enqueued"
    );
    answer["enqueue"] = json!({
        "contacts": report.read,
        "new_contacts": report.new_contacts,
        "already_enqueued": report.already_enqueued,
        "published": report.published,
        "invalid": report.invalid,
        "duplicate": report.duplicate,
        "do_not_call": report.do_not_call,
        "malformed": report.malformed,
    });
    answer["broadcast"] = campaign_status(&state.pool, &campaign_name).await?.unwrap_or(Value::Null);
    Ok(Json(answer))
}

async fn resolved(
    state: &ApiState,
    caller: &Caller,
    route: &Route,
    n: &Notification,
    payload: Value,
) -> Result<Json<Value>, ApiError> {
    let cancel = match n.common_labels.get(CANCEL_LABEL) {
        Some(v) => parse_bool(v).ok_or_else(|| {
            ApiError::bad_request(format!("commonLabels.{CANCEL_LABEL}: must be true or false"))
        })?,
        None => route.cancel_on_resolve,
    };
    let instances: Vec<String> = n.alerts.iter().map(Alert::instance).collect();
    let mut lock = GroupLock::take(&state.pool, &n.group_key).await?;
    let mut tx = lock.begin().await?;
    // The period these alerts fired in; a late resolved notification of an
    // older period does not end the current one.
    let period: Option<Period> = sqlx::query_as(
        "SELECT id, campaign, contact_list, instances, enqueued_at, resolved_at FROM alert_periods \
         WHERE group_key = $1 AND instances && $2 ORDER BY id DESC LIMIT 1",
    )
    .bind(&n.group_key)
    .bind(&instances)
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| db_unavailable(e, "reading the alert group"))?;
    let Some(period) = period else {
        record(&mut tx, caller, n, None, "no_period", payload).await?;
        tx.commit().await.map_err(|e| db_unavailable(e, "recording the notification"))?;
        lock.release().await;
        return Ok(Json(json!({ "status": "resolved", "action": "no_period", "campaign": null })));
    };
    if cancel {
        caller.check_campaign(&period.campaign)?;
    }
    sqlx::query("UPDATE alert_periods SET resolved_at = coalesce(resolved_at, now()) WHERE id = $1")
        .bind(period.id)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_unavailable(e, "resolving the period"))?;
    let action = if cancel { "cancelled" } else { "resolved" };
    record(&mut tx, caller, n, Some(period.id), action, payload).await?;
    tx.commit().await.map_err(|e| db_unavailable(e, "recording the notification"))?;

    let mut cancelled_calls = 0;
    if cancel
        && let Some(c) = db::campaign(&state.pool, CampaignId::from_name(&period.campaign))
            .await
            .map_err(|e| db_unavailable(e, "reading the campaign"))?
    {
        // The CLI's and the API's own cancel: calls not yet claimed by a worker end now.
        let done = campaign::cancel_now(&state.pool, &c).await.map_err(|e| {
            tracing::error!(error = %format!("{e:#}"), campaign = %period.campaign, "cancel on resolve failed");
            ApiError::unavailable()
        })?;
        if let Control::Changed { cancelled_calls: n } = done {
            cancelled_calls = n;
            sqlx::query("UPDATE alert_periods SET cancelled_calls = $2 WHERE id = $1")
                .bind(period.id)
                .bind(n as i64)
                .execute(&state.pool)
                .await
                .map_err(|e| db_unavailable(e, "recording the cancelled calls"))?;
        }
    }
    lock.release().await;
    Ok(Json(json!({
        "status": "resolved",
        "action": action,
        "campaign": period.campaign,
        "cancelled_calls": cancelled_calls,
        "broadcast": campaign_status(&state.pool, &period.campaign).await?,
    })))
}

/// One alert group's advisory lock, held on a connection of its own from
/// the claim until the enqueue (or the cancel) is done, so a second delivery
/// of the same group (an Alertmanager HA peer, a retry after a timeout)
/// waits and then finds the broadcast finished instead of racing it. The
/// connection is detached from the pool: if the request is dropped midway
/// (the client gave up), closing it releases the lock.
struct GroupLock {
    conn: sqlx::PgConnection,
    key: String,
}

impl GroupLock {
    async fn take(pool: &sqlx::PgPool, group_key: &str) -> Result<Self, ApiError> {
        let mut conn =
            pool.acquire().await.map_err(|e| db_unavailable(e, "connecting for the claim"))?.detach();
        sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 8))")
            .bind(group_key)
            .execute(&mut conn)
            .await
            .map_err(|e| db_unavailable(e, "locking the alert group"))?;
        Ok(Self { conn, key: group_key.to_owned() })
    }

    async fn begin(&mut self) -> Result<sqlx::Transaction<'_, sqlx::Postgres>, ApiError> {
        sqlx::Connection::begin(&mut self.conn).await.map_err(|e| db_unavailable(e, "starting the claim"))
    }

    async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 8))")
            .bind(&self.key)
            .execute(&mut self.conn)
            .await;
        let _ = sqlx::Connection::close(self.conn).await;
    }
}

async fn record(
    tx: &mut sqlx::PgConnection,
    caller: &Caller,
    n: &Notification,
    period: Option<i64>,
    action: &str,
    payload: Value,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO alert_notifications (key_id, group_key, status, receiver, period_id, action, payload) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&caller.key_id)
    .bind(&n.group_key)
    .bind(n.status.as_str())
    .bind(&n.receiver)
    .bind(period)
    .bind(action)
    .bind(payload)
    .execute(tx)
    .await
    .map_err(|e| db_unavailable(e, "recording the notification"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(common: &[(&str, &str)], alerts: &[(&[(&str, &str)], &str)]) -> Notification {
        let map = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Notification {
            group_key: "{}:{alertname=\"DiskFull\"}".into(),
            status: Status::Firing,
            receiver: "tocsin".into(),
            group_labels: map(&[("alertname", "Disk Full!")]),
            common_labels: map(&[("severity", "critical")]),
            common_annotations: map(common),
            alerts: alerts
                .iter()
                .map(|(annotations, status)| Alert {
                    status: if *status == "firing" { Status::Firing } else { Status::Resolved },
                    annotations: map(annotations),
                    starts_at: DateTime::parse_from_rfc3339("2026-11-22T10:15:30.5Z").unwrap().to_utc(),
                    fingerprint: "abc".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn messages_are_short_speakable_sentences_from_the_annotations() {
        let n = notification(
            &[("summary", "Disk almost full on db-1."), ("description", "Only 3%\n\tleft <on> /var & /tmp")],
            &[(&[], "firing")],
        );
        assert_eq!(n.message(), "Critical alert: Disk almost full on db-1. Only 3% left <on> /var & /tmp.");
        let n = notification(&[], &[(&[("summary", "one")], "firing"), (&[("summary", "two")], "firing")]);
        assert_eq!(n.message(), "2 critical alerts firing: Disk Full! is firing.");
        let n = notification(&[], &[(&[("description", "only a description")], "firing"), (&[], "resolved")]);
        assert_eq!(n.message(), "Critical alert: only a description.");
        let n = notification(&[("tocsin_message", "  Call   the\nbridge. ")], &[(&[], "firing")]);
        assert_eq!(n.message(), "Call the bridge.");
        let long = "word ".repeat(400);
        let n = notification(&[("summary", &long)], &[(&[], "firing")]);
        let m = n.message();
        assert!(m.chars().count() <= MAX_SPOKEN + 1 && m.ends_with("word."), "{m}");
    }

    #[test]
    fn campaign_names_are_valid_and_differ_by_group_and_period() {
        let n = notification(&[], &[(&[], "firing")]);
        let t = DateTime::parse_from_rfc3339("2026-11-22T10:15:30Z").unwrap().to_utc();
        let name = n.campaign_name("alert-", t);
        assert!(campaign::valid_name(&name), "{name}");
        assert!(name.starts_with("alert-Disk-Full--") && name.ends_with("-20261122T101530Z"), "{name}");
        assert_eq!(name, n.campaign_name("alert-", t));
        assert_ne!(name, n.campaign_name("alert-", t + chrono::Duration::seconds(1)));
        let mut other = notification(&[], &[(&[], "firing")]);
        other.group_key = "{}:{alertname=\"Other\"}".into();
        assert_ne!(name, other.campaign_name("alert-", t));
    }

    #[test]
    fn payload_errors_name_every_field() {
        let body = json!({
            "version": "3",
            "status": "burning",
            "commonLabels": {"a": 1},
            "alerts": [{"status": "firing", "labels": {}, "startsAt": "yesterday"}, 7],
        });
        let e = parse_notification(body.to_string().as_bytes()).unwrap_err();
        let m = format!("{e:?}");
        for field in
            ["version:", "groupKey:", "status:", "commonLabels.a:", "alerts[0].startsAt:", "alerts[1]:"]
        {
            assert!(m.contains(field), "{field} not named in {m}");
        }
    }
}

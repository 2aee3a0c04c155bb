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

mod message;
mod payload;
mod periods;
mod route;

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use chrono::Utc;
use serde_json::{Value, json};
use tocsin_core::http::ApiError;
use tocsin_core::{CampaignId, db};

use self::payload::{Notification, Status, parse_notification};
use self::route::{Route, parse_bool, parse_route};
use super::auth::{Auth, Caller, Write};
use super::campaigns::campaign_status;
use super::enqueue::{self, Action, Contacts, Enqueue, Settings};
use super::{ApiState, Result, body};

/// The label naming the saved contact list (overrides `?contact_list=`).
pub const LIST_LABEL: &str = "tocsin_contact_list";
/// The label asking for waiting calls to be cancelled on resolve.
pub const CANCEL_LABEL: &str = "tocsin_cancel_on_resolve";
/// An annotation that, when present, is spoken as it is.
pub const MESSAGE_ANNOTATION: &str = "tocsin_message";

/// `POST /api/v1/alertmanager`.
pub async fn receive(
    State(state): State<Arc<ApiState>>,
    caller: Auth<Write>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>> {
    let route = parse_route(query, &state)?;
    let bytes = body::bytes(raw)?;
    let notification = parse_notification(&bytes)?;
    // Stored as received (a checked notification is valid JSON).
    let payload: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let answer = match notification.status {
        Status::Firing => firing(&state, &caller, &route, &notification, payload).await,
        Status::Resolved => resolved(&state, &caller, &route, &notification, payload).await,
    }?;
    // A broadcast started (or finished after an interrupted run), or cancelled on resolve.
    let action = answer["action"].as_str().unwrap_or_default();
    if matches!(action, "started" | "resumed" | "cancelled") {
        let details = json!({ "group_key": notification.group_key, "receiver": notification.receiver,
                              "contact_list": answer["contact_list"], "cancelled_calls": answer["cancelled_calls"] });
        let campaign = answer["campaign"].as_str().map(str::to_owned);
        let verb = if action == "cancelled" { "alertmanager.cancel" } else { "alertmanager.broadcast" };
        super::audit::record(
            &state,
            &caller,
            tocsin_core::audit::Via::Alertmanager,
            verb,
            campaign.as_deref(),
            details,
        )
        .await;
    }
    Ok(answer)
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
    if !enqueue::valid_name(list) {
        return Err(ApiError::bad_request(format!("{field}: {list:?} is not a contact list name")));
    }
    Ok((list, field))
}

/// A firing group: claims its period and, the first time (or after an
/// interrupted enqueue), broadcasts to the contact list.
async fn firing(
    state: &ApiState,
    caller: &Caller,
    route: &Route,
    n: &Notification,
    payload: Value,
) -> Result<Json<Value>> {
    let (list, field) = contact_list(route, n)?;
    let Some(from) = route.from.clone() else {
        return Err(ApiError::bad_request(
            "from: required: the caller id for broadcasts, ?from=%2B14155550100 on the receiver URL",
        )
        .into());
    };
    if !enqueue::list_exists(&state.pool, list).await? {
        return Err(ApiError::bad_request(format!(
            "{field}: no saved contact list named {list:?} (producer list import saves one)"
        ))
        .into());
    }
    let firing = n.firing();
    let instances: Vec<String> = firing.iter().map(|a| a.instance()).collect();
    let start = firing.iter().map(|a| a.starts_at).min().unwrap_or_else(Utc::now);
    let derived = n.campaign_name(&route.campaign_prefix, start);
    caller.check_campaign(&derived)?;

    let claim = periods::claim_firing(
        &state.pool,
        caller,
        &route.campaign_prefix,
        n,
        &instances,
        (&derived, list),
        payload,
    )
    .await?;
    let mut answer = json!({
        "status": "firing",
        "action": claim.action,
        "campaign": claim.campaign,
        "contact_list": claim.contact_list,
    });
    if !claim.enqueues() {
        let campaign = claim.campaign.clone();
        claim.lock.release().await;
        answer["broadcast"] = campaign_status(&state.pool, &campaign).await?.unwrap_or(Value::Null);
        return Ok(Json(answer));
    }

    // An interrupted earlier delivery may have created the campaign: keep its
    // message (a re-rendered one could differ, e.g. in the alert count).
    let existing = db::campaign(&state.pool, CampaignId::from_name(&claim.campaign)).await?;
    let message = existing.map_or_else(|| n.message(), |c| c.settings.message);
    let request = Enqueue {
        campaign: claim.campaign.clone(),
        message,
        settings: Settings {
            from: Some(from),
            provider: route.provider,
            route: route.route.clone(),
            language: route.language.clone(),
            voice: route.voice.clone(),
            repeat: route.repeat,
            max_attempts: route.max_attempts,
            retry_delay_secs: route.retry_delay_secs,
            machine_detection: route.machine_detection,
            ..Settings::default()
        },
        contacts: Contacts::Saved(claim.contact_list.clone()),
    };
    let outcome = enqueue::enqueue(state, request, &field, 0).await?;
    periods::mark_enqueued(&state.pool, claim.period_id).await?;
    let campaign = claim.campaign.clone();
    claim.lock.release().await;
    tracing::info!(
        %campaign,
        new_contacts = outcome.new_contacts,
        published = outcome.published,
        action = claim.action,
        "alert group broadcast enqueued"
    );
    answer["enqueue"] = Value::Object(outcome.counts(outcome.read));
    answer["broadcast"] = campaign_status(&state.pool, &campaign).await?.unwrap_or(Value::Null);
    Ok(Json(answer))
}

/// A resolved group: ends its period and, when asked, cancels the calls
/// of its broadcast not yet placed.
async fn resolved(
    state: &ApiState,
    caller: &Caller,
    route: &Route,
    n: &Notification,
    payload: Value,
) -> Result<Json<Value>> {
    let cancel = match n.common_labels.get(CANCEL_LABEL) {
        Some(v) => parse_bool(v).ok_or_else(|| {
            ApiError::bad_request(format!("commonLabels.{CANCEL_LABEL}: must be true or false"))
        })?,
        None => route.cancel_on_resolve,
    };
    let action = if cancel { "cancelled" } else { "resolved" };
    let (lock, period) =
        periods::resolve(&state.pool, caller, &route.campaign_prefix, n, action, payload).await?;
    let Some(period) = period else {
        lock.release().await;
        return Ok(Json(json!({ "status": "resolved", "action": "no_period", "campaign": null })));
    };
    let mut cancelled_calls = 0;
    if cancel && let Some(c) = enqueue::handle(&state.pool, &period.campaign).await? {
        // The CLI's and the API's own cancel: calls not yet claimed by a worker end now.
        let done = enqueue::control(&state.pool, &c, Action::Cancel).await.map_err(|e| {
            let e = match e {
                enqueue::ControlError::Conflict(m) => anyhow::anyhow!(m),
                enqueue::ControlError::Failed(e) => e,
            };
            tracing::error!(error = %format!("{e:#}"), campaign = %period.campaign, "cancel on resolve failed");
            ApiError::unavailable()
        })?;
        if done.changed {
            cancelled_calls = done.cancelled_calls;
            periods::record_cancelled(&state.pool, period.id, done.cancelled_calls).await?;
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

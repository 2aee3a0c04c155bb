//! The audit log over the API: `GET /api/v1/audit` (scope `audit:read`),
//! and `record`, which every handler that changes something calls once its
//! change is done (`tocsin_core::audit` owns the log).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use tocsin_core::audit::{self, Actor, Filter, Via};
use tocsin_core::http::ApiError;

use super::auth::{AuditRead, Auth, Caller};
use super::{ApiState, Result};

/// Records an action a caller took: who (its key's name), from where (the
/// client's address), what. The action is done either way: a failure to
/// record is logged, not answered.
pub async fn record(
    state: &ApiState,
    caller: &Caller,
    via: Via,
    action: &str,
    campaign: Option<&str>,
    details: Value,
) {
    let actor = Actor { via, name: caller.name.clone(), client: caller.client.clone() };
    if let Err(e) = audit::record(&state.pool, &actor, action, campaign, details).await {
        tracing::error!(error = %e, action, "the action was done but not written to the audit log");
    }
}

#[derive(Deserialize)]
pub struct AuditQuery {
    campaign: Option<String>,
    since: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/v1/audit?campaign=&since=&limit=`: newest first; a key with
/// campaign prefixes sees only its campaigns' entries.
pub async fn list(
    State(state): State<Arc<ApiState>>,
    Query(q): Query<AuditQuery>,
    caller: Auth<AuditRead>,
) -> Result<Json<Value>> {
    if let Some(c) = &q.campaign {
        caller.check_campaign(c)?;
    }
    let since = match &q.since {
        None => None,
        Some(s) => Some(
            tocsin_core::campaign::parse_start_at(s)
                .map_err(|e| ApiError::bad_request(format!("since: {e}")))?,
        ),
    };
    let limit = match q.limit {
        None => 100,
        Some(n) if (1..=1000).contains(&n) => n,
        Some(_) => return Err(ApiError::bad_request("limit: must be an integer from 1 to 1000").into()),
    };
    let filter =
        Filter { campaign: q.campaign.clone(), since, prefixes: caller.campaign_prefixes.clone(), limit };
    let entries = audit::list(&state.pool, &filter).await?;
    Ok(Json(json!({ "entries": entries })))
}

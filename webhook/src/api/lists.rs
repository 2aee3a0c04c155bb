//! Saved contact lists over the API: `PUT /api/v1/lists/{name}` imports an
//! uploaded CSV or JSON Lines file, read as it arrives — the request body is
//! never held whole, so a million-row file costs the same memory as a small
//! one — with the checks of `producer list import`, and answers with the
//! rejected lines (line, value, reason) before anything is called;
//! `GET /api/v1/lists` lists them. The dashboard's launch form uses both.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tocsin_core::audit::Via;
use tocsin_core::http::ApiError;

use super::auth::{Auth, Read, Write};
use super::{ApiState, Result, audit, enqueue, forbidden};

/// The largest upload: a million contacts with a few columns each.
pub const MAX_UPLOAD_BYTES: u64 = 512 * 1024 * 1024;

/// Rejected lines listed in an import's answer (the counts cover all).
const LISTED: usize = 1000;

#[derive(Deserialize)]
pub struct UploadQuery {
    /// `csv` or `jsonl` (default: from `filename`, else detected).
    format: Option<String>,
    /// The uploaded file's name, for messages (`contacts.csv:12: …`).
    filename: Option<String>,
    default_region: Option<String>,
}

/// `PUT /api/v1/lists/{name}`: the body is the list (scope
/// `campaigns:write`; lists are shared by every campaign, so a key limited
/// to campaign prefixes may not replace one).
pub async fn import(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(q): Query<UploadQuery>,
    caller: Auth<Write>,
    body: Body,
) -> Result<Json<Value>> {
    if !caller.campaign_prefixes.is_empty() {
        return Err(forbidden(
            "saved lists are shared by every campaign: this key is limited to campaign prefixes",
        )
        .into());
    }
    let format = match q.format.as_deref() {
        None | Some("") => None,
        Some(f) => Some(f.parse().map_err(|_| ApiError::bad_request("format: must be csv or jsonl"))?),
    };
    let filename = q.filename.clone().unwrap_or_else(|| format!("{name} (upload)"));
    // The body as a blocking reader for the import's reader thread, cut off
    // past the largest upload.
    let mut seen = 0u64;
    let stream = body.into_data_stream().map_err(std::io::Error::other).and_then(move |chunk| {
        seen += chunk.len() as u64;
        futures::future::ready(if seen > MAX_UPLOAD_BYTES {
            Err(std::io::Error::other(format!("the upload is larger than {MAX_UPLOAD_BYTES} bytes")))
        } else {
            Ok(chunk)
        })
    });
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let (report, rejected) =
        enqueue::import_list(&state, &name, reader, &filename, format, q.default_region.clone(), LISTED)
            .await?;
    let details =
        json!({ "list": name, "file": filename, "saved": report.saved, "rejected": report.rejected() });
    audit::record(&state, &caller, Via::Api, "list.import", None, details).await;
    let rejected: Vec<Value> = rejected
        .into_iter()
        .map(|r| json!({ "line": r.line, "number": r.number, "reason": r.reason, "detail": r.detail }))
        .collect();
    Ok(Json(json!({ "list": report, "rejected_total": report.rejected(), "rejected": rejected })))
}

/// `GET /api/v1/lists`: every saved list with its contact count.
pub async fn list(State(state): State<Arc<ApiState>>, _caller: Auth<Read>) -> Result<Json<Value>> {
    Ok(Json(json!({ "lists": enqueue::saved_lists(&state).await? })))
}

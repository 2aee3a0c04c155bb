//! What the three providers' keypress routes share: a round's answer is
//! read by `tocsin_core::confirm` (what it means, what comes next),
//! recorded by `tocsin_core::calls::keypress` (once per round, however
//! often reported), counted, and the next step handed back for the provider
//! to render (NCCO, TwiML, a Telnyx command). The turn travels in the URL
//! the step's document gives the provider (`&turn=`), signed where the
//! provider signs URLs (Twilio) and beside the attempt's token otherwise.

use std::collections::HashMap;

use axum::response::{IntoResponse, Response};
use tocsin_core::calls::keypress::{self, Keypress, Recorded};
use tocsin_core::campaign::Campaign;
use tocsin_core::confirm::{Heard, Reply, Step, Turn};
use tocsin_core::http::ApiError;
use tocsin_core::provider::Provider;
use tocsin_core::{CallId, CampaignId};
use tracing::{error, info};

use super::HookState;

/// The URL a step's document sends the next key to: `path` on our public
/// URL with the call, attempt, token and turn.
pub(crate) fn next_url(
    state: &HookState,
    path: &str,
    call: CallId,
    attempt: i32,
    token: &str,
    turn: Turn,
) -> String {
    format!("{}{path}?call_id={call}&attempt={attempt}&token={token}&turn={turn}", state.public_url)
}

/// The turn named in the URL (`&turn=`); 400 when missing or malformed.
pub(crate) fn turn(query: &HashMap<String, String>) -> Result<Turn, Response> {
    let Some(text) = query.get("turn") else {
        return Err(ApiError::bad_request("missing turn query parameter").into_response());
    };
    text.parse().map_err(|e: String| ApiError::bad_request(e).into_response())
}

/// What a provider reported for one round of a call's dialogue.
pub(crate) struct Round {
    pub call: CallId,
    pub attempt: i32,
    pub turn: Turn,
    pub heard: Heard,
}

/// One round's answer: recorded and counted; returns the next step. `Err`
/// is the 503 when the database is unavailable (the provider sends the
/// answer again, and a repeat is recorded once).
pub(crate) async fn answer(
    state: &HookState,
    campaign: &Campaign,
    round: Round,
    provider: Provider,
    payload: &serde_json::Value,
) -> Result<Step, Response> {
    let Round { call, attempt, turn, heard } = round;
    let (reply, step) = campaign.settings.confirmation.next(turn, heard);
    let press = Keypress { call, attempt, turn, heard, reply, provider, payload };
    match keypress::record(&state.pool, &press).await {
        Ok(recorded) => {
            counted(campaign.id, provider, reply, recorded);
            Ok(step)
        }
        Err(e) => {
            error!(error = %e, call_id = %call, "keypress not recorded: database unavailable; answering 503");
            Err(ApiError::unavailable().into_response())
        }
    }
}

fn counted(campaign: CampaignId, provider: Provider, reply: Reply, recorded: Recorded) {
    let label = match recorded {
        Recorded::New { .. } => "new",
        Recorded::Duplicate => "duplicate",
        Recorded::UnknownCall => "unknown_call",
    };
    metrics::counter!("tocsin_keypresses_total", "provider" => provider.as_str(), "reply" => reply.as_str(), "result" => label)
        .increment(1);
    if let Recorded::New { confirmed_after_secs, late, skipped } = recorded {
        if let Some(secs) = confirmed_after_secs {
            metrics::counter!("tocsin_confirmations_total", "provider" => provider.as_str(), "late" => if late { "true" } else { "false" })
                .increment(1);
            metrics::histogram!("tocsin_time_to_confirm_seconds").record(secs);
            info!(%campaign, provider = provider.as_str(), secs, late, "contact confirmed");
        }
        if reply == Reply::OptedOut {
            metrics::counter!("tocsin_opt_outs_total", "provider" => provider.as_str()).increment(1);
            info!(%campaign, provider = provider.as_str(), skipped, "contact opted out by keypress; number added to the do-not-call list");
        }
    }
}

//! Telnyx: call events (`POST /telnyx/events`), Ed25519-signed. Telnyx has
//! no answer URL, so this is also where the message is spoken: on
//! `call.answered` we send the speak command, on `call.speak.ended` the
//! hang-up. Both carry a `command_id` derived from the call leg, and are
//! sent after the event is stored and before we answer; when Telnyx cannot
//! take the command right now we answer 503, Telnyx redelivers the event
//! (stored once), and the repeated command is ignored by Telnyx if the first
//! one did arrive. A speak command Telnyx refuses (bad voice, too long)
//! would leave the callee in silence: the call is hung up and recorded
//! `failed` with Telnyx's reason.

// Helpers return the finished error response as `Err`; it is built once
// per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use tocsin_core::campaign::{Campaign, Content};
use tocsin_core::confirm::{Step, Voicemail};
use tocsin_core::http::ApiError;
use tocsin_core::provider::Provider;
use tocsin_core::telnyx::{
    self, CommandError, Dialogue, GatherUsingSpeak, PlaybackStart, PublicKey, Speak, TelnyxEvent,
    TelnyxWebhook,
};
use tocsin_core::{CallId, calls};
use tracing::{info, warn};

use super::{HookState, Reason, attempt, campaign_of_call, dialogue, rejected, store_event};
use crate::config::TelnyxSettings;
use crate::store::{CallProof, StoredEvent};

/// What the webhook needs to verify Telnyx events and command calls.
#[derive(Clone)]
pub struct TelnyxHooks {
    /// Every Telnyx account's public key (an event verifies with any);
    /// empty only with `--insecure-skip-signature-check`.
    pub public_keys: Arc<Vec<PublicKey>>,
    /// The command client of the account at hand (`for_call`).
    pub client: Arc<telnyx::Client>,
    /// Every account's command client, by label.
    accounts: Arc<HashMap<String, Arc<telnyx::Client>>>,
}

/// Longest a speak or hang-up command may take before we give up and let
/// Telnyx redeliver the event.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

impl TelnyxHooks {
    /// The keys and command clients of the `default` account (the checked
    /// settings, `WebhookConfig::telnyx_settings`) and of the accounts
    /// file's Telnyx accounts; `None` when there is none.
    pub fn new(
        settings: Option<TelnyxSettings>,
        file: &[tocsin_core::config::AccountConfig],
    ) -> anyhow::Result<Option<Self>> {
        let mut keys = Vec::new();
        let mut accounts = HashMap::new();
        if let Some(settings) = settings {
            keys.extend(settings.public_key);
            let client = telnyx::Client::from_credentials(&settings.credentials, COMMAND_TIMEOUT)?;
            accounts.insert(tocsin_core::route::DEFAULT_LABEL.to_owned(), Arc::new(client));
        }
        for account in file {
            let tocsin_core::config::Credentials::Telnyx(credentials) = &account.credentials else {
                continue;
            };
            if let Some(key) = &account.webhook_key {
                let key = PublicKey::from_base64(key.expose_secret()).map_err(|e| {
                    anyhow::anyhow!("account {}: `public_key` is not a Telnyx public key: {e}", account.name)
                })?;
                keys.push(key);
            }
            let client = telnyx::Client::from_credentials(credentials, COMMAND_TIMEOUT)?;
            accounts.insert(account.name.label.clone(), Arc::new(client));
        }
        let Some(first) =
            accounts.get(tocsin_core::route::DEFAULT_LABEL).or_else(|| accounts.values().next())
        else {
            return Ok(None);
        };
        Ok(Some(Self { public_keys: Arc::new(keys), client: first.clone(), accounts: Arc::new(accounts) }))
    }

    /// These hooks with the command client of the account that placed
    /// `call` (looked up only when there are several).
    async fn for_call(&self, state: &HookState, call: Option<CallId>) -> Self {
        let mut hooks = self.clone();
        if self.accounts.len() > 1
            && let Some(id) = call
            && let Ok(Some(standing)) = calls::standing(&state.pool, id).await
            && let Some(client) = standing.account.and_then(|a| self.accounts.get(&a.label).cloned())
        {
            hooks.client = client;
        }
        hooks
    }
}

fn refused(reason: Reason, detail: &str) -> Response {
    rejected(Provider::Telnyx, reason, detail)
}

/// `POST /telnyx/events?call_id=…`: verify, store, then speak or hang up.
pub async fn events(
    State(state): State<Arc<HookState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(hooks) = &state.telnyx else {
        return refused(Reason::Signature, "Telnyx is not configured on this webhook service");
    };
    if !state.skip_signatures {
        if hooks.public_keys.is_empty() {
            return refused(Reason::Signature, "no TOCSIN_TELNYX_PUBLIC_KEY configured");
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        // Signed by whichever of our accounts placed the call.
        let mut verified = Err(String::new());
        for key in hooks.public_keys.iter() {
            verified = telnyx::verify_webhook(
                header("telnyx-signature-ed25519"),
                header("telnyx-timestamp"),
                key,
                &body,
            )
            .map_err(|e| e.to_string());
            if verified.is_ok() {
                break;
            }
        }
        if let Err(e) = verified {
            return refused(Reason::Signature, &e);
        }
    }
    let payload: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return refused(Reason::Malformed, &e.to_string()),
    };
    let event = match serde_json::from_value::<TelnyxWebhook>(payload.clone()) {
        Ok(w) => w.data,
        Err(e) => return refused(Reason::Malformed, &e.to_string()),
    };
    // `client_state` is in the signed body; the query is not signed, and
    // must then carry the attempt's token.
    let (call_id, proof) = match event.call_id() {
        Some(id) => (Some(id), CallProof::Signed),
        None => (super::call_id(&query), CallProof::Token(super::url_token(&query))),
    };
    let state_change = event.state();
    let failed =
        matches!(state_change, Some(tocsin_core::CallState::Failed | tocsin_core::CallState::Rejected));
    let stored = StoredEvent {
        proof: proof.clone(),
        provider: Provider::Telnyx.as_str(),
        dedupe_key: event.dedupe_key(),
        status: event.event_type.clone(),
        payload: payload.clone(),
        call: calls::Event {
            call_id,
            attempt: attempt(&query),
            provider_call_id: event.payload.call_control_id.clone(),
            state: state_change,
            occurred_at: event.occurred_at(),
            duration_secs: event.duration_secs(),
            price: None,
            answered_by: event.answered_by(),
            detail: if failed { event.detail() } else { None },
        },
    };
    if let Err(response) = store_event(&state, stored).await {
        return response;
    }
    if event.channel_limited()
        && let (Some(id), Some(shared)) = (call_id, state.shared.clone())
    {
        // The account's fault, not the callee's: it counts against the
        // account's breaker, as a worker's failed request would (off the
        // answer's path).
        let pool = state.pool.clone();
        tokio::spawn(async move {
            if let Ok(Some(standing)) = calls::standing(&pool, id).await
                && let Some(account) = standing.account
            {
                let why = "a call refused past the account's channel limit (SIP 403)";
                shared.account_failed(&account.to_string(), why).await;
            }
        });
    }
    let hooks = hooks.for_call(&state, call_id).await;
    match command(&state, &hooks, call_id, attempt(&query), &proof, &event, &payload).await {
        // 200, not 204: Telnyx delivers to the failover URL on any answer
        // but 200 OK (its Voice API "Receiving Webhooks" page).
        Ok(()) => StatusCode::OK.into_response(),
        Err(response) => response,
    }
}

/// The command an event calls for, sent now. Duplicates of the event send it
/// again with the same `command_id`, which Telnyx ignores.
async fn command(
    state: &HookState,
    hooks: &TelnyxHooks,
    call_id: Option<CallId>,
    attempt: Option<i32>,
    proof: &CallProof,
    event: &TelnyxEvent,
    raw: &serde_json::Value,
) -> Result<(), Response> {
    let Some(leg) = event.payload.call_control_id.as_deref() else {
        return Ok(());
    };
    let hangup_id = telnyx::call_command_id(leg, "hangup");
    let hangup = || hooks.client.hangup(leg, &hangup_id);
    let campaign_and_id = |doing| async move {
        match call_id {
            Some(id) => Ok(campaign_of_call(state, id, doing).await?.map(|c| (c, id))),
            None => Ok::<_, Response>(None),
        }
    };
    let (kind, sent) = match event.event_type.as_str() {
        "call.answered" => match campaign_and_id("telnyx speak").await? {
            // With voicemail drop or hang-up, wait for the machine detection.
            Some((campaign, _)) if campaign.settings.voicemail != Voicemail::Ignore => return Ok(()),
            Some((campaign, id)) => start(hooks, &campaign, id, leg).await,
            None => {
                warn!(?call_id, "answered call we do not know; hanging up");
                ("hangup", hangup().await)
            }
        },
        // `human`, `not_sure`: as to a person; `machine`: hang up, or wait
        // for the greeting to end and leave the voicemail.
        "call.machine.detection.ended" => match campaign_and_id("telnyx machine detection").await? {
            Some((campaign, id)) if campaign.settings.voicemail != Voicemail::Ignore => {
                match (event.payload.result.as_deref(), campaign.settings.voicemail) {
                    (Some("machine"), Voicemail::Hangup) => ("hangup", hangup().await),
                    (Some("machine"), _) => return Ok(()),
                    _ => start(hooks, &campaign, id, leg).await,
                }
            }
            _ => return Ok(()),
        },
        "call.machine.greeting.ended" => match campaign_and_id("telnyx voicemail").await? {
            Some((campaign, id)) if campaign.settings.voicemail == Voicemail::Drop => {
                voicemail(state, hooks, &campaign, id, attempt, leg, "voicemail").await?
            }
            _ => return Ok(()),
        },
        // The detector cut a speech that started too early: speak it again
        // (a new command id: Telnyx ignores a repeated one).
        "call.speak.ended" | "call.playback.ended"
            if event.payload.status.as_deref() == Some("cancelled_amd") =>
        {
            match campaign_and_id("telnyx voicemail").await? {
                Some((campaign, id)) if campaign.settings.voicemail == Voicemail::Drop => {
                    let again = format!("voicemail:{}", event.id);
                    voicemail(state, hooks, &campaign, id, attempt, leg, &again).await?
                }
                _ => return Ok(()),
            }
        }
        "call.gather.ended" | "call.dtmf.received" => {
            let (Some(id), Some(Dialogue::Asking(turn)), Some(heard)) =
                (call_id, event.dialogue(), event.heard())
            else {
                return Ok(());
            };
            let Some(campaign) = campaign_of_call(state, id, "telnyx keypress").await? else {
                return Ok(());
            };
            let round = dialogue::Round { call: id, attempt: attempt.unwrap_or(1), turn, heard };
            let step = dialogue::answer(state, &campaign, round, Provider::Telnyx, raw).await?;
            // Both events report the key; the gather's end moves the call on
            // (a `call.dtmf.received` may come before the gather has ended).
            if event.event_type != "call.gather.ended" {
                return Ok(());
            }
            let kind = if matches!(step, Step::Ask { .. }) { "gather" } else { "goodbye" };
            (kind, send_step(hooks, &campaign, id, leg, &step).await)
        }
        // The recording before a question ended (played whole or not):
        // ask the question.
        "call.playback.ended" if matches!(event.dialogue(), Some(Dialogue::Playing(_))) => {
            let (Some(id), Some(Dialogue::Playing(turn))) = (call_id, event.dialogue()) else {
                return Ok(());
            };
            let Some(campaign) = campaign_of_call(state, id, "telnyx question").await? else {
                return Ok(());
            };
            let question = campaign.settings.confirmation.question(turn);
            ("gather", send_step(hooks, &campaign, id, leg, &question).await)
        }
        // The closing words (or the message, without a dialogue) ended: hang
        // up. A gather's own speech ending is not the end of the call.
        "call.speak.ended" | "call.playback.ended"
            if !matches!(event.dialogue(), Some(Dialogue::Asking(_))) =>
        {
            ("hangup", hangup().await)
        }
        _ => return Ok(()),
    };
    match sent {
        Ok(()) => {
            info!(?call_id, command = kind, "telnyx command sent");
            Ok(())
        }
        Err(CommandError::Refused { code, .. }) if code == telnyx::CALL_ENDED => {
            // The callee hung up first: its call.hangup tells the rest.
            info!(?call_id, command = kind, "telnyx call already ended");
            Ok(())
        }
        Err(CommandError::Refused { status, code, detail }) if kind == "speak" || kind == "gather" => {
            // The message will never be spoken: end the call now rather than
            // leave the callee in silence, and record it failed with
            // Telnyx's reason (the hang-up's own event cannot make it
            // `completed` afterwards: the first outcome stays).
            warn!(?call_id, status, %code, %detail, "telnyx refused the speak command; hanging up");
            if let Err(e) = hangup().await {
                warn!(?call_id, error = %e, "hang-up after a refused speak failed");
            }
            let refusal = serde_json::json!({
                "command": "speak", "status": status, "code": code, "detail": detail,
            });
            store_event(state, refused_speak(call_id, attempt, proof, event, leg, refusal)).await.map(drop)
        }
        Err(CommandError::Refused { status, code, detail }) => {
            warn!(?call_id, status, %code, %detail, command = kind, "telnyx refused the command");
            Ok(())
        }
        Err(CommandError::Transient(detail)) => {
            warn!(?call_id, %detail, "telnyx command failed; answering 503 so the event is redelivered");
            Err(ApiError::unavailable().into_response())
        }
    }
}

/// What an answered call hears first: the dialogue's first gather, or the
/// message.
async fn start(
    hooks: &TelnyxHooks,
    campaign: &Campaign,
    id: CallId,
    leg: &str,
) -> (&'static str, Result<(), CommandError>) {
    match campaign.settings.confirmation() {
        Some(c) => ("gather", send_step(hooks, campaign, id, leg, &c.first()).await),
        None => {
            let s = &campaign.settings;
            let repeat = u32::try_from(s.repeat).unwrap_or(1).max(1);
            if let Content::Audio(url) = s.content() {
                let play = PlaybackStart {
                    audio_url: url,
                    repeat,
                    command_id: telnyx::call_command_id(leg, "playback"),
                    client_state: None,
                };
                return ("speak", hooks.client.playback_start(leg, &play).await);
            }
            let speak = Speak {
                payload: s.message.clone(),
                voice: voice(campaign),
                language: s.language.clone(),
                repeat: u32::try_from(s.repeat).unwrap_or(1).max(1),
                command_id: telnyx::call_command_id(leg, "speak"),
                client_state: None,
            };
            ("speak", hooks.client.speak(leg, &speak).await)
        }
    }
}

/// Leaves the voicemail (the greeting has ended): recorded on the call,
/// then spoken with `Dialogue::Finishing`, so its end hangs up.
async fn voicemail(
    state: &HookState,
    hooks: &TelnyxHooks,
    campaign: &Campaign,
    id: CallId,
    attempt: Option<i32>,
    leg: &str,
    command: &str,
) -> Result<(&'static str, Result<(), CommandError>), Response> {
    super::record_voicemail(state, id, attempt.unwrap_or(1), Provider::Telnyx).await?;
    Ok(("speak", closing(hooks, campaign, id, leg, campaign.settings.voicemail_content(), command).await))
}

/// The last words (or recording) of a call, played once with
/// `Dialogue::Finishing` (their `call.speak.ended` or `call.playback.ended`
/// hangs up); `command` names the speech for its id.
async fn closing(
    hooks: &TelnyxHooks,
    campaign: &Campaign,
    id: CallId,
    leg: &str,
    content: Content,
    command: &str,
) -> Result<(), CommandError> {
    let client_state = Some(telnyx::dialogue_state(id, Dialogue::Finishing));
    let text = match content {
        Content::Text(text) => text,
        Content::Audio(url) => {
            let command_id = telnyx::call_command_id(leg, command);
            let play = PlaybackStart { audio_url: url, repeat: 1, command_id, client_state };
            return hooks.client.playback_start(leg, &play).await;
        }
    };
    let speak = Speak {
        payload: text,
        voice: voice(campaign),
        language: campaign.settings.language.clone(),
        repeat: 1,
        command_id: telnyx::call_command_id(leg, command),
        client_state,
    };
    hooks.client.speak(leg, &speak).await
}

/// The voice to speak a campaign's words in.
fn voice(campaign: &Campaign) -> String {
    campaign.settings.voice.clone().unwrap_or_else(|| telnyx::speech::DEFAULT_VOICE.into())
}

/// Sends a dialogue step: a gather for a question (after the recording,
/// played first with `Dialogue::Playing` when the step has the message and
/// the campaign plays one), the closing words (with `Dialogue::Finishing`,
/// so their end hangs up) for a finish. Each carries a `command_id` of its
/// round, so a redelivered event's repeat is ignored.
async fn send_step(
    hooks: &TelnyxHooks,
    campaign: &Campaign,
    id: CallId,
    leg: &str,
    step: &Step,
) -> Result<(), CommandError> {
    let s = &campaign.settings;
    match step {
        Step::Ask { message: true, turn, .. } if s.audio_url.is_some() => {
            let play = PlaybackStart {
                audio_url: s.audio_url.clone().unwrap_or_default(),
                repeat: u32::try_from(s.repeat).unwrap_or(1).max(1),
                command_id: telnyx::call_command_id(leg, &format!("playback:{}", turn.round)),
                client_state: Some(telnyx::dialogue_state(id, Dialogue::Playing(*turn))),
            };
            hooks.client.playback_start(leg, &play).await
        }
        Step::Ask { .. } => match GatherUsingSpeak::new(id, leg, step, s) {
            Some(g) => hooks.client.gather_using_speak(leg, &g).await,
            None => Ok(()),
        },
        Step::Finish { text } => {
            closing(hooks, campaign, id, leg, Content::Text(text.clone()), "speak:end").await
        }
    }
}

/// The event recording a refused speak command: the call failed, with
/// Telnyx's code and detail as the reason. One per call leg.
fn refused_speak(
    call_id: Option<CallId>,
    attempt: Option<i32>,
    proof: &CallProof,
    answered: &TelnyxEvent,
    leg: &str,
    refusal: serde_json::Value,
) -> StoredEvent {
    let detail = format!(
        "speak refused: {} {}",
        refusal["code"].as_str().unwrap_or_default(),
        refusal["detail"].as_str().unwrap_or_default()
    );
    StoredEvent {
        proof: proof.clone(),
        provider: Provider::Telnyx.as_str(),
        dedupe_key: format!("telnyx:speak-refused:{leg}"),
        status: "tocsin.speak.refused".into(),
        payload: refusal,
        call: calls::Event {
            call_id,
            attempt,
            provider_call_id: Some(leg.to_owned()),
            state: Some(tocsin_core::CallState::Failed),
            // The answer's own time: never after the hang-up that follows.
            occurred_at: answered.occurred_at().or_else(|| Some(chrono::Utc::now())),
            duration_secs: None,
            price: None,
            answered_by: None,
            detail: Some(detail.trim().to_owned()),
        },
    }
}

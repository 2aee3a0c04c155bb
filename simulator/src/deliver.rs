//! Event webhooks as the providers send them: signed the provider's way at
//! each attempt (fresh timestamps), retried with backoff on non-2xx or no
//! answer, and — when the fault flags ask — delivered twice or after the
//! call's next event.

use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use tracing::{debug, warn};

use crate::Sim;
use crate::accounts::{TelnyxAccount, TwilioAccount, VonageAccount};

/// How a provider signs its webhooks, with the keys of the call's account.
#[derive(Clone, Debug)]
pub enum Signer {
    /// HS256 JWT in `Authorization: Bearer` with `payload_hash`, keyed by
    /// the account's signature secret.
    Vonage { account: Arc<VonageAccount>, application_id: String },
    /// `X-Twilio-Signature` over URL and form parameters, keyed by the
    /// account's auth token.
    Twilio(Arc<TwilioAccount>),
    /// `telnyx-signature-ed25519` over `timestamp|body`, with
    /// `telnyx-timestamp`, by the account's signing key.
    Telnyx(Arc<TelnyxAccount>),
}

/// One event to deliver.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// POST, or GET for Twilio callbacks asked for with `StatusCallbackMethod=GET`
    /// (then the parameters are in `url` and `body` is empty).
    pub method: reqwest::Method,
    pub url: String,
    pub body: Vec<u8>,
    pub content_type: &'static str,
    pub signer: Signer,
    pub provider_call_id: String,
}

/// Delivers a call's events in order, holding one back now and then when
/// `--fault-reorder-rate` asks for out-of-order delivery.
#[derive(Default)]
pub struct Emitter {
    held: Option<Outgoing>,
}

impl Emitter {
    /// Sends `event` (perhaps holding it back until the next one).
    pub async fn emit(&mut self, sim: &Sim, event: Outgoing) {
        if self.held.is_none() && sim.chance(sim.config.faults.reorder_rate) {
            sim.stats.reordered();
            self.held = Some(event);
            return;
        }
        self.emit_now(sim, event).await;
    }

    /// Sends `event` now (then any held one): for events something waits on,
    /// such as Telnyx's `call.answered`, which the speak command answers.
    pub async fn emit_now(&mut self, sim: &Sim, event: Outgoing) {
        send(sim, &event).await;
        self.flush(sim).await;
    }

    /// Sends the held event, if any (call this when the call is over).
    pub async fn flush(&mut self, sim: &Sim) {
        if let Some(held) = self.held.take() {
            send(sim, &held).await;
        }
    }
}

async fn send(sim: &Sim, event: &Outgoing) {
    if sim.chance(sim.config.faults.drop_event_rate) {
        sim.stats.dropped_event();
        return;
    }
    deliver(sim, event).await;
    if sim.chance(sim.config.faults.duplicate_rate) {
        sim.stats.duplicated();
        deliver(sim, event).await;
    }
}

/// Whether the provider counts an answer as delivered. Telnyx wants 200
/// exactly: "If that URL does not resolve, or your application returns a
/// non 200 OK response, the webhook will be delivered to the failover URL"
/// (Telnyx, Voice API "Receiving Webhooks",
/// developers.telnyx.com/docs/voice/programmable-voice/receiving-webhooks).
/// Vonage and Twilio take any 2xx.
fn accepted(signer: &Signer, status: reqwest::StatusCode) -> bool {
    match signer {
        Signer::Telnyx(_) => status == reqwest::StatusCode::OK,
        Signer::Vonage { .. } | Signer::Twilio(_) => status.is_success(),
    }
}

/// The request for `event`, signed as its provider signs (afresh at each attempt).
fn signed(sim: &Sim, event: &Outgoing) -> reqwest::RequestBuilder {
    let mut request = sim.http.request(event.method.clone(), &event.url);
    if !event.body.is_empty() {
        request = request.header(header::CONTENT_TYPE, event.content_type).body(event.body.clone());
    }
    match &event.signer {
        // Signed only while the application has signed_callbacks on.
        Signer::Vonage { account, application_id }
            if account.signed_callbacks.load(std::sync::atomic::Ordering::Relaxed) =>
        {
            request.bearer_auth(tocsin_core::vonage::sign_webhook(
                &account.signature_secret,
                application_id,
                &event.body,
            ))
        }
        Signer::Vonage { .. } => request,
        Signer::Twilio(account) => {
            let params = tocsin_core::twilio::parse_form(&event.body).unwrap_or_default();
            let token = account.auth_token.as_deref().unwrap_or_default();
            request.header("X-Twilio-Signature", tocsin_core::twilio::signature(token, &event.url, &params))
        }
        Signer::Telnyx(account) => {
            let now = chrono::Utc::now().timestamp();
            request
                .header(
                    "telnyx-signature-ed25519",
                    tocsin_core::telnyx::sign_webhook(&account.signing_key, now, &event.body),
                )
                .header("telnyx-timestamp", now.to_string())
        }
    }
}

async fn backoff(sim: &Sim, attempt: u32) -> bool {
    let backoff = Duration::from_millis(200u64 << attempt.min(5));
    tokio::select! {
        () = sim.shutdown.cancelled() => false,
        () = tokio::time::sleep(backoff) => true,
    }
}

/// POSTs one event, signed, until the provider's idea of success or the
/// attempts run out.
pub async fn deliver(sim: &Sim, event: &Outgoing) -> bool {
    let attempts = sim.config.webhook_attempts.max(1);
    for attempt in 0..attempts {
        match signed(sim, event).send().await {
            Ok(r) if accepted(&event.signer, r.status()) => {
                sim.stats.delivery(true);
                sim.stats.event_sent(&event.provider_call_id);
                return true;
            }
            Ok(r) => debug!(status = %r.status(), attempt, url = %event.url, "event delivery refused"),
            Err(e) => debug!(error = %e, attempt, "event delivery failed"),
        }
        sim.stats.delivery(false);
        if attempt + 1 < attempts && !backoff(sim, attempt).await {
            break;
        }
    }
    warn!(call = %event.provider_call_id, url = %event.url, "event undeliverable after retries");
    false
}

/// A request whose answer the call goes on with (a Vonage input's next
/// NCCO, a Twilio `<Gather>` action's next TwiML): signed, retried like an
/// event until a 2xx, and — with `--fault-duplicate-rate` — sent twice, as
/// a provider's retry after a lost answer would (the call goes on with the
/// second answer). `Err` says why no document came.
pub async fn exchange(sim: &Sim, request: &Outgoing) -> Result<String, String> {
    let twice = sim.chance(sim.config.faults.duplicate_rate);
    if twice {
        sim.stats.duplicated();
    }
    let mut answer = Err("not sent".to_owned());
    for _ in 0..if twice { 2 } else { 1 } {
        answer = exchange_once(sim, request).await;
    }
    answer
}

async fn exchange_once(sim: &Sim, request: &Outgoing) -> Result<String, String> {
    let attempts = sim.config.webhook_attempts.max(1);
    let mut last = String::new();
    for attempt in 0..attempts {
        match signed(sim, request).send().await {
            Ok(r) if r.status().is_success() => {
                sim.stats.delivery(true);
                sim.stats.event_sent(&request.provider_call_id);
                return r.text().await.map_err(|e| format!("reading the answer: {e}"));
            }
            Ok(r) => last = format!("{} answered {}", request.url, r.status()),
            Err(e) => last = format!("{} unreachable: {e}", request.url),
        }
        sim.stats.delivery(false);
        if attempt + 1 < attempts && !backoff(sim, attempt).await {
            break;
        }
    }
    Err(last)
}

//! Simulated Vonage Voice API: `POST /v1/calls` with RS256 application JWT
//! auth, Vonage's request validation, problem+json errors and a
//! per-application rate limit (429 above it); `GET /v1/calls` (list, paged
//! by `record_index`/`page_size`, filtered by `date_start`/`date_end`/
//! `status`); then the call's life: the answer NCCO fetched and validated
//! against Vonage's NCCO schema, HS256-signed events posted to the event URL.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::Deserialize;
use serde_json::json;
use tocsin_core::vonage::AppClaims;
use tracing::warn;

use crate::accounts::VonageAccount;
use crate::deliver::{self, Emitter, Outgoing, Signer};
use crate::faults::{self, Fault};
use crate::stats::{Line, NewCall};
use crate::{Outcome, Sim, ncco, now_iso};

pub type Limiter = DefaultKeyedRateLimiter<String>;

/// `rate` create-call requests per second per application, with a burst of
/// one second's worth (as a token bucket of that size admits).
pub fn limiter(rate: f64) -> Limiter {
    let period = Duration::from_secs_f64(1.0 / rate);
    let burst = NonZeroU32::new(rate.ceil().max(1.0) as u32).unwrap_or(NonZeroU32::MIN);
    let quota =
        Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN)).allow_burst(burst);
    governor::RateLimiter::keyed(quota)
}

fn problem(status: StatusCode, kind: &str, title: &str, detail: &str) -> Response {
    let body = json!({
        "type": format!("https://developer.nexmo.com/api-errors#{kind}"),
        "title": title,
        "detail": detail,
        "instance": uuid::Uuid::new_v4().to_string(),
    });
    (status, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response()
}

/// Vonage's 429: for the rate limit, a storm, and past the concurrent-call cap.
fn rate_limit_hit() -> Response {
    problem(
        StatusCode::TOO_MANY_REQUESTS,
        "throttled",
        "Rate Limit Hit",
        "Please wait, then retry your request",
    )
}

fn unauthorized(sim: &Sim, detail: &str) -> Response {
    sim.stats.rejected();
    problem(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", detail)
}

/// The `application_id` a JWT claims, read before its signature is checked
/// (it says which account's key to check it with).
fn claimed_application(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let json = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    claims.get("application_id")?.as_str().map(str::to_owned)
}

/// Checks the application JWT as Vonage does, against the key of the
/// account its `application_id` names. A create-call request (`arrived`)
/// is attributed to that account before the check.
fn authenticate(
    sim: &Sim,
    headers: &HeaderMap,
    arrived: Option<f64>,
) -> Result<(Arc<VonageAccount>, AppClaims), Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized(sim, "You did not provide correct credentials."))?;
    let Some(claimed) = claimed_application(token) else {
        return Err(unauthorized(sim, "Invalid token: no application_id claim."));
    };
    let Some(account) = sim.accounts.vonage_for(&claimed).cloned() else {
        return Err(unauthorized(sim, "Unknown application."));
    };
    if let Some(at) = arrived {
        sim.stats.arrived(&account.name, at);
    }
    let Some(public_key) = &account.public_key else {
        return Err(unauthorized(sim, "No Vonage application is configured on this simulator."));
    };
    let claims = tocsin_core::vonage::verify_app_jwt(token, public_key)
        .map_err(|e| unauthorized(sim, &format!("Invalid token: {e}")))?;
    if account.application_id.as_ref().is_some_and(|id| *id != claims.application_id) {
        return Err(unauthorized(sim, "Unknown application."));
    }
    Ok((account, claims))
}

#[derive(Deserialize)]
struct Endpoint {
    #[serde(rename = "type")]
    kind: String,
    number: String,
}

#[derive(Deserialize)]
struct CreateCall {
    to: Vec<Endpoint>,
    from: Endpoint,
    #[serde(default)]
    answer_url: Option<Vec<String>>,
    #[serde(default)]
    answer_method: Option<String>,
    #[serde(default)]
    ncco: Option<serde_json::Value>,
    #[serde(default)]
    event_url: Option<Vec<String>>,
    #[serde(default)]
    event_method: Option<String>,
    #[serde(default)]
    ringing_timer: Option<u32>,
    #[serde(default)]
    machine_detection: Option<String>,
    #[serde(default)]
    advanced_machine_detection: Option<serde_json::Value>,
    #[serde(default)]
    length_timer: Option<u32>,
}

fn valid_vonage_number(n: &str) -> bool {
    (7..=15).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit())
}

pub async fn create_call(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let arrived = sim.stats.arrival();
    let (account, claims) = match authenticate(&sim, &headers, Some(arrived)) {
        Ok(c) => c,
        Err(response) => return response,
    };
    if account.limiter.check_key(&claims.application_id).is_err() {
        sim.stats.rate_limited(&account.name);
        return rate_limit_hit();
    }
    match faults::before_create(&sim, &account.name).await {
        Err(status) => {
            return problem(status, "timeout", "Gateway Timeout", "The request timed out.");
        }
        Ok(Some(Fault::Unauthorized)) => return unauthorized(&sim, "Invalid Token"),
        Ok(Some(Fault::Storm)) => return rate_limit_hit(),
        Ok(Some(Fault::ServerError(status))) => {
            return problem(status, "internal-error", "Internal Error", "Something went wrong on our side.");
        }
        Ok(None) => {}
    }
    let request: CreateCall = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            sim.stats.rejected();
            return problem(
                StatusCode::BAD_REQUEST,
                "validation",
                "Bad Request",
                &format!("Invalid JSON: {e}"),
            );
        }
    };
    let invalid = |detail: &str| {
        sim.stats.rejected();
        problem(StatusCode::BAD_REQUEST, "validation", "Bad Request", detail)
    };
    let [to] = request.to.as_slice() else {
        return invalid("to must hold exactly one endpoint");
    };
    if to.kind != "phone" || !valid_vonage_number(&to.number) {
        return invalid("to.number must be 7-15 digits without a leading +");
    }
    if request.from.kind != "phone" || !valid_vonage_number(&request.from.number) {
        return invalid("from.number must be 7-15 digits without a leading +");
    }
    let answer_url = match (&request.answer_url, &request.ncco) {
        (Some(urls), None) if urls.len() == 1 => Some(urls[0].clone()),
        (None, Some(ncco)) => {
            if let Err(e) = ncco::validate(ncco) {
                return invalid(&format!("Invalid NCCO: {e}"));
            }
            None
        }
        _ => return invalid("exactly one of answer_url (one URL) or ncco is required"),
    };
    let answer_method = request.answer_method.as_deref().unwrap_or("GET");
    if !matches!(answer_method, "GET" | "POST") {
        return invalid("answer_method must be GET or POST");
    }
    if request.event_method.as_deref().is_some_and(|m| m != "GET" && m != "POST") {
        return invalid("event_method must be GET or POST");
    }
    let Some(event_url) = request.event_url.as_ref().and_then(|u| u.first()).cloned() else {
        return invalid("event_url is required");
    };
    if request.ringing_timer.is_some_and(|t| !(1..=120).contains(&t)) {
        return invalid("ringing_timer must be between 1 and 120");
    }
    if request.length_timer.is_some_and(|t| !(1..=7200).contains(&t)) {
        return invalid("length_timer must be between 1 and 7200");
    }
    if request.machine_detection.as_deref().is_some_and(|m| m != "continue" && m != "hangup") {
        return invalid("machine_detection must be continue or hangup");
    }
    // providers.md "Answering machines": behavior continue|hangup, mode
    // detect|detect_beep|default, beep_timeout 45-120.
    let advanced = match &request.advanced_machine_detection {
        None => None,
        Some(v) => {
            let known = ["behavior", "mode", "beep_timeout"];
            let fields_ok = v.as_object().is_some_and(|o| o.keys().all(|k| known.contains(&k.as_str())));
            let parsed: Option<Advanced> = serde_json::from_value(v.clone()).ok().filter(|a: &Advanced| {
                ["continue", "hangup"].contains(&a.behavior.as_str())
                    && ["detect", "detect_beep", "default"].contains(&a.mode.as_str())
                    && (45.0..=120.0).contains(&a.beep_timeout)
            });
            match parsed {
                Some(a) if fields_ok => Some(a),
                _ => {
                    return invalid(
                        "advanced_machine_detection needs behavior continue|hangup, mode detect|detect_beep|default \
                         and beep_timeout 45-120",
                    );
                }
            }
        }
    };

    // Past the cap: Vonage publishes no concurrent-call limit ("There is no
    // limit to the concurrent capacity of calls for your account, and the
    // limitation is only for calls per second": Vonage API Support, "How
    // many calls can I create per second?", api.support.vonage.com article
    // 207100288), so a cap here stands for one agreed with Vonage. The
    // documented-closest behaviour is its one documented capacity refusal:
    // the Voice API troubleshooting guide's "Capacity" section
    // (developer.vonage.com/voice/voice-api/guides/troubleshooting): "If you
    // exceed these limits you will receive an HTTP 429 response", the request
    // not queued and no call created. So a create-call request past the cap
    // gets the same 429 problem as the rate limit's; it is counted in
    // `rejected_past_cap`, not `rate_limited`.
    let line = sim.stats.take_line(&account.name, account.max_concurrent);
    if line == Line::PastCap {
        return rate_limit_hit();
    }
    let uuid = uuid::Uuid::new_v4().to_string();
    let conversation = format!("CON-{}", uuid::Uuid::new_v4());
    let outcome = sim.outcome_for(&to.number);
    sim.stats.call_accepted(NewCall {
        arrived,
        provider: "vonage",
        account: &account.name,
        line,
        provider_call_id: &uuid,
        to: &to.number,
        from: &request.from.number,
        outcome,
        status: "started",
        queue_secs: 0.0,
        conversation_uuid: Some(conversation.clone()),
    });
    let life = CallLife {
        uuid: uuid.clone(),
        conversation: conversation.clone(),
        to: to.number.clone(),
        from: request.from.number.clone(),
        answer_url,
        answer_post: answer_method == "POST",
        inline_ncco: request.ncco.clone(),
        event_url,
        application_id: claims.application_id,
        account,
        outcome,
        ringing_timer: f64::from(request.ringing_timer.unwrap_or(60)),
        machine_detection: request.machine_detection.clone(),
        advanced,
    };
    let task_sim = sim.clone();
    sim.tasks.spawn(async move { life.run(&task_sim).await });
    if faults::maybe_lose_response(&sim).await {
        return problem(StatusCode::GATEWAY_TIMEOUT, "timeout", "Gateway Timeout", "lost");
    }
    let body = json!({ "uuid": uuid, "status": "started", "direction": "outbound", "conversation_uuid": conversation });
    (StatusCode::CREATED, Json(body)).into_response()
}

struct CallLife {
    uuid: String,
    conversation: String,
    to: String,
    from: String,
    answer_url: Option<String>,
    answer_post: bool,
    inline_ncco: Option<serde_json::Value>,
    event_url: String,
    application_id: String,
    /// Its events are signed with this account's secret.
    account: Arc<VonageAccount>,
    outcome: Outcome,
    ringing_timer: f64,
    machine_detection: Option<String>,
    advanced: Option<Advanced>,
}

/// `advanced_machine_detection` as asked for.
#[derive(Deserialize)]
struct Advanced {
    #[serde(default = "continue_")]
    behavior: String,
    #[serde(default = "default_mode")]
    mode: String,
    #[serde(default = "beep_timeout")]
    beep_timeout: f64,
}

fn continue_() -> String {
    "continue".into()
}

fn default_mode() -> String {
    "default".into()
}

fn beep_timeout() -> f64 {
    45.0
}

impl CallLife {
    async fn run(self, sim: &Sim) {
        let ring = sim.uniform(1.0..4.0);
        let talk = sim.uniform(5.0..15.0);
        let mut events = Emitter::default();
        self.event(sim, &mut events, "started", json!({})).await;
        if self.outcome == Outcome::Failed {
            tokio::time::sleep(sim.scaled(0.5)).await;
            self.end(sim, &mut events, "failed", json!({ "detail": "number_out_of_service" }), None).await;
            return;
        }
        tokio::time::sleep(sim.scaled(0.3)).await;
        self.event(sim, &mut events, "ringing", json!({})).await;
        match self.outcome {
            Outcome::Unanswered | Outcome::Failed => {
                tokio::time::sleep(sim.scaled((ring * 3.0).min(self.ringing_timer))).await;
                self.end(sim, &mut events, "timeout", json!({}), None).await;
            }
            Outcome::Busy | Outcome::BusyThenConfirm => {
                tokio::time::sleep(sim.scaled(ring / 2.0)).await;
                self.end(sim, &mut events, "busy", json!({}), None).await;
            }
            Outcome::Answered
            | Outcome::Machine
            | Outcome::MachineNoBeep
            | Outcome::NoKey
            | Outcome::WrongKey
            | Outcome::Replay
            | Outcome::OptOut => {
                tokio::time::sleep(sim.scaled(ring)).await;
                sim.stats.answered(&self.uuid);
                self.event(sim, &mut events, "answered", json!({ "start_time": now_iso() })).await;
                let started = std::time::Instant::now();
                // Machine detection runs before the NCCO (synchronous): its
                // event is delivered first. With beep detection a machine's
                // event comes once its greeting has ended (`beep_start`) or
                // the wait for a beep ran out (`beep_timeout`).
                let machine = self.outcome.machine();
                let mut after_beep = None;
                let hangs_up = match (&self.advanced, &self.machine_detection) {
                    (Some(adv), _) => {
                        let mut body = self.amd_event(machine);
                        if machine {
                            let beep = self.outcome == Outcome::Machine && adv.mode == "detect_beep";
                            let wait = if beep { Outcome::GREETING_SECS } else { adv.beep_timeout };
                            tokio::time::sleep(sim.scaled(wait)).await;
                            if adv.mode == "detect_beep" {
                                body["sub_state"] = json!(if beep { "beep_start" } else { "beep_timeout" });
                            }
                            after_beep = Some(beep);
                        }
                        events.emit_now(sim, self.outgoing(body)).await;
                        machine && adv.behavior == "hangup"
                    }
                    (None, Some(behavior)) => {
                        events.emit_now(sim, self.outgoing(self.amd_event(machine))).await;
                        // Standard detection answers at once, mid-greeting.
                        after_beep = machine.then_some(false);
                        machine && behavior == "hangup"
                    }
                    (None, None) => false,
                };
                let ncco = if hangs_up {
                    None
                } else {
                    let ncco = match (&self.answer_url, &self.inline_ncco) {
                        (Some(url), _) => self.fetch_ncco(sim, url).await,
                        (None, Some(ncco)) => Ok(ncco.clone()),
                        (None, None) => Err("no NCCO".into()),
                    };
                    let ncco = ncco.and_then(|n| {
                        ncco::validate(&n)?;
                        if !ncco::plays_something(&n) {
                            return Err("the NCCO has no talk or stream action".to_owned());
                        }
                        Ok(n)
                    });
                    match ncco {
                        Ok(n) => Some(n),
                        Err(reason) => {
                            warn!(uuid = %self.uuid, %reason, "answer NCCO refused; the call hangs up");
                            sim.stats.answer_invalid(&self.uuid, reason);
                            None
                        }
                    }
                };
                if let Some(ncco) = ncco {
                    self.converse(sim, ncco, talk, after_beep).await;
                }

                let duration =
                    (started.elapsed().as_secs_f64() / sim.config.time_scale.max(1e-9)).round() as i64;
                let price = format!("{:.8}", 0.0139 * duration as f64 / 60.0);
                let extra = json!({
                    "duration": duration.to_string(),
                    "rate": "0.01390000",
                    "price": price,
                    "network": "310260",
                    "start_time": now_iso(),
                    "end_time": now_iso(),
                });
                self.end(sim, &mut events, "completed", extra, Some(duration)).await;
            }
        }
    }

    /// Runs an answered call's NCCO as the callee hears it: each document's
    /// talk, then — when it ends in an `input` — the callee's key (or the
    /// timeout) posted, signed, to the input's `eventUrl`, whose answer is
    /// the next NCCO. Without an input, the call lasts `talk` seconds.
    async fn converse(&self, sim: &Sim, mut ncco: serde_json::Value, talk: f64, after_beep: Option<bool>) {
        for nth in 0..crate::MAX_KEY_ROUNDS {
            let text = ncco::spoken_text(&ncco).unwrap_or_default();
            let input = match ncco::input_action(&ncco) {
                Ok(input) => input,
                Err(reason) => {
                    warn!(uuid = %self.uuid, %reason, "NCCO input refused; the call hangs up");
                    sim.stats.input_invalid(&self.uuid, reason);
                    return;
                }
            };
            let streams = match ncco::streams(&ncco) {
                Ok(s) => s,
                Err(reason) => {
                    sim.stats.answer_invalid(&self.uuid, reason);
                    return;
                }
            };
            if !text.is_empty() || input.is_some() {
                sim.stats.heard_as(&self.uuid, &text, input.is_some(), after_beep);
            }
            // A stream fetches its URL when the call reaches it; Tocsin's
            // streams play whole (no bargeIn: the prompt's talk follows).
            let playing = crate::audio::play_all(sim, "vonage", &self.uuid, &streams).await;
            let Some(input) = input else {
                let secs = if nth == 0 { talk.max(playing) } else { crate::speaking_secs(&text) + playing };
                tokio::time::sleep(sim.scaled(secs)).await;
                return;
            };
            let key = self.outcome.key(nth, &sim.config.keys);
            let wait = playing + crate::key_after_secs(sim, &text, key, input.time_out);
            tokio::time::sleep(sim.scaled(wait)).await;
            sim.stats.pressed(&self.uuid, key);
            // Vonage's input webhook (.NET SDK `MultiInput`; fixtures/vonage/input.json).
            let body = json!({
                "from": self.from, "to": self.to,
                "uuid": self.uuid, "conversation_uuid": self.conversation,
                "dtmf": { "digits": key.map(String::from).unwrap_or_default(), "timed_out": key.is_none() },
                "speech": { "error": "Speech was not enabled" },
                "timestamp": now_iso(),
            });
            let mut request = self.outgoing(body);
            request.url = input.event_url.clone();
            if !input.post {
                request.method = reqwest::Method::GET;
            }
            let next = deliver::exchange(sim, &request).await.and_then(|text| {
                let next: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| format!("the input's answer is no NCCO: {e}"))?;
                ncco::validate(&next)?;
                Ok(next)
            });
            match next {
                Ok(n) => ncco = n,
                Err(reason) => {
                    warn!(uuid = %self.uuid, %reason, "no NCCO after the input; the call hangs up");
                    sim.stats.answer_invalid(&self.uuid, reason);
                    return;
                }
            }
        }
    }

    async fn end(
        &self,
        sim: &Sim,
        events: &mut Emitter,
        status: &str,
        extra: serde_json::Value,
        duration: Option<i64>,
    ) {
        sim.stats.ended(&self.uuid, status, duration);
        self.event(sim, events, status, extra).await;
        events.flush(sim).await;
    }

    /// Fetches the answer URL as Vonage does (its own parameters appended).
    async fn fetch_ncco(&self, sim: &Sim, url: &str) -> Result<serde_json::Value, String> {
        let params = [
            ("to", self.to.as_str()),
            ("from", self.from.as_str()),
            ("uuid", self.uuid.as_str()),
            ("conversation_uuid", self.conversation.as_str()),
        ];
        let request = if self.answer_post {
            sim.http.post(url).json(&HashMap::from(params))
        } else {
            sim.http.get(url).query(&params)
        };
        match request.send().await {
            Ok(r) if r.status().is_success() => {
                r.json().await.map_err(|e| format!("answer URL sent no JSON: {e}"))
            }
            Ok(r) => Err(format!("answer URL answered {}", r.status())),
            Err(e) => Err(format!("answer URL unreachable: {e}")),
        }
    }

    /// The `human` / `machine` event (these carry `call_uuid` instead of
    /// `uuid`; Vonage's webhook reference lists no `direction` here).
    fn amd_event(&self, machine: bool) -> serde_json::Value {
        json!({
            "call_uuid": self.uuid, "conversation_uuid": self.conversation,
            "status": if machine { "machine" } else { "human" }, "timestamp": now_iso(),
            "from": self.from, "to": self.to,
        })
    }

    fn outgoing(&self, body: serde_json::Value) -> Outgoing {
        Outgoing {
            method: reqwest::Method::POST,
            url: self.event_url.clone(),
            body: body.to_string().into_bytes(),
            content_type: "application/json",
            signer: Signer::Vonage {
                account: self.account.clone(),
                application_id: self.application_id.clone(),
            },
            provider_call_id: self.uuid.clone(),
        }
    }

    /// Posts a signed event (order may be shuffled by the fault flags).
    async fn event(&self, sim: &Sim, events: &mut Emitter, status: &str, extra: serde_json::Value) {
        if !matches!(status, "completed" | "busy" | "timeout" | "failed") {
            sim.stats.status(&self.uuid, status);
        }
        let mut body = json!({
            "uuid": self.uuid,
            "conversation_uuid": self.conversation,
            "from": self.from,
            "to": self.to,
            "status": status,
            "direction": "outbound",
            "timestamp": now_iso(),
        });
        if let (Some(map), serde_json::Value::Object(more)) = (body.as_object_mut(), extra) {
            map.extend(more);
        }
        events.emit(sim, self.outgoing(body)).await;
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    date_start: Option<String>,
    #[serde(default)]
    date_end: Option<String>,
    #[serde(default)]
    page_size: Option<String>,
    #[serde(default)]
    record_index: Option<String>,
    #[serde(default)]
    order: Option<String>,
    #[serde(default)]
    conversation_uuid: Option<String>,
}

fn parse_date(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|d| d.with_timezone(&Utc))
}

/// `GET /v1/calls`: the application's calls, oldest first unless `order=desc`.
pub async fn list_calls(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Response {
    let account = match authenticate(&sim, &headers, None) {
        Ok((account, _)) => account,
        Err(response) => return response,
    };
    let invalid = |detail: &str| {
        sim.stats.rejected();
        problem(StatusCode::BAD_REQUEST, "validation", "Bad Request", detail)
    };
    let page_size: usize = match query.page_size.as_deref().map(str::parse) {
        None => 10,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => return invalid("page_size must be between 1 and 100"),
    };
    let record_index: usize = match query.record_index.as_deref().map(str::parse) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return invalid("record_index must be a non-negative integer"),
    };
    let date = |d: &Option<String>| match d.as_deref() {
        None => Ok(None),
        Some(s) => parse_date(s).map(Some).ok_or(()),
    };
    let (Ok(start), Ok(end)) = (date(&query.date_start), date(&query.date_end)) else {
        return invalid("date_start and date_end must be ISO 8601 date-times");
    };
    let descending = match query.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return invalid("order must be asc or desc"),
    };
    let mut calls = sim.stats.calls_of(&account.name, |c| {
        start.is_none_or(|s| c.created >= s)
            && end.is_none_or(|e| c.created <= e)
            && query.status.as_ref().is_none_or(|s| *s == c.status)
            && query.conversation_uuid.as_ref().is_none_or(|u| c.conversation_uuid.as_ref() == Some(u))
    });
    if descending {
        calls.reverse();
    }
    let count = calls.len();
    let page: Vec<serde_json::Value> = calls
        .iter()
        .skip(record_index)
        .take(page_size)
        .map(|c| {
            // Fields the spec types as strings are left out, never null, while
            // the call has no value for them (start/end time, duration, price).
            call_json(c)
        })
        .collect();
    Json(json!({
        "count": count,
        "page_size": page_size,
        "record_index": record_index,
        "_links": { "self": { "href": format!("/v1/calls?page_size={page_size}&record_index={record_index}&order={}", if descending { "desc" } else { "asc" }) } },
        "_embedded": { "calls": page },
    }))
    .into_response()
}

/// One call as listed: the spec's `GetCallResponse`, without the fields
/// the call has no value for yet.
fn call_json(c: &crate::stats::SimCall) -> serde_json::Value {
    without_nulls(json!({
        "_links": { "self": { "href": format!("/v1/calls/{}", c.provider_call_id) } },
        "uuid": c.provider_call_id,
        "conversation_uuid": c.conversation_uuid,
        "to": { "type": "phone", "number": c.to.trim_start_matches('+') },
        "from": { "type": "phone", "number": c.from.trim_start_matches('+') },
        "status": c.status,
        "direction": "outbound",
        "rate": "0.01390000",
        "price": c.duration_secs.map(|d| format!("{:.8}", 0.0139 * d as f64 / 60.0)),
        "duration": c.duration_secs.map(|d| d.to_string()),
        "start_time": c.answered_at.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
        "end_time": c.ended_at.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
        "network": "310260",
    }))
}

/// `GET /v1/calls/{uuid}`: one call of the application, 404 if unknown.
pub async fn fetch_call(
    State(sim): State<Arc<Sim>>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
) -> Response {
    let account = match authenticate(&sim, &headers, None) {
        Ok((account, _)) => account,
        Err(response) => return response,
    };
    match sim.stats.calls_of(&account.name, |c| c.provider_call_id == uuid).first() {
        Some(c) => Json(call_json(c)).into_response(),
        None => problem(StatusCode::NOT_FOUND, "not-found", "Not Found", "No call with that uuid."),
    }
}

/// The Applications API's HTTP Basic check (the account's key and secret).
fn account(sim: &Sim, headers: &HeaderMap) -> Result<(), Response> {
    let expected = match (&sim.config.vonage_api_key, &sim.config.vonage_api_secret) {
        (Some(key), Some(secret)) => format!("{key}:{secret}"),
        _ => return Err(unauthorized(sim, "No Vonage account key is configured on this simulator.")),
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b).ok());
    if given.as_deref() == Some(expected.as_bytes()) {
        Ok(())
    } else {
        Err(unauthorized(sim, "You did not provide correct credentials."))
    }
}

fn application_json(account: &VonageAccount, id: &str) -> serde_json::Value {
    let signed = account.signed_callbacks.load(std::sync::atomic::Ordering::Relaxed);
    json!({
        "id": id,
        "name": "tocsin-simulated",
        "capabilities": { "voice": {
            "webhooks": {
                "answer_url": { "address": "https://example.com/vonage/answer", "http_method": "GET" },
                "event_url": { "address": "https://example.com/vonage/events", "http_method": "POST" },
            },
            "signed_callbacks": signed,
        } },
        "_links": { "self": { "href": format!("/v2/applications/{id}") } },
    })
}

/// The account of application `id` (a default account configured without
/// an id answers for any id the others do not have).
fn known_application(sim: &Sim, id: &str) -> Result<Arc<VonageAccount>, Response> {
    sim.accounts.vonage_for(id).cloned().ok_or_else(|| {
        problem(StatusCode::NOT_FOUND, "not-found", "Not Found", "No application with that id.")
    })
}

/// `GET /v2/applications/{id}`.
pub async fn application(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match account(&sim, &headers).and_then(|()| known_application(&sim, &id)) {
        Ok(application) => Json(application_json(&application, &id)).into_response(),
        Err(response) => response,
    }
}

/// `PUT /v2/applications/{id}`: the whole application; `name` is required.
/// Only `capabilities.voice.signed_callbacks` changes anything here.
pub async fn update_application(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let application = match account(&sim, &headers).and_then(|()| known_application(&sim, &id)) {
        Ok(application) => application,
        Err(response) => return response,
    };
    let Ok(update) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return problem(StatusCode::BAD_REQUEST, "validation", "Bad Request", "The body is not JSON.");
    };
    if update.get("name").and_then(serde_json::Value::as_str).is_none_or(str::is_empty) {
        return problem(StatusCode::BAD_REQUEST, "validation", "Bad Request", "name is required.");
    }
    // Like the Dashboard's edit, an update without the setting turns it off.
    let signed = update.pointer("/capabilities/voice/signed_callbacks").and_then(serde_json::Value::as_bool);
    application.signed_callbacks.store(signed == Some(true), std::sync::atomic::Ordering::Relaxed);
    Json(application_json(&application, &id)).into_response()
}

/// The object without its null members.
fn without_nulls(mut value: serde_json::Value) -> serde_json::Value {
    if let Some(object) = value.as_object_mut() {
        object.retain(|_, v| !v.is_null());
    }
    value
}

//! Simulated Twilio Programmable Voice: `POST /2010-04-01/Accounts/{Sid}/Calls.json`
//! with HTTP Basic auth, form validation and Twilio's error bodies; calls
//! above the account's CPS are accepted and *queued* (`queue_time`, later
//! start), as Twilio does; `GET …/Calls.json` (filtered by `To`, `From`,
//! `Status`, `StartTime>`/`<`, paged) and `GET …/Calls/{CallSid}.json`.
//! Each call fetches its TwiML (validated), and posts status callbacks for
//! the events asked for, signed with `X-Twilio-Signature`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::json;
use tracing::warn;

use crate::accounts::TwilioAccount;
use crate::deliver::{self, Emitter, Outgoing, Signer};
use crate::faults::{self, Fault};
use crate::stats::{Line, NewCall, SimCall};
use crate::{Outcome, Sim, twiml};

/// Twilio's queue: per account, calls start no faster than the CPS, in the
/// order they were accepted. Each call reserves the next free start slot
/// (a GCRA with an unbounded queue), which is exactly what `queue_time` reports.
pub struct StartQueue {
    period: Duration,
    next: Mutex<HashMap<String, Instant>>,
}

impl StartQueue {
    pub fn new(cps: f64) -> Self {
        Self { period: Duration::from_secs_f64(1.0 / cps), next: Mutex::new(HashMap::new()) }
    }

    /// The wait before this call may start, or `None` when it exceeds `max`.
    pub fn reserve(&self, account: &str, max: Duration) -> Option<Duration> {
        let now = Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let slot = next.get(account).copied().filter(|t| *t > now).unwrap_or(now);
        let wait = slot - now;
        if wait > max {
            return None;
        }
        next.insert(account.to_owned(), slot + self.period);
        Some(wait)
    }
}

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, Json(body)).into_response()
}

fn unauthorized(sim: &Sim) -> Response {
    sim.stats.rejected();
    let mut response = error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic realm=\"Twilio API\""));
    response
}

/// HTTP Basic auth: the account is the one whose SID is in the path; user =
/// that SID, password = its auth token. A create-call request (`arrived`)
/// is attributed to the account before the check.
fn authenticate(
    sim: &Sim,
    headers: &HeaderMap,
    path_sid: &str,
    arrived: Option<f64>,
) -> Result<Arc<TwilioAccount>, Response> {
    let Some(account) = sim.accounts.twilio_for(path_sid).cloned() else {
        return Err(unauthorized(sim));
    };
    if let Some(at) = arrived {
        sim.stats.arrived(&account.name, at);
    }
    let (Some(sid), Some(token)) = (&account.account_sid, &account.auth_token) else {
        return Err(unauthorized(sim));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let Some((user, password)) = given.as_deref().and_then(|g| g.split_once(':')) else {
        return Err(unauthorized(sim));
    };
    if user != sid || password != token || path_sid != sid {
        return Err(unauthorized(sim));
    }
    Ok(account)
}

fn e164(n: &str) -> bool {
    n.strip_prefix('+').is_some_and(|d| {
        (7..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
    })
}

fn http_url(u: &str) -> bool {
    (u.starts_with("http://") || u.starts_with("https://")) && reqwest::Url::parse(u).is_ok()
}

fn rfc2822(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S +0000").to_string()
}

const CALLBACK_EVENTS: [&str; 4] = ["initiated", "ringing", "answered", "completed"];

pub async fn create_call(
    State(sim): State<Arc<Sim>>,
    Path(account_sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = sim.stats.arrival();
    let account = match authenticate(&sim, &headers, &account_sid, Some(arrived)) {
        Ok(account) => account,
        Err(response) => return response,
    };
    match faults::before_create(&sim, &account.name).await {
        Err(status) => return error(status, 20504, "Gateway timeout"),
        Ok(Some(Fault::Unauthorized)) => return error(StatusCode::UNAUTHORIZED, 20003, "Authenticate"),
        Ok(Some(Fault::Storm)) => return error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests"),
        Ok(Some(Fault::ServerError(status))) => return error(status, 20500, "Internal Server Error"),
        Ok(None) => {}
    }
    let invalid = |code: u32, message: &str| {
        sim.stats.rejected();
        error(StatusCode::BAD_REQUEST, code, message)
    };
    let Ok(params) = tocsin_core::twilio::parse_form(&body) else {
        return invalid(20001, "The request body is not form-encoded");
    };
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let Some(to) = get("To") else { return invalid(21201, "No 'To' number is specified") };
    let Some(from) = get("From") else { return invalid(21213, "No 'From' number is specified") };
    if !e164(&to) {
        return invalid(21211, &format!("Invalid 'To' Phone Number: {to}"));
    }
    if !e164(&from) {
        return invalid(21212, &format!("Invalid 'From' Phone Number: {from}"));
    }
    let (url, twiml_inline) = (get("Url"), get("Twiml"));
    if url.is_none() && twiml_inline.is_none() && get("ApplicationSid").is_none() {
        return invalid(21205, "Either 'Url', 'Twiml' or 'ApplicationSid' must be specified");
    }
    if url.as_deref().is_some_and(|u| !http_url(u)) {
        return invalid(21205, "Url is not a valid URL");
    }
    if twiml_inline.as_deref().is_some_and(|t| t.chars().count() > 4000) {
        return invalid(21232, "Twiml is longer than 4000 characters");
    }
    let method_ok = |m: Option<String>| m.is_none_or(|m| m == "GET" || m == "POST");
    if !method_ok(get("Method")) || !method_ok(get("StatusCallbackMethod")) {
        return invalid(21209, "Method and StatusCallbackMethod must be GET or POST");
    }
    let status_callback = get("StatusCallback");
    if status_callback.as_deref().is_some_and(|u| !http_url(u)) {
        return invalid(21609, "StatusCallback is not a valid URL");
    }
    let requested: Vec<String> =
        params.iter().filter(|(k, _)| k == "StatusCallbackEvent").map(|(_, v)| v.clone()).collect();
    if let Some(bad) = requested.iter().find(|e| !CALLBACK_EVENTS.contains(&e.as_str())) {
        return invalid(21626, &format!("Invalid StatusCallbackEvent: {bad}"));
    }
    let timeout = match get("Timeout").map(|t| t.parse::<u32>()) {
        None => 60,
        Some(Ok(t)) if (1..=600).contains(&t) => t,
        Some(_) => return invalid(21230, "Timeout must be an integer between 1 and 600"),
    };
    // The spec: "The maximum duration of the call in seconds" (an integer).
    if get("TimeLimit").is_some_and(|t| t.parse::<u32>().is_err()) {
        return invalid(21218, "TimeLimit must be an integer number of seconds");
    }
    let machine_detection = get("MachineDetection");
    if machine_detection.as_deref().is_some_and(|m| m != "Enable" && m != "DetectMessageEnd") {
        return invalid(21622, "MachineDetection must be Enable or DetectMessageEnd");
    }
    // Past the cap: error 10004 "Call concurrency limit exceeded" — "The call
    // was rejected because you reached the maximum limit of concurrent calls
    // available for your account" (twilio.com/docs/api/errors/10004). The
    // page gives it no HTTP status and speaks of the call being rejected,
    // where Twilio's refusals of the request itself are HTTP errors with
    // their own codes (20429 "Too Many Requests", 21211 …): a call that was
    // created and failed. So the request is accepted (201, `queued`) and the
    // call fails at once without ringing: status `failed`, its `completed`
    // status callback with `CallStatus=failed` and no SIP code (nothing was
    // dialled). The 10004 itself is a Debugger/Monitor alert, which is not
    // simulated. It takes no place in the CPS queue and holds no line.
    let line = sim.stats.take_line(&account.name, account.max_concurrent);
    let past_cap = line == Line::PastCap;
    let wait = if past_cap {
        Duration::ZERO
    } else {
        match account.queue.reserve(&account.name, sim.config.twilio_max_queue) {
            Some(wait) => wait,
            None => {
                sim.stats.release_line(&account.name);
                sim.stats.rate_limited(&account.name);
                return error(
                    StatusCode::TOO_MANY_REQUESTS,
                    20429,
                    "Too Many Requests: the call queue is full",
                );
            }
        }
    };

    let sid = format!("CA{}", uuid::Uuid::new_v4().simple());
    // A call past the cap never reaches the callee: no outcome is drawn for it.
    let outcome = if past_cap { Outcome::Failed } else { sim.outcome_for(&to) };
    sim.stats.call_accepted(NewCall {
        arrived,
        provider: "twilio",
        account: &account.name,
        line,
        provider_call_id: &sid,
        to: &to,
        from: &from,
        outcome,
        status: "queued",
        queue_secs: wait.as_secs_f64(),
        conversation_uuid: None,
    });
    if past_cap {
        // Rejected before it left the queue: it never starts.
        sim.stats.update(&sid, |c| c.started_at = None);
    }
    let events = if requested.is_empty() { vec!["completed".to_owned()] } else { requested };
    let life = CallLife {
        sid: sid.clone(),
        account_sid: account_sid.clone(),
        to: to.clone(),
        from: from.clone(),
        url,
        url_get: get("Method").as_deref() == Some("GET"),
        twiml_inline,
        status_callback,
        callback_get: get("StatusCallbackMethod").as_deref() == Some("GET"),
        events,
        machine_detection: machine_detection.clone(),
        outcome,
        timeout: f64::from(timeout),
        queue: wait,
        account,
        past_cap,
    };
    let task_sim = sim.clone();
    sim.tasks.spawn(async move { life.run(&task_sim).await });
    if faults::maybe_lose_response(&sim).await {
        return error(StatusCode::GATEWAY_TIMEOUT, 20504, "Gateway timeout");
    }
    let now = Utc::now();
    let mut resource = call_resource(&account_sid, &sid, &to, &from, "queued", now);
    resource["queue_time"] = json!(wait.as_millis().to_string());
    (StatusCode::CREATED, Json(resource)).into_response()
}

/// The Call resource, as the spec's `api.v2010.account.call` lays it out.
fn call_resource(
    account: &str,
    sid: &str,
    to: &str,
    from: &str,
    status: &str,
    created: DateTime<Utc>,
) -> serde_json::Value {
    json!({
        "sid": sid,
        "date_created": rfc2822(created),
        "date_updated": rfc2822(Utc::now()),
        "parent_call_sid": null,
        "account_sid": account,
        "to": to,
        "to_formatted": to,
        "from": from,
        "from_formatted": from,
        "phone_number_sid": null,
        "status": status,
        "start_time": null,
        "end_time": null,
        "duration": null,
        "price": null,
        "price_unit": "USD",
        "direction": "outbound-api",
        "answered_by": null,
        "api_version": "2010-04-01",
        "forwarded_from": null,
        "group_sid": null,
        "caller_name": null,
        "queue_time": "0",
        "trunk_sid": null,
        "uri": format!("/2010-04-01/Accounts/{account}/Calls/{sid}.json"),
        "subresource_uris": {
            "notifications": format!("/2010-04-01/Accounts/{account}/Calls/{sid}/Notifications.json"),
            "recordings": format!("/2010-04-01/Accounts/{account}/Calls/{sid}/Recordings.json"),
        },
    })
}

fn listed(account: &str, call: &SimCall) -> serde_json::Value {
    let mut r =
        call_resource(account, &call.provider_call_id, &call.to, &call.from, &call.status, call.created);
    r["queue_time"] = json!(((call.queue_secs * 1000.0) as u64).to_string());
    // "The start time of the call … Empty if the call has not yet been
    // dialed": when it left the queue, answered or not.
    let dialed = call
        .started_at
        .and_then(|s| chrono::Duration::from_std(Duration::from_secs_f64((s - call.at).max(0.0))).ok());
    r["start_time"] = json!(dialed.map(|d| rfc2822(call.created + d)));
    r["end_time"] = json!(call.ended_at.map(rfc2822));
    r["duration"] = json!(call.duration_secs.map(|d| d.to_string()));
    r
}

struct CallLife {
    sid: String,
    account_sid: String,
    to: String,
    from: String,
    url: Option<String>,
    url_get: bool,
    twiml_inline: Option<String>,
    status_callback: Option<String>,
    callback_get: bool,
    events: Vec<String>,
    /// `Enable` or `DetectMessageEnd`.
    machine_detection: Option<String>,
    outcome: Outcome,
    timeout: f64,
    queue: Duration,
    /// Its callbacks and TwiML requests are signed with this account's token.
    account: Arc<TwilioAccount>,
    /// Created past the account's concurrent-call cap: fails at once.
    past_cap: bool,
}

impl CallLife {
    async fn run(self, sim: &Sim) {
        let mut emitter = Emitter::default();
        let mut seq = 0u32;
        if self.past_cap {
            tokio::time::sleep(sim.scaled(0.1)).await;
            self.end(sim, &mut emitter, &mut seq, "failed", &[], None).await;
            return;
        }
        tokio::select! {
            () = sim.shutdown.cancelled() => return,
            () = tokio::time::sleep(self.queue) => {}
        }
        sim.stats.started(&self.sid);
        let ring = sim.uniform(1.0..4.0);
        let talk = sim.uniform(5.0..15.0);
        self.callback(sim, &mut emitter, &mut seq, "initiated", &[]).await;
        if self.outcome == Outcome::Failed {
            tokio::time::sleep(sim.scaled(0.5)).await;
            self.end(sim, &mut emitter, &mut seq, "failed", &[("SipResponseCode", "404".into())], None).await;
            return;
        }
        tokio::time::sleep(sim.scaled(0.3)).await;
        self.callback(sim, &mut emitter, &mut seq, "ringing", &[]).await;
        match self.outcome {
            Outcome::Busy | Outcome::BusyThenConfirm => {
                tokio::time::sleep(sim.scaled(ring / 2.0)).await;
                self.end(sim, &mut emitter, &mut seq, "busy", &[("SipResponseCode", "486".into())], None)
                    .await;
            }
            Outcome::Unanswered | Outcome::Failed => {
                tokio::time::sleep(sim.scaled((ring * 3.0).min(self.timeout))).await;
                self.end(
                    sim,
                    &mut emitter,
                    &mut seq,
                    "no-answer",
                    &[("SipResponseCode", "487".into())],
                    None,
                )
                .await;
            }
            Outcome::Answered
            | Outcome::Machine
            | Outcome::MachineNoBeep
            | Outcome::NoKey
            | Outcome::WrongKey
            | Outcome::Replay
            | Outcome::OptOut => {
                tokio::time::sleep(sim.scaled(ring)).await;
                // `Enable` answers as soon as it knows (mid-greeting);
                // `DetectMessageEnd` once a machine's greeting has ended
                // (fixtures/twilio/gather.json `answered_by`).
                let machine = self.outcome.machine();
                let (answered_by, after_beep) = match (self.machine_detection.as_deref(), machine) {
                    (None, _) => (None, None),
                    (Some(_), false) => (Some("human"), None),
                    (Some("DetectMessageEnd"), true) => {
                        tokio::time::sleep(sim.scaled(Outcome::GREETING_SECS)).await;
                        if self.outcome == Outcome::Machine {
                            (Some("machine_end_beep"), Some(true))
                        } else {
                            (Some("machine_end_silence"), Some(false))
                        }
                    }
                    (Some(_), true) => (Some("machine_start"), Some(false)),
                };
                let answered_by = answered_by.map(str::to_owned);
                let document = match (&self.url, &self.twiml_inline) {
                    (_, Some(inline)) => Ok(inline.clone()),
                    (Some(url), None) => self.fetch_twiml(sim, url, answered_by.as_deref()).await,
                    (None, None) => Err("no TwiML (ApplicationSid is not simulated)".to_owned()),
                };
                let document = match document.and_then(|d| twiml::parse(&d)) {
                    Ok(d) => Some(d),
                    Err(reason) => {
                        warn!(sid = %self.sid, %reason, "TwiML refused; the call hangs up");
                        sim.stats.answer_invalid(&self.sid, reason);
                        None
                    }
                };
                sim.stats.answered(&self.sid);
                let mut extra = Vec::new();
                if let Some(by) = &answered_by {
                    extra.push(("AnsweredBy", by.clone()));
                }
                self.callback(sim, &mut emitter, &mut seq, "in-progress", &extra).await;
                let started = std::time::Instant::now();
                if let Some(document) = document {
                    self.converse(sim, document, talk, after_beep).await;
                }
                let duration =
                    (started.elapsed().as_secs_f64() / sim.config.time_scale.max(1e-9)).round() as i64;
                // CallDuration only: the documented completion parameter
                // (fixtures/twilio/status-callbacks.json).
                extra.push(("CallDuration", duration.to_string()));
                self.end(sim, &mut emitter, &mut seq, "completed", &extra, Some(duration)).await;
            }
        }
    }

    /// Runs an answered call's TwiML as the callee hears it: the `<Say>`s,
    /// then — for a `<Gather>` — the callee's key posted, signed, to its
    /// `action` (with no key only when `actionOnEmptyResult` asks; else the
    /// call falls through past the `<Gather>` and ends), whose answer is
    /// the next TwiML. Without a `<Gather>`, the call lasts `talk` seconds.
    async fn converse(&self, sim: &Sim, mut document: twiml::Document, talk: f64, after_beep: Option<bool>) {
        for nth in 0..crate::MAX_KEY_ROUNDS {
            let text = document.said.join(" ");
            if !text.is_empty() {
                sim.stats.heard_as(&self.sid, &text, document.gather.is_some(), after_beep);
            }
            // <Play> fetches its URL when the call reaches it (no key interrupts it here).
            let playing = crate::audio::play_all(sim, "twilio", &self.sid, &document.plays).await;
            let Some(gather) = document.gather.take() else {
                let secs = if nth == 0 { talk.max(playing) } else { crate::speaking_secs(&text) + playing };
                tokio::time::sleep(sim.scaled(secs)).await;
                return;
            };
            let key = self.outcome.key(nth, &sim.config.keys);
            let wait = playing + crate::key_after_secs(sim, &text, key, f64::from(gather.timeout_secs));
            tokio::time::sleep(sim.scaled(wait)).await;
            sim.stats.pressed(&self.sid, key);
            if key.is_none() && !gather.action_on_empty_result {
                return;
            }
            let Some(action) = gather.action else {
                sim.stats.input_invalid(&self.sid, "<Gather> without an action URL is not simulated".into());
                return;
            };
            // The action request (fixtures/twilio/gather.json): the call's
            // parameters, `Digits` when a key came.
            let mut params = self.base_params("in-progress");
            if let Some(k) = key {
                params.push(("Digits".into(), k.to_string()));
                params.push(("FinishedOnKey".into(), String::new()));
            }
            let (method, url, body) = if gather.post {
                (
                    reqwest::Method::POST,
                    action,
                    serde_urlencoded::to_string(&params).unwrap_or_default().into_bytes(),
                )
            } else {
                (reqwest::Method::GET, with_query(&action, &params), Vec::new())
            };
            let request = Outgoing {
                method,
                url,
                body,
                content_type: "application/x-www-form-urlencoded",
                signer: Signer::Twilio(self.account.clone()),
                provider_call_id: self.sid.clone(),
            };
            match deliver::exchange(sim, &request).await.and_then(|d| twiml::parse(&d)) {
                Ok(next) => document = next,
                Err(reason) => {
                    warn!(sid = %self.sid, %reason, "no TwiML after the gather; the call hangs up");
                    sim.stats.answer_invalid(&self.sid, reason);
                    return;
                }
            }
        }
    }

    fn base_params(&self, status: &str) -> Vec<(String, String)> {
        [
            ("AccountSid", self.account_sid.clone()),
            ("ApiVersion", "2010-04-01".into()),
            ("CallSid", self.sid.clone()),
            ("CallStatus", status.into()),
            ("Called", self.to.clone()),
            ("Caller", self.from.clone()),
            ("Direction", "outbound-api".into()),
            ("From", self.from.clone()),
            ("To", self.to.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Requests the TwiML as Twilio does: signed, with the call's parameters.
    async fn fetch_twiml(&self, sim: &Sim, url: &str, answered_by: Option<&str>) -> Result<String, String> {
        let mut params = self.base_params("in-progress");
        if let Some(by) = answered_by {
            params.push(("AnsweredBy".into(), by.into()));
        }
        let token = self.account.auth_token.as_deref().unwrap_or_default();
        let request = if self.url_get {
            let full = with_query(url, &params);
            let signature = tocsin_core::twilio::signature(token, &full, &[]);
            sim.http.get(full).header("X-Twilio-Signature", signature)
        } else {
            let signature = tocsin_core::twilio::signature(token, url, &params);
            sim.http.post(url).header("X-Twilio-Signature", signature).form(&params)
        };
        match request.send().await {
            Ok(r) if r.status().is_success() => r.text().await.map_err(|e| format!("unreadable TwiML: {e}")),
            Ok(r) => Err(format!("the TwiML URL answered {}", r.status())),
            Err(e) => Err(format!("the TwiML URL is unreachable: {e}")),
        }
    }

    async fn end(
        &self,
        sim: &Sim,
        emitter: &mut Emitter,
        seq: &mut u32,
        status: &str,
        extra: &[(&str, String)],
        duration: Option<i64>,
    ) {
        sim.stats.ended(&self.sid, status, duration);
        self.callback(sim, emitter, seq, status, extra).await;
        emitter.flush(sim).await;
    }

    /// Sends a status callback if its event was asked for.
    async fn callback(
        &self,
        sim: &Sim,
        emitter: &mut Emitter,
        seq: &mut u32,
        status: &str,
        extra: &[(&str, String)],
    ) {
        let event = match status {
            "initiated" => "initiated",
            "ringing" => "ringing",
            "in-progress" => "answered",
            _ => "completed",
        };
        // The Call resource has no `initiated` status (the spec's
        // call_enum_status): it stays `queued` until it rings.
        if event != "completed" && status != "initiated" {
            sim.stats.status(&self.sid, status);
        }
        let Some(url) = &self.status_callback else { return };
        if !self.events.iter().any(|e| e == event) {
            return;
        }
        let mut params = self.base_params(status);
        params.push(("CallbackSource".into(), "call-progress-events".into()));
        params.push(("SequenceNumber".into(), seq.to_string()));
        params.push(("Timestamp".into(), rfc2822(Utc::now())));
        params.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        *seq += 1;
        let (method, url, body) = if self.callback_get {
            (reqwest::Method::GET, with_query(url, &params), Vec::new())
        } else {
            let body = serde_urlencoded::to_string(&params).unwrap_or_default().into_bytes();
            (reqwest::Method::POST, url.clone(), body)
        };
        let outgoing = Outgoing {
            method,
            url,
            body,
            content_type: "application/x-www-form-urlencoded",
            signer: Signer::Twilio(self.account.clone()),
            provider_call_id: self.sid.clone(),
        };
        emitter.emit(sim, outgoing).await;
    }
}

fn with_query(url: &str, params: &[(String, String)]) -> String {
    let query = serde_urlencoded::to_string(params).unwrap_or_default();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

/// Twilio's date filters take `YYYY-MM-DD` or a full date-time.
fn parse_filter_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|d| d.with_timezone(&Utc)).or_else(|| {
        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?.and_hms_opt(0, 0, 0).map(|d| d.and_utc())
    })
}

/// `GET …/Calls.json`: the account's calls, newest first, paged.
pub async fn list_calls(
    State(sim): State<Arc<Sim>>,
    Path(account_sid): Path<String>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let account = match authenticate(&sim, &headers, &account_sid, None) {
        Ok(account) => account,
        Err(response) => return response,
    };
    let get = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let invalid = |message: &str| {
        sim.stats.rejected();
        error(StatusCode::BAD_REQUEST, 20001, message)
    };
    let time = |name: &str| match get(name) {
        None => Ok(None),
        Some(v) => parse_filter_time(&v).map(Some).ok_or(()),
    };
    let (Ok(after), Ok(before)) = (time("StartTime>"), time("StartTime<")) else {
        return invalid("StartTime filters must be dates (YYYY-MM-DD) or date-times");
    };
    let on = get("StartTime").and_then(|d| chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok());
    let page_size: usize = match get("PageSize").map(|p| p.parse()) {
        None => 50,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return invalid("PageSize must be between 1 and 1000"),
    };
    let page: usize = get("Page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let (to, from, status) = (get("To"), get("From"), get("Status"));
    let mut calls = sim.stats.calls_of(&account.name, |c| {
        to.as_ref().is_none_or(|t| *t == c.to)
            && from.as_ref().is_none_or(|f| *f == c.from)
            && status.as_ref().is_none_or(|s| *s == c.status)
            && after.is_none_or(|a| c.created >= a)
            && before.is_none_or(|b| c.created <= b)
            && on.is_none_or(|d| c.created.date_naive() == d)
    });
    calls.reverse();
    let base = format!("/2010-04-01/Accounts/{account_sid}/Calls.json");
    let start = page * page_size;
    let items: Vec<serde_json::Value> =
        calls.iter().skip(start).take(page_size).map(|c| listed(&account_sid, c)).collect();
    let more = start + items.len() < calls.len();
    let keep: String = query
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "Page" | "PageSize" | "PageToken"))
        .map(|(k, v)| format!("&{}", serde_urlencoded::to_string([(k, v)]).unwrap_or_default()))
        .collect();
    let page_uri = |p: usize| format!("{base}?PageSize={page_size}&Page={p}&PageToken=PA{p}{keep}");
    Json(json!({
        "calls": items,
        "start": start,
        "end": (start + items.len()).saturating_sub(1),
        "page": page,
        "page_size": page_size,
        "uri": page_uri(page),
        "first_page_uri": page_uri(0),
        "next_page_uri": more.then(|| page_uri(page + 1)),
        "previous_page_uri": (page > 0).then(|| page_uri(page - 1)),
    }))
    .into_response()
}

/// `GET …/Calls/{CallSid}.json`.
pub async fn fetch_call(
    State(sim): State<Arc<Sim>>,
    Path((account_sid, call)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let account = match authenticate(&sim, &headers, &account_sid, None) {
        Ok(account) => account,
        Err(response) => return response,
    };
    let sid = call.strip_suffix(".json").unwrap_or(&call);
    match sim.stats.calls_of(&account.name, |c| c.provider_call_id == sid).first() {
        Some(c) => Json(listed(&account_sid, c)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            20404,
            &format!(
                "The requested resource /2010-04-01/Accounts/{account_sid}/Calls/{sid}.json was not found"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_spaces_starts_by_the_cps_and_refuses_beyond_its_limit() {
        let q = StartQueue::new(2.0);
        let max = Duration::from_secs(1);
        let waits: Vec<Option<Duration>> = (0..4).map(|_| q.reserve("AC1", max)).collect();
        assert_eq!(waits[0], Some(Duration::ZERO));
        let w1 = waits[1].unwrap().as_secs_f64();
        let w2 = waits[2].unwrap().as_secs_f64();
        assert!((w1 - 0.5).abs() < 0.01 && (w2 - 1.0).abs() < 0.01, "{w1} {w2}");
        assert_eq!(waits[3], None, "1.5 s of queue exceeds the 1 s limit");
        assert_eq!(q.reserve("AC2", max), Some(Duration::ZERO), "accounts queue separately");
    }

    #[test]
    fn the_call_resource_has_exactly_the_specs_fields() {
        let spec: serde_json::Value =
            serde_json::from_str(include_str!("../specs/twilio-call-fields.json")).unwrap();
        let mut want: Vec<&str> = spec.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let resource = call_resource("AC1", "CA1", "+1", "+2", "queued", Utc::now());
        let mut have: Vec<&str> = resource.as_object().unwrap().keys().map(String::as_str).collect();
        want.sort_unstable();
        have.sort_unstable();
        assert_eq!(have, want);
    }
}

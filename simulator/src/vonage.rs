//! Simulated Vonage Voice API: `POST /v1/calls` with RS256 application JWT
//! auth, Vonage's request validation, problem+json errors and a per-account
//! rate limit; then the call's life: answer NCCO fetched, signed events
//! posted to the event URL.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota};
use rand::Rng;
use serde::Deserialize;
use serde_json::json;
use tracing::{debug, warn};

use crate::{Outcome, Sim};

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
    ncco: Option<serde_json::Value>,
    #[serde(default)]
    event_url: Option<Vec<String>>,
    #[serde(default)]
    ringing_timer: Option<u32>,
}

fn valid_vonage_number(n: &str) -> bool {
    (7..=15).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit())
}

pub async fn create_call(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        sim.stats.rejected();
        return problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "You did not provide correct credentials.",
        );
    };
    let claims = match tocsin_core::vonage::verify_app_jwt(token, &sim.vonage_public_key) {
        Ok(c) => c,
        Err(e) => {
            sim.stats.rejected();
            return problem(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                &format!("Invalid token: {e}"),
            );
        }
    };
    if sim.config.vonage_application_id.as_ref().is_some_and(|id| *id != claims.application_id) {
        sim.stats.rejected();
        return problem(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", "Unknown application.");
    }
    if sim.vonage_limiter.check_key(&claims.application_id).is_err() {
        sim.stats.rate_limited();
        return problem(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            "Rate Limit Hit",
            "Please wait, then retry your request",
        );
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
        (None, Some(_)) => None,
        _ => return invalid("exactly one of answer_url (one URL) or ncco is required"),
    };
    let Some(event_url) = request.event_url.as_ref().and_then(|u| u.first()).cloned() else {
        return invalid("event_url is required");
    };
    if request.ringing_timer.is_some_and(|t| !(1..=120).contains(&t)) {
        return invalid("ringing_timer must be between 1 and 120");
    }

    let uuid = uuid::Uuid::new_v4().to_string();
    let conversation = format!("CON-{}", uuid::Uuid::new_v4());
    let outcome = Outcome::for_number(&to.number);
    sim.stats.call_accepted("vonage", &uuid, &format!("+{}", to.number), outcome);
    let life = CallLife {
        uuid: uuid.clone(),
        conversation: conversation.clone(),
        to: to.number.clone(),
        from: request.from.number.clone(),
        answer_url,
        inline_ncco: request.ncco.clone(),
        event_url,
        application_id: claims.application_id,
        outcome,
    };
    let task_sim = sim.clone();
    sim.tasks.spawn(async move { life.run(&task_sim).await });
    let body = json!({ "uuid": uuid, "status": "started", "direction": "outbound", "conversation_uuid": conversation });
    (StatusCode::CREATED, Json(body)).into_response()
}

struct CallLife {
    uuid: String,
    conversation: String,
    to: String,
    from: String,
    answer_url: Option<String>,
    inline_ncco: Option<serde_json::Value>,
    event_url: String,
    application_id: String,
    outcome: Outcome,
}

impl CallLife {
    async fn run(self, sim: &Sim) {
        let (ring, talk) = {
            let mut rng = sim.rng.lock().unwrap_or_else(|p| p.into_inner());
            (rng.random_range(1.0..4.0), rng.random_range(5.0..15.0))
        };
        self.event(sim, "started", json!({})).await;
        tokio::time::sleep(sim.scaled(0.3)).await;
        self.event(sim, "ringing", json!({})).await;
        match self.outcome {
            Outcome::Busy => {
                tokio::time::sleep(sim.scaled(ring / 2.0)).await;
                self.event(sim, "busy", json!({})).await;
            }
            Outcome::Unanswered => {
                tokio::time::sleep(sim.scaled(ring * 3.0)).await;
                self.event(sim, "timeout", json!({})).await;
            }
            Outcome::Answered => {
                tokio::time::sleep(sim.scaled(ring)).await;
                let ncco = match (&self.answer_url, &self.inline_ncco) {
                    (Some(url), _) => self.fetch_ncco(sim, url).await,
                    (None, Some(ncco)) => Some(ncco.clone()),
                    (None, None) => None,
                };
                let spoken = ncco.as_ref().and_then(spoken_text);
                match spoken {
                    Some(text) => sim.stats.spoken(&self.uuid, text),
                    None => warn!(uuid = %self.uuid, "answer NCCO missing or has no talk action"),
                }
                self.event(sim, "answered", json!({ "start_time": now() })).await;
                tokio::time::sleep(sim.scaled(talk)).await;
                let duration = talk.round() as i64;
                let price = format!("{:.8}", 0.0139 * duration as f64 / 60.0);
                let extra = json!({
                    "duration": duration.to_string(),
                    "rate": "0.01390000",
                    "price": price,
                    "network": "310260",
                    "end_time": now(),
                });
                self.event(sim, "completed", extra).await;
            }
        }
    }

    /// GET the answer URL as Vonage does (its own parameters appended).
    async fn fetch_ncco(&self, sim: &Sim, url: &str) -> Option<serde_json::Value> {
        let request = sim.http.get(url).query(&[
            ("to", self.to.as_str()),
            ("from", self.from.as_str()),
            ("uuid", self.uuid.as_str()),
            ("conversation_uuid", self.conversation.as_str()),
        ]);
        match request.send().await {
            Ok(r) if r.status().is_success() => r.json().await.ok(),
            Ok(r) => {
                warn!(status = %r.status(), "answer URL refused");
                None
            }
            Err(e) => {
                warn!(error = %e, "answer URL unreachable");
                None
            }
        }
    }

    /// POSTs a signed event, retrying non-2xx answers a few times as Vonage does.
    async fn event(&self, sim: &Sim, status: &str, extra: serde_json::Value) {
        let mut body = json!({
            "uuid": self.uuid,
            "conversation_uuid": self.conversation,
            "from": self.from,
            "to": self.to,
            "status": status,
            "direction": "outbound",
            "timestamp": now(),
        });
        if let (Some(map), serde_json::Value::Object(more)) = (body.as_object_mut(), extra) {
            map.extend(more);
        }
        let bytes = body.to_string().into_bytes();
        for attempt in 0..4u32 {
            let token = tocsin_core::vonage::sign_webhook(
                &sim.config.vonage_signature_secret,
                &self.application_id,
                &bytes,
            );
            let sent = sim
                .http
                .post(&self.event_url)
                .bearer_auth(token)
                .header(header::CONTENT_TYPE, "application/json")
                .body(bytes.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    sim.stats.delivery(true);
                    return;
                }
                Ok(r) => debug!(status = %r.status(), attempt, "event delivery refused"),
                Err(e) => debug!(error = %e, attempt, "event delivery failed"),
            }
            sim.stats.delivery(false);
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
        warn!(uuid = %self.uuid, %status, "event undeliverable after retries");
    }
}

/// The text of the NCCO's talk actions, if it is a valid NCCO.
fn spoken_text(ncco: &serde_json::Value) -> Option<String> {
    let actions = ncco.as_array()?;
    let texts: Vec<&str> = actions
        .iter()
        .filter(|a| a.get("action").and_then(|v| v.as_str()) == Some("talk"))
        .filter_map(|a| a.get("text").and_then(|v| v.as_str()))
        .collect();
    (!texts.is_empty()).then(|| texts.join(" "))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

//! What the simulator saw: every call accepted (and how it went), every 429
//! and fault, every webhook delivery. Tests and benchmarks read it from
//! `/_sim/stats` and `/_sim/calls`; the simulated APIs' list endpoints read
//! the calls from here too.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{Outcome, Sim};

#[derive(Clone, Debug, Serialize)]
pub struct SimCall {
    pub provider: &'static str,
    pub provider_call_id: String,
    /// E.164 with `+`.
    pub to: String,
    pub from: String,
    /// Seconds since the simulator started, when the create-call request was accepted.
    pub at: f64,
    /// Wall-clock time of `at`.
    pub created: DateTime<Utc>,
    /// Seconds since start when the call left the provider's queue (Twilio
    /// queues calls above its CPS; elsewhere equal to `at`).
    pub started_at: Option<f64>,
    pub queue_secs: f64,
    pub outcome: Outcome,
    /// The provider's status word, updated as the call progresses.
    pub status: String,
    pub ended: bool,
    pub ended_at: Option<DateTime<Utc>>,
    /// Seconds since start when it ended (for the concurrency figures).
    pub ended_secs: Option<f64>,
    pub answered_at: Option<DateTime<Utc>>,
    pub duration_secs: Option<i64>,
    /// What the answer document (or Telnyx speak command) made the call say.
    pub spoken: Option<String>,
    /// Why the answer document was refused, when it was.
    pub answer_error: Option<String>,
    /// Everything the callee heard, in order, with seconds since the answer.
    pub heard: Vec<Heard>,
    /// The keys the callee pressed when asked, in order (`-`: none before the timeout).
    pub keys: String,
    /// The recordings the provider fetched to play, in order.
    pub played: Vec<crate::audio::Played>,
    pub events_sent: u32,
    /// Vonage's conversation uuid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_uuid: Option<String>,
}

/// One thing the callee heard.
#[derive(Clone, Debug, Serialize)]
pub struct Heard {
    pub after_answer_secs: f64,
    pub text: String,
    /// Whether a key was asked for after it.
    pub asked_for_key: bool,
    /// For an answering machine: whether it started after the greeting's
    /// end (the beep), so the machine recorded all of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_beep: Option<bool>,
}

#[derive(Default)]
struct Counters {
    keys_pressed: u64,
    /// Create-call requests refused by an account's outage, per account.
    outage_refused: std::collections::BTreeMap<String, u64>,
    recordings_played: u64,
    recordings_failed: u64,
    key_timeouts: u64,
    input_invalid: u64,
    concurrency_rejected: u64,
    rate_limited: u64,
    storm_429: u64,
    rejected: u64,
    server_errors: u64,
    timeouts: u64,
    lost_responses: u64,
    deliveries_ok: u64,
    deliveries_failed: u64,
    duplicated: u64,
    dropped_events: u64,
    reordered: u64,
    answer_invalid: u64,
    commands: u64,
    idempotent_replays: u64,
}

struct Inner {
    started: Instant,
    calls: Vec<SimCall>,
    index: HashMap<String, usize>,
    counters: Counters,
}

pub struct Stats {
    inner: Mutex<Inner>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                started: Instant::now(),
                calls: Vec::new(),
                index: HashMap::new(),
                counters: Counters::default(),
            }),
        }
    }
}

/// A newly accepted call.
pub struct NewCall<'a> {
    /// When its create-call request arrived (`Stats::arrival`, taken before
    /// the request is authenticated and checked): the instant a provider's
    /// rate limit counts, which the busiest-window figures are about.
    pub arrived: f64,
    pub provider: &'static str,
    pub provider_call_id: &'a str,
    pub to: &'a str,
    pub from: &'a str,
    pub outcome: Outcome,
    pub status: &'a str,
    pub queue_secs: f64,
    pub conversation_uuid: Option<String>,
}

impl Stats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seconds since the simulator started: a request's arrival.
    pub fn arrival(&self) -> f64 {
        self.lock().started.elapsed().as_secs_f64()
    }

    pub fn call_accepted(&self, call: NewCall<'_>) {
        let mut inner = self.lock();
        let at = call.arrived;
        let index = inner.calls.len();
        inner.index.insert(call.provider_call_id.to_owned(), index);
        let to = if call.to.starts_with('+') { call.to.to_owned() } else { format!("+{}", call.to) };
        let from = if call.from.starts_with('+') { call.from.to_owned() } else { format!("+{}", call.from) };
        inner.calls.push(SimCall {
            provider: call.provider,
            provider_call_id: call.provider_call_id.to_owned(),
            to,
            from,
            at,
            created: Utc::now(),
            started_at: (call.queue_secs <= 0.0).then_some(at),
            queue_secs: call.queue_secs,
            outcome: call.outcome,
            status: call.status.to_owned(),
            ended: false,
            ended_at: None,
            ended_secs: None,
            answered_at: None,
            duration_secs: None,
            spoken: None,
            answer_error: None,
            heard: Vec::new(),
            keys: String::new(),
            played: Vec::new(),
            events_sent: 0,
            conversation_uuid: call.conversation_uuid,
        });
    }

    /// Applies `f` to the call, if it exists.
    pub fn update(&self, provider_call_id: &str, f: impl FnOnce(&mut SimCall)) {
        let mut inner = self.lock();
        if let Some(i) = inner.index.get(provider_call_id).copied() {
            f(&mut inner.calls[i]);
        }
    }

    pub fn started(&self, provider_call_id: &str) {
        let at = self.lock().started.elapsed().as_secs_f64();
        self.update(provider_call_id, |c| c.started_at = Some(at));
    }

    pub fn status(&self, provider_call_id: &str, status: &str) {
        self.update(provider_call_id, |c| c.status = status.to_owned());
    }

    pub fn answered(&self, provider_call_id: &str) {
        self.update(provider_call_id, |c| c.answered_at = Some(Utc::now()));
    }

    pub fn ended(&self, provider_call_id: &str, status: &str, duration_secs: Option<i64>) {
        let now = self.arrival();
        self.update(provider_call_id, |c| {
            c.ended_secs = c.ended_secs.or(Some(now));
            c.status = status.to_owned();
            c.ended = true;
            c.ended_at = Some(Utc::now());
            c.duration_secs = duration_secs;
        });
    }

    /// Calls of `provider` accepted and not yet ended.
    pub fn active(&self, provider: &str) -> usize {
        self.lock().calls.iter().filter(|c| c.provider == provider && !c.ended).count()
    }

    /// A dial refused for the account's concurrent-call cap.
    pub fn concurrency_rejected(&self) {
        self.lock().counters.concurrency_rejected += 1;
    }

    pub fn spoken(&self, provider_call_id: &str, text: String) {
        self.update(provider_call_id, |c| c.spoken = Some(text));
    }

    /// The callee heard `text` (and was asked for a key after it when `asks`).
    pub fn heard(&self, provider_call_id: &str, text: &str, asks: bool) {
        self.heard_as(provider_call_id, text, asks, None);
    }

    /// `heard`, by an answering machine (`after_beep`: once its greeting ended).
    pub fn heard_as(&self, provider_call_id: &str, text: &str, asks: bool, after_beep: Option<bool>) {
        let now = Utc::now();
        self.update(provider_call_id, |c| {
            let after = c.answered_at.map_or(0.0, |a| (now - a).num_milliseconds() as f64 / 1000.0);
            if c.spoken.is_none() {
                c.spoken = Some(text.to_owned());
            }
            c.heard.push(Heard {
                after_answer_secs: after,
                text: text.to_owned(),
                asked_for_key: asks,
                after_beep,
            });
        });
    }

    /// A create-call request refused by `account`'s outage.
    pub fn outage_refused(&self, account: &str) {
        *self.lock().counters.outage_refused.entry(account.to_owned()).or_default() += 1;
    }

    /// The provider fetched a recording to play (or failed to).
    pub fn played(&self, provider_call_id: &str, played: crate::audio::Played) {
        {
            let mut inner = self.lock();
            if played.ok() {
                inner.counters.recordings_played += 1;
            } else {
                inner.counters.recordings_failed += 1;
            }
        }
        self.update(provider_call_id, |c| c.played.push(played));
    }

    /// The callee pressed `key`, or let the timeout pass.
    pub fn pressed(&self, provider_call_id: &str, key: Option<char>) {
        {
            let mut inner = self.lock();
            match key {
                Some(_) => inner.counters.keys_pressed += 1,
                None => inner.counters.key_timeouts += 1,
            }
        }
        self.update(provider_call_id, |c| c.keys.push(key.unwrap_or('-')));
    }

    /// A request for a key was not in the provider's documented form.
    pub fn input_invalid(&self, provider_call_id: &str, reason: String) {
        self.lock().counters.input_invalid += 1;
        self.update(provider_call_id, |c| c.answer_error = Some(reason));
    }

    pub fn answer_invalid(&self, provider_call_id: &str, reason: String) {
        self.lock().counters.answer_invalid += 1;
        self.update(provider_call_id, |c| c.answer_error = Some(reason));
    }

    pub fn event_sent(&self, provider_call_id: &str) {
        self.update(provider_call_id, |c| c.events_sent += 1);
    }

    pub fn rate_limited(&self) {
        self.lock().counters.rate_limited += 1;
    }

    pub fn storm_429(&self) {
        let mut inner = self.lock();
        inner.counters.rate_limited += 1;
        inner.counters.storm_429 += 1;
    }

    pub fn rejected(&self) {
        self.lock().counters.rejected += 1;
    }

    pub fn server_error(&self) {
        self.lock().counters.server_errors += 1;
    }

    pub fn timeout(&self) {
        self.lock().counters.timeouts += 1;
    }

    pub fn lost_response(&self) {
        self.lock().counters.lost_responses += 1;
    }

    pub fn duplicated(&self) {
        self.lock().counters.duplicated += 1;
    }

    pub fn dropped_event(&self) {
        self.lock().counters.dropped_events += 1;
    }

    pub fn reordered(&self) {
        self.lock().counters.reordered += 1;
    }

    pub fn command(&self) {
        self.lock().counters.commands += 1;
    }

    pub fn idempotent_replay(&self) {
        self.lock().counters.idempotent_replays += 1;
    }

    pub fn delivery(&self, ok: bool) {
        let mut inner = self.lock();
        if ok {
            inner.counters.deliveries_ok += 1;
        } else {
            inner.counters.deliveries_failed += 1;
        }
    }

    pub fn snapshot(&self) -> StatsReport {
        let inner = self.lock();
        let mut per_number: BTreeMap<String, u32> = BTreeMap::new();
        let mut per_provider: HashMap<String, u64> = HashMap::new();
        let mut times_per_provider: HashMap<String, Vec<f64>> = HashMap::new();
        let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
        for call in &inner.calls {
            *per_number.entry(call.to.clone()).or_default() += 1;
            *per_provider.entry(call.provider.to_owned()).or_default() += 1;
            times_per_provider.entry(call.provider.to_owned()).or_default().push(call.at);
            let outcome = serde_json::to_value(call.outcome).ok().and_then(|v| v.as_str().map(str::to_owned));
            *outcomes.entry(outcome.unwrap_or_default()).or_default() += 1;
        }
        let called_more_than_once: Vec<NumberCount> = per_number
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(number, count)| NumberCount { number: number.clone(), count: *count })
            .collect();
        let mut times: Vec<f64> = inner.calls.iter().map(|c| c.at).collect();
        times.sort_by(f64::total_cmp);
        let mut starts: Vec<f64> = inner.calls.iter().filter_map(|c| c.started_at).collect();
        starts.sort_by(f64::total_cmp);
        let span = match (times.first(), times.last()) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        };
        let per_provider_window = times_per_provider
            .into_iter()
            .map(|(p, mut t)| {
                t.sort_by(f64::total_cmp);
                (p, max_in_window(&t, 1.0))
            })
            .collect();
        let c = &inner.counters;
        StatsReport {
            calls: inner.calls.len() as u64,
            calls_per_provider: per_provider,
            distinct_numbers: per_number.len() as u64,
            called_more_than_once,
            max_calls_in_any_1s_window: max_in_window(&times, 1.0),
            first_to_last_call_secs: span,
            rate_limited_429: c.rate_limited,
            rejected_4xx: c.rejected,
            webhook_deliveries_ok: c.deliveries_ok,
            webhook_deliveries_failed: c.deliveries_failed,
            calls_per_number: per_number,
            outcomes,
            calls_ended: inner.calls.iter().filter(|c| c.ended).count() as u64,
            max_calls_in_any_1s_window_per_provider: per_provider_window,
            max_calls_in_any_5s_window: max_in_window(&times, 5.0),
            max_calls_started_in_any_1s_window: max_in_window(&starts, 1.0),
            max_queue_secs: inner.calls.iter().map(|c| c.queue_secs).fold(0.0, f64::max),
            storm_429: c.storm_429,
            server_errors_5xx: c.server_errors,
            timeouts: c.timeouts,
            lost_responses: c.lost_responses,
            duplicated_deliveries: c.duplicated,
            dropped_events: c.dropped_events,
            reordered_deliveries: c.reordered,
            max_concurrent_calls_per_provider: max_concurrent(&inner.calls),
            concurrency_rejected: c.concurrency_rejected,
            answer_documents_invalid: c.answer_invalid,
            telnyx_commands: c.commands,
            keys_pressed: c.keys_pressed,
            recordings_played: c.recordings_played,
            outage_refused: c.outage_refused.clone(),
            recordings_failed: c.recordings_failed,
            key_timeouts: c.key_timeouts,
            key_requests_invalid: c.input_invalid,
            idempotent_replays: c.idempotent_replays,
        }
    }

    pub fn calls(&self) -> Vec<SimCall> {
        self.lock().calls.clone()
    }

    /// The calls of one provider accepted at or after `since` (for the list APIs).
    pub fn calls_of(&self, provider: &str, filter: impl Fn(&SimCall) -> bool) -> Vec<SimCall> {
        self.lock().calls.iter().filter(|c| c.provider == provider && filter(c)).cloned().collect()
    }
}

/// The most calls of each provider in progress at once (from acceptance to
/// end; a call not ended yet counts to the end).
fn max_concurrent(calls: &[SimCall]) -> HashMap<String, u64> {
    let mut edges: HashMap<&str, Vec<(f64, i64)>> = HashMap::new();
    for c in calls {
        let e = edges.entry(c.provider).or_default();
        e.push((c.at, 1));
        e.push((c.ended_secs.unwrap_or(f64::INFINITY), -1));
    }
    edges
        .into_iter()
        .map(|(p, mut e)| {
            // Ends before starts at the same instant: a line freed is reusable.
            e.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let (mut now, mut most) = (0i64, 0i64);
            for (_, d) in e {
                now += d;
                most = most.max(now);
            }
            (p.to_owned(), u64::try_from(most).unwrap_or(0))
        })
        .collect()
}

/// The most timestamps inside any half-open window `[t, t + width)`.
pub fn max_in_window(sorted: &[f64], width: f64) -> u64 {
    let mut best = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end] - sorted[start] >= width {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best as u64
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct NumberCount {
    pub number: String,
    pub count: u32,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct StatsReport {
    pub calls: u64,
    pub calls_per_provider: HashMap<String, u64>,
    pub distinct_numbers: u64,
    pub called_more_than_once: Vec<NumberCount>,
    /// Create-call requests accepted in the busiest second (all providers).
    pub max_calls_in_any_1s_window: u64,
    pub first_to_last_call_secs: f64,
    /// Every 429 sent (rate limits and storms).
    pub rate_limited_429: u64,
    pub rejected_4xx: u64,
    pub webhook_deliveries_ok: u64,
    pub webhook_deliveries_failed: u64,
    pub calls_per_number: BTreeMap<String, u32>,
    /// Calls per simulated outcome.
    pub outcomes: BTreeMap<String, u64>,
    pub calls_ended: u64,
    pub max_calls_in_any_1s_window_per_provider: HashMap<String, u64>,
    pub max_calls_in_any_5s_window: u64,
    /// Calls that left the provider's queue in the busiest second (Twilio's CPS).
    pub max_calls_started_in_any_1s_window: u64,
    pub max_queue_secs: f64,
    pub storm_429: u64,
    pub server_errors_5xx: u64,
    pub timeouts: u64,
    pub lost_responses: u64,
    pub duplicated_deliveries: u64,
    /// Events never delivered (`--fault-drop-event-rate`).
    pub dropped_events: u64,
    pub reordered_deliveries: u64,
    /// The most calls in progress at once, per provider.
    pub max_concurrent_calls_per_provider: HashMap<String, u64>,
    /// Dials refused for the account's concurrent-call cap (`--telnyx-max-concurrent`).
    pub concurrency_rejected: u64,
    pub answer_documents_invalid: u64,
    pub telnyx_commands: u64,
    /// Keys callees pressed when asked, and times they let the timeout pass.
    pub keys_pressed: u64,
    /// Create-call requests refused by an outage (`/_sim/outage`), per account.
    pub outage_refused: BTreeMap<String, u64>,
    /// Recordings fetched and playable, and those that were not.
    pub recordings_played: u64,
    pub recordings_failed: u64,
    pub key_timeouts: u64,
    /// Requests for a key (NCCO `input`, TwiML `<Gather>`, Telnyx gather)
    /// not in the provider's documented form.
    pub key_requests_invalid: u64,
    /// Telnyx dials answered from the `command_id` cache instead of dialling again.
    pub idempotent_replays: u64,
}

pub async fn stats(State(sim): State<Arc<Sim>>) -> Json<StatsReport> {
    Json(sim.stats.snapshot())
}

pub async fn calls(State(sim): State<Arc<Sim>>) -> Json<Vec<SimCall>> {
    Json(sim.stats.calls())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_are_half_open() {
        assert_eq!(max_in_window(&[], 1.0), 0);
        assert_eq!(max_in_window(&[0.0, 0.5, 1.0, 1.5], 1.0), 2);
        assert_eq!(max_in_window(&[0.0, 0.1, 0.2, 5.0], 1.0), 3);
    }
}

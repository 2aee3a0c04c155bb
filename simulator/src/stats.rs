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
    /// The account that placed it (`PROVIDER:LABEL`).
    pub account: String,
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
    /// Created past its account's concurrent-call cap, so it failed at once
    /// without ringing (Twilio, Telnyx; Vonage creates no call).
    pub past_cap: bool,
    /// Seconds since start when it took one of its account's lines (`None`
    /// past the cap): from then to its end it counts as in progress.
    #[serde(skip)]
    line_from: Option<f64>,
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
    /// Create-call requests refused by an outage, per provider (all its accounts).
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
    accounts: BTreeMap<String, AccountCounters>,
}

/// An account's configured limits, as `/_sim/stats` reports them.
#[derive(Clone, Copy, Debug, Default)]
pub struct AccountLimits {
    /// Create-call requests per second (Vonage's rate, Twilio's CPS,
    /// Telnyx's dials per window over the window).
    pub rate: f64,
    /// Calls in progress at once; 0: no cap.
    pub max_concurrent: usize,
    /// The provider's rate window: Telnyx's rolling window, else one second.
    pub window_secs: f64,
}

#[derive(Default)]
struct AccountCounters {
    limits: AccountLimits,
    /// When each create-call request attributed to it arrived (unsorted).
    arrivals: Vec<f64>,
    rate_limited: u64,
    past_cap: u64,
    outage_refused: u64,
    /// Calls holding a line now (accepted within the cap, not ended).
    lines: usize,
}

/// Whether a new call got one of its account's lines.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Line {
    /// Below the cap (or no cap): taken at these seconds since start.
    Held(f64),
    /// At the cap: counted in `rejected_past_cap`.
    PastCap,
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
                accounts: BTreeMap::new(),
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
    pub account: &'a str,
    /// `Stats::take_line`'s answer for it.
    pub line: Line,
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

    /// Makes `account` known, with its configured limits (it is reported
    /// even before its first request).
    pub fn register(&self, account: &str, limits: AccountLimits) {
        self.lock().accounts.entry(account.to_owned()).or_default().limits = limits;
    }

    /// A create-call request attributed to `account` arrived at `at`
    /// (`Stats::arrival`, taken before it was authenticated).
    pub fn arrived(&self, account: &str, at: f64) {
        self.lock().accounts.entry(account.to_owned()).or_default().arrivals.push(at);
    }

    /// Takes one of `account`'s lines for a new call, unless `cap` (0: no
    /// cap) of them are held; then counts the call as rejected past the cap.
    /// A held line is given back when the call ends (`ended`), or by
    /// `release_line` when the call is not created after all.
    pub fn take_line(&self, account: &str, cap: usize) -> Line {
        let mut inner = self.lock();
        let now = inner.started.elapsed().as_secs_f64();
        let Inner { accounts, counters, .. } = &mut *inner;
        let counts = accounts.entry(account.to_owned()).or_default();
        if cap > 0 && counts.lines >= cap {
            counts.past_cap += 1;
            counters.concurrency_rejected += 1;
            return Line::PastCap;
        }
        counts.lines += 1;
        Line::Held(now)
    }

    /// Gives back a line taken for a call that was not created.
    pub fn release_line(&self, account: &str) {
        if let Some(counts) = self.lock().accounts.get_mut(account) {
            counts.lines = counts.lines.saturating_sub(1);
        }
    }

    pub fn call_accepted(&self, call: NewCall<'_>) {
        let mut inner = self.lock();
        let at = call.arrived;
        let index = inner.calls.len();
        inner.index.insert(call.provider_call_id.to_owned(), index);
        let to = if call.to.starts_with('+') { call.to.to_owned() } else { format!("+{}", call.to) };
        let from = if call.from.starts_with('+') { call.from.to_owned() } else { format!("+{}", call.from) };
        let line_from = match call.line {
            Line::Held(at) => Some(at),
            Line::PastCap => None,
        };
        inner.calls.push(SimCall {
            provider: call.provider,
            account: call.account.to_owned(),
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
            past_cap: line_from.is_none(),
            line_from,
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

    /// The call ended: its line (if it held one) is free from now on.
    pub fn ended(&self, provider_call_id: &str, status: &str, duration_secs: Option<i64>) {
        let mut inner = self.lock();
        let now = inner.started.elapsed().as_secs_f64();
        let Inner { calls, index, accounts, .. } = &mut *inner;
        let Some(c) = index.get(provider_call_id).map(|i| &mut calls[*i]) else { return };
        if !c.ended
            && c.line_from.is_some()
            && let Some(counts) = accounts.get_mut(&c.account)
        {
            counts.lines = counts.lines.saturating_sub(1);
        }
        c.ended_secs = c.ended_secs.or(Some(now));
        c.status = status.to_owned();
        c.ended = true;
        c.ended_at = Some(Utc::now());
        c.duration_secs = duration_secs;
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
        let mut inner = self.lock();
        let provider = crate::accounts::provider_of(account).to_owned();
        *inner.counters.outage_refused.entry(provider).or_default() += 1;
        inner.accounts.entry(account.to_owned()).or_default().outage_refused += 1;
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

    /// A create-call request of `account` refused with 429 by its rate limit.
    pub fn rate_limited(&self, account: &str) {
        let mut inner = self.lock();
        inner.counters.rate_limited += 1;
        inner.accounts.entry(account.to_owned()).or_default().rate_limited += 1;
    }

    /// A 429 of a storm (`--fault-429-storm-every`), to `account`.
    pub fn storm_429(&self, account: &str) {
        let mut inner = self.lock();
        inner.counters.storm_429 += 1;
        inner.counters.rate_limited += 1;
        inner.accounts.entry(account.to_owned()).or_default().rate_limited += 1;
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
            max_concurrent_calls_per_provider: max_concurrent(&inner.calls, |c| c.provider.to_owned()),
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
            accounts: accounts_report(&inner),
        }
    }

    pub fn calls(&self) -> Vec<SimCall> {
        self.lock().calls.clone()
    }

    /// The calls of one account that pass `filter` (for the list APIs).
    pub fn calls_of(&self, account: &str, filter: impl Fn(&SimCall) -> bool) -> Vec<SimCall> {
        self.lock().calls.iter().filter(|c| c.account == account && filter(c)).cloned().collect()
    }
}

/// Each account's figures.
fn accounts_report(inner: &Inner) -> BTreeMap<String, AccountReport> {
    let most = max_concurrent(&inner.calls, |c| c.account.clone());
    let mut calls: HashMap<&str, u64> = HashMap::new();
    for c in &inner.calls {
        *calls.entry(c.account.as_str()).or_default() += 1;
    }
    inner
        .accounts
        .iter()
        .map(|(name, a)| {
            let mut arrivals = a.arrivals.clone();
            arrivals.sort_by(f64::total_cmp);
            let report = AccountReport {
                calls: calls.get(name.as_str()).copied().unwrap_or(0),
                busiest_1s: max_in_window(&arrivals, 1.0),
                busiest_window: max_in_window(&arrivals, a.limits.window_secs.max(f64::MIN_POSITIVE)),
                window_secs: a.limits.window_secs,
                most_concurrent: most.get(name).copied().unwrap_or(0),
                rejected_past_cap: a.past_cap,
                rate_limited: a.rate_limited,
                outage_refused: a.outage_refused,
                rate: a.limits.rate,
                max_concurrent: a.limits.max_concurrent as u64,
            };
            (name.clone(), report)
        })
        .collect()
}

/// The most calls in progress at once per `key` (provider or account):
/// from taking a line to the end (a call not ended yet counts to the end);
/// calls past the cap never held one.
fn max_concurrent(calls: &[SimCall], key: impl Fn(&SimCall) -> String) -> HashMap<String, u64> {
    let mut edges: HashMap<String, Vec<(f64, i64)>> = HashMap::new();
    for c in calls {
        let Some(from) = c.line_from else { continue };
        let e = edges.entry(key(c)).or_default();
        e.push((from, 1));
        e.push((c.ended_secs.unwrap_or(f64::INFINITY), -1));
    }
    edges
        .into_iter()
        .map(|(k, mut e)| {
            // Ends before starts at the same instant: a line freed is reusable.
            e.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let (mut now, mut most) = (0i64, 0i64);
            for (_, d) in e {
                now += d;
                most = most.max(now);
            }
            (k, u64::try_from(most).unwrap_or(0))
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

/// One account's figures in `/_sim/stats` (`accounts`).
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct AccountReport {
    /// Create-call requests accepted (Twilio's and Telnyx's calls past the
    /// cap included: they were created, then failed).
    pub calls: u64,
    /// The most create-call requests arriving in any rolling second
    /// (exactly, over their arrival times; counted before authentication).
    pub busiest_1s: u64,
    /// The same in any rolling `window_secs`: Telnyx's dial window, else one second.
    pub busiest_window: u64,
    pub window_secs: f64,
    /// The most of its calls in progress at once.
    pub most_concurrent: u64,
    /// Calls refused or failed for its concurrent-call cap.
    pub rejected_past_cap: u64,
    /// 429s for its rate limit (and storms); not Vonage's past-cap 429s.
    pub rate_limited: u64,
    pub outage_refused: u64,
    /// Its configured create-calls per second (Telnyx: dials per window over the window).
    pub rate: f64,
    /// Its configured concurrent-call cap; 0: none.
    pub max_concurrent: u64,
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
    /// Every 429 sent for a rate limit or a storm (Vonage's past-cap 429s
    /// are counted in `concurrency_rejected`).
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
    /// The most calls in progress at once, per provider (all its accounts;
    /// calls past a cap never count).
    pub max_concurrent_calls_per_provider: HashMap<String, u64>,
    /// Calls refused or failed for their account's concurrent-call cap, all accounts.
    pub concurrency_rejected: u64,
    pub answer_documents_invalid: u64,
    pub telnyx_commands: u64,
    /// Keys callees pressed when asked, and times they let the timeout pass.
    pub keys_pressed: u64,
    /// Create-call requests refused by an outage (`/_sim/outage`), per
    /// provider (all its accounts; per account in `accounts`).
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
    /// Per account (`PROVIDER:LABEL`), every configured one.
    pub accounts: BTreeMap<String, AccountReport>,
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

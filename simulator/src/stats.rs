//! What the simulator saw: every call accepted, every 429 sent and every
//! webhook delivery. Tests and benchmarks read it from `/_sim/stats`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use crate::{Outcome, Sim};

#[derive(Clone, Debug, Serialize)]
pub struct SimCall {
    pub provider: &'static str,
    pub provider_call_id: String,
    pub to: String,
    /// Seconds since the simulator started.
    pub at: f64,
    pub outcome: Outcome,
    /// What the answer document made the call say, once fetched.
    pub spoken: Option<String>,
}

struct Inner {
    started: Instant,
    calls: Vec<SimCall>,
    rate_limited: u64,
    rejected: u64,
    deliveries_ok: u64,
    deliveries_failed: u64,
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
                rate_limited: 0,
                rejected: 0,
                deliveries_ok: 0,
                deliveries_failed: 0,
            }),
        }
    }
}

impl Stats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn call_accepted(&self, provider: &'static str, provider_call_id: &str, to: &str, outcome: Outcome) {
        let mut inner = self.lock();
        let at = inner.started.elapsed().as_secs_f64();
        inner.calls.push(SimCall {
            provider,
            provider_call_id: provider_call_id.to_owned(),
            to: to.to_owned(),
            at,
            outcome,
            spoken: None,
        });
    }

    pub fn spoken(&self, provider_call_id: &str, text: String) {
        let mut inner = self.lock();
        if let Some(call) = inner.calls.iter_mut().rev().find(|c| c.provider_call_id == provider_call_id) {
            call.spoken = Some(text);
        }
    }

    pub fn rate_limited(&self) {
        self.lock().rate_limited += 1;
    }

    pub fn rejected(&self) {
        self.lock().rejected += 1;
    }

    pub fn delivery(&self, ok: bool) {
        let mut inner = self.lock();
        if ok {
            inner.deliveries_ok += 1;
        } else {
            inner.deliveries_failed += 1;
        }
    }

    pub fn snapshot(&self) -> StatsReport {
        let inner = self.lock();
        let mut per_number: HashMap<&str, u32> = HashMap::new();
        let mut per_provider: HashMap<&str, u64> = HashMap::new();
        for call in &inner.calls {
            *per_number.entry(&call.to).or_default() += 1;
            *per_provider.entry(call.provider).or_default() += 1;
        }
        let mut called_more_than_once: Vec<NumberCount> = per_number
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(number, count)| NumberCount { number: (*number).to_owned(), count: *count })
            .collect();
        called_more_than_once.sort_by(|a, b| a.number.cmp(&b.number));
        let mut times: Vec<f64> = inner.calls.iter().map(|c| c.at).collect();
        times.sort_by(f64::total_cmp);
        let span = match (times.first(), times.last()) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        };
        StatsReport {
            calls: inner.calls.len() as u64,
            calls_per_provider: per_provider.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            distinct_numbers: per_number.len() as u64,
            called_more_than_once,
            max_calls_in_any_1s_window: max_in_window(&times, 1.0),
            first_to_last_call_secs: span,
            rate_limited_429: inner.rate_limited,
            rejected_4xx: inner.rejected,
            webhook_deliveries_ok: inner.deliveries_ok,
            webhook_deliveries_failed: inner.deliveries_failed,
        }
    }

    pub fn calls(&self) -> Vec<SimCall> {
        self.lock().calls.clone()
    }
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
    pub max_calls_in_any_1s_window: u64,
    pub first_to_last_call_secs: f64,
    pub rate_limited_429: u64,
    pub rejected_4xx: u64,
    pub webhook_deliveries_ok: u64,
    pub webhook_deliveries_failed: u64,
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

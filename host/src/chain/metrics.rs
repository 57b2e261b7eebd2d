//! Per-installation metrics of the chain, each handle registered once, on first use; and the
//! same counts kept for the admin API ([`Stats`]): calls, failures, drops, call latency by
//! bucket, and the last errors.

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// Upper bounds of the latency buckets the admin API's percentiles come from, in µs.
const LATENCY_BOUNDS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000, 60_000_000,
];

/// Last errors kept per installation.
const LAST_ERRORS: usize = 5;

/// Drop reasons counted apart per installation (the `reason` label's values); later ones are
/// counted as `other`, so a plugin that puts an event's data in its reasons cannot make the
/// label set grow without bound.
pub const DROP_REASONS: usize = 16;

/// Longest drop reason kept as a label value, in bytes.
const DROP_REASON_BYTES: usize = 80;

/// One error an installation's plugin made.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LastError {
    /// When, epoch ms.
    pub time_ms: i64,
    /// Its kind (`timeout`, `plugin_error`...).
    pub kind: &'static str,
    /// What went wrong.
    pub message: String,
}

/// What the admin API shows of an installation's work since it was installed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stats {
    /// Events that reached it.
    pub events: u64,
    /// Events it changed (patched or replaced).
    pub changed: u64,
    /// Calls into the plugin.
    pub calls: u64,
    /// Events it failed on.
    pub failed: u64,
    /// Events dropped (by the plugin, or by the `drop` policy).
    pub dropped: u64,
    /// Call latency, median and 99th percentile, in ms (bucket upper bounds); none before the
    /// first call.
    pub p50_ms: Option<f64>,
    /// See `p50_ms`.
    pub p99_ms: Option<f64>,
    /// The last errors, newest last.
    pub last_errors: Vec<LastError>,
    /// Events the plugin dropped, by reason (at most [`DROP_REASONS`], then `other`).
    pub drop_reasons: Vec<(String, u64)>,
    /// The largest linear memory an instance of it reached, in bytes.
    pub memory_peak_bytes: u64,
    /// Of `dropped`, those dropped by the `drop` policy after a failure (also in `failed`).
    pub dropped_on_error: u64,
}

/// Every `kind` label of `sluice_plugin_failures_total`.
const FAILURE_KINDS: [&str; 10] = [
    "timeout",
    "memory_limit",
    "panic",
    "stack_overflow",
    "contract_violation",
    "trap",
    "plugin_error",
    "invalid_event",
    "envelope_changed",
    "circuit_open",
];

/// The metric handles of one installation.
pub(super) struct InstallationMetrics {
    installation: Arc<str>,
    calls: OnceLock<metrics::Counter>,
    duration: OnceLock<metrics::Histogram>,
    dropped: OnceLock<metrics::Counter>,
    isolations: OnceLock<metrics::Counter>,
    failures: [OnceLock<metrics::Counter>; FAILURE_KINDS.len()],
    counts: [AtomicU64; 7],
    latency: [AtomicU64; LATENCY_BOUNDS_US.len()],
    last_errors: Mutex<VecDeque<LastError>>,
    drop_reasons: Mutex<Vec<(String, u64, metrics::Counter)>>,
}

/// Indexes of [`InstallationMetrics::counts`].
const CALLS: usize = 0;
const FAILED: usize = 1;
const DROPPED: usize = 2;
const EVENTS: usize = 3;
const CHANGED: usize = 4;
const MEMORY_PEAK: usize = 5;
const DROPPED_ON_ERROR: usize = 6;

impl InstallationMetrics {
    pub(super) fn new(installation: &Arc<str>) -> Self {
        Self {
            installation: installation.clone(),
            calls: OnceLock::new(),
            duration: OnceLock::new(),
            dropped: OnceLock::new(),
            isolations: OnceLock::new(),
            failures: Default::default(),
            counts: Default::default(),
            latency: Default::default(),
            last_errors: Mutex::default(),
            drop_reasons: Mutex::default(),
        }
    }

    /// What the admin API shows.
    pub(super) fn stats(&self) -> Stats {
        let count = |i: usize| self.counts[i].load(Ordering::Relaxed);
        let buckets: Vec<u64> = self
            .latency
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = buckets.iter().sum();
        let quantile = |q: f64| {
            let wanted = (q * total as f64).ceil() as u64;
            let mut seen = 0;
            buckets
                .iter()
                .zip(LATENCY_BOUNDS_US)
                .find_map(|(n, bound)| {
                    seen += n;
                    (total > 0 && seen >= wanted).then_some(bound as f64 / 1e3)
                })
        };
        Stats {
            events: count(EVENTS),
            changed: count(CHANGED),
            memory_peak_bytes: count(MEMORY_PEAK),
            dropped_on_error: count(DROPPED_ON_ERROR),
            calls: count(CALLS),
            failed: count(FAILED),
            dropped: count(DROPPED),
            p50_ms: quantile(0.5),
            p99_ms: quantile(0.99),
            last_errors: self
                .last_errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned()
                .collect(),
            drop_reasons: self
                .drop_reasons
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(reason, n, _)| (reason.clone(), *n))
                .collect(),
        }
    }

    fn label(&self) -> String {
        self.installation.to_string()
    }

    /// One call into the plugin that took `elapsed`.
    pub(super) fn call(&self, elapsed: Duration) {
        self.counts[CALLS].fetch_add(1, Ordering::Relaxed);
        let micros = elapsed.as_micros() as u64;
        let bucket = LATENCY_BOUNDS_US
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(LATENCY_BOUNDS_US.len() - 1);
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.duration
            .get_or_init(|| metrics::histogram!("sluice_plugin_call_duration_seconds", "installation" => self.label()))
            .record(elapsed.as_secs_f64());
        self.calls
            .get_or_init(
                || metrics::counter!("sluice_plugin_calls_total", "installation" => self.label()),
            )
            .increment(1);
    }

    /// `count` events reached the installation.
    pub(super) fn events(&self, count: usize) {
        self.counts[EVENTS].fetch_add(count as u64, Ordering::Relaxed);
    }

    /// `count` events changed by the plugin.
    pub(super) fn changed(&self, count: u64) {
        self.counts[CHANGED].fetch_add(count, Ordering::Relaxed);
    }

    /// An instance's linear memory reached `bytes`.
    pub(super) fn memory(&self, bytes: usize) {
        self.counts[MEMORY_PEAK].fetch_max(bytes as u64, Ordering::Relaxed);
    }

    /// `count` events dropped, by the plugin or by the `drop` policy.
    pub(super) fn dropped(&self, count: u64) {
        self.counts[DROPPED].fetch_add(count, Ordering::Relaxed);
        self.dropped
            .get_or_init(|| metrics::counter!("sluice_plugin_events_dropped_total", "installation" => self.label()))
            .increment(count);
    }

    /// One event dropped by the `drop` policy after a failure.
    pub(super) fn dropped_on_error(&self) {
        self.counts[DROPPED_ON_ERROR].fetch_add(1, Ordering::Relaxed);
        self.dropped(1);
    }

    /// One event the plugin dropped for `reason`; whether this is the first drop counted under
    /// its label (a reason not seen before, or the first beyond [`DROP_REASONS`]).
    pub(super) fn drop_reason(&self, reason: &str) -> bool {
        let mut reasons = self
            .drop_reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let label = if reasons.len() < DROP_REASONS || reasons.iter().any(|(r, ..)| r == reason) {
            crate::capabilities::log::truncate(reason, DROP_REASON_BYTES)
        } else {
            "other"
        };
        if let Some((_, n, counter)) = reasons.iter_mut().find(|(r, ..)| r == label) {
            *n += 1;
            counter.increment(1);
            return false;
        }
        let counter = metrics::counter!("sluice_plugin_dropped_by_reason_total", "installation" => self.label(), "reason" => label.to_owned());
        counter.increment(1);
        reasons.push((label.to_owned(), 1, counter));
        true
    }

    /// One failed call split in two to find the events responsible.
    pub(super) fn isolation(&self) {
        self.isolations
            .get_or_init(|| metrics::counter!("sluice_plugin_isolation_splits_total", "installation" => self.label()))
            .increment(1);
    }

    /// One event the plugin failed on, of `kind` (one of [`FAILURE_KINDS`]), for `message`.
    pub(super) fn failure(&self, kind: &'static str, message: &str) {
        self.counts[FAILED].fetch_add(1, Ordering::Relaxed);
        if kind != "circuit_open" {
            let mut last = self
                .last_errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.len() == LAST_ERRORS {
                last.pop_front();
            }
            last.push_back(LastError {
                time_ms: crate::store::now_ms(),
                kind,
                message: message.to_owned(),
            });
        }
        let register = || metrics::counter!("sluice_plugin_failures_total", "installation" => self.label(), "kind" => kind);
        match FAILURE_KINDS.iter().position(|k| *k == kind) {
            Some(i) => self.failures[i].get_or_init(register).increment(1),
            None => register().increment(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_are_counted_apart_up_to_their_cap_then_as_other() {
        let metrics = InstallationMetrics::new(&Arc::from("team-1/p"));
        assert!(metrics.drop_reason("bot"), "a new reason is announced");
        assert!(!metrics.drop_reason("bot"), "once");
        for n in 0..20 {
            metrics.drop_reason(&format!("user {n} is a bot"));
        }
        let reasons = metrics.stats().drop_reasons;
        assert_eq!(reasons.len(), DROP_REASONS + 1);
        assert_eq!(reasons[0], ("bot".to_owned(), 2));
        assert_eq!(reasons[DROP_REASONS], ("other".to_owned(), 5));
        assert!(!metrics.drop_reason("user 3 is a bot"), "a known reason");
        assert!(!metrics.drop_reason("another"), "another `other`");
        assert_eq!(metrics.stats().drop_reasons[DROP_REASONS].1, 6);
    }
}

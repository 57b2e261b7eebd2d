//! Per-installation metrics of the chain, each handle registered once, on first use.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

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
}

impl InstallationMetrics {
    pub(super) fn new(installation: &Arc<str>) -> Self {
        Self {
            installation: installation.clone(),
            calls: OnceLock::new(),
            duration: OnceLock::new(),
            dropped: OnceLock::new(),
            isolations: OnceLock::new(),
            failures: Default::default(),
        }
    }

    fn label(&self) -> String {
        self.installation.to_string()
    }

    /// One call into the plugin that took `elapsed`.
    pub(super) fn call(&self, elapsed: Duration) {
        self.duration
            .get_or_init(|| metrics::histogram!("sluice_plugin_call_duration_seconds", "installation" => self.label()))
            .record(elapsed.as_secs_f64());
        self.calls
            .get_or_init(
                || metrics::counter!("sluice_plugin_calls_total", "installation" => self.label()),
            )
            .increment(1);
    }

    /// `count` events dropped, by the plugin or by the `drop` policy.
    pub(super) fn dropped(&self, count: u64) {
        self.dropped
            .get_or_init(|| metrics::counter!("sluice_plugin_events_dropped_total", "installation" => self.label()))
            .increment(count);
    }

    /// One failed call split in two to find the events responsible.
    pub(super) fn isolation(&self) {
        self.isolations
            .get_or_init(|| metrics::counter!("sluice_plugin_isolation_splits_total", "installation" => self.label()))
            .increment(1);
    }

    /// One event the plugin failed on, of `kind` (one of [`FAILURE_KINDS`]).
    pub(super) fn failure(&self, kind: &'static str) {
        let register = || metrics::counter!("sluice_plugin_failures_total", "installation" => self.label(), "kind" => kind);
        match FAILURE_KINDS.iter().position(|k| *k == kind) {
            Some(i) => self.failures[i].get_or_init(register).increment(1),
            None => register().increment(1),
        }
    }
}

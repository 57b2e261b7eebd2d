//! `breaker = {...}` of an installation: when sluice stops calling a plugin that keeps failing.

use super::Collector;
use serde::Deserialize;

/// The circuit breaker of one installation.
///
/// A failure is an event the plugin fails on by itself (found by isolating a failed batch) or a
/// call in which the plugin failed every event. The breaker opens after `consecutive_failures`
/// failures in a row, or when at least `failure_rate` of the last `window` calls failed; while
/// open, the installation's events take its `on_error` path without calling the plugin. After
/// the cool-down one trial call (one event) closes it again or re-opens it with twice the
/// cool-down, up to `max_cooldown_seconds`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Failures in a row that open the breaker.
    pub consecutive_failures: u32,
    /// Share of failed calls among the last `window` calls that opens the breaker (0 to 1).
    pub failure_rate: f64,
    /// Calls the failure rate is measured over; the rate counts once this many were made.
    pub window: u32,
    /// Seconds the breaker stays open the first time.
    pub cooldown_seconds: u64,
    /// Longest cool-down, in seconds, however often trials fail.
    pub max_cooldown_seconds: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: 20,
            cooldown_seconds: 30,
            max_cooldown_seconds: 600,
        }
    }
}

impl BreakerConfig {
    /// Checks the ranges, reporting problems under `key`.
    pub(super) fn check(&self, c: &mut Collector, key: &str) {
        if !(1..=1_000).contains(&self.consecutive_failures) {
            c.add(
                format!("{key}.consecutive_failures"),
                "must be between 1 and 1000",
            );
        }
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            c.add(
                format!("{key}.failure_rate"),
                "must be above 0 and at most 1",
            );
        }
        if !(2..=10_000).contains(&self.window) {
            c.add(format!("{key}.window"), "must be between 2 and 10000");
        }
        if !(1..=86_400).contains(&self.cooldown_seconds) {
            c.add(
                format!("{key}.cooldown_seconds"),
                "must be between 1 and 86400",
            );
        }
        if self.max_cooldown_seconds < self.cooldown_seconds || self.max_cooldown_seconds > 86_400 {
            c.add(
                format!("{key}.max_cooldown_seconds"),
                "must be at least `cooldown_seconds` and at most 86400",
            );
        }
    }
}

//! `breaker = {...}` of an installation: when sluice stops calling a plugin that keeps failing,
//! or that spends more time (and errors) than its budget.

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
///
/// Besides, each installation has a **budget** of plugin time, `budget_ms`, refilled at
/// `refill_ms_per_second`: every call spends the time it took, and every event the plugin
/// fails on spends `error_cost_ms` more, so slow calls and errors both count. Below half of
/// its budget the installation is `degraded` (logged, in metrics and on the page); once the
/// budget is spent the breaker opens as above. It is healthy again at three quarters.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
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
    /// Plugin time the installation may spend in a burst, in ms.
    pub budget_ms: u64,
    /// Plugin time given back per second, in ms (1000: one busy core, all the time).
    pub refill_ms_per_second: u64,
    /// What an event the plugin fails on costs, in ms of budget.
    pub error_cost_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: 20,
            cooldown_seconds: 30,
            max_cooldown_seconds: 600,
            budget_ms: 60_000,
            refill_ms_per_second: 1_000,
            error_cost_ms: 100,
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
        if !(1..=86_400_000).contains(&self.budget_ms) {
            c.add(format!("{key}.budget_ms"), "must be between 1 and 86400000");
        }
        if !(1..=1_000_000).contains(&self.refill_ms_per_second) {
            c.add(
                format!("{key}.refill_ms_per_second"),
                "must be between 1 and 1000000",
            );
        }
        if self.error_cost_ms > 3_600_000 {
            c.add(format!("{key}.error_cost_ms"), "must be at most 3600000");
        }
        if self.max_cooldown_seconds < self.cooldown_seconds || self.max_cooldown_seconds > 86_400 {
            c.add(
                format!("{key}.max_cooldown_seconds"),
                "must be at least `cooldown_seconds` and at most 86400",
            );
        }
    }
}

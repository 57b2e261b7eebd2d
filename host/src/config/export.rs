//! `export = {...}` of an installation whose plugin exports events: how its batches are formed
//! and retried, and which events it never sees.

use super::Collector;
use serde::Deserialize;

/// How an export installation batches and retries. Batches close at `max_events`, `max_bytes`
/// (of encoded events) or when their oldest event has waited `max_age_seconds`, as PostHog's
/// export buffer did (1 MiB / 10 s). A retryable failure is tried again after
/// `retry_base_seconds`, doubling each attempt up to `retry_max_seconds`, with jitter; after
/// `max_attempts` attempts, or a permanent failure, the batch goes to the export dead letters.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// Most events in one batch.
    pub max_events: usize,
    /// Most bytes of events in one batch.
    pub max_bytes: usize,
    /// Longest an event waits for its batch to fill, in seconds.
    pub max_age_seconds: u64,
    /// Event names never exported (applied per event, before the plugin sees the batch).
    pub events_to_ignore: Vec<String>,
    /// Delay before the first retry, in seconds; it doubles with each attempt.
    pub retry_base_seconds: u64,
    /// Longest delay between attempts, in seconds.
    pub retry_max_seconds: u64,
    /// Attempts before a batch is dead-lettered.
    pub max_attempts: u32,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            max_events: 10_000,
            max_bytes: 1024 * 1024,
            max_age_seconds: 10,
            events_to_ignore: Vec::new(),
            retry_base_seconds: 6,
            retry_max_seconds: 3_600,
            max_attempts: 10,
        }
    }
}

impl ExportConfig {
    /// Checks the ranges, reporting problems under `key`.
    pub(super) fn check(&self, c: &mut Collector, key: &str) {
        let mut range = |field: &str, ok: bool, bounds: &str| {
            if !ok {
                c.add(
                    format!("{key}.{field}"),
                    format!("must be between {bounds}"),
                );
            }
        };
        range(
            "max_events",
            (1..=100_000).contains(&self.max_events),
            "1 and 100000",
        );
        range(
            "max_bytes",
            (1..=100 << 20).contains(&self.max_bytes),
            "1 and 104857600",
        );
        range(
            "max_age_seconds",
            (1..=600).contains(&self.max_age_seconds),
            "1 and 600",
        );
        range(
            "retry_base_seconds",
            (1..=3_600).contains(&self.retry_base_seconds),
            "1 and 3600",
        );
        range(
            "retry_max_seconds",
            (self.retry_base_seconds..=86_400).contains(&self.retry_max_seconds),
            "`retry_base_seconds` and 86400",
        );
        range(
            "max_attempts",
            (1..=100).contains(&self.max_attempts),
            "1 and 100",
        );
    }
}

//! `[retention]`: how long sluice keeps what it keeps for operators (plugin log lines, task runs,
//! failed jobs, dead letters), wherever it keeps them, and, if asked, the embedded store's events.

use super::Collector;
use serde::{Deserialize, Serialize};

/// `[retention]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days plugin log lines are kept.
    pub plugin_logs_days: u64,
    /// Most plugin log lines kept (the newest).
    pub plugin_logs_max_lines: u64,
    /// Days finished task runs are kept.
    pub task_runs_days: u64,
    /// Days jobs that failed for good are kept.
    pub failed_jobs_days: u64,
    /// Days dead letters (of the chains and of exports) are kept.
    pub dead_letters_days: u64,
    /// Days stored events are kept; unset (the default): for ever. Events an export has not
    /// passed yet are kept whatever their age.
    pub events_days: Option<u64>,
    /// Hours events are kept as they were captured, before the chain, for `sluice replay`
    /// (embedded queue only); 0 keeps none.
    pub captured_hours: u64,
    /// Seconds between two passes; each pass deletes at most [`crate::housekeeping::BATCH`] rows
    /// per table, so it never holds the database for long.
    pub interval_seconds: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            plugin_logs_days: 7,
            plugin_logs_max_lines: 1_000_000,
            task_runs_days: 30,
            failed_jobs_days: 30,
            dead_letters_days: 30,
            events_days: None,
            captured_hours: 24,
            interval_seconds: 60,
        }
    }
}

/// Reads `[retention]`.
pub(super) fn load(c: &mut Collector, table: &toml::Table) -> RetentionConfig {
    let retention: RetentionConfig = c.section(table, "retention");
    for (key, days) in [
        ("plugin_logs_days", Some(retention.plugin_logs_days)),
        ("task_runs_days", Some(retention.task_runs_days)),
        ("failed_jobs_days", Some(retention.failed_jobs_days)),
        ("dead_letters_days", Some(retention.dead_letters_days)),
        ("events_days", retention.events_days),
    ] {
        if days.is_some_and(|d| !(1..=36_500).contains(&d)) {
            c.add(format!("retention.{key}"), "must be between 1 and 36500");
        }
    }
    if retention.captured_hours > 24 * 365 {
        c.add("retention.captured_hours", "must be at most 8760");
    }
    if retention.plugin_logs_max_lines == 0 {
        c.add("retention.plugin_logs_max_lines", "must be at least 1");
    }
    if !(1..=86_400).contains(&retention.interval_seconds) {
        c.add("retention.interval_seconds", "must be between 1 and 86400");
    }
    retention
}

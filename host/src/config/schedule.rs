//! `schedule = {...}` and `jobs = {...}` of an installation whose plugin runs tasks or jobs.

use super::Collector;
use serde::Deserialize;
use std::collections::BTreeMap;

/// When an installation's tasks run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// The time zone schedules are read in (IANA name, e.g. `Europe/Paris`).
    pub time_zone: String,
    /// A tick missed while sluice was down still runs at start if it is at most this old, in
    /// seconds; older ones are counted as missed.
    pub starting_deadline_seconds: u64,
    /// Schedules that replace the manifest's, by task name.
    pub tasks: BTreeMap<String, String>,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            time_zone: "UTC".into(),
            starting_deadline_seconds: 3_600,
            tasks: BTreeMap::new(),
        }
    }
}

/// How an installation's jobs are retried. A retryable failure is tried again after
/// `retry_base_seconds`, doubling each attempt up to `retry_max_seconds`, with jitter, until
/// `max_attempts` attempts; then the job is marked failed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Attempts before a job is marked failed.
    pub max_attempts: u32,
    /// Delay before the first retry, in seconds.
    pub retry_base_seconds: u64,
    /// Longest delay between attempts, in seconds.
    pub retry_max_seconds: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            retry_base_seconds: 6,
            retry_max_seconds: 3_600,
        }
    }
}

impl ScheduleConfig {
    /// Checks the ranges, reporting problems under `key` (schedules are checked when the
    /// plugin's tasks are known).
    pub(super) fn check(&self, c: &mut Collector, key: &str) {
        if self.time_zone.parse::<chrono_tz::Tz>().is_err() {
            c.add(
                format!("{key}.time_zone"),
                format!(
                    "`{}` is not an IANA time zone (e.g. `UTC`, `Europe/Paris`)",
                    self.time_zone
                ),
            );
        }
        if self.starting_deadline_seconds > 366 * 86_400 {
            c.add(
                format!("{key}.starting_deadline_seconds"),
                "must be at most a year (31622400)",
            );
        }
    }
}

impl JobsConfig {
    /// Checks the ranges, reporting problems under `key`.
    pub(super) fn check(&self, c: &mut Collector, key: &str) {
        if !(1..=100).contains(&self.max_attempts) {
            c.add(format!("{key}.max_attempts"), "must be between 1 and 100");
        }
        if !(1..=3_600).contains(&self.retry_base_seconds) {
            c.add(
                format!("{key}.retry_base_seconds"),
                "must be between 1 and 3600",
            );
        }
        if !(self.retry_base_seconds..=86_400).contains(&self.retry_max_seconds) {
            c.add(
                format!("{key}.retry_max_seconds"),
                "must be between `retry_base_seconds` and 86400",
            );
        }
    }
}

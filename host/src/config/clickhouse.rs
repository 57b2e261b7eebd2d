//! `[clickhouse]`: stored events, recordings, dead letters and plugin logs in ClickHouse instead
//! of the embedded database. The worker produces them to their topics on the `[kafka]` brokers;
//! the loader inserts them into ClickHouse.

use super::Collector;
use crate::clickhouse::{ClickHouseSettings, LoaderSettings, Topics};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[clickhouse]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// The HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// The database sluice's tables are in (created if missing).
    #[serde(default = "default_database")]
    pub database: String,
    /// The user.
    #[serde(default = "default_user")]
    pub user: String,
    /// The user's password (or `SLUICE_CLICKHOUSE_PASSWORD`).
    #[serde(default)]
    #[serde(serialize_with = "super::redacted")]
    pub password: Option<String>,
    /// The topic of processed events.
    #[serde(default = "default_events_topic")]
    pub events_topic: String,
    /// The topic of session-recording events.
    #[serde(default = "default_recordings_topic")]
    pub recordings_topic: String,
    /// The topic of dead letters.
    #[serde(default = "default_dead_letters_topic")]
    pub dead_letters_topic: String,
    /// The topic of plugin log lines.
    #[serde(default = "default_logs_topic")]
    pub logs_topic: String,
    /// The loaders' consumer group.
    #[serde(default = "default_loader_group")]
    pub loader_group: String,
    /// An insert is sent once it holds this many rows...
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// ...or this many bytes (before compression)...
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: usize,
    /// ...or its first row waited this long.
    #[serde(default = "default_batch_age_ms")]
    pub batch_age_ms: u64,
}

fn default_database() -> String {
    "sluice".into()
}

fn default_user() -> String {
    "default".into()
}

fn default_events_topic() -> String {
    "sluice_events".into()
}

fn default_recordings_topic() -> String {
    "sluice_recordings".into()
}

fn default_dead_letters_topic() -> String {
    "sluice_dead_letters".into()
}

fn default_logs_topic() -> String {
    "sluice_plugin_logs".into()
}

fn default_loader_group() -> String {
    "sluice-loaders".into()
}

fn default_batch_rows() -> usize {
    50_000
}

fn default_batch_bytes() -> usize {
    16 << 20
}

fn default_batch_age_ms() -> u64 {
    1_000
}

impl ClickHouseConfig {
    /// Where ClickHouse is.
    pub fn settings(&self) -> ClickHouseSettings {
        ClickHouseSettings {
            url: self.url.clone(),
            database: self.database.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
        }
    }

    /// The topics between the worker and the loader.
    pub fn topics(&self) -> Topics {
        Topics {
            events: self.events_topic.clone(),
            recordings: self.recordings_topic.clone(),
            dead_letters: self.dead_letters_topic.clone(),
            logs: self.logs_topic.clone(),
        }
    }

    /// How the loader batches.
    pub fn loader(&self) -> LoaderSettings {
        LoaderSettings {
            group: self.loader_group.clone(),
            batch_rows: self.batch_rows,
            batch_bytes: self.batch_bytes,
            batch_age: Duration::from_millis(self.batch_age_ms),
        }
    }
}

/// Reads `[clickhouse]`, if the file has it; `kafka` says whether the file names brokers.
pub(super) fn load(
    c: &mut Collector,
    table: &toml::Table,
    kafka: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<ClickHouseConfig> {
    let mut clickhouse: ClickHouseConfig =
        c.value("clickhouse", table.get("clickhouse")?.clone())?;
    if !kafka {
        c.add(
            "clickhouse",
            "needs a [kafka] section: workers produce what they store to topics that the loader inserts into ClickHouse",
        );
    }
    match url::Url::parse(&clickhouse.url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => {}
        _ => c.add(
            "clickhouse.url",
            format!(
                "`{}` is not an http(s) URL such as http://127.0.0.1:8123",
                clickhouse.url
            ),
        ),
    }
    let identifier = |name: &str| {
        !name.is_empty()
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    };
    if !identifier(&clickhouse.database) {
        c.add(
            "clickhouse.database",
            "must be letters, digits and underscores",
        );
    }
    for (key, topic) in [
        ("events_topic", &clickhouse.events_topic),
        ("recordings_topic", &clickhouse.recordings_topic),
        ("dead_letters_topic", &clickhouse.dead_letters_topic),
        ("logs_topic", &clickhouse.logs_topic),
        ("loader_group", &clickhouse.loader_group),
    ] {
        if topic.trim().is_empty() {
            c.add(format!("clickhouse.{key}"), "must not be empty");
        }
    }
    if !(1..=10_000_000).contains(&clickhouse.batch_rows) {
        c.add("clickhouse.batch_rows", "must be between 1 and 10000000");
    }
    if !(1_024..=1 << 30).contains(&clickhouse.batch_bytes) {
        c.add(
            "clickhouse.batch_bytes",
            "must be between 1024 and 1073741824",
        );
    }
    if !(1..=600_000).contains(&clickhouse.batch_age_ms) {
        c.add("clickhouse.batch_age_ms", "must be between 1 and 600000");
    }
    if let Some(password) = env("SLUICE_CLICKHOUSE_PASSWORD") {
        clickhouse.password = Some(password);
    }
    Some(clickhouse)
}

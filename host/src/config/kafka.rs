//! `[kafka]`: the ingest on a Kafka-protocol broker instead of the embedded queue. Capture
//! produces to the ingest topic; the worker consumes it as a member of the workers' group.

use super::Collector;
use crate::ingest::kafka::KafkaSettings;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[kafka]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port` of one or more brokers, comma-separated (`bootstrap.servers`).
    pub brokers: String,
    /// The ingest topic.
    #[serde(default = "default_topic")]
    pub ingest_topic: String,
    /// The workers' consumer group.
    #[serde(default = "default_group")]
    pub worker_group: String,
    /// Largest event (encoded) the ingest takes; a larger one gets `413 event_too_large`.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// How long capture waits for the brokers to acknowledge a request's events before it
    /// answers `503`.
    #[serde(default = "default_delivery_timeout_ms")]
    pub delivery_timeout_ms: u64,
    /// How long a worker may go silent before its partitions move to the other workers.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// A worker or loader further behind its topics than this many messages answers `/ready`
    /// with `503` (it is alive, but not caught up).
    #[serde(default = "default_ready_max_lag")]
    pub ready_max_lag: u64,
}

fn default_topic() -> String {
    "sluice_ingest".into()
}

fn default_group() -> String {
    "sluice-workers".into()
}

fn default_max_event_bytes() -> usize {
    1_000_000
}

fn default_delivery_timeout_ms() -> u64 {
    20_000
}

fn default_session_timeout_ms() -> u64 {
    10_000
}

fn default_ready_max_lag() -> u64 {
    100_000
}

impl KafkaConfig {
    /// What the ingest backend needs.
    pub fn settings(&self) -> KafkaSettings {
        KafkaSettings {
            brokers: self.brokers.clone(),
            topic: self.ingest_topic.clone(),
            group: self.worker_group.clone(),
            max_event_bytes: self.max_event_bytes,
            delivery_timeout: Duration::from_millis(self.delivery_timeout_ms),
            session_timeout: Duration::from_millis(self.session_timeout_ms),
        }
    }
}

/// Reads `[kafka]`, if the file has it.
pub(super) fn load(c: &mut Collector, table: &toml::Table) -> Option<KafkaConfig> {
    let kafka: KafkaConfig = c.value("kafka", table.get("kafka")?.clone())?;
    if kafka.brokers.trim().is_empty() {
        c.add("kafka.brokers", "must name at least one broker (host:port)");
    }
    if kafka.ingest_topic.trim().is_empty() {
        c.add("kafka.ingest_topic", "must not be empty");
    }
    if kafka.worker_group.trim().is_empty() {
        c.add("kafka.worker_group", "must not be empty");
    }
    if !(1_000..=100_000_000).contains(&kafka.max_event_bytes) {
        c.add(
            "kafka.max_event_bytes",
            "must be between 1000 and 100000000",
        );
    }
    if !(100..=600_000).contains(&kafka.delivery_timeout_ms) {
        c.add(
            "kafka.delivery_timeout_ms",
            "must be between 100 and 600000",
        );
    }
    if !(1_000..=600_000).contains(&kafka.session_timeout_ms) {
        c.add(
            "kafka.session_timeout_ms",
            "must be between 1000 and 600000",
        );
    }
    Some(kafka)
}

//! `[queue]`: the embedded ingest queue and how much the worker takes from it per round.

use super::Collector;
use serde::{Deserialize, Serialize};

/// `[queue]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Events waiting for plugins beyond which capture answers `503`.
    pub max_depth_events: u64,
    /// Most events a worker takes from the queue per round.
    pub batch_events: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_depth_events: 1_000_000,
            batch_events: 2_000,
        }
    }
}

/// Reads `[queue]`.
pub(super) fn load(c: &mut Collector, table: &toml::Table) -> QueueConfig {
    let queue: QueueConfig = c.section(table, "queue");
    if queue.batch_events == 0 {
        c.add("queue.batch_events", "must be at least 1");
    }
    queue
}

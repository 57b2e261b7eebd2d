//! Exports: stored events sent to other systems by export plugins (the `exporter` hook), from
//! storage, off the ingest path.
//!
//! Each export installation has a durable cursor and a [`runner`] on its own thread (on every
//! exporter node; the one holding the installation's lease works). The runner reads the team's
//! stored events after the cursor in storage order, from an event [`source`] (a seam: the
//! embedded database or ClickHouse), closes a batch by count, bytes or age, records its range
//! in the export [`state`] (a seam: the embedded database or Redis) before calling the plugin,
//! and advances the cursor in the write that records success. So a crash re-sends the same
//! batch (same id, same events) and never loses one; a plugin that names what it writes after
//! the batch id overwrites its earlier attempt instead of duplicating it. Retryable failures back off
//! exponentially with jitter; a permanent failure or the last attempt moves the batch to the
//! export dead letters, which `sluice exports replay` sends again. `events_to_ignore` is applied
//! per event before the plugin sees the batch.

pub mod backfill;
mod runner;
pub mod source;
pub mod state;

use crate::backends::Backends;
use crate::config::ExportConfig;
use crate::deployment::RunnerHandle;
use crate::runtime::{InstanceSettings, Plugin};
use crate::schedule::lock::RunLock;
use crate::signal::Signal;
use std::sync::Arc;

/// One plugin installation that exports events.
pub struct ExportInstallation {
    /// `team-<team id>/<installation id>`.
    pub id: Arc<str>,
    /// The team whose events it exports.
    pub team_id: u64,
    /// The compiled plugin.
    pub plugin: Arc<Plugin>,
    /// Config and limits of its instance.
    pub settings: InstanceSettings,
    /// Batching and retries.
    pub config: ExportConfig,
}

/// Starts one runner thread per export installation, with its state and event source from
/// `backends`; the runners of an installation on every node share its lease in `lock` (this
/// node is `holder` there). Runners
/// wake when `stored` is notified; each ends once its own handle stops it.
pub fn start(
    installations: &[Arc<ExportInstallation>],
    backends: &Backends,
    lock: &Arc<dyn RunLock>,
    stored: &Arc<Signal>,
    holder: &str,
) -> anyhow::Result<Vec<RunnerHandle>> {
    installations
        .iter()
        .map(|installation| {
            let runner = runner::Runner::new(
                installation.clone(),
                None,
                backends.export_state()?,
                lock.clone(),
                backends.export_source(stored.clone())?,
                holder,
            )?;
            Ok(RunnerHandle::spawn(
                format!("sluice-export-{}", installation.id),
                installation.id.clone(),
                Some(stored.clone()),
                move |stop| {
                    runner.run(stop);
                },
            )?)
        })
        .collect()
}

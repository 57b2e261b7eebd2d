//! Exports: stored events sent to other systems by export plugins (the `exporter` hook), from
//! storage, off the ingest path.
//!
//! Each export installation has a durable cursor and a [`runner`] on its own thread. The runner
//! reads the team's stored events after the cursor in storage order, from an event
//! [`source`] (the seam backends implement), closes a batch by count,
//! bytes or age, records its range ([`state`]) before calling the plugin, and advances the cursor
//! in the transaction that records success. So a crash re-sends the same batch (same id, same
//! events) and never loses one; a plugin that names what it writes after the batch id
//! overwrites its earlier attempt instead of duplicating it. Retryable failures back off
//! exponentially with jitter; a permanent failure or the last attempt moves the batch to the
//! export dead letters, which `sluice exports replay` sends again. `events_to_ignore` is applied
//! per event before the plugin sees the batch.

mod runner;
pub mod source;
pub mod state;

use crate::config::ExportConfig;
use crate::deployment::RunnerHandle;
use crate::runtime::{InstanceSettings, Plugin};
use crate::signal::Signal;
use crate::store::StoreError;
use std::path::Path;
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

/// Starts one runner thread per export installation, reading events from the store of
/// `data_dir` ([`source::SqliteSource`]) and recording there. Runners wake when `stored` is
/// notified; each ends once its own handle stops it.
pub fn start(
    installations: &[Arc<ExportInstallation>],
    data_dir: &Path,
    stored: &Arc<Signal>,
) -> Result<Vec<RunnerHandle>, StoreError> {
    installations
        .iter()
        .map(|installation| {
            let source = source::SqliteSource::open(data_dir, stored.clone())?;
            let runner = runner::Runner::new(installation.clone(), data_dir, Box::new(source))?;
            RunnerHandle::spawn(
                format!("sluice-export-{}", installation.id),
                installation.id.clone(),
                Some(stored.clone()),
                move |stop| runner.run(stop),
            )
            .map_err(|e| StoreError::Thread("an export runner", e))
        })
        .collect()
}

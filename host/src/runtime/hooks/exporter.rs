//! `exporter`: exported by plugins that send stored events elsewhere; one call per batch, driven
//! by the export runner ([`crate::export`]).

use super::{Guests, Versioned};
use crate::bindings::{exporter, types, v0_5};
use crate::runtime::{CallError, Instance};

/// The interface, without version.
pub(super) const INTERFACE: &str = "sluice:plugin/exporter";
/// The hook in the current contract.
pub(super) type Current = exporter::Guest;
/// The hook in the 0.5.0 contract.
pub(super) type Legacy = v0_5::exporter::Guest;
/// The `exporter` functions of one instance.
pub(super) type Exporter = Versioned<Current, Legacy>;

super::hook!(exporter, v0_5::exporter);

/// One batch, as the plugin is told of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Stable identity of the batch.
    pub id: String,
    /// The team whose events these are.
    pub team_id: u64,
    /// 1 on the first attempt, then 2, 3...
    pub attempt: u32,
    /// When the batch was formed, epoch milliseconds.
    pub created_at_ms: i64,
    /// Storage positions of the first and last event the batch covers: only 0.5.0 plugins are
    /// told them (the current contract keeps positions to the storage backend).
    pub positions: (u64, u64),
}

impl Instance {
    /// Sends one batch (`events` in the batch encoding) to the plugin's `exporter`.
    pub fn export(&mut self, batch: &Batch, events: &[u8]) -> Result<(), CallError> {
        self.call(|guests: &Guests, store| match &guests.exporter {
            Some(Versioned::Current(guest)) => {
                let batch = exporter::Batch {
                    id: batch.id.clone(),
                    team_id: batch.team_id,
                    attempt: batch.attempt,
                    created_at: batch.created_at_ms,
                };
                guest.call_export_batch(store, &batch, events)
            }
            Some(Versioned::V0_5(guest)) => {
                let batch = v0_5::exporter::Batch {
                    id: batch.id.clone(),
                    team_id: batch.team_id,
                    attempt: batch.attempt,
                    first_position: batch.positions.0,
                    last_position: batch.positions.1,
                    created_at: batch.created_at_ms,
                };
                guest
                    .call_export_batch(store, &batch, events)
                    .map(|r| r.map_err(Into::into))
            }
            None => Ok(Err(types::PluginError {
                message: "this plugin does not export `exporter`".into(),
                retryable: false,
            })),
        })
    }
}

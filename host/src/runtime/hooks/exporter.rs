//! `exporter`: exported by plugins that send stored events elsewhere; one call per batch, driven
//! by the export runner ([`crate::export`]).

use super::Guests;
use crate::bindings::{exporter, types};
use crate::runtime::{CallError, Instance};

pub use exporter::Batch;

/// The `exporter` functions of one instance.
pub(crate) type Exporter = exporter::Guest;

super::hook!(Exporter, exporter, "sluice:plugin/exporter");

impl Instance {
    /// Sends one batch (`events` in the batch encoding) to the plugin's `exporter`.
    pub fn export(&mut self, batch: &Batch, events: &[u8]) -> Result<(), CallError> {
        self.call(|guests: &Guests, store| match &guests.exporter {
            Some(exporter) => exporter.call_export_batch(store, batch, events),
            None => Ok(Err(types::PluginError {
                message: "this plugin does not export `exporter`".into(),
                retryable: false,
            })),
        })
    }
}

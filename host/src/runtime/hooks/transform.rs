//! `transform`: exported by plugins that change, enrich or drop events; one call per batch.

use super::Guests;
use crate::bindings::{transform, types};
use crate::runtime::{CallError, Instance};

/// The `transform` functions of one instance.
pub(crate) type Transform = transform::Guest;

super::hook!(Transform, transform, "sluice:plugin/transform");

impl Instance {
    /// Sends one encoded batch to the plugin's `transform` and returns the encoded outcomes.
    pub fn transform(&mut self, batch: &[u8]) -> Result<Vec<u8>, CallError> {
        self.call(|guests: &Guests, store| match &guests.transform {
            Some(transform) => transform.call_process(store, batch),
            None => Ok(Err(types::PluginError {
                message: "this plugin does not export `transform`".into(),
                retryable: false,
            })),
        })
    }
}

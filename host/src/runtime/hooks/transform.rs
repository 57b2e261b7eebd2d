//! `transform`: exported by plugins that change, enrich or drop events; one call per batch.

use super::{Guests, Versioned};
use crate::bindings::{transform, types, v0_5};
use crate::runtime::{CallError, Instance};

/// The interface, without version.
pub(super) const INTERFACE: &str = "sluice:plugin/transform";
/// The hook in the current contract.
pub(super) type Current = transform::Guest;
/// The hook in the 0.5.0 contract.
pub(super) type Legacy = v0_5::transform::Guest;
/// The `transform` functions of one instance.
pub(super) type Transform = Versioned<Current, Legacy>;

super::hook!(transform, v0_5::transform);

impl Instance {
    /// Sends one encoded batch to the plugin's `transform` and returns the encoded outcomes.
    pub fn transform(&mut self, batch: &[u8]) -> Result<Vec<u8>, CallError> {
        self.call(|guests: &Guests, store| match &guests.transform {
            Some(Versioned::Current(guest)) => guest.call_process(store, batch),
            Some(Versioned::V0_5(guest)) => guest
                .call_process(store, batch)
                .map(|r| r.map_err(Into::into)),
            None => Ok(Err(types::PluginError {
                message: "this plugin does not export `transform`".into(),
                retryable: false,
            })),
        })
    }
}

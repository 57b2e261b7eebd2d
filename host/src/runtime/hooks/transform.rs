//! `transform`: exported by plugins that change, enrich or drop events; one call per batch.

use super::{Guests, Hook};
use crate::bindings::{transform, types};
use crate::runtime::state::HostState;
use crate::runtime::{CallError, Instance};
use wasmtime::Store;
use wasmtime::component::InstancePre;

/// The `transform` functions of one instance.
pub(crate) type Transform = transform::Guest;

impl Hook for Transform {
    const INTERFACE: &'static str = "sluice:plugin/transform";
    type Indices = transform::GuestIndices;

    fn indices(pre: &InstancePre<HostState>) -> wasmtime::Result<Self::Indices> {
        transform::GuestIndices::new(pre)
    }

    fn load(
        indices: &Self::Indices,
        store: &mut Store<HostState>,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<Self> {
        indices.load(store, instance)
    }
}

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

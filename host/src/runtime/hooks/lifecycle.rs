//! `lifecycle`: every plugin exports it. `describe` returns the manifest, `setup` prepares an
//! instance with its installation's config, `teardown` lets it clean up.

use super::Guests;
use crate::bindings::{lifecycle, types};
use crate::runtime::{CallError, Instance};

/// The `lifecycle` functions of one instance.
pub(crate) type Lifecycle = lifecycle::Guest;

super::hook!(Lifecycle, lifecycle, "sluice:plugin/lifecycle");

impl Instance {
    /// The plugin's manifest, as `describe` returns it.
    pub(crate) fn describe(&mut self) -> Result<types::Manifest, CallError> {
        self.call(|guests: &Guests, store| guests.lifecycle.call_describe(store).map(Ok))
    }

    /// Runs `setup` with `config`, a JSON object.
    pub(crate) fn setup(&mut self, config: &str) -> Result<(), CallError> {
        self.call(|guests: &Guests, store| guests.lifecycle.call_setup(store, config))
    }

    /// Lets the plugin clean up before the instance is discarded.
    pub fn teardown(mut self) {
        let _ = self.call(|guests: &Guests, store| guests.lifecycle.call_teardown(store).map(Ok));
    }
}

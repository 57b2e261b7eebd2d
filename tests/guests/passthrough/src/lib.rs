//! Keeps every event without reading it. The smallest possible transform: what it costs is the
//! cost of crossing the host/plugin boundary.

use sluice_sdk::{Config, Event, Manifest, Outcome, Plugin, PluginError, Transform};

/// The passthrough plugin.
#[derive(Debug)]
pub struct Passthrough;

impl Plugin for Passthrough {
    fn manifest() -> Manifest {
        Manifest::new(
            "passthrough",
            env!("CARGO_PKG_VERSION"),
            "Keeps every event",
        )
        .stateless()
    }

    fn setup(_config: &Config) -> Result<Self, PluginError> {
        Ok(Self)
    }
}

impl Transform for Passthrough {
    fn transform(&mut self, _event: &Event<'_>) -> Outcome {
        Outcome::Keep
    }
}

sluice_sdk::export_transform!(Passthrough);

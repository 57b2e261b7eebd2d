//! Sets property `key` to `value` (both from its config) on every event. Two of them in a chain,
//! both given the chain's version, show which version of the chain each event went through, and
//! that it went through one only.

use sluice_sdk::{
    Config, ConfigField, ConfigType, Event, Manifest, Outcome, Plugin, PluginError, Transform,
};

/// The stamper.
#[derive(Debug)]
pub struct Stamper {
    key: String,
    value: String,
}

impl Plugin for Stamper {
    fn manifest() -> Manifest {
        Manifest::new(
            "stamper",
            env!("CARGO_PKG_VERSION"),
            "Stamps a value into each event",
        )
        .config(vec![
            ConfigField::new("key", ConfigType::Text, "The property to set").required(),
            ConfigField::new("value", ConfigType::Text, "What to set it to").required(),
        ])
    }

    fn setup(config: &Config) -> Result<Self, PluginError> {
        Ok(Self {
            key: config.text("key")?.to_owned(),
            value: config.text("value")?.to_owned(),
        })
    }
}

impl Transform for Stamper {
    fn transform(&mut self, event: &Event<'_>) -> Outcome {
        let mut edit = event.edit();
        edit.set(&self.key, self.value.as_str());
        Outcome::Edit(edit)
    }
}

sluice_sdk::export_transform!(Stamper);

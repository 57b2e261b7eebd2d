//! `lifecycle`: every plugin exports it. `describe` returns the manifest, `setup` prepares an
//! instance with its installation's config, `teardown` lets it clean up.

use super::{Guests, Versioned};
use crate::bindings::{lifecycle, types, v0_5};
use crate::runtime::{CallError, Instance};
use sluice_abi::manifest::{FailureMode, Manifest};

/// The interface, without version.
pub(super) const INTERFACE: &str = "sluice:plugin/lifecycle";
/// The hook in the current contract.
pub(super) type Current = lifecycle::Guest;
/// The hook in the 0.5.0 contract.
pub(super) type Legacy = v0_5::lifecycle::Guest;
/// The `lifecycle` functions of one instance.
pub(super) type Lifecycle = Versioned<Current, Legacy>;

super::hook!(lifecycle, v0_5::lifecycle);

impl Instance {
    /// The plugin's manifest, as `describe` returns it, in the host's form; a 0.5.0 manifest
    /// declares the failure default `skip` (what that contract meant).
    pub(crate) fn describe(&mut self) -> Result<Result<Manifest, String>, CallError> {
        self.call(|guests: &Guests, store| {
            Ok(Ok(match &guests.lifecycle {
                Versioned::Current(guest) => guest.call_describe(store)?.try_into(),
                Versioned::V0_5(guest) => guest.call_describe(store)?.try_into(),
            }))
        })
    }

    /// Runs `setup` with `config`, a JSON object.
    pub(crate) fn setup(&mut self, config: &str) -> Result<(), CallError> {
        self.call(|guests: &Guests, store| match &guests.lifecycle {
            Versioned::Current(guest) => guest.call_setup(store, config),
            Versioned::V0_5(guest) => guest
                .call_setup(store, config)
                .map(|r| r.map_err(Into::into)),
        })
    }

    /// Lets the plugin clean up before the instance is discarded.
    pub fn teardown(mut self) {
        let _ = self.call(|guests: &Guests, store| {
            match &guests.lifecycle {
                Versioned::Current(guest) => guest.call_teardown(store),
                Versioned::V0_5(guest) => guest.call_teardown(store),
            }
            .map(Ok)
        });
    }
}

/// Converts the manifest of the bindings module `$types` (in scope) to the host's form, its failure default
/// given by `$on_error` (a closure of the WIT manifest).
macro_rules! from_wit_manifest {
    ($types:ident, $on_error:expr) => {
        impl TryFrom<$types::Manifest> for Manifest {
            type Error = String;

            fn try_from(manifest: $types::Manifest) -> Result<Self, String> {
                use sluice_abi::manifest::{ConfigField, ConfigType, TaskSpec};
                use $types::ConfigType as Wit;
                let on_error = ($on_error)(&manifest);
                let config = manifest
                    .config
                    .into_iter()
                    .map(|field| {
                        let default = field
                            .default
                            .as_deref()
                            .map(serde_json::from_str)
                            .transpose()
                            .map_err(|e| format!("default of `{}` is not JSON: {e}", field.key))?;
                        Ok(ConfigField {
                            kind: match field.kind {
                                Wit::Text => ConfigType::Text,
                                Wit::Integer => ConfigType::Integer,
                                Wit::Number => ConfigType::Number,
                                Wit::Boolean => ConfigType::Boolean,
                                Wit::Choice => ConfigType::Choice,
                                Wit::Json => ConfigType::Json,
                            },
                            key: field.key,
                            description: field.description,
                            default,
                            required: field.required,
                            secret: field.secret,
                            choices: field.choices,
                        })
                    })
                    .collect::<Result<_, String>>()?;
                Ok(Manifest {
                    name: manifest.name,
                    version: manifest.version,
                    description: manifest.description,
                    config,
                    capabilities: manifest.capabilities,
                    stateless: manifest.stateless,
                    tasks: manifest
                        .tasks
                        .into_iter()
                        .map(|task| TaskSpec {
                            name: task.name,
                            schedule: task.schedule,
                            description: task.description,
                        })
                        .collect(),
                    on_error,
                })
            }
        }
    };
}

from_wit_manifest!(types, |m: &types::Manifest| {
    use types::FailureMode as Wit;
    match m.on_error {
        Wit::Skip => FailureMode::Skip,
        Wit::Drop => FailureMode::Drop,
        Wit::DeadLetter => FailureMode::DeadLetter,
    }
});
use v0_5::types as legacy_types;
from_wit_manifest!(legacy_types, |_: &legacy_types::Manifest| {
    FailureMode::Skip
});

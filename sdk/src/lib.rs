//! Write sluice plugins in Rust.
//!
//! A plugin is a type that implements [`Plugin`] (manifest, setup, teardown) and one hook trait
//! such as [`Transform`], exported with [`export_transform!`]. The same code runs natively in
//! [`testing::Harness`] under plain `cargo test`, and in the sluice host once built for
//! `wasm32-wasip2`. See `sdk/README.md` for the guide.

// The generated bindings name this crate by its absolute path, also from inside it.
extern crate self as sluice_sdk;

mod config;
mod event;
pub mod host;
mod runtime;
#[cfg(not(target_family = "wasm"))]
pub mod testing;

pub use config::Config;
pub use event::{Event, EventBuf};
pub use runtime::process_batch;
pub use serde_json::{Map, Value, json};
pub use sluice_abi::manifest::{ConfigField, ConfigType, Manifest};

use std::borrow::Cow;
use std::fmt;

/// Bindings generated from the WIT contract (`wit/v0.2.0`). Plugin authors do not need them.
#[doc(hidden)]
pub mod bindings {
    #![allow(missing_docs)]
    wit_bindgen::generate!({
        world: "transformer",
        path: "../wit/v0.2.0",
        pub_export_macro: true,
        export_macro_name: "export_transformer",
        default_bindings_module: "::sluice_sdk::bindings",
        runtime_path: "::sluice_sdk::__private::wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub mod __private {
    pub use crate::runtime::Adapter;
    pub use wit_bindgen;
}

/// An error a plugin reports. It is recorded for the event (or call) and handled by the
/// installation's `on_error` policy; the plugin instance stays alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// What went wrong.
    pub message: String,
    /// Whether trying again later may succeed.
    pub retryable: bool,
}

impl PluginError {
    /// A permanent error.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }

    /// A transient error: trying again later may succeed.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PluginError {}

/// What a plugin is, and how it starts and stops. Every plugin implements it.
pub trait Plugin: Sized + 'static {
    /// The plugin's manifest: name, version, config schema. Must not depend on configuration.
    fn manifest() -> Manifest;

    /// Builds the plugin from its config, which the host has already checked against the
    /// manifest's schema (defaults filled in). Check value ranges here; an error fails the load.
    fn setup(config: &Config) -> Result<Self, PluginError>;

    /// Called before the host discards a healthy instance.
    fn teardown(&mut self) {}
}

/// What a transform decided for one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The event continues unchanged (nothing is sent back to the host).
    Keep,
    /// The event continues as this new version.
    Replace(EventBuf),
    /// The event is dropped; the reason is counted and logged by the host.
    Drop(Cow<'static, str>),
    /// Processing failed; the installation's `on_error` policy decides what happens.
    Error(PluginError),
}

/// A plugin that changes, enriches or drops events.
pub trait Transform: Plugin {
    /// Decides what happens to one event. Events arrive in batches; this runs once per event,
    /// in order, and the plugin's state persists between calls.
    fn transform(&mut self, event: &Event<'_>) -> Outcome;
}

/// Exports a [`Transform`] plugin from a crate built for `wasm32-wasip2`.
///
/// ```
/// use sluice_sdk::{Config, Event, Manifest, Outcome, Plugin, PluginError, Transform};
///
/// struct KeepAll;
///
/// impl Plugin for KeepAll {
///     fn manifest() -> Manifest {
///         Manifest::new("keep-all", "0.1.0", "Keeps every event")
///     }
///
///     fn setup(_config: &Config) -> Result<Self, PluginError> {
///         Ok(KeepAll)
///     }
/// }
///
/// impl Transform for KeepAll {
///     fn transform(&mut self, _event: &Event<'_>) -> Outcome {
///         Outcome::Keep
///     }
/// }
///
/// sluice_sdk::export_transform!(KeepAll);
/// ```
///
/// A type that is not a [`Transform`] is a compile error at the macro's argument:
///
/// ```compile_fail
/// struct NotAPlugin;
/// sluice_sdk::export_transform!(NotAPlugin);
/// ```
///
/// Natively (for `cargo test`) the macro only checks the trait bounds.
#[macro_export]
macro_rules! export_transform {
    ($plugin:ty) => {
        const _: () = {
            fn __sluice_assert_transform<T: $crate::Transform>() {}
            let _ = __sluice_assert_transform::<$plugin>;
        };
        #[cfg(target_family = "wasm")]
        const _: () = {
            type __SluiceAdapter = $crate::__private::Adapter<$plugin>;
    $crate::bindings::export_transformer!(__SluiceAdapter with_types_in $crate::bindings);
        };
    };
}

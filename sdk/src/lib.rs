//! Write sluice plugins in Rust.
//!
//! A plugin is a type that implements [`Plugin`] (manifest, setup, teardown) and the hook traits
//! it needs: [`Transform`] (change, enrich or drop events), [`Exporter`] (send stored events
//! elsewhere), [`Scheduled`] (tasks on a clock) and [`Jobs`] (queued work), exported with
//! [`export_plugin!`]. The same code runs natively in
//! [`testing::Harness`] under plain `cargo test`, and in the sluice host once built for
//! `wasm32-wasip2`. See `sdk/README.md` for the guide.

// The generated bindings name this crate by its absolute path, also from inside it.
extern crate self as sluice_sdk;

mod config;
mod edit;
mod event;
pub mod host;
mod runtime;
#[cfg(not(target_family = "wasm"))]
pub mod testing;

pub use config::Config;
pub use edit::Edit;
pub use event::{Event, EventBuf};
pub use runtime::{export_batch, process_batch};
pub use serde::Serialize;
pub use serde_json::{Map, Value, json};
pub use sluice_abi::manifest::{ConfigField, ConfigType, FailureMode, Manifest, TaskSpec};
pub use sluice_abi::time::TimeUnit;

use std::borrow::Cow;
use std::fmt;

/// Bindings of what every plugin shares: the contract's types and the host's imports
/// (`wit/v1`, world `host-services`). Each plugin's exports are generated in the plugin crate
/// by [`export_plugin!`], for exactly the hooks it implements. Plugin authors do not need these.
#[doc(hidden)]
pub mod bindings {
    #![allow(missing_docs)]
    wit_bindgen::generate!({
        world: "host-services",
        path: "../wit/v1",
        runtime_path: "::sluice_sdk::__private::wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub mod __private {
    pub use crate::runtime::{Adapter, to_wit_error};
    pub use sluice_sdk_macros::plugin_world;
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

    /// The same error, its message prefixed with `what` was being done:
    /// `PluginError::from(host_error).context("cannot write events/1.jsonl")`.
    pub fn context(self, what: impl fmt::Display) -> Self {
        Self {
            message: format!("{what}: {}", self.message),
            ..self
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
    /// The event continues with these edits ([`Event::edit`]); only they cross back to the
    /// host. Prefer it to `Replace` whenever the plugin only sets or removes properties.
    Edit(Edit),
    /// The event continues as this new version.
    Replace(EventBuf),
    /// The event is dropped; the reason is counted and logged by the host.
    Drop(Cow<'static, str>),
    /// Processing failed; the installation's `on_error` policy decides what happens.
    Error(PluginError),
}

impl From<Edit> for Outcome {
    /// The edits, or `Keep` when there are none.
    fn from(edit: Edit) -> Self {
        if edit.is_empty() {
            Outcome::Keep
        } else {
            Outcome::Edit(edit)
        }
    }
}

/// A plugin that changes, enriches or drops events.
pub trait Transform: Plugin {
    /// Decides what happens to one event. Events arrive in batches; this runs once per event,
    /// in order, and the plugin's state persists between calls.
    fn transform(&mut self, event: &Event<'_>) -> Outcome;

    /// Called before the events of a batch (`events` of them), for work that belongs to the
    /// batch rather than to each event (refreshing a rate table from the cache once, say). An
    /// error fails the whole call, which the host handles like any failed call (each event on
    /// its own, then `on_error`).
    ///
    /// What a batch holds is the host's choice: the server splits each round into lanes by
    /// distinct id, so a batch holds some users' events (each user's in order), never
    /// necessarily a whole request; do not rely on more.
    fn begin_batch(&mut self, events: usize) -> Result<(), PluginError> {
        let _ = events;
        Ok(())
    }

    /// Called after the last event of a batch (flushing counters, say).
    fn end_batch(&mut self) {}
}

/// One batch of stored events an [`Exporter`] is asked to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportBatch {
    /// Stable identity: the same on every attempt and after a crash. Name what you write after
    /// it, so a batch sent again overwrites its earlier attempt instead of adding a copy.
    pub id: String,
    /// The team whose events these are.
    pub team_id: u64,
    /// 1 on the first attempt, then 2, 3...
    pub attempt: u32,
    /// When the batch was formed, in epoch milliseconds; the same on every attempt.
    pub created_at_ms: i64,
}

/// A plugin that sends stored events to another system. The host batches the team's stored
/// events (by count, bytes and age), retries a [`PluginError::retryable`] error with backoff,
/// and dead-letters the batch after a permanent error or the last attempt.
pub trait Exporter: Plugin {
    /// Sends one batch; `events` are in storage order. Return a retryable error when trying
    /// again later may succeed (the destination is down, a rate limit), a permanent one when it
    /// cannot (the data is refused).
    fn export(&mut self, batch: &ExportBatch, events: &[Event<'_>]) -> Result<(), PluginError>;
}

/// A plugin that runs tasks on a clock: the tasks its manifest declares ([`Manifest::task`]), on
/// their schedules (which the operator may change per installation). A run never overlaps
/// another run of the same task, and is bounded by the installation's deadline and memory cap.
pub trait Scheduled: Plugin {
    /// Runs `task` for the tick scheduled at `scheduled_at_ms` (epoch milliseconds). A failed run
    /// is recorded with its error; the next tick runs again.
    fn run(&mut self, task: &str, scheduled_at_ms: i64) -> Result<(), PluginError>;
}

/// One queued job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Unique and stable across attempts and crashes: make the work idempotent with it.
    pub id: String,
    /// What to do.
    pub name: String,
    /// The payload it was queued with (JSON text).
    pub payload: String,
    /// 1 on the first attempt, then 2, 3...
    pub attempt: u32,
    /// When it was due, in epoch milliseconds.
    pub run_at_ms: i64,
}

/// A plugin that runs jobs, queued by itself ([`host::jobs`]) or by an operator
/// (`sluice jobs enqueue`). Jobs are durable and run at least once.
pub trait Jobs: Plugin {
    /// Runs `job`. A retryable error runs it again later with backoff, up to the installation's
    /// attempts; a permanent error, or the last attempt, marks it failed.
    fn run_job(&mut self, job: &Job) -> Result<(), PluginError>;
}

/// Exports a plugin from a crate built for `wasm32-wasip2`, with the hooks it implements:
/// `transform` ([`Transform`]), `exporter` ([`Exporter`]), `scheduled` ([`Scheduled`]) and
/// `jobs` ([`Jobs`]), in any combination. The component exports exactly those, and the host
/// derives what the plugin does from them.
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
/// sluice_sdk::export_plugin!(KeepAll: transform);
/// ```
///
/// A type that does not implement a named hook's trait is a compile error at the macro's
/// argument:
///
/// ```compile_fail
/// # use sluice_sdk::{Config, Manifest, Plugin, PluginError};
/// struct OnlyAPlugin;
/// impl Plugin for OnlyAPlugin {
///     fn manifest() -> Manifest { Manifest::new("p", "0.1.0", "") }
///     fn setup(_config: &Config) -> Result<Self, PluginError> { Ok(OnlyAPlugin) }
/// }
/// sluice_sdk::export_plugin!(OnlyAPlugin: exporter);
/// ```
///
/// Natively (for `cargo test`) the macro only checks the trait bounds.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty: $($hook:ident),+ $(,)?) => {
        $($crate::__assert_hook!($hook, $plugin);)+
        // The generated export glue is `unsafe` (it is the component's ABI).
        #[cfg(target_family = "wasm")]
        #[allow(unsafe_code)]
        mod __sluice_plugin {
            #[allow(unused_imports)]
            use super::*;
            $crate::__private::plugin_world!(world; $($hook),+);
            type Adapter = $crate::__private::Adapter<$plugin>;
            $crate::__export_hook!(lifecycle, Adapter);
            $($crate::__export_hook!($hook, Adapter);)+
            world::export!(Adapter with_types_in world);
        }
    };
}

/// Exports a [`Transform`] plugin: `export_plugin!(T: transform)`.
///
/// A type that is not a [`Transform`] is a compile error at the macro's argument:
///
/// ```compile_fail
/// struct NotAPlugin;
/// sluice_sdk::export_transform!(NotAPlugin);
/// ```
#[macro_export]
macro_rules! export_transform {
    ($plugin:ty) => {
        $crate::export_plugin!($plugin: transform);
    };
}

/// Checks that a plugin implements the trait of a hook named in [`export_plugin!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __assert_hook {
    (transform, $plugin:ty) => {
        const _: () = {
            fn __sluice_assert_transform<T: $crate::Transform>() {}
            let _ = __sluice_assert_transform::<$plugin>;
        };
    };
    (exporter, $plugin:ty) => {
        const _: () = {
            fn __sluice_assert_exporter<T: $crate::Exporter>() {}
            let _ = __sluice_assert_exporter::<$plugin>;
        };
    };
    (scheduled, $plugin:ty) => {
        const _: () = {
            fn __sluice_assert_scheduled<T: $crate::Scheduled>() {}
            let _ = __sluice_assert_scheduled::<$plugin>;
        };
    };
    (jobs, $plugin:ty) => {
        const _: () = {
            fn __sluice_assert_jobs<T: $crate::Jobs>() {}
            let _ = __sluice_assert_jobs::<$plugin>;
        };
    };
}

/// Implements one generated hook interface for the SDK's adapter of a plugin.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_hook {
    (lifecycle, $adapter:ty) => {
        impl world::exports::sluice::plugin::lifecycle::Guest for $adapter {
            fn describe() -> $crate::bindings::sluice::plugin::types::Manifest {
                <$adapter>::lifecycle_describe()
            }
            fn setup(
                config: String,
            ) -> Result<(), $crate::bindings::sluice::plugin::types::PluginError> {
                <$adapter>::lifecycle_setup(config)
            }
            fn teardown() {
                <$adapter>::lifecycle_teardown()
            }
        }
    };
    (transform, $adapter:ty) => {
        impl world::exports::sluice::plugin::transform::Guest for $adapter {
            fn process(
                batch: Vec<u8>,
            ) -> Result<Vec<u8>, $crate::bindings::sluice::plugin::types::PluginError> {
                <$adapter>::transform_process(batch)
            }
        }
    };
    (exporter, $adapter:ty) => {
        impl world::exports::sluice::plugin::exporter::Guest for $adapter {
            fn export_batch(
                batch: world::exports::sluice::plugin::exporter::Batch,
                events: Vec<u8>,
            ) -> Result<(), $crate::bindings::sluice::plugin::types::PluginError> {
                let batch = $crate::ExportBatch {
                    id: batch.id,
                    team_id: batch.team_id,
                    attempt: batch.attempt,
                    created_at_ms: batch.created_at,
                };
                <$adapter>::exporter_export(&batch, &events)
            }
        }
    };
    (scheduled, $adapter:ty) => {
        impl world::exports::sluice::plugin::scheduled::Guest for $adapter {
            fn run(
                task: String,
                scheduled_at: i64,
            ) -> Result<(), $crate::bindings::sluice::plugin::types::PluginError> {
                <$adapter>::scheduled_run(&task, scheduled_at)
            }
        }
    };
    (jobs, $adapter:ty) => {
        impl world::exports::sluice::plugin::jobs::Guest for $adapter {
            fn run_job(
                job: world::exports::sluice::plugin::jobs::Job,
            ) -> Result<(), $crate::bindings::sluice::plugin::types::PluginError> {
                let job = $crate::Job {
                    id: job.id,
                    name: job.name,
                    payload: job.payload,
                    attempt: job.attempt,
                    run_at_ms: job.run_at,
                };
                <$adapter>::jobs_run(&job)
            }
        }
    };
}

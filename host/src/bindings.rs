//! Host bindings generated from the WIT contracts the host runs (world `plugin`: every hook a
//! plugin may export and every capability it may import), shared by the runtime (hooks) and the
//! capabilities (imports).
//!
//! - The current contract, `sluice:plugin@1.0.0` (`wit/v1`), is at the top of this module. A
//!   component built against an earlier 1.x links to it through wasmtime's semver matching.
//! - The 0.5.0 contract (`wit/v0.5.0`), in [`v0_5`], for components built before 1.0: the
//!   runtime calls their hooks through it, and `capabilities::v0_5` serves their imports with
//!   the current host functions.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit/v1",
    imports: { default: tracing },
    additional_derives: [serde::Serialize, serde::Deserialize],
});

pub use self::exports::sluice::plugin::{exporter, jobs, lifecycle, scheduled, transform};
pub use self::sluice::plugin::types;

/// Bindings of the 0.5.0 contract.
pub mod v0_5 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit/v0.5.0",
        imports: { default: tracing },
    });

    pub use self::exports::sluice::plugin::{exporter, jobs, lifecycle, scheduled, transform};
    pub use self::sluice::plugin::types;
}

impl From<v0_5::types::PluginError> for types::PluginError {
    fn from(error: v0_5::types::PluginError) -> Self {
        Self {
            message: error.message,
            retryable: error.retryable,
        }
    }
}

impl From<jobs::Job> for v0_5::jobs::Job {
    fn from(job: jobs::Job) -> Self {
        Self {
            id: job.id,
            name: job.name,
            payload: job.payload,
            attempt: job.attempt,
            run_at: job.run_at,
        }
    }
}

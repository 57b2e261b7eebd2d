//! Host bindings generated once from the WIT contract (`wit/v0.5.0`, world `plugin`: every hook
//! a plugin may export and every capability it may import), shared by the runtime (hooks) and
//! the capabilities (imports).
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit/v0.5.0",
    imports: { default: tracing },
});

pub use self::exports::sluice::plugin::{exporter, jobs, lifecycle, scheduled, transform};
pub use self::sluice::plugin::types;

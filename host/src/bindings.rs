//! Host bindings generated once from the WIT contract (`wit/v0.2.0`), shared by the runtime
//! (hooks) and the capabilities (imports).
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    world: "transformer",
    path: "../wit/v0.2.0",
    imports: { default: tracing },
});

pub use self::exports::sluice::plugin::{lifecycle, transform};
pub use self::sluice::plugin::types;

//! What the sluice host and its plugins agree on, beyond the WIT types.
//!
//! - [`wire`]: the binary encoding of event batches and per-event outcomes that crosses the
//!   `transform` boundary as one `list<u8>` per call (see `wit/README.md`).
//! - [`manifest`]: a plugin's manifest and the validation of operator config against its schema,
//!   shared so that the host and the SDK's native test harness accept exactly the same configs.

pub mod manifest;
pub mod wire;

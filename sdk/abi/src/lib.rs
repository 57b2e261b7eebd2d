//! What the sluice host and its plugins agree on, beyond the WIT types.
//!
//! - [`wire`]: the binary encoding of event batches and per-event outcomes that crosses the
//!   `transform` boundary as one `list<u8>` per call (see `wit/README.md`); [`patch`]: the
//!   edits a plugin returns instead of a whole event, and how they are applied; [`object`]:
//!   JSON objects read one level deep, without building a tree.
//! - [`manifest`]: a plugin's manifest and the validation of operator config against its schema,
//!   shared so that the host and the SDK's native test harness accept exactly the same configs.
//! - [`limits`]: the errors and caps of host capabilities; [`cache`]: the in-memory cache
//!   namespace behind the embedded `cache` capability and the harness's fake.
//! - [`time`]: the units of job delays.

pub mod cache;
pub mod limits;
pub mod manifest;
pub mod object;
pub mod patch;
pub mod time;
pub mod wire;

//! sluice: an event ingestion pipeline that runs analytics events through sandboxed WebAssembly
//! plugins before storing them.
//!
//! The flow of one event, one module per stage: [`capture`] (PostHog-compatible HTTP API) →
//! [`queue`] (durable before acknowledging) → [`worker`] running each team's [`chain`] of plugins
//! in the wasm [`runtime`] → [`store`] (SQLite). Host [`capabilities`] are what plugins may call.

pub mod capabilities;
pub mod capture;
pub mod chain;
pub mod config;
pub mod net;
pub mod queue;
pub mod runtime;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod worker;

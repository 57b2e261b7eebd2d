//! sluice: an event ingestion pipeline that runs analytics events through sandboxed WebAssembly
//! plugins before storing them.
//!
//! The flow of one event, one module per stage: [`capture`] (PostHog-compatible HTTP API) →
//! [`ingest`] (durable before acknowledging) → [`worker`] running each team's [`chain`] of plugins
//! in the wasm [`runtime`] → [`sink`] (SQLite, or topics the [`clickhouse`] loader inserts)
//! → [`export`] (export plugins, from storage);
//! [`schedule`] runs plugins' tasks and jobs on a clock. Host [`capabilities`] are what plugins
//! may call; [`installations`] loads them all at start into one [`deployment`], the state the
//! server swaps as a whole;
//! [`store`] is the embedded database behind the ingest, the sink, the exports and the commands;
//! [`kafka`] is what the Kafka clients share.
//! `host/README.md` is the map.

pub mod admin;
pub mod backends;
pub mod bindings;
pub mod bundle;
pub mod capabilities;
pub mod capture;
pub mod chain;
pub mod cli;
pub mod clickhouse;
pub mod config;
pub mod deployment;
pub mod diff;
pub mod dry_run;
pub mod effective;
pub mod event_file;
pub mod export;
pub mod housekeeping;
pub mod import;
pub mod ingest;
pub mod installations;
pub mod kafka;
pub mod net;
pub mod ready;
pub mod redis;
pub mod reference;
pub mod reload;
pub mod replay;
pub mod retry;
pub mod roles;
pub mod runtime;
pub mod scenario;
pub mod schedule;
pub mod server;
pub mod shadow;
pub mod signal;
pub mod sink;
pub mod store;
pub mod stored;
pub mod tap;
pub mod telemetry;
pub mod trial;
pub mod versions;
pub mod worker;

//! End-to-end tests: the real `sluice` binary on a free port, real HTTP, storage read back with
//! the real CLI, and real wasm plugins built by `plugins/build.sh` (see `tests/run.sh`).

// A failed step of a test should panic with its error; that is what `unwrap` does here.
#![allow(clippy::unwrap_used)]

mod admin_api;
mod admin_page;
mod adversary;
mod bigquery;
mod broker;
mod capabilities;
mod capture;
mod chain;
mod change;
mod cli;
mod clickhouse_server;
mod compat;
mod contract;
mod durability;
mod examples;
mod export_fleet;
mod exports;
mod fleet;
mod housekeeping_fleet;
mod import;
mod isolation;
mod js_plugins;
mod kafka;
mod plugin_tools;
mod process;
mod redis_server;
mod reload;
mod retention;
mod retention_fleet;
mod s3;
mod schedule;
mod sdk;
mod shared_state;
mod support;

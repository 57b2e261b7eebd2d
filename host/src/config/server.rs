//! `[server]`: listener, data folder, workers and the instance budget.

use super::Collector;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// `[server]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP API listens on. Env: `SLUICE_LISTEN`.
    pub listen: SocketAddr,
    /// Folder for the SQLite database and the compiled-plugin cache. Env: `SLUICE_DATA_DIR`.
    pub data_dir: PathBuf,
    /// Threads that run plugin chains; defaults to the number of CPUs.
    pub workers: Option<usize>,
    /// Most plugin instances alive at once across all workers; beyond it, the least recently
    /// used instance of a worker is torn down (and rebuilt when needed again).
    pub max_instances: usize,
    /// The largest memory cap (`memory_mb`) an installation may ask for. The engine reserves
    /// address space for `max_instances` instances of this size when it starts, so that any
    /// config this process later runs fits without a restart.
    pub max_instance_memory_mb: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            data_dir: PathBuf::from("data"),
            workers: None,
            max_instances: 1_000,
            max_instance_memory_mb: 4_096,
        }
    }
}

/// Reads `[server]` with its environment overrides; the data folder is made absolute against
/// `base`, the config file's folder.
pub(super) fn load(
    c: &mut Collector,
    table: &toml::Table,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> ServerConfig {
    let mut server: ServerConfig = c.section(table, "server");
    if server.max_instances == 0 {
        c.add("server.max_instances", "must be at least 1");
    }
    if !(1..=4_096).contains(&server.max_instance_memory_mb) {
        c.add(
            "server.max_instance_memory_mb",
            "must be between 1 and 4096",
        );
    }
    if let Some(listen) = env("SLUICE_LISTEN") {
        match listen.parse() {
            Ok(addr) => server.listen = addr,
            Err(e) => c.add(
                "server.listen",
                format!("SLUICE_LISTEN={listen:?} is not an address: {e}"),
            ),
        }
    }
    if let Some(dir) = env("SLUICE_DATA_DIR") {
        server.data_dir = PathBuf::from(dir);
    }
    // An environment override that is relative is relative to the config file too.
    server.data_dir = base.join(&server.data_dir);
    if server.workers == Some(0) {
        c.add("server.workers", "must be at least 1");
    }
    server
}

//! The wasmtime host: one engine per process, plugins compiled once, instances with limits.
//!
//! - [`Runtime`] owns the [`Engine`] (pooling allocator, epoch interruption, on-disk compile
//!   cache), the [`Linker`] with WASI (empty context) and every capability, and the epoch ticker.
//! - [`Plugin`] is one compiled, pre-linked component (`InstancePre`), its manifest, and the hooks
//!   it exports, derived from the component's exports.
//! - [`Instance`] is one live, long-lived instance of a plugin with its own `Store`, memory cap and
//!   per-call deadline. A trap poisons it; its owner drops it and builds a new one.
//! - [`hooks`]: one module per hook a plugin may export (lifecycle, transform), each finding its
//!   interface among the exports and calling it under the instance's limits.
//!
//! The store's data ([`state::HostState`]) is known only here: capabilities reach their part of
//! it through [`crate::capabilities::HasCapabilities`].

pub mod hooks;
mod instance;
mod limits;
mod plugin;
mod state;
mod stdio;

pub use instance::{CallError, Instance, InstanceSettings, TrapKind};
pub use plugin::{LoadError, Plugin, sha256_hex};
pub use stdio::OUTPUT_CAP_BYTES;

use crate::capabilities;
use state::HostState;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::component::Linker;
use wasmtime::{Engine, PoolingAllocationConfig};

/// How often the epoch advances; per-call deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(2);

/// The number of epoch ticks that make up `timeout` (at least one full tick).
fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1
}

/// Set (to anything) to have the engine write `/tmp/perf-<pid>.map`, so that `perf record` /
/// `perf report` name the functions of plugins (their wasm name section) in profiles.
pub const PERF_MAP_ENV: &str = "SLUICE_PERF_MAP";

/// Sizing of the engine's instance pool.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// Live instances the pool must hold at once (installations × workers, plus loading).
    pub max_instances: u32,
    /// Largest linear memory any instance may reach, in bytes.
    pub max_memory_bytes: usize,
    /// Where compiled plugins are cached between runs; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

/// The process-wide wasm engine, linker and epoch ticker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    ticker: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Runtime {
    /// Builds the engine with a pool sized by `settings`.
    pub fn new(settings: &RuntimeSettings) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::new();
        let instances = settings.max_instances.max(1);
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(16))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(8))
            .max_core_instances_per_component(16)
            .max_memories_per_component(2)
            .max_tables_per_component(8)
            .max_memory_size(settings.max_memory_bytes);
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(pool);
        if std::env::var_os(PERF_MAP_ENV).is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        if let Some(dir) = &settings.cache_dir {
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(dir);
            config.cache(Some(wasmtime::Cache::new(cache).map_err(anyhow_error)?));
        }
        let engine = Engine::new(&config).map_err(anyhow_error)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow_error)?;
        capabilities::add_to_linker(&mut linker).map_err(anyhow_error)?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("sluice-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })?
        };
        Ok(Self {
            engine,
            linker,
            ticker: Some(ticker),
            stop,
        })
    }

    /// Compiles (or loads from cache) and pre-links a plugin, checks its imports, derives its
    /// hooks from its exports, and reads its manifest.
    pub fn load(&self, path: &Path) -> Result<Arc<Plugin>, LoadError> {
        plugin::load(&self.engine, &self.linker, path)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }
}

fn anyhow_error(error: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{error:#}")
}

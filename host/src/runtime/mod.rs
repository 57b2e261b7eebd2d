//! The wasmtime host: one engine per process, plugins compiled once, instances with limits.
//!
//! - [`Runtime`] owns the [`Engine`] (pooling allocator, epoch interruption, on-disk compile
//!   cache), the [`Linker`] with WASI (empty context) and every capability, and the epoch ticker.
//! - [`Plugin`] is one compiled, pre-linked component (`InstancePre`), its manifest, and the hooks
//!   it exports, derived from the component's exports.
//! - [`Instance`] is one live, long-lived instance of a plugin with its own `Store`, memory cap and
//!   per-call deadline. A trap poisons it; its owner drops it and builds a new one.

pub mod bindings;
mod limits;
mod stdio;

use crate::capabilities::http::HttpState;
use crate::capabilities::log::LogState;
use crate::capabilities::{self, Capability, Context, Services, metrics::MetricsState};
use bindings::sluice::plugin::log::Level;
use bindings::{lifecycle, transform, types};
use limits::MemoryLimiter;
use serde_json::Value;
use sluice_abi::manifest::{ConfigField, ConfigType, Manifest};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use stdio::CapturedOutput;
pub use stdio::OUTPUT_CAP_BYTES;
use thiserror::Error;
use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, PoolingAllocationConfig, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The contract's interface of shared types; it has no functions, so importing it grants nothing.
const TYPES_INTERFACE: &str = "sluice:plugin/types";

/// How often the epoch advances; per-call deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(2);

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

/// Why a plugin could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file could not be read or compiled as a component.
    #[error("cannot compile {path}: {reason}")]
    Compile {
        /// The plugin file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The component imports something the host does not provide.
    #[error("{path} imports `{interface}`, which sluice does not provide")]
    UnknownImport {
        /// The plugin file.
        path: PathBuf,
        /// The interface.
        interface: String,
    },
    /// The component does not fit the contract (missing lifecycle, wrong signatures...).
    #[error("{path} does not implement the sluice plugin contract: {reason}")]
    Contract {
        /// The plugin file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// `describe` failed or returned an incoherent manifest.
    #[error("{path} has an invalid manifest: {reason}")]
    Manifest {
        /// The plugin file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// What went wrong in a call into a plugin.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CallError {
    /// The instance trapped and is unusable; it must be dropped.
    #[error("{kind}: {message}")]
    Trap {
        /// Why it trapped.
        kind: TrapKind,
        /// Details.
        message: String,
    },
    /// The plugin reported an error; the instance is fine.
    #[error("plugin error: {message}")]
    Plugin {
        /// What went wrong.
        message: String,
        /// Whether trying again later may succeed.
        retryable: bool,
    },
}

impl CallError {
    /// A short stable label for metrics.
    pub fn kind_label(&self) -> &'static str {
        match self {
            CallError::Trap { kind, .. } => kind.label(),
            CallError::Plugin { .. } => "plugin_error",
        }
    }
}

/// Why an instance trapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// The call ran past its deadline.
    Timeout,
    /// The instance tried to grow memory past its cap.
    MemoryLimit,
    /// The guest panicked (or reached `unreachable`).
    Panic,
    /// The guest overflowed its stack.
    StackOverflow,
    /// The guest broke the contract (e.g. returned an undecodable result).
    Contract,
    /// Any other trap.
    Other,
}

impl TrapKind {
    /// A short stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            TrapKind::Timeout => "timeout",
            TrapKind::MemoryLimit => "memory_limit",
            TrapKind::Panic => "panic",
            TrapKind::StackOverflow => "stack_overflow",
            TrapKind::Contract => "contract_violation",
            TrapKind::Other => "trap",
        }
    }
}

impl std::fmt::Display for TrapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Everything an instance's host functions can reach.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    output: CapturedOutput,
    /// The installation the instance is serving in the current call.
    pub(crate) ctx: Arc<Context>,
    /// State of the `log` capability.
    pub(crate) log: LogState,
    /// State of the `metrics` capability.
    pub(crate) metrics: MetricsState,
    /// State of the `http` capability.
    pub(crate) http: HttpState,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostState {
    fn new(ctx: Arc<Context>, memory_bytes: usize) -> Self {
        let output = CapturedOutput::default();
        // No preopened directories, no environment, no sockets: only captured stdout/stderr.
        let wasi = WasiCtx::builder()
            .stdout(output.clone())
            .stderr(output.clone())
            .allow_blocking_current_thread(true)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_bytes),
            output,
            ctx,
            log: LogState::default(),
            metrics: MetricsState::default(),
            http: HttpState::default(),
        }
    }

    /// Turns captured stdout/stderr into log lines and closes the call's log budget.
    fn end_call(&mut self) {
        let (bytes, dropped) = self.output.take();
        for line in String::from_utf8_lossy(&bytes).lines() {
            self.log.line(&self.ctx, Level::Info, line);
        }
        self.log.end_call(&self.ctx, dropped);
    }
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
        if let Some(dir) = &settings.cache_dir {
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(dir);
            config.cache(Some(wasmtime::Cache::new(cache).map_err(anyhow_error)?));
        }
        let engine = Engine::new(&config).map_err(anyhow_error)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow_error)?;
        capabilities::link_all(&mut linker).map_err(anyhow_error)?;

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
        let compile_error = |reason: String| LoadError::Compile {
            path: path.to_owned(),
            reason,
        };
        let component = Component::from_file(&self.engine, path)
            .map_err(|e| compile_error(format!("{e:#}")))?;
        let ty = component.component_type();
        let mut imports = Vec::new();
        for (name, _) in ty.imports(&self.engine) {
            if name.starts_with("wasi:") || name.split('@').next() == Some(TYPES_INTERFACE) {
                continue;
            }
            match capabilities::for_interface(name) {
                Some(capability) => imports.push(capability),
                None => {
                    return Err(LoadError::UnknownImport {
                        path: path.to_owned(),
                        interface: name.to_owned(),
                    });
                }
            }
        }
        let contract = |reason: String| LoadError::Contract {
            path: path.to_owned(),
            reason,
        };
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| contract(format!("{e:#}")))?;
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let exported = |interface: &str| {
            exports
                .iter()
                .any(|e| e.split('@').next() == Some(interface))
        };
        if !exported("sluice:plugin/lifecycle") {
            return Err(contract(
                "it does not export `sluice:plugin/lifecycle`".into(),
            ));
        }
        let lifecycle =
            lifecycle::GuestIndices::new(&pre).map_err(|e| contract(format!("{e:#}")))?;
        let transform = exported("sluice:plugin/transform")
            .then(|| transform::GuestIndices::new(&pre))
            .transpose()
            .map_err(|e| contract(format!("{e:#}")))?;
        let mut plugin = Plugin {
            path: path.to_owned(),
            manifest: Manifest {
                name: String::new(),
                version: String::new(),
                description: String::new(),
                config: Vec::new(),
                capabilities: Vec::new(),
                stateless: false,
            },
            imports,
            pre,
            lifecycle,
            transform,
        };
        let manifest_error = |reason: String| LoadError::Manifest {
            path: path.to_owned(),
            reason,
        };
        let loading = Context::ungranted("loading", Services::detached());
        let mut instance = Instance::instantiate(&plugin, loading, 1 << 30)
            .map_err(|e| manifest_error(e.to_string()))?;
        instance
            .store
            .set_epoch_deadline(deadline_ticks(Duration::from_secs(10)));
        let described = instance
            .lifecycle
            .call_describe(&mut instance.store)
            .map_err(|e| manifest_error(format!("describe trapped: {e:#}")))?;
        plugin.manifest = from_wit_manifest(described).map_err(manifest_error)?;
        plugin.manifest.validate().map_err(|problems| {
            manifest_error(
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        if let Some(undeclared) = plugin
            .imports
            .iter()
            .find(|c| !plugin.manifest.capabilities.iter().any(|d| d == c.name))
        {
            return Err(contract(format!(
                "it imports `{}` but its manifest does not declare the `{}` capability",
                undeclared.interface, undeclared.name
            )));
        }
        Ok(Arc::new(plugin))
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

/// One compiled, pre-linked plugin.
pub struct Plugin {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// What it declared about itself.
    pub manifest: Manifest,
    /// The capabilities its component imports.
    pub imports: Vec<&'static Capability>,
    pre: InstancePre<HostState>,
    lifecycle: lifecycle::GuestIndices,
    transform: Option<transform::GuestIndices>,
}

impl Plugin {
    /// Whether the plugin exports the `transform` interface.
    pub fn transforms(&self) -> bool {
        self.transform.is_some()
    }

    /// Every capability the plugin needs: those it declares and those it imports.
    pub fn needs(&self) -> Vec<&str> {
        let mut needs: Vec<&str> = self
            .manifest
            .capabilities
            .iter()
            .map(String::as_str)
            .collect();
        needs.extend(self.imports.iter().map(|c| c.name));
        needs.sort_unstable();
        needs.dedup();
        needs
    }
}

/// How one installation's instances are set up and limited.
#[derive(Clone)]
pub struct InstanceSettings {
    /// The installation: id, grants and capability services.
    pub context: Arc<Context>,
    /// Resolved config as a JSON object.
    pub config: Value,
    /// Memory cap of the instance.
    pub memory_bytes: usize,
}

/// A live plugin instance with its own store.
pub struct Instance {
    store: Store<HostState>,
    lifecycle: lifecycle::Guest,
    transform: Option<transform::Guest>,
    timeout: Duration,
}

impl Instance {
    fn instantiate(
        plugin: &Plugin,
        ctx: Arc<Context>,
        memory_bytes: usize,
    ) -> Result<Self, CallError> {
        let mut store = Store::new(plugin.pre.engine(), HostState::new(ctx, memory_bytes));
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks(Duration::from_secs(10)));
        let instance = plugin
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&store, &e))?;
        let lifecycle = plugin
            .lifecycle
            .load(&mut store, &instance)
            .map_err(|e| classify(&store, &e))?;
        let transform = plugin
            .transform
            .as_ref()
            .map(|t| t.load(&mut store, &instance))
            .transpose()
            .map_err(|e| classify(&store, &e))?;
        Ok(Self {
            store,
            lifecycle,
            transform,
            timeout: Duration::from_secs(10),
        })
    }

    /// Instantiates `plugin` and runs its `setup` with the installation's config.
    pub fn start(plugin: &Plugin, settings: &InstanceSettings) -> Result<Self, CallError> {
        let mut instance =
            Self::instantiate(plugin, settings.context.clone(), settings.memory_bytes)?;
        instance.timeout = settings.context.timeout;
        let config = settings.config.to_string();
        instance.call(|lifecycle, _, store| lifecycle.call_setup(store, &config))?;
        Ok(instance)
    }

    /// Makes the instance serve `ctx` from the next call on (shared instances of stateless
    /// plugins serve several installations).
    pub fn enter(&mut self, ctx: &Arc<Context>) {
        let state = self.store.data_mut();
        if !Arc::ptr_eq(&state.ctx, ctx) {
            state.ctx = ctx.clone();
        }
    }

    /// Sends one encoded batch to the plugin's `transform` and returns the encoded outcomes.
    pub fn transform(&mut self, batch: &[u8]) -> Result<Vec<u8>, CallError> {
        self.call(|_, transform, store| match transform {
            Some(transform) => transform.call_process(store, batch),
            None => Ok(Err(types::PluginError {
                message: "this plugin does not export `transform`".into(),
                retryable: false,
            })),
        })
    }

    /// The largest linear memory this instance has reached, in bytes.
    pub fn memory_high_water(&self) -> usize {
        self.store.data().limiter.high_water_bytes()
    }

    /// Lets the plugin clean up before the instance is discarded.
    pub fn teardown(mut self) {
        let _ = self.call(|lifecycle, _, store| lifecycle.call_teardown(store).map(Ok));
    }

    fn call<T>(
        &mut self,
        f: impl FnOnce(
            &lifecycle::Guest,
            Option<&transform::Guest>,
            &mut Store<HostState>,
        ) -> wasmtime::Result<Result<T, types::PluginError>>,
    ) -> Result<T, CallError> {
        self.store.set_epoch_deadline(deadline_ticks(self.timeout));
        let result = f(&self.lifecycle, self.transform.as_ref(), &mut self.store);
        self.store.data_mut().end_call();
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(CallError::Plugin {
                message: error.message,
                retryable: error.retryable,
            }),
            Err(error) => Err(classify(&self.store, &error)),
        }
    }
}

fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1
}

fn classify(store: &Store<HostState>, error: &wasmtime::Error) -> CallError {
    let kind = if store.data().limiter.exceeded() {
        TrapKind::MemoryLimit
    } else {
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => TrapKind::Timeout,
            Some(Trap::StackOverflow) => TrapKind::StackOverflow,
            Some(Trap::UnreachableCodeReached) => TrapKind::Panic,
            _ => TrapKind::Other,
        }
    };
    CallError::Trap {
        kind,
        message: format!("{error:#}"),
    }
}

fn anyhow_error(error: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{error:#}")
}

fn from_wit_manifest(manifest: types::Manifest) -> Result<Manifest, String> {
    let config = manifest
        .config
        .into_iter()
        .map(|field| {
            let default = field
                .default
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| format!("default of `{}` is not JSON: {e}", field.key))?;
            Ok(ConfigField {
                kind: match field.kind {
                    types::ConfigType::Text => ConfigType::Text,
                    types::ConfigType::Integer => ConfigType::Integer,
                    types::ConfigType::Number => ConfigType::Number,
                    types::ConfigType::Boolean => ConfigType::Boolean,
                    types::ConfigType::Choice => ConfigType::Choice,
                    types::ConfigType::Json => ConfigType::Json,
                },
                key: field.key,
                description: field.description,
                default,
                required: field.required,
                secret: field.secret,
                choices: field.choices,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Manifest {
        name: manifest.name,
        version: manifest.version,
        description: manifest.description,
        config,
        capabilities: manifest.capabilities,
        stateless: manifest.stateless,
    })
}

//! One live plugin instance: its own store, memory cap and per-call deadline, and how a failed
//! call is classified.

use super::deadline_ticks;
use super::hooks::Guests;
use super::plugin::Plugin;
use super::state::HostState;
use super::stdio::panic_message;
use crate::bindings::types;
use crate::capabilities::journal::{Journal, Recorded};
use crate::capabilities::{Context, HasCapabilities};
use crate::schedule::lock::Fence;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use wasmtime::{Store, Trap, WasmBacktrace};

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

/// What went wrong in a call into a plugin.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CallError {
    /// The instance trapped and is unusable; it must be dropped.
    #[error("{kind}: {message}")]
    Trap {
        /// Why it trapped.
        kind: TrapKind,
        /// What happened, in one line a plugin author understands.
        message: String,
        /// The guest's stack when it trapped, when known.
        backtrace: Option<String>,
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
    /// Whether the instance is unusable after this error and must be discarded.
    pub fn poisons_instance(&self) -> bool {
        matches!(self, CallError::Trap { .. })
    }

    /// The guest's stack when it trapped, when known.
    pub fn backtrace(&self) -> Option<&str> {
        match self {
            CallError::Trap { backtrace, .. } => backtrace.as_deref(),
            CallError::Plugin { .. } => None,
        }
    }

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

/// A live plugin instance with its own store.
pub struct Instance {
    store: Store<HostState>,
    guests: Guests,
    timeout: Duration,
    /// Whether `setup` ran: later calls are what a journal records as "the call".
    set_up: bool,
}

impl Instance {
    /// Instantiates `plugin` serving `ctx`, with the hooks it exports loaded, before `setup`.
    /// Host calls are recorded when `ctx` asks for failure bundles.
    pub(super) fn instantiate(
        plugin: &Plugin,
        ctx: Arc<Context>,
        memory_bytes: usize,
    ) -> Result<Self, CallError> {
        let journal = if ctx.bundles.is_some() {
            Journal::recording()
        } else {
            Journal::off()
        };
        Self::instantiate_with(plugin, ctx, memory_bytes, journal)
    }

    fn instantiate_with(
        plugin: &Plugin,
        ctx: Arc<Context>,
        memory_bytes: usize,
        journal: Journal,
    ) -> Result<Self, CallError> {
        let timeout = Duration::from_secs(10);
        let mut store = Store::new(
            plugin.pre.engine(),
            HostState::new(ctx, memory_bytes, journal),
        );
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks(timeout));
        let instance = plugin
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&store, &e, "", timeout))?;
        let guests = Guests::load(&plugin.exports, &mut store, &instance)
            .map_err(|e| classify(&store, &e, "", timeout))?;
        Ok(Self {
            store,
            guests,
            timeout,
            set_up: false,
        })
    }

    /// Instantiates `plugin` and runs its `setup` with the installation's config.
    pub fn start(plugin: &Plugin, settings: &InstanceSettings) -> Result<Self, CallError> {
        let instance = Self::instantiate(plugin, settings.context.clone(), settings.memory_bytes)?;
        instance.set_up(settings)
    }

    /// Instantiates `plugin` whose host calls are answered from `recorded` (a failure bundle's),
    /// and runs its `setup`; an error is `setup`'s.
    pub fn replaying(
        plugin: &Plugin,
        settings: &InstanceSettings,
        recorded: &Recorded,
    ) -> Result<Self, CallError> {
        let journal = Journal::replaying(recorded);
        let instance = Self::instantiate_with(
            plugin,
            settings.context.clone(),
            settings.memory_bytes,
            journal,
        )?;
        instance.set_up(settings)
    }

    fn set_up(mut self, settings: &InstanceSettings) -> Result<Self, CallError> {
        self.timeout = settings.context.timeout;
        self.setup(&settings.config.to_string())?;
        self.set_up = true;
        Ok(self)
    }

    /// The host calls recorded since `setup` began, if the instance records them.
    pub fn recorded(&self) -> Option<Recorded> {
        self.store.data().journal().recorded()
    }

    /// When playing back a record: where the run first asked the host something the record
    /// does not have, if it did.
    pub fn divergence(&self) -> Option<String> {
        self.store.data().journal().divergence()
    }

    /// Makes the instance serve `ctx` from the next call on (shared instances of stateless
    /// plugins serve several installations).
    pub fn enter(&mut self, ctx: &Arc<Context>) {
        self.store.data_mut().enter(ctx);
    }

    /// Makes the instance's calls run under `fence` (a task run's or a job's lease), which
    /// capabilities check before writes that must not outlive the lease; `None` after the call.
    pub fn fence(&mut self, fence: Option<Fence>) {
        self.store.data_mut().capabilities().recordings.fence = fence;
    }

    /// The installation the instance serves now.
    pub fn context(&self) -> &Arc<Context> {
        self.store.data().context()
    }

    /// The largest linear memory this instance has reached, in bytes.
    pub fn memory_high_water(&self) -> usize {
        self.store.data().limiter.high_water_bytes()
    }

    /// Calls into the guest through `f` under the instance's deadline and memory cap, then
    /// collects its output into the log; a trap or a plugin error becomes a [`CallError`].
    pub(super) fn call<T>(
        &mut self,
        f: impl FnOnce(
            &Guests,
            &mut Store<HostState>,
        ) -> wasmtime::Result<Result<T, types::PluginError>>,
    ) -> Result<T, CallError> {
        self.store.set_epoch_deadline(deadline_ticks(self.timeout));
        if self.set_up {
            self.store.data().journal().begin_call();
        }
        let result = f(&self.guests, &mut self.store);
        let stderr = self.store.data_mut().end_call();
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(CallError::Plugin {
                message: error.message,
                retryable: error.retryable,
            }),
            Err(error) => Err(classify(&self.store, &error, &stderr, self.timeout)),
        }
    }
}

/// Frames of a full backtrace one function must fill for an out-of-bounds access to count as the
/// guest's own stack running out (its stack lives in linear memory, below address 0 once used
/// up, so deep recursion ends in an out-of-bounds access rather than a host stack overflow).
const RECURSION_FRAMES: usize = 10;

/// Whether `backtrace` is as deep as backtraces go and mostly one function: recursion.
fn is_deep_recursion(backtrace: &WasmBacktrace) -> bool {
    let frames = backtrace.frames();
    frames.len() >= 2 * RECURSION_FRAMES
        && frames.iter().any(|frame| {
            frames
                .iter()
                .filter(|f| f.func_index() == frame.func_index())
                .count()
                >= RECURSION_FRAMES
        })
}

/// What a failed call means, in the words of a plugin author: the kind, one line naming the
/// plugin and the limit involved, and the backtrace apart. `stderr` is what the call wrote
/// there (a Rust panic's message), `timeout` its deadline.
fn classify(
    store: &Store<HostState>,
    error: &wasmtime::Error,
    stderr: &str,
    timeout: Duration,
) -> CallError {
    let state = store.data();
    let plugin = match &*state.context().plugin {
        "" => "the plugin".to_owned(),
        name => format!("plugin `{name}`"),
    };
    let cap_mib = state.limiter.cap_bytes() >> 20;
    let trap = error.downcast_ref::<Trap>();
    let backtrace = error.downcast_ref::<WasmBacktrace>();
    let recursion = backtrace.is_some_and(is_deep_recursion);
    let (kind, message) = if state.limiter.exceeded() {
        (
            TrapKind::MemoryLimit,
            format!("{plugin} ran out of memory: it tried to grow past its cap of {cap_mib} MiB"),
        )
    } else {
        match trap {
            Some(Trap::Interrupt) => (
                TrapKind::Timeout,
                format!(
                    "{plugin} ran past its deadline of {} ms",
                    timeout.as_millis()
                ),
            ),
            Some(Trap::StackOverflow) => (
                TrapKind::StackOverflow,
                format!(
                    "stack overflow in {plugin}: recursion too deep for the host's wasm stack (memory cap {cap_mib} MiB)"
                ),
            ),
            Some(Trap::MemoryOutOfBounds) if recursion => (
                TrapKind::StackOverflow,
                format!(
                    "stack overflow in {plugin}: recursion used up the plugin's own stack (memory cap {cap_mib} MiB)"
                ),
            ),
            Some(Trap::UnreachableCodeReached) => (
                TrapKind::Panic,
                match panic_message(stderr) {
                    Some(panic) => format!("{plugin} panicked: {panic}"),
                    None => format!("{plugin} panicked (reached `unreachable`)"),
                },
            ),
            Some(other) => (TrapKind::Other, format!("{plugin} trapped: {other}")),
            None => (
                TrapKind::Other,
                format!("{plugin} failed: {}", error.root_cause()),
            ),
        }
    };
    CallError::Trap {
        kind,
        message,
        backtrace: backtrace.map(ToString::to_string),
    }
}

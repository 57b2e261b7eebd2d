//! The data of every instance's store: WASI, limits, captured output, and the capabilities'
//! per-instance state. Only the runtime knows this type.

use super::limits::MemoryLimiter;
use super::stdio::{CapturedOutput, OUTPUT_CAP_BYTES};
use crate::capabilities::journal::Journal;
use crate::capabilities::log::Level;
use crate::capabilities::{Context, HasCapabilities, InstanceState};
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Everything an instance's host functions can reach.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    output: CapturedOutput,
    capabilities: InstanceState,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HasCapabilities for HostState {
    fn capabilities(&mut self) -> &mut InstanceState {
        &mut self.capabilities
    }
}

impl HostState {
    /// State for an instance serving `ctx` with at most `memory_bytes` of linear memory.
    /// Its host calls go through `journal`.
    pub(super) fn new(ctx: Arc<Context>, memory_bytes: usize, journal: Journal) -> Self {
        let output = CapturedOutput::default();
        // No preopened directories, no environment, no sockets: only captured stdout/stderr.
        let mut wasi = WasiCtx::builder();
        wasi.stdout(output.stream(false))
            .stderr(output.stream(true))
            .allow_blocking_current_thread(true);
        journal.wasi(&mut wasi);
        let wasi = wasi.build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_bytes),
            output,
            capabilities: InstanceState::new(ctx, journal),
        }
    }

    /// The instance's journal of host calls.
    pub(super) fn journal(&self) -> &Journal {
        &self.capabilities.journal
    }

    /// The installation the instance serves in the current call.
    pub(super) fn context(&self) -> &Arc<Context> {
        &self.capabilities.ctx
    }

    /// Makes the instance serve `ctx` from the next call on.
    pub(super) fn enter(&mut self, ctx: &Arc<Context>) {
        if !Arc::ptr_eq(&self.capabilities.ctx, ctx) {
            self.capabilities.ctx = ctx.clone();
        }
    }

    /// Turns captured stdout (info) and stderr (warn) into log lines, closes the call's log
    /// budget, and returns what the call wrote to stderr.
    pub(super) fn end_call(&mut self) -> String {
        let output = self.output.take();
        let state = &mut self.capabilities;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            state.log.line(&state.ctx, Level::Info, line);
        }
        for line in stderr.lines() {
            state.log.line(&state.ctx, Level::Warn, line);
        }
        state
            .log
            .end_call(&state.ctx, output.dropped, OUTPUT_CAP_BYTES);
        stderr
    }
}

//! `log`: plugin log lines, tagged with the installation, capped in length and rate, written to
//! the process log and stored for `sluice logs`.

use super::{Capability, Context, HasCapabilities, HasView, View};
use crate::bindings::sluice::plugin::log::{self, Host};
use crate::store::logs::{LogLine, LogStore};
use crate::store::{self, StoreError};
use std::sync::mpsc::{self, SyncSender};
use std::thread::JoinHandle;
use wasmtime::component::Linker;

pub use log::Level;

/// The `log` capability.
pub const CAPABILITY: Capability = Capability {
    name: "log",
    interface: "sluice:plugin/log",
};

/// Longest line kept, in bytes; longer lines are cut at a char boundary.
pub const MAX_LINE_BYTES: usize = 4096;
/// Lines kept per plugin call; the rest are counted and reported in one line.
pub const MAX_LINES_PER_CALL: u32 = 100;

/// Lines waiting for the writer; when it falls behind, new lines are dropped and counted.
const SINK_CAPACITY: usize = 10_000;
/// Most lines stored in one transaction.
const SINK_BATCH: usize = 1_000;

/// Where plugin log lines are stored (the `plugin_logs` table), through a bounded channel to a
/// writer thread that inserts them in batches. Plugins never wait for it.
#[derive(Debug, Clone)]
pub struct LogSink(SyncSender<LogLine>);

impl LogSink {
    /// Starts the writer, which appends to `logs`. It stops once every sink is dropped.
    pub fn start(mut logs: Box<dyn LogStore>) -> Result<(Self, JoinHandle<()>), StoreError> {
        let (sender, receiver) = mpsc::sync_channel(SINK_CAPACITY);
        let writer = std::thread::Builder::new()
            .name("sluice-plugin-logs".into())
            .spawn(move || {
                while let Ok(first) = receiver.recv() {
                    let mut lines = vec![first];
                    lines.extend(receiver.try_iter().take(SINK_BATCH));
                    if let Err(error) = logs.append(&lines) {
                        tracing::error!(%error, lines = lines.len(), "cannot store plugin log lines");
                    }
                }
            })
            .map_err(|e| StoreError::Thread("the plugin log writer", e))?;
        Ok((Self(sender), writer))
    }

    fn store(&self, installation: &str, level: Level, message: &str) {
        let line = LogLine {
            installation: installation.to_owned(),
            level: level_name(level),
            message: message.to_owned(),
            time_ms: store::now_ms(),
        };
        if self.0.try_send(line).is_err() {
            metrics::counter!("sluice_plugin_log_lines_dropped_total", "installation" => installation.to_owned())
                .increment(1);
        }
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

/// Per-instance log state: the current call's line budget.
#[derive(Debug, Default)]
pub struct LogState {
    lines_this_call: u32,
    suppressed: u32,
}

impl LogState {
    /// Records a line from the plugin serving `ctx` (also used for its stdout and stderr).
    pub fn line(&mut self, ctx: &Context, level: Level, message: &str) {
        if self.lines_this_call >= MAX_LINES_PER_CALL {
            self.suppressed += 1;
            return;
        }
        self.lines_this_call += 1;
        record(ctx, level, truncate(message, MAX_LINE_BYTES));
    }

    /// Ends a call: reports suppressed lines and `dropped_output` bytes of stdout/stderr that
    /// did not fit the capture cap of `output_cap` bytes, then resets the per-call budget.
    pub fn end_call(&mut self, ctx: &Context, dropped_output: usize, output_cap: usize) {
        if dropped_output > 0 {
            record(
                ctx,
                Level::Warn,
                &format!(
                    "{dropped_output} bytes of stdout/stderr dropped (cap {output_cap} per call)"
                ),
            );
        }
        if self.suppressed > 0 {
            let suppressed = self.suppressed;
            record(
                ctx,
                Level::Warn,
                &format!("{suppressed} log lines suppressed (limit {MAX_LINES_PER_CALL} per call)"),
            );
            metrics::counter!("sluice_plugin_log_lines_suppressed_total", "installation" => ctx.installation.to_string())
                .increment(u64::from(self.suppressed));
        }
        self.lines_this_call = 0;
        self.suppressed = 0;
    }
}

/// Emits a line for the installation of `ctx` to the process log and the plugin log store,
/// outside any per-call budget.
pub fn record(ctx: &Context, level: Level, message: &str) {
    if let Some(sink) = &ctx.services.logs {
        sink.store(&ctx.installation, level, message);
    }
    let installation = &*ctx.installation;
    match level {
        Level::Trace => tracing::trace!(target: "sluice::plugin", installation, "{message}"),
        Level::Debug => tracing::debug!(target: "sluice::plugin", installation, "{message}"),
        Level::Info => tracing::info!(target: "sluice::plugin", installation, "{message}"),
        Level::Warn => tracing::warn!(target: "sluice::plugin", installation, "{message}"),
        Level::Error => tracing::error!(target: "sluice::plugin", installation, "{message}"),
    }
}

impl Host for View<'_, &mut LogState> {
    fn log(&mut self, level: Level, message: String) {
        if self.ctx.check(&CAPABILITY).is_ok() {
            self.state.line(self.ctx, level, &message);
        }
    }
}

/// Adds `log` to `linker`.
pub(super) fn add_to_linker<T: HasCapabilities>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    log::add_to_linker::<T, HasView<&'static mut LogState>>(linker, |data| {
        data.capabilities().log_view()
    })
}

/// `text` cut to at most `max` bytes at a char boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

//! `log`: plugin log lines, tagged with the installation, capped in length and rate, written to
//! the process log and stored for `sluice logs`.

use super::{Capability, Context};
use crate::runtime::HostState;
use crate::runtime::bindings::sluice::plugin::log::{self, Host, Level};
use crate::store;
use std::path::Path;
use std::sync::mpsc::{self, SyncSender};
use std::thread::JoinHandle;
use wasmtime::component::HasSelf;

/// The `log` capability.
pub const CAPABILITY: Capability = Capability {
    name: "log",
    interface: "sluice:plugin/log",
    link: |linker| log::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s),
};

/// Longest line kept, in bytes; longer lines are cut at a char boundary.
pub const MAX_LINE_BYTES: usize = 4096;
/// Lines kept per plugin call; the rest are counted and reported in one line.
pub const MAX_LINES_PER_CALL: u32 = 100;

/// Lines waiting for the writer; when it falls behind, new lines are dropped and counted.
const SINK_CAPACITY: usize = 10_000;
/// Most lines stored in one transaction.
const SINK_BATCH: usize = 1_000;

/// One stored line: installation, level, message, time in epoch ms.
type Line = (String, &'static str, String, i64);

/// Where plugin log lines are stored (the `plugin_logs` table), through a bounded channel to a
/// writer thread that inserts them in batches. Plugins never wait for it.
#[derive(Debug, Clone)]
pub struct LogSink(SyncSender<Line>);

impl LogSink {
    /// Starts the writer on the database in `data_dir`. It stops once every sink is dropped.
    pub fn start(data_dir: &Path) -> rusqlite::Result<(Self, JoinHandle<()>)> {
        let mut conn = store::open(data_dir)?;
        let (sender, receiver) = mpsc::sync_channel(SINK_CAPACITY);
        let writer = std::thread::Builder::new()
            .name("sluice-plugin-logs".into())
            .spawn(move || {
                while let Ok(first) = receiver.recv() {
                    let mut lines = vec![first];
                    lines.extend(receiver.try_iter().take(SINK_BATCH));
                    let written = conn
                        .transaction()
                        .and_then(|tx| store::insert_plugin_logs(&tx, &lines).and_then(|()| tx.commit()));
                    if let Err(error) = written {
                        tracing::error!(%error, lines = lines.len(), "cannot store plugin log lines");
                    }
                }
            })
            .map_err(|e| rusqlite::Error::InvalidParameterName(format!("cannot start the plugin log writer: {e}")))?;
        Ok((Self(sender), writer))
    }

    fn store(&self, installation: &str, level: Level, message: &str) {
        let line = (
            installation.to_owned(),
            level_name(level),
            message.to_owned(),
            store::now_ms(),
        );
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
    /// did not fit the capture cap, then resets the per-call budget.
    pub fn end_call(&mut self, ctx: &Context, dropped_output: usize) {
        if dropped_output > 0 {
            let cap = crate::runtime::OUTPUT_CAP_BYTES;
            record(
                ctx,
                Level::Warn,
                &format!("{dropped_output} bytes of stdout/stderr dropped (cap {cap} per call)"),
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

/// Emits a line to the process log and the plugin log store, outside the per-call budget.
fn record(ctx: &Context, level: Level, message: &str) {
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

impl Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        if self.ctx.check(CAPABILITY.name).is_ok() {
            self.log.line(&self.ctx, level, &message);
        }
    }
}

/// `text` cut to at most `max` bytes at a char boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

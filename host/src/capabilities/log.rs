//! `log`: plugin log lines, tagged with the installation, capped in length and rate, written to
//! the process log and stored for `sluice logs`.

use super::{Capability, Context, HasCapabilities, HasView, View};
use crate::bindings::sluice::plugin::log::{self, Host};
use crate::store::logs::{LogLine, LogStore};
use crate::store::{self, StoreError};
use crate::tap::Hub;
use std::collections::HashMap;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;
use wasmtime::component::Linker;

pub use log::Level;

/// The `log` capability.
pub const CAPABILITY: Capability = Capability {
    name: "log",
    interface: "sluice:plugin/log",
};

pub use sluice_abi::limits::{
    MAX_LOG_LINE_BYTES as MAX_LINE_BYTES, MAX_LOG_LINES_PER_CALL as MAX_LINES_PER_CALL,
};

/// Lines waiting for the writer; when it falls behind, new lines are dropped and counted.
const SINK_CAPACITY: usize = 10_000;
/// Most lines stored in one transaction.
const SINK_BATCH: usize = 1_000;

/// Plugin log lines as they are stored, for whoever follows them live (`GET
/// /admin/v1/logs/stream`, the admin page).
pub fn live() -> &'static Hub<LogLine> {
    static LIVE: LazyLock<Hub<LogLine>> = LazyLock::new(Hub::new);
    &LIVE
}

/// How many lines an installation may store: `per_second` sustained, `burst` at once. Beyond,
/// lines are counted (`sluice_plugin_log_lines_suppressed_total`) and reported in one line when
/// the installation may log again, so a plugin that logs on every event cannot fill the disk.
#[derive(Debug, Clone, Copy)]
pub struct LogLimit {
    /// Lines a second, sustained.
    pub per_second: f64,
    /// Lines at once.
    pub burst: f64,
}

impl Default for LogLimit {
    fn default() -> Self {
        Self {
            per_second: 100.0,
            burst: 1_000.0,
        }
    }
}

/// One installation's share of its [`LogLimit`].
#[derive(Debug)]
struct Allowance {
    lines: f64,
    at: Instant,
    suppressed: u64,
}

/// Where plugin log lines are stored (the `plugin_logs` table), through a bounded channel to a
/// writer thread that inserts them in batches, within each installation's [`LogLimit`]. Plugins
/// never wait for it.
#[derive(Debug, Clone)]
pub struct LogSink {
    sender: SyncSender<LogLine>,
    limit: LogLimit,
    allowances: Arc<Mutex<HashMap<String, Allowance>>>,
}

impl LogSink {
    /// Starts the writer, which appends to `logs`, with each installation held to `limit`. It
    /// stops once every sink is dropped.
    pub fn start(
        mut logs: Box<dyn LogStore>,
        limit: LogLimit,
    ) -> Result<(Self, JoinHandle<()>), StoreError> {
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
        let sink = Self {
            sender,
            limit,
            allowances: Arc::default(),
        };
        Ok((sink, writer))
    }

    /// Whether `installation` may store a line now; if so, how many it was refused since the
    /// last one it stored.
    fn allow(&self, installation: &str) -> Option<u64> {
        let mut allowances = self
            .allowances
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let allowance = allowances
            .entry(installation.to_owned())
            .or_insert(Allowance {
                lines: self.limit.burst,
                at: now,
                suppressed: 0,
            });
        let refilled = now.duration_since(allowance.at).as_secs_f64() * self.limit.per_second;
        allowance.lines = (allowance.lines + refilled).min(self.limit.burst);
        allowance.at = now;
        if allowance.lines < 1.0 {
            allowance.suppressed += 1;
            metrics::counter!("sluice_plugin_log_lines_suppressed_total", "installation" => installation.to_owned())
                .increment(1);
            return None;
        }
        allowance.lines -= 1.0;
        Some(std::mem::take(&mut allowance.suppressed))
    }

    fn store(&self, installation: &str, level: Level, message: &str) {
        let Some(suppressed) = self.allow(installation) else {
            return;
        };
        if suppressed > 0 {
            let note = format!(
                "{suppressed} log lines suppressed (more than {} a second)",
                self.limit.per_second
            );
            self.send(installation, Level::Warn, &note);
        }
        self.send(installation, level, message);
    }

    fn send(&self, installation: &str, level: Level, message: &str) {
        let line = LogLine {
            installation: installation.to_owned(),
            level: level_name(level),
            message: message.to_owned(),
            time_ms: store::now_ms(),
        };
        if live().active() {
            live().publish(line.clone());
        }
        if self.sender.try_send(line).is_err() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::Sender;

    /// A log store that hands what it is given to the test.
    struct Collect(Sender<LogLine>);

    impl LogStore for Collect {
        fn append(&mut self, lines: &[LogLine]) -> Result<(), StoreError> {
            for line in lines {
                let _ = self.0.send(line.clone());
            }
            Ok(())
        }
    }

    #[test]
    fn an_installation_that_logs_too_much_is_held_to_its_rate_and_told_what_was_suppressed() {
        let (sent, received) = mpsc::channel();
        let limit = LogLimit {
            per_second: 20.0,
            burst: 5.0,
        };
        let (sink, writer) = LogSink::start(Box::new(Collect(sent)), limit).unwrap();
        for n in 0..50 {
            sink.store("team-1/noisy", Level::Info, &format!("line {n}"));
        }
        sink.store("team-1/quiet", Level::Info, "quiet");
        std::thread::sleep(std::time::Duration::from_millis(200));
        sink.store("team-1/noisy", Level::Info, "after a pause");
        drop(sink);
        writer.join().unwrap();
        let lines: Vec<LogLine> = received.try_iter().collect();
        let noisy: Vec<&str> = lines
            .iter()
            .filter(|l| l.installation == "team-1/noisy")
            .map(|l| l.message.as_str())
            .collect();
        assert_eq!(
            &noisy[..5],
            ["line 0", "line 1", "line 2", "line 3", "line 4"]
        );
        assert!(noisy.len() <= 8, "{noisy:?}");
        let report = noisy
            .iter()
            .find(|m| m.contains("log lines suppressed"))
            .unwrap();
        let suppressed: u64 = report.split(' ').next().unwrap().parse().unwrap();
        assert!((40..=45).contains(&suppressed), "{report}");
        assert_eq!(noisy.last(), Some(&"after a pause"));
        assert!(
            lines.iter().any(|l| l.installation == "team-1/quiet"),
            "each installation has its own"
        );
    }
}

//! `log`: plugin log lines, tagged with the installation, capped in length and rate.

use super::Capability;
use crate::runtime::HostState;
use crate::runtime::bindings::sluice::plugin::log::{self, Host, Level};
use std::sync::Arc;
use wasmtime::component::HasSelf;

/// The `log` capability.
pub const CAPABILITY: Capability = Capability {
    name: "log",
    interface: "sluice:plugin/log",
    link: |linker| log::add_to_linker::<HostState, HasSelf<LogState>>(linker, |s| &mut s.log),
};

/// Longest line kept, in bytes; longer lines are cut at a char boundary.
pub const MAX_LINE_BYTES: usize = 4096;
/// Lines kept per plugin call; the rest are counted and reported in one line.
pub const MAX_LINES_PER_CALL: u32 = 100;

/// Per-instance log state.
#[derive(Debug)]
pub struct LogState {
    installation: Arc<str>,
    lines_this_call: u32,
    suppressed: u32,
}

impl LogState {
    /// Log state for one instance of `installation`.
    pub fn new(installation: Arc<str>) -> Self {
        Self {
            installation,
            lines_this_call: 0,
            suppressed: 0,
        }
    }

    /// Records a line from the plugin (also used for its stdout and stderr).
    pub fn line(&mut self, level: Level, message: &str) {
        if self.lines_this_call >= MAX_LINES_PER_CALL {
            self.suppressed += 1;
            return;
        }
        self.lines_this_call += 1;
        let message = truncate(message, MAX_LINE_BYTES);
        let installation = &*self.installation;
        match level {
            Level::Trace => tracing::trace!(target: "sluice::plugin", installation, "{message}"),
            Level::Debug => tracing::debug!(target: "sluice::plugin", installation, "{message}"),
            Level::Info => tracing::info!(target: "sluice::plugin", installation, "{message}"),
            Level::Warn => tracing::warn!(target: "sluice::plugin", installation, "{message}"),
            Level::Error => tracing::error!(target: "sluice::plugin", installation, "{message}"),
        }
    }

    /// Ends a call: reports suppressed lines and `dropped_output` bytes of stdout/stderr that
    /// did not fit the capture cap, then resets the per-call budget.
    pub fn end_call(&mut self, dropped_output: usize) {
        if dropped_output > 0 {
            tracing::warn!(
                target: "sluice::plugin",
                installation = &*self.installation,
                "{dropped_output} bytes of stdout/stderr dropped (cap {} per call)",
                crate::runtime::OUTPUT_CAP_BYTES
            );
        }
        if self.suppressed > 0 {
            tracing::warn!(
                target: "sluice::plugin",
                installation = &*self.installation,
                "{} log lines suppressed (limit {MAX_LINES_PER_CALL} per call)",
                self.suppressed
            );
            metrics::counter!("sluice_plugin_log_lines_suppressed_total", "installation" => self.installation.to_string())
                .increment(u64::from(self.suppressed));
        }
        self.lines_this_call = 0;
        self.suppressed = 0;
    }
}

impl Host for LogState {
    fn log(&mut self, level: Level, message: String) {
        self.line(level, &message);
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

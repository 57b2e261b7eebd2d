//! What the host provides to every plugin: logging and metrics.
//!
//! Inside wasm these call the host's `log` and `metrics` imports. Natively (under
//! [`crate::testing::Harness`]) they are recorded so tests can assert on them.

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected but handled.
    Warn,
    /// Something failed.
    Error,
}

/// Records one line in the installation's log.
pub fn log(level: Level, message: &str) {
    imp::log(level, message);
}

/// Adds `value` to the plugin counter `name`.
pub fn counter_add(name: &str, value: u64) {
    imp::counter_add(name, value);
}

/// Records one observation in the plugin histogram `name`.
pub fn histogram_record(name: &str, value: f64) {
    imp::histogram_record(name, value);
}

#[cfg(target_family = "wasm")]
mod imp {
    use super::Level;
    use crate::bindings::sluice::plugin::{log, metrics};

    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => log::Level::Trace,
            Level::Debug => log::Level::Debug,
            Level::Info => log::Level::Info,
            Level::Warn => log::Level::Warn,
            Level::Error => log::Level::Error,
        };
        log::log(level, message);
    }

    pub fn counter_add(name: &str, value: u64) {
        metrics::counter_add(name, value);
    }

    pub fn histogram_record(name: &str, value: f64) {
        metrics::histogram_record(name, value);
    }
}

#[cfg(not(target_family = "wasm"))]
mod imp {
    use super::Level;
    use crate::testing::{Recorded, record};

    pub fn log(level: Level, message: &str) {
        record(Recorded::Log(level, message.to_owned()));
    }

    pub fn counter_add(name: &str, value: u64) {
        record(Recorded::Counter(name.to_owned(), value));
    }

    pub fn histogram_record(name: &str, value: f64) {
        record(Recorded::Histogram(name.to_owned(), value));
    }
}

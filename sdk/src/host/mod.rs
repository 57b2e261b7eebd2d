//! What the host provides to plugins: logging, metrics, and the capabilities in the submodules.
//!
//! Inside wasm these call the host's imports; each works only if the plugin's manifest declares
//! the capability ([`crate::Manifest::needs`]) and the operator grants it to the installation.
//! Natively (under [`crate::testing::Harness`]) log lines and metrics are recorded, and the
//! capabilities are in-memory fakes, so tests can assert on them.

pub mod cache;
pub mod geoip;
pub mod http;
pub mod jobs;
pub mod object_store;
pub mod recordings;
pub mod storage;

pub use sluice_abi::limits::{ErrorKind, HostError};

impl From<HostError> for crate::PluginError {
    fn from(error: HostError) -> Self {
        let retryable = matches!(error.kind, ErrorKind::Unavailable | ErrorKind::Timeout);
        Self {
            message: error.to_string(),
            retryable,
        }
    }
}

/// Converts the generated `host-error` into [`HostError`].
#[cfg(target_family = "wasm")]
fn from_wit(error: crate::bindings::sluice::plugin::types::HostError) -> HostError {
    use crate::bindings::sluice::plugin::types::HostErrorKind as Kind;
    let kind = match error.kind {
        Kind::Invalid => ErrorKind::Invalid,
        Kind::TooLarge => ErrorKind::TooLarge,
        Kind::Refused => ErrorKind::Refused,
        Kind::Unavailable => ErrorKind::Unavailable,
        Kind::Timeout => ErrorKind::Timeout,
    };
    HostError::new(kind, error.message)
}

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

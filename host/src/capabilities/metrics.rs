//! `metrics`: plugin-defined counters and histograms, labelled with the installation.

use super::Capability;
use crate::runtime::HostState;
use crate::runtime::bindings::sluice::plugin::metrics::{self, Host};
use std::collections::HashSet;
use std::sync::Arc;
use wasmtime::component::HasSelf;

/// The `metrics` capability.
pub const CAPABILITY: Capability = Capability {
    name: "metrics",
    interface: "sluice:plugin/metrics",
    link: |linker| {
        metrics::add_to_linker::<HostState, HasSelf<MetricsState>>(linker, |s| &mut s.metrics)
    },
};

/// Distinct metric names one installation may use; keeps label sets bounded.
pub const MAX_NAMES: usize = 64;
/// Longest metric name accepted.
pub const MAX_NAME_BYTES: usize = 64;

/// Per-instance metrics state.
#[derive(Debug)]
pub struct MetricsState {
    installation: Arc<str>,
    names: HashSet<String>,
}

impl MetricsState {
    /// Metrics state for one instance of `installation`.
    pub fn new(installation: Arc<str>) -> Self {
        Self {
            installation,
            names: HashSet::new(),
        }
    }

    /// Whether `name` may be recorded: well-formed and within the installation's name budget.
    fn admit(&mut self, name: &str) -> bool {
        let well_formed = !name.is_empty()
            && name.len() <= MAX_NAME_BYTES
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !well_formed {
            return false;
        }
        if self.names.contains(name) {
            return true;
        }
        if self.names.len() >= MAX_NAMES {
            return false;
        }
        self.names.insert(name.to_owned());
        true
    }
}

impl Host for MetricsState {
    fn counter_add(&mut self, name: String, value: u64) {
        if self.admit(&name) {
            ::metrics::counter!("sluice_plugin_custom_total", "installation" => self.installation.to_string(), "name" => name)
                .increment(value);
        }
    }

    fn histogram_record(&mut self, name: String, value: f64) {
        if self.admit(&name) {
            ::metrics::histogram!("sluice_plugin_custom", "installation" => self.installation.to_string(), "name" => name)
                .record(value);
        }
    }
}

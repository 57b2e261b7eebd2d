//! `metrics`: plugin-defined counters and histograms, labelled with the installation.

use super::Capability;
use crate::runtime::HostState;
use crate::runtime::bindings::sluice::plugin::metrics::{self, Host};
use std::collections::HashSet;
use wasmtime::component::HasSelf;

/// The `metrics` capability.
pub const CAPABILITY: Capability = Capability {
    name: "metrics",
    interface: "sluice:plugin/metrics",
    link: |linker| metrics::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s),
};

/// Distinct metric names one installation may use; keeps label sets bounded.
pub const MAX_NAMES: usize = 64;
/// Longest metric name accepted.
pub const MAX_NAME_BYTES: usize = 64;

/// Per-instance metrics state: the names used so far.
#[derive(Debug, Default)]
pub struct MetricsState {
    names: HashSet<String>,
}

impl MetricsState {
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

impl HostState {
    /// Whether the current installation may record the metric `name`.
    fn admit_metric(&mut self, name: &str) -> bool {
        self.ctx.check(CAPABILITY.name).is_ok() && self.metrics.admit(name)
    }
}

impl Host for HostState {
    fn counter_add(&mut self, name: String, value: u64) {
        if self.admit_metric(&name) {
            ::metrics::counter!("sluice_plugin_custom_total", "installation" => self.ctx.installation.to_string(), "name" => name)
                .increment(value);
        }
    }

    fn histogram_record(&mut self, name: String, value: f64) {
        if self.admit_metric(&name) {
            ::metrics::histogram!("sluice_plugin_custom", "installation" => self.ctx.installation.to_string(), "name" => name)
                .record(value);
        }
    }
}

//! `metrics`: plugin-defined counters and histograms, labelled with the installation.

use super::{Capability, HasCapabilities, HasView, View};
use crate::bindings::sluice::plugin::metrics::{self, Host};
use std::collections::HashMap;
use std::sync::Arc;
use wasmtime::component::Linker;

/// The `metrics` capability.
pub const CAPABILITY: Capability = Capability {
    name: "metrics",
    interface: "sluice:plugin/metrics",
};

/// Distinct metric names one installation may use; keeps label sets bounded.
pub const MAX_NAMES: usize = 64;
/// Longest metric name accepted.
pub const MAX_NAME_BYTES: usize = 64;

/// The handles of one metric name, registered on first use.
struct Handles {
    counter: ::metrics::Counter,
    histogram: ::metrics::Histogram,
}

/// Per-instance metrics state: the handles each installation served has used so far.
#[derive(Default)]
pub struct MetricsState {
    by_installation: HashMap<Arc<str>, HashMap<String, Handles>>,
}

impl MetricsState {
    /// The handles of `name` for `installation`, if the name is well-formed and within the
    /// installation's name budget.
    fn handles(&mut self, installation: &Arc<str>, name: &str) -> Option<&Handles> {
        let well_formed = !name.is_empty()
            && name.len() <= MAX_NAME_BYTES
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !well_formed {
            return None;
        }
        let names = self
            .by_installation
            .entry(installation.clone())
            .or_default();
        if !names.contains_key(name) {
            if names.len() >= MAX_NAMES {
                return None;
            }
            let labels = [
                ("installation", installation.to_string()),
                ("name", name.to_owned()),
            ];
            names.insert(
                name.to_owned(),
                Handles {
                    counter: ::metrics::counter!("sluice_plugin_custom_total", &labels),
                    histogram: ::metrics::histogram!("sluice_plugin_custom", &labels),
                },
            );
        }
        names.get(name)
    }
}

impl View<'_, &mut MetricsState> {
    fn admitted(&mut self, name: &str) -> Option<&Handles> {
        self.ctx.check(&CAPABILITY).ok()?;
        self.state.handles(&self.ctx.installation, name)
    }
}

impl Host for View<'_, &mut MetricsState> {
    fn counter_add(&mut self, name: String, value: u64) {
        if let Some(handles) = self.admitted(&name) {
            handles.counter.increment(value);
        }
    }

    fn histogram_record(&mut self, name: String, value: f64) {
        if let Some(handles) = self.admitted(&name) {
            handles.histogram.record(value);
        }
    }
}

/// Adds `metrics` to `linker`.
pub(super) fn add_to_linker<T: HasCapabilities>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    metrics::add_to_linker::<T, HasView<&'static mut MetricsState>>(linker, |data| {
        data.capabilities().metrics_view()
    })
}

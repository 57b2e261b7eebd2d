//! `scheduled`: exported by plugins that run tasks on a clock, driven by the scheduler
//! ([`crate::schedule`]).

use super::{Guests, Versioned};
use crate::bindings::{scheduled, types, v0_5};
use crate::runtime::{CallError, Instance};

/// The interface, without version.
pub(super) const INTERFACE: &str = "sluice:plugin/scheduled";
/// The hook in the current contract.
pub(super) type Current = scheduled::Guest;
/// The hook in the 0.5.0 contract.
pub(super) type Legacy = v0_5::scheduled::Guest;
/// The `scheduled` functions of one instance.
pub(super) type Scheduled = Versioned<Current, Legacy>;

super::hook!(scheduled, v0_5::scheduled);

impl Instance {
    /// Runs the plugin's `task` for the tick at `scheduled_at_ms`.
    pub fn run_task(&mut self, task: &str, scheduled_at_ms: i64) -> Result<(), CallError> {
        self.call(|guests: &Guests, store| match &guests.scheduled {
            Some(Versioned::Current(guest)) => guest.call_run(store, task, scheduled_at_ms),
            Some(Versioned::V0_5(guest)) => guest
                .call_run(store, task, scheduled_at_ms)
                .map(|r| r.map_err(Into::into)),
            None => Ok(Err(types::PluginError {
                message: "this plugin does not export `scheduled`".into(),
                retryable: false,
            })),
        })
    }
}

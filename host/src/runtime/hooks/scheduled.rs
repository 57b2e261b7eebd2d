//! `scheduled`: exported by plugins that run tasks on a clock, driven by the scheduler
//! ([`crate::schedule`]).

use super::Guests;
use crate::bindings::{scheduled, types};
use crate::runtime::{CallError, Instance};

/// The `scheduled` functions of one instance.
pub(crate) type Scheduled = scheduled::Guest;

super::hook!(Scheduled, scheduled, "sluice:plugin/scheduled");

impl Instance {
    /// Runs the plugin's `task` for the tick at `scheduled_at_ms`.
    pub fn run_task(&mut self, task: &str, scheduled_at_ms: i64) -> Result<(), CallError> {
        self.call(|guests: &Guests, store| match &guests.scheduled {
            Some(scheduled) => scheduled.call_run(store, task, scheduled_at_ms),
            None => Ok(Err(types::PluginError {
                message: "this plugin does not export `scheduled`".into(),
                retryable: false,
            })),
        })
    }
}

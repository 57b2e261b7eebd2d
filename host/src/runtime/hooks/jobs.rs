//! `jobs`: exported by plugins that run queued jobs, driven by the scheduler
//! ([`crate::schedule`]).

use super::{Guests, Versioned};
use crate::bindings::{jobs, types, v0_5};
use crate::runtime::{CallError, Instance};

pub use jobs::Job;

/// The interface, without version.
pub(super) const INTERFACE: &str = "sluice:plugin/jobs";
/// The hook in the current contract.
pub(super) type Current = jobs::Guest;
/// The hook in the 0.5.0 contract.
pub(super) type Legacy = v0_5::jobs::Guest;
/// The `jobs` functions of one instance.
pub(super) type Jobs = Versioned<Current, Legacy>;

super::hook!(jobs, v0_5::jobs);

impl Instance {
    /// Runs one job.
    pub fn run_job(&mut self, job: &Job) -> Result<(), CallError> {
        self.call(|guests: &Guests, store| match &guests.jobs {
            Some(Versioned::Current(guest)) => guest.call_run_job(store, job),
            Some(Versioned::V0_5(guest)) => guest
                .call_run_job(store, &job.clone().into())
                .map(|r| r.map_err(Into::into)),
            None => Ok(Err(types::PluginError {
                message: "this plugin does not export `jobs`".into(),
                retryable: false,
            })),
        })
    }
}

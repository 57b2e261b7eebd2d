//! `jobs`: exported by plugins that run queued jobs, driven by the scheduler
//! ([`crate::schedule`]).

use super::Guests;
use crate::bindings::{jobs, types};
use crate::runtime::{CallError, Instance};

pub use jobs::Job;

/// The `jobs` functions of one instance.
pub(crate) type Jobs = jobs::Guest;

super::hook!(Jobs, jobs, "sluice:plugin/jobs");

impl Instance {
    /// Runs one job.
    pub fn run_job(&mut self, job: &Job) -> Result<(), CallError> {
        self.call(|guests: &Guests, store| match &guests.jobs {
            Some(jobs) => jobs.call_run_job(store, job),
            None => Ok(Err(types::PluginError {
                message: "this plugin does not export `jobs`".into(),
                retryable: false,
            })),
        })
    }
}

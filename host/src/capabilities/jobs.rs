//! `jobs`: plugins queue jobs for their own `jobs` hook (interface `job-queue`), on the job
//! queue ([`crate::schedule::jobs`]), durable when the call returns; the installation's task
//! runner runs them.

use super::{Capability, HasCapabilities, HasView, View, to_wit};
use crate::bindings::sluice::plugin::job_queue::{self, Host};
use crate::bindings::types;
use crate::schedule::jobs::{JobError, JobQueue};
use crate::store::now_ms;
use sluice_abi::limits::{self, ErrorKind, HostError};
use wasmtime::component::Linker;

/// The `jobs` capability.
pub const CAPABILITY: Capability = Capability {
    name: "jobs",
    interface: "sluice:plugin/job-queue",
};

/// Queues job `name` of `installation` on `queue` after checking its name and payload.
pub fn enqueue(
    queue: &dyn JobQueue,
    installation: &str,
    name: &str,
    payload: &str,
    run_at: i64,
) -> Result<String, HostError> {
    limits::check_job(name, payload)?;
    queue
        .enqueue(installation, name, payload, run_at)
        .map_err(|error| match error {
            JobError::Full(_) => HostError::new(ErrorKind::TooLarge, error.to_string()),
            JobError::Unavailable(_) => HostError::new(ErrorKind::Unavailable, error.to_string()),
        })
}

impl View<'_, ()> {
    /// Queues a job of the current installation to run at `at`.
    fn queue(&self, name: &str, payload: &str, at: i64) -> Result<String, HostError> {
        self.ctx.check(&CAPABILITY)?;
        let queue =
            self.ctx.services.jobs.as_deref().ok_or_else(|| {
                HostError::new(ErrorKind::Unavailable, "no job queue in this host")
            })?;
        enqueue(queue, &self.ctx.installation, name, payload, at)
    }
}

impl Host for View<'_, ()> {
    fn enqueue(
        &mut self,
        name: String,
        payload: String,
        delay_ms: u64,
    ) -> Result<String, types::HostError> {
        self.journaled("job-queue.enqueue", (&name, &payload, delay_ms), || {
            let at = now_ms().saturating_add(i64::try_from(delay_ms).unwrap_or(i64::MAX));
            self.queue(&name, &payload, at).map_err(to_wit)
        })
    }

    fn enqueue_at(
        &mut self,
        name: String,
        payload: String,
        at: i64,
    ) -> Result<String, types::HostError> {
        self.journaled("job-queue.enqueue-at", (&name, &payload, at), || {
            self.queue(&name, &payload, at).map_err(to_wit)
        })
    }
}

/// Adds `jobs` to `linker`.
pub(super) fn add_to_linker<T: HasCapabilities>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    job_queue::add_to_linker::<T, HasView<()>>(linker, |data| data.capabilities().serving())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::jobs::SqliteJobs;

    #[test]
    fn jobs_are_checked_before_they_are_queued() {
        let dir = tempfile::tempdir().unwrap();
        let queue = SqliteJobs::open(dir.path()).unwrap();
        let id = enqueue(&queue, "team-1/p", "echo", r#"{"a":1}"#, 5).unwrap();
        for (name, payload) in [("echo", "not json"), ("no spaces", "{}")] {
            let error = enqueue(&queue, "team-1/p", name, payload, 5).unwrap_err();
            assert_eq!(error.kind, ErrorKind::Invalid, "{name} {payload}");
        }
        let listed: Vec<String> = queue
            .list(None)
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(listed, [id]);
    }
}

//! `jobs`: plugins queue jobs for their own `jobs` hook (interface `job-queue`). Jobs are rows of
//! the database's job queue ([`crate::schedule::state`]), durable when the call returns; the
//! installation's task runner runs them.

use super::{Capability, HasCapabilities, HasView, View, to_wit};
use crate::bindings::sluice::plugin::job_queue::{self, Host};
use crate::bindings::types;
use crate::schedule::state;
use crate::store::{self, StoreError, now_ms};
use rusqlite::Connection;
use sluice_abi::limits::{self, ErrorKind, HostError};
use std::path::Path;
use std::sync::Mutex;
use wasmtime::component::Linker;

/// The `jobs` capability.
pub const CAPABILITY: Capability = Capability {
    name: "jobs",
    interface: "sluice:plugin/job-queue",
};

/// Most jobs one installation may have queued.
pub const MAX_QUEUED: usize = 100_000;

/// The job queue of every installation.
pub struct JobQueue {
    conn: Mutex<Connection>,
}

fn unavailable(error: impl std::fmt::Display) -> HostError {
    HostError::new(ErrorKind::Unavailable, format!("job queue: {error}"))
}

impl JobQueue {
    /// Opens the queue in the database of `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            conn: Mutex::new(store::open(data_dir)?),
        })
    }

    /// Queues job `name` of `installation` with `payload` to run at `run_at` (epoch ms).
    pub fn enqueue(
        &self,
        installation: &str,
        name: &str,
        payload: &str,
        run_at: i64,
    ) -> Result<String, HostError> {
        limits::check_job(name, payload)?;
        let conn = self.conn.lock().map_err(unavailable)?;
        let queued: usize = conn
            .query_row(
                "SELECT COUNT(*) FROM jobs WHERE installation = ?1 AND status = 'queued'",
                [installation],
                |row| row.get(0),
            )
            .map_err(unavailable)?;
        if queued >= MAX_QUEUED {
            return Err(HostError::new(
                ErrorKind::TooLarge,
                format!("installation {installation} already has {MAX_QUEUED} jobs queued"),
            ));
        }
        state::enqueue(&conn, installation, name, payload, run_at).map_err(unavailable)
    }
}

impl View<'_, ()> {
    /// Queues a job of the current installation to run at `at`.
    fn queue(&self, name: &str, payload: &str, at: i64) -> Result<String, HostError> {
        self.ctx.check(&CAPABILITY)?;
        let queue =
            self.ctx.services.jobs.as_deref().ok_or_else(|| {
                HostError::new(ErrorKind::Unavailable, "no job queue in this host")
            })?;
        queue.enqueue(&self.ctx.installation, name, payload, at)
    }
}

impl Host for View<'_, ()> {
    fn enqueue(
        &mut self,
        name: String,
        payload: String,
        delay_ms: u64,
    ) -> Result<String, types::HostError> {
        let at = now_ms().saturating_add(i64::try_from(delay_ms).unwrap_or(i64::MAX));
        self.queue(&name, &payload, at).map_err(to_wit)
    }

    fn enqueue_at(
        &mut self,
        name: String,
        payload: String,
        at: i64,
    ) -> Result<String, types::HostError> {
        self.queue(&name, &payload, at).map_err(to_wit)
    }
}

/// Adds `jobs` to `linker`.
pub(super) fn add_to_linker<T: HasCapabilities>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    job_queue::add_to_linker::<T, HasView<()>>(linker, |data| data.capabilities().serving())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_checked_and_queued_durably() {
        let dir = tempfile::tempdir().unwrap();
        let queue = JobQueue::open(dir.path()).unwrap();
        let id = queue.enqueue("team-1/p", "echo", r#"{"a":1}"#, 5).unwrap();
        assert_eq!(
            queue
                .enqueue("team-1/p", "echo", "not json", 5)
                .unwrap_err()
                .kind,
            ErrorKind::Invalid
        );
        assert_eq!(
            queue
                .enqueue("team-1/p", "no spaces", "{}", 5)
                .unwrap_err()
                .kind,
            ErrorKind::Invalid
        );
        drop(queue);
        let conn = store::open(dir.path()).unwrap();
        let job = state::take_due_job(&conn, "team-1/p", 5).unwrap().unwrap();
        assert_eq!((job.id, job.attempts), (id, 1));
    }
}

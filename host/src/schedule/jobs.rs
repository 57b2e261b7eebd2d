//! The job queue seam: jobs plugins (the `jobs` capability) and operators (`sluice jobs
//! enqueue`) queue for an installation's `jobs` hook. The embedded queue is the `jobs` table of
//! the database ([`SqliteJobs`]).
//!
//! # The contract every job queue keeps
//!
//! - **Durable when it returns.** A job [`JobQueue::enqueue`] returned the id of survives a
//!   crash; it runs even if sluice stops before it is due.
//! - **Claimed once.** [`JobQueue::claim`] takes the installation's job due first and marks it
//!   running by its holder with one more attempt, in one atomic step: two runners never claim
//!   the same job.
//! - **Fenced.** A claim carries the fencing token of the run lock's lease the holder runs jobs
//!   under; [`JobQueue::finish`] records the outcome only for the holder and token that claimed
//!   the job, so a runner that lost its lease (paused past it while another took over) cannot
//!   overwrite what the new holder did.
//! - **At least once.** A claimed job whose holder stopped before finishing it runs again: the
//!   holder re-queues its own interrupted jobs when it starts
//!   ([`JobQueue::requeue_interrupted`]), never another holder's; and the next holder of the
//!   installation's jobs lease re-queues the jobs claimed under an older lease
//!   ([`JobQueue::requeue_fenced`]), so a job whose node died runs again on another node within
//!   the lease's time to live.
//! - **Bounded.** At most [`MAX_QUEUED`] jobs queued per installation; past it, `enqueue`
//!   refuses ([`JobError::Full`]).

use crate::store::{self, StoreError, now_ms, rfc3339};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use thiserror::Error;

/// Most jobs one installation may have queued.
pub const MAX_QUEUED: usize = 100_000;

/// A claimed job, to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its payload (JSON text).
    pub payload: String,
    /// When it is due, epoch ms.
    pub run_at: i64,
    /// Attempts made, this one included.
    pub attempts: u32,
}

/// How a run of a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Done: the job is removed.
    Done,
    /// Failed; run it again at this time (epoch ms).
    Retry(&'a str, i64),
    /// Failed for good: it stays listed as `failed`.
    Failed(&'a str),
}

/// One job as `sluice jobs` prints it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JobStatus {
    /// Its id.
    pub id: String,
    /// The installation.
    pub installation: String,
    /// Its name.
    pub name: String,
    /// Its payload.
    pub payload: serde_json::Value,
    /// When it is (or was) due.
    pub run_at: String,
    /// Attempts made.
    pub attempts: u32,
    /// `queued`, `running` or `failed`.
    pub status: String,
    /// The last failure.
    pub last_error: Option<String>,
    /// The node running it, while it runs.
    pub holder: Option<String>,
}

/// Why the job queue could not answer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum JobError {
    /// The installation has [`MAX_QUEUED`] jobs queued.
    #[error("installation {0} already has {MAX_QUEUED} jobs queued")]
    Full(String),
    /// The backend failed or cannot be reached; trying again later may work.
    #[error("the job queue is unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for JobError {
    fn from(error: StoreError) -> Self {
        JobError::Unavailable(error.to_string())
    }
}

impl From<rusqlite::Error> for JobError {
    fn from(error: rusqlite::Error) -> Self {
        JobError::Unavailable(error.to_string())
    }
}

/// Where jobs wait (see the module docs for the contract). `holder` names the runner's node;
/// `token` is the fencing token of its lease.
pub trait JobQueue: Send + Sync {
    /// Queues job `name` of `installation` with `payload` to run at `run_at` (epoch ms);
    /// returns its id.
    fn enqueue(
        &self,
        installation: &str,
        name: &str,
        payload: &str,
        run_at: i64,
    ) -> Result<String, JobError>;

    /// Claims the job of `installation` due first (at `now` at the latest) for `holder`.
    fn claim(
        &self,
        installation: &str,
        holder: &str,
        token: u64,
        now: i64,
    ) -> Result<Option<QueuedJob>, JobError>;

    /// Records how `holder`'s run of job `id` under `token` ended; returns whether it was
    /// recorded (not if another holder or a newer lease has claimed the job since).
    fn finish(
        &self,
        id: &str,
        holder: &str,
        token: u64,
        outcome: Outcome<'_>,
    ) -> Result<bool, JobError>;

    /// When the next queued job of `installation` is due, if any.
    fn next_due(&self, installation: &str) -> Result<Option<i64>, JobError>;

    /// Queues again the jobs of `installation` that `holder` claimed and never finished;
    /// returns how many.
    fn requeue_interrupted(&self, installation: &str, holder: &str) -> Result<usize, JobError>;

    /// Whether a job of `installation` is running (claimed and not finished).
    fn running(&self, installation: &str) -> Result<bool, JobError>;

    /// Queues again the jobs of `installation` still running under a lease older than `token`
    /// (their holder lost it: it died or was paused past it); returns how many.
    fn requeue_fenced(&self, installation: &str, token: u64) -> Result<usize, JobError>;

    /// Queues the failed jobs of `installation` (only job `id`, if given) again, due now, with
    /// their attempts reset; returns how many.
    fn retry_failed(&self, installation: &str, id: Option<&str>) -> Result<usize, JobError>;

    /// The jobs (of `installation`, if given) queued, running or failed, by due time.
    fn list(&self, installation: Option<&str>) -> Result<Vec<JobStatus>, JobError>;
}

/// The `jobs` table of the embedded database.
pub struct SqliteJobs {
    conn: Mutex<Connection>,
}

impl SqliteJobs {
    /// The job queue in the database of `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            conn: Mutex::new(store::open(data_dir)?),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, JobError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(f(&conn)?)
    }
}

impl JobQueue for SqliteJobs {
    fn enqueue(
        &self,
        installation: &str,
        name: &str,
        payload: &str,
        run_at: i64,
    ) -> Result<String, JobError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        let inserted = self.with(|conn| {
            // One statement: the count and the insert cannot be split by another enqueue.
            conn.execute(
                "INSERT INTO jobs (id, installation, name, payload, run_at_ms, status, created_at_ms, updated_at_ms) \
                 SELECT ?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?6 WHERE (SELECT COUNT(*) FROM jobs \
                 WHERE installation = ?2 AND status = 'queued') < ?7",
                params![id, installation, name, payload, run_at, now, MAX_QUEUED as i64],
            )
        })?;
        if inserted == 0 {
            return Err(JobError::Full(installation.to_owned()));
        }
        Ok(id)
    }

    fn claim(
        &self,
        installation: &str,
        holder: &str,
        token: u64,
        now: i64,
    ) -> Result<Option<QueuedJob>, JobError> {
        self.with(|conn| {
            conn.prepare_cached(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, holder = ?2, \
                 fencing_token = ?3, updated_at_ms = ?4 WHERE id = (SELECT id FROM jobs \
                 WHERE installation = ?1 AND status = 'queued' AND run_at_ms <= ?4 \
                 ORDER BY run_at_ms, created_at_ms LIMIT 1) \
                 RETURNING id, name, payload, run_at_ms, attempts",
            )?
            .query_row(params![installation, holder, token as i64, now], |row| {
                Ok(QueuedJob {
                    id: row.get(0)?,
                    name: row.get(1)?,
                    payload: row.get(2)?,
                    run_at: row.get(3)?,
                    attempts: row.get(4)?,
                })
            })
            .optional()
        })
    }

    fn finish(
        &self,
        id: &str,
        holder: &str,
        token: u64,
        outcome: Outcome<'_>,
    ) -> Result<bool, JobError> {
        let fence = "id = ?1 AND status = 'running' AND holder = ?2 AND fencing_token = ?3";
        let token = token as i64;
        let changed = self.with(|conn| match outcome {
            Outcome::Done => conn.execute(
                &format!("DELETE FROM jobs WHERE {fence}"),
                params![id, holder, token],
            ),
            Outcome::Retry(error, retry_at) => conn.execute(
                &format!(
                    "UPDATE jobs SET status = 'queued', holder = NULL, run_at_ms = ?4, last_error = ?5, \
                     updated_at_ms = ?6 WHERE {fence}"
                ),
                params![id, holder, token, retry_at, error, now_ms()],
            ),
            Outcome::Failed(error) => conn.execute(
                &format!(
                    "UPDATE jobs SET status = 'failed', holder = NULL, last_error = ?4, \
                     updated_at_ms = ?5 WHERE {fence}"
                ),
                params![id, holder, token, error, now_ms()],
            ),
        })?;
        Ok(changed > 0)
    }

    fn next_due(&self, installation: &str) -> Result<Option<i64>, JobError> {
        self.with(|conn| {
            conn.prepare_cached(
                "SELECT MIN(run_at_ms) FROM jobs WHERE installation = ?1 AND status = 'queued'",
            )?
            .query_row([installation], |row| row.get(0))
        })
    }

    fn requeue_interrupted(&self, installation: &str, holder: &str) -> Result<usize, JobError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE jobs SET status = 'queued', holder = NULL WHERE installation = ?1 \
                 AND status = 'running' AND holder = ?2",
                params![installation, holder],
            )
        })
    }

    fn running(&self, installation: &str) -> Result<bool, JobError> {
        self.with(|conn| {
            conn.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE installation = ?1 AND status = 'running')",
            )?
            .query_row([installation], |row| row.get(0))
        })
    }

    fn requeue_fenced(&self, installation: &str, token: u64) -> Result<usize, JobError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE jobs SET status = 'queued', holder = NULL WHERE installation = ?1 \
                 AND status = 'running' AND fencing_token < ?2",
                params![installation, token as i64],
            )
        })
    }

    fn retry_failed(&self, installation: &str, id: Option<&str>) -> Result<usize, JobError> {
        let now = now_ms();
        self.with(|conn| {
            conn.execute(
                "UPDATE jobs SET status = 'queued', attempts = 0, run_at_ms = ?3, updated_at_ms = ?3 \
                 WHERE installation = ?1 AND status = 'failed' AND (?2 IS NULL OR id = ?2)",
                params![installation, id, now],
            )
        })
    }

    fn list(&self, installation: Option<&str>) -> Result<Vec<JobStatus>, JobError> {
        self.with(|conn| {
            conn.prepare(
                "SELECT id, installation, name, payload, run_at_ms, attempts, status, last_error, \
                 CASE status WHEN 'running' THEN holder END FROM jobs \
                 WHERE ?1 IS NULL OR installation = ?1 ORDER BY run_at_ms, created_at_ms",
            )?
            .query_map([installation], |row| {
                let payload: String = row.get(3)?;
                Ok(JobStatus {
                    id: row.get(0)?,
                    installation: row.get(1)?,
                    name: row.get(2)?,
                    payload: serde_json::from_str(&payload)
                        .unwrap_or(serde_json::Value::String(payload)),
                    run_at: rfc3339(row.get(4)?),
                    attempts: row.get(5)?,
                    status: row.get(6)?,
                    last_error: row.get(7)?,
                    holder: row.get(8)?,
                })
            })?
            .collect()
        })
    }
}

/// The contract's tests, which every job queue runs.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The contract every job queue keeps (see the module docs), on `queue`.
    pub(crate) fn keeps_the_contract(queue: &dyn JobQueue) {
        let first = queue.enqueue("team-1/p", "a", "{}", 10).unwrap();
        let later = queue.enqueue("team-1/p", "b", "{}", 20).unwrap();
        queue.enqueue("team-2/p", "c", "{}", 0).unwrap();
        assert_eq!(queue.next_due("team-1/p").unwrap(), Some(10));
        assert_eq!(
            queue.claim("team-1/p", "node-a", 1, 5).unwrap(),
            None,
            "not due"
        );

        // Claimed once: the first claim takes it, a second finds the next one only when due.
        let job = queue.claim("team-1/p", "node-a", 1, 10).unwrap().unwrap();
        assert_eq!((job.id.as_str(), job.attempts), (first.as_str(), 1));
        assert_eq!(queue.claim("team-1/p", "node-b", 2, 10).unwrap(), None);

        // Fenced: only the claim's holder and token record the outcome.
        assert!(!queue.finish(&first, "node-b", 1, Outcome::Done).unwrap());
        assert!(!queue.finish(&first, "node-a", 0, Outcome::Done).unwrap());
        assert!(
            queue
                .finish(&first, "node-a", 1, Outcome::Retry("boom", 15))
                .unwrap()
        );
        let again = queue.claim("team-1/p", "node-a", 3, 15).unwrap().unwrap();
        assert_eq!((again.id.as_str(), again.attempts), (first.as_str(), 2));

        // A holder re-queues only its own interrupted jobs.
        let other = queue.claim("team-1/p", "node-b", 4, 20).unwrap().unwrap();
        assert_eq!(other.id, later);
        assert_eq!(queue.requeue_interrupted("team-1/p", "node-a").unwrap(), 1);
        let statuses: Vec<(String, String)> = queue
            .list(Some("team-1/p"))
            .unwrap()
            .into_iter()
            .map(|j| (j.id, j.status))
            .collect();
        assert_eq!(
            statuses,
            [
                (first.clone(), "queued".into()),
                (later.clone(), "running".into())
            ]
        );

        // Failed for good, then retried by an operator.
        let job = queue.claim("team-1/p", "node-a", 8, 20).unwrap().unwrap();
        assert!(
            queue
                .finish(&job.id, "node-a", 8, Outcome::Failed("no"))
                .unwrap()
        );
        assert_eq!(queue.retry_failed("team-1/p", None).unwrap(), 1);
        assert!(queue.finish(&later, "node-b", 4, Outcome::Done).unwrap());

        // The next lease holder re-queues what a lost lease left running.
        let stuck = queue
            .claim("team-1/p", "node-c", 9, i64::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(
            queue.requeue_fenced("team-1/p", 9).unwrap(),
            0,
            "its own lease"
        );
        assert_eq!(queue.requeue_fenced("team-1/p", 10).unwrap(), 1);
        assert!(!queue.finish(&stuck.id, "node-c", 9, Outcome::Done).unwrap());
        assert!(!queue.running("team-1/p").unwrap());
        assert_eq!(queue.list(Some("team-1/p")).unwrap().len(), 1);
        assert_eq!(queue.list(None).unwrap().len(), 2);
    }

    #[test]
    fn the_embedded_queue_keeps_the_contract_and_claims_each_job_once_under_contention() {
        let dir = tempfile::tempdir().unwrap();
        keeps_the_contract(&SqliteJobs::open(dir.path()).unwrap());
        // Durable: a queue opened again has the jobs queued before.
        let queued = SqliteJobs::open(dir.path()).unwrap().list(None).unwrap();
        assert_eq!(queued.len(), 2);

        let other = tempfile::tempdir().unwrap();
        two_runners_claim_each_job_once(&|| Box::new(SqliteJobs::open(other.path()).unwrap()));
    }

    /// Two runners, each with a queue from `open` (its own connection), claim 50 jobs at
    /// once: each exactly once.
    pub(crate) fn two_runners_claim_each_job_once(open: &(dyn Fn() -> Box<dyn JobQueue> + Sync)) {
        for _ in 0..50 {
            open().enqueue("team-9/p", "j", "{}", 0).unwrap();
        }
        let claimed: Vec<String> = std::thread::scope(|scope| {
            let claim = |holder: &'static str| {
                scope.spawn(move || {
                    let queue = open();
                    let mut ids = Vec::new();
                    while let Some(job) = queue.claim("team-9/p", holder, 1, 0).unwrap() {
                        ids.push(job.id);
                    }
                    ids
                })
            };
            let (a, b) = (claim("a"), claim("b"));
            [a, b].into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let mut unique = claimed.clone();
        unique.sort();
        unique.dedup();
        assert_eq!((claimed.len(), unique.len()), (50, 50));
    }
}

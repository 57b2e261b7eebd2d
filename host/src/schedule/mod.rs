//! The scheduler: plugins' tasks on a clock (the `scheduled` hook) and their queued jobs (the
//! `jobs` hook), one [`runner`] thread per installation that has either.
//!
//! # Semantics (after Kubernetes CronJob with `concurrencyPolicy: Forbid`)
//!
//! - **Schedules** ([`timing`]): `every minute|hour|day`, a 5-field Unix crontab, or a 6/7-field
//!   expression with seconds, in UTC unless the installation's `schedule.time_zone` says
//!   otherwise. The manifest gives each task's default; `schedule.tasks` replaces it.
//! - **No overlap.** A task never runs twice at once: a tick that comes while the previous run of
//!   the task is still going is skipped and recorded as `missed`. An installation's tasks and
//!   jobs run one at a time, on its own thread, so a plugin never sees two calls at once.
//! - **Missed while down.** Each task's last handled tick is stored. At start, if ticks came while
//!   sluice was down, the latest of them runs once at once if it is at most
//!   `schedule.starting_deadline_seconds` old (default one hour); the others, or all of them if
//!   the latest is older, are recorded as `missed`. A task seen for the first time starts from
//!   now.
//! - **Bounded runs.** A run has the installation's deadline (`timeout_ms`, 60 s by default for
//!   tasks and jobs) and memory cap; a run past its deadline is stopped (epoch interruption), its
//!   instance discarded, and the next tick runs on a fresh one.
//! - **Failures** are recorded with their error (and logged to `sluice logs`); the next tick
//!   runs as usual. Every run is stored: task, installation, tick, start, end, outcome, error
//!   and the fencing token of its lease (`sluice tasks`).
//! - **Who runs it.** Before a run the runner takes the task's lease from a [`lock::RunLock`];
//!   embedded, one process holds them all ([`lock::LocalLock`]).
//! - **Jobs** are durable ([`jobs`]): queued by plugins (`jobs` capability) or operators
//!   (`sluice jobs enqueue`), run in order of their time, at least once (a job running when
//!   sluice stops runs again, with the same id). A runner runs an installation's jobs under the
//!   lease of `<installation>/jobs`, claims each job atomically with the lease's fencing token,
//!   and records its outcome only while the claim is still its own. A retryable failure is
//!   retried with backoff up to `jobs.max_attempts`, then the job is marked `failed`.
//! - **Where it is kept**: runs and ticks in the task history ([`history`]), jobs in the job
//!   queue ([`jobs`]), leases in the run lock ([`lock`]); each a seam with its written contract
//!   and an embedded implementation.

pub mod history;
pub mod jobs;
pub mod lock;
mod runner;
pub mod timing;

use crate::config::JobsConfig;
use crate::deployment::RunnerHandle;
use crate::runtime::{InstanceSettings, Plugin};
use crate::store::StoreError;
use lock::RunLock;
use std::sync::Arc;
use std::time::Duration;
use timing::Schedule;

/// One task of an installation and when it runs.
#[derive(Debug, Clone)]
pub struct Task {
    /// Its name, as the manifest declares it.
    pub name: String,
    /// When it runs.
    pub schedule: Schedule,
}

/// One plugin installation that runs tasks or jobs.
pub struct TaskInstallation {
    /// `team-<team id>/<installation id>`.
    pub id: Arc<str>,
    /// The compiled plugin.
    pub plugin: Arc<Plugin>,
    /// Config and limits of its instance (the deadline is that of a run).
    pub settings: InstanceSettings,
    /// Its tasks (empty unless the plugin exports `scheduled`).
    pub tasks: Vec<Task>,
    /// How old a tick missed while sluice was down may be and still run at start.
    pub starting_deadline: Duration,
    /// Whether it runs jobs (exports `jobs`), and how they are retried.
    pub jobs: Option<JobsConfig>,
}

/// Why the scheduler could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The task history could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The task history could not be read.
    #[error(transparent)]
    History(#[from] history::HistoryError),
    /// The job queue could not be read.
    #[error(transparent)]
    Jobs(#[from] jobs::JobError),
    /// A runner thread could not be started.
    #[error("cannot start a task runner: {0}")]
    Thread(std::io::Error),
}

impl From<runner::StepError> for StartError {
    fn from(error: runner::StepError) -> Self {
        match error {
            runner::StepError::History(error) => StartError::History(error),
            runner::StepError::Jobs(error) => StartError::Jobs(error),
        }
    }
}

/// Starts one runner thread per installation, recording in a task history from `history`,
/// taking leases from `lock`, as the node `holder`; each runs jobs from its installation's job
/// queue (the one its plugin queues on). Each runner ends once its own handle stops it (after
/// the run it is in).
pub fn start(
    installations: &[Arc<TaskInstallation>],
    history: &dyn Fn() -> Result<Box<dyn history::TaskHistory>, StoreError>,
    lock: &Arc<dyn RunLock>,
    holder: &str,
) -> Result<Vec<RunnerHandle>, StartError> {
    installations
        .iter()
        .map(|installation| {
            let runner =
                runner::Runner::new(installation.clone(), history()?, lock.clone(), holder)?;
            RunnerHandle::spawn(
                format!("sluice-tasks-{}", installation.id),
                installation.id.clone(),
                None,
                move |stop| runner.run(stop),
            )
            .map_err(StartError::Thread)
        })
        .collect()
}

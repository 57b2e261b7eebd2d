//! One installation's runner: its tasks' ticks, operators' run requests, and its due jobs, one
//! at a time on its own thread (see the semantics in [`super`]).

use super::TaskInstallation;
use super::history::{HistoryError, NewRun, TaskHistory, Trigger};
use super::jobs::{JobError, JobQueue, Outcome, QueuedJob};
use super::lock::{Fence, LEASE_TTL, Lease, RunLock, heartbeat};
use crate::capabilities::log::{self, Level};
use crate::retry::backoff;
use crate::runtime::hooks::jobs::Job;
use crate::runtime::{CallError, Instance};
use crate::store::now_ms;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Longest the runner sleeps before looking again (requests, jobs queued by others).
const IDLE: Duration = Duration::from_millis(250);
/// Ticks looked at when catching up at start; beyond, the rest count as missed unseen.
const MAX_CATCH_UP_TICKS: usize = 10_000;
/// The next tick of one task, and why it runs.
struct Due {
    at: DateTime<Utc>,
    trigger: Trigger,
}

/// Why a step failed; the runner tries again.
#[derive(Debug, thiserror::Error)]
pub(super) enum StepError {
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error(transparent)]
    Jobs(#[from] JobError),
}

pub(super) struct Runner {
    installation: Arc<TaskInstallation>,
    history: Box<dyn TaskHistory>,
    jobs: Option<Arc<dyn JobQueue>>,
    lock: Arc<dyn RunLock>,
    /// The node this runner is on.
    holder: String,
    instance: Option<Instance>,
    /// Per task (in the installation's order), its next tick.
    due: Vec<Option<Due>>,
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn utc(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

impl Runner {
    pub(super) fn new(
        installation: Arc<TaskInstallation>,
        history: Box<dyn TaskHistory>,
        lock: Arc<dyn RunLock>,
        holder: &str,
    ) -> Result<Self, StepError> {
        let jobs = installation
            .jobs
            .as_ref()
            .and_then(|_| installation.settings.context.services.jobs.clone());
        history.interrupted(&installation.id, holder)?;
        if let Some(jobs) = &jobs {
            jobs.requeue_interrupted(&installation.id, holder)?;
        }
        let mut runner = Self {
            due: Vec::new(),
            installation,
            history,
            jobs,
            lock,
            holder: holder.to_owned(),
            instance: None,
        };
        runner.due = runner.catch_up(Utc::now())?;
        Ok(runner)
    }

    /// The first tick of every task: a tick missed while sluice was down, if recent enough, or
    /// the next one after now. Missed ticks are recorded.
    fn catch_up(&self, now: DateTime<Utc>) -> Result<Vec<Option<Due>>, StepError> {
        let id = &self.installation.id;
        let mut due = Vec::new();
        for task in &self.installation.tasks {
            let last = self.history.last_tick(id, &task.name)?;
            if last.is_none() {
                self.history.set_last_tick(id, &task.name, millis(now))?;
            }
            self.history
                .record_schedule(id, &task.name, &task.schedule)?;
            let Some(last) = last else {
                due.push(task.schedule.after(now).map(|at| Due {
                    at,
                    trigger: Trigger::Schedule,
                }));
                continue;
            };
            let missed: Vec<DateTime<Utc>> = task
                .schedule
                .ticks_after(utc(last))
                .take_while(|t| *t <= now)
                .take(MAX_CATCH_UP_TICKS)
                .collect();
            let Some(latest) = missed.last().copied() else {
                due.push(task.schedule.after(utc(last)).map(|at| Due {
                    at,
                    trigger: Trigger::Schedule,
                }));
                continue;
            };
            let recent = now - latest
                <= chrono::Duration::from_std(self.installation.starting_deadline)
                    .unwrap_or_default();
            let skipped = if recent {
                missed.len() - 1
            } else {
                missed.len()
            };
            if skipped > 0 {
                let why = format!(
                    "{skipped} tick(s) came while sluice was down{}",
                    if recent {
                        ""
                    } else {
                        "; the latest is past the starting deadline"
                    }
                );
                self.history
                    .missed(id, &task.name, millis(missed[0]), &why)?;
                self.record_missed(&task.name, skipped);
            }
            if recent {
                due.push(Some(Due {
                    at: latest,
                    trigger: Trigger::CatchUp,
                }));
            } else {
                self.history.set_last_tick(id, &task.name, millis(latest))?;
                due.push(task.schedule.after(now).map(|at| Due {
                    at,
                    trigger: Trigger::Schedule,
                }));
            }
        }
        Ok(due)
    }

    pub(super) fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            match self.step(Utc::now()) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(installation = %self.installation.id, %error, "task runner cannot use its history or job queue; retrying");
                }
            }
            let next = self.next_wake().unwrap_or(i64::MAX);
            let wait = (next - now_ms()).clamp(0, IDLE.as_millis() as i64) as u64;
            std::thread::sleep(Duration::from_millis(wait));
        }
        if let Some(instance) = self.instance.take() {
            instance.teardown();
        }
    }

    /// When something is due next (epoch ms), as far as the runner knows.
    fn next_wake(&self) -> Option<i64> {
        let ticks = self.due.iter().flatten().map(|due| millis(due.at)).min();
        let jobs = self
            .jobs
            .as_ref()
            .and_then(|jobs| jobs.next_due(&self.installation.id).ok().flatten());
        ticks.into_iter().chain(jobs).min()
    }

    /// Does one thing that is due at `now`: an operator's request, a task's tick, or a job.
    /// Returns whether it did anything.
    fn step(&mut self, now: DateTime<Utc>) -> Result<bool, StepError> {
        let id = self.installation.id.clone();
        if let Some((request, name)) = self.history.take_request(&id)? {
            match self.installation.tasks.iter().position(|t| t.name == name) {
                Some(task) => self.run_task(task, now, Trigger::Manual, Some(request))?,
                None => {
                    let run = self.history.run_started(&NewRun {
                        installation: &id,
                        task: &name,
                        trigger: Trigger::Manual,
                        scheduled_at: millis(now),
                        fencing_token: 0,
                        request: Some(request),
                        holder: &self.holder,
                    })?;
                    self.history.run_ended(
                        run,
                        Some(&format!("installation {id} has no task `{name}`")),
                    )?;
                }
            }
            return Ok(true);
        }
        let ready = self
            .due
            .iter()
            .enumerate()
            .filter_map(|(i, due)| {
                due.as_ref()
                    .filter(|due| due.at <= now)
                    .map(|due| (i, due.at, due.trigger))
            })
            .min_by_key(|(_, at, _)| *at);
        if let Some((task, at, trigger)) = ready {
            let deadline =
                chrono::Duration::from_std(self.installation.starting_deadline).unwrap_or_default();
            if now - at > deadline {
                // Held up past its starting deadline (by a long run or a job): it does not run.
                let name = self.installation.tasks[task].name.clone();
                self.history.missed(
                    &id,
                    &name,
                    millis(at),
                    "started too late: past the starting deadline",
                )?;
                self.record_missed(&name, 1);
                self.advance(task, at, now)?;
            } else {
                self.run_task(task, at, trigger, None)?;
            }
            return Ok(true);
        }
        self.run_due_job(now)
    }

    /// The instance, started if needed.
    fn instance(&mut self) -> Result<&mut Instance, CallError> {
        match &mut self.instance {
            Some(instance) => Ok(instance),
            slot @ None => {
                let installation = &self.installation;
                Ok(slot.insert(Instance::start(
                    &installation.plugin,
                    &installation.settings,
                )?))
            }
        }
    }

    /// Calls `f` on the instance under `lease` (its fence for the call); a trap discards it.
    fn call(
        &mut self,
        lease: &Lease,
        f: impl FnOnce(&mut Instance) -> Result<(), CallError>,
    ) -> Result<(), CallError> {
        let fence = Fence {
            lock: self.lock.clone(),
            lease: lease.clone(),
        };
        let result = self.instance().and_then(|instance| {
            instance.fence(Some(fence));
            let result = f(instance);
            instance.fence(None);
            result
        });
        if let Err(error) = &result
            && error.poisons_instance()
        {
            self.instance = None;
        }
        result
    }

    /// Runs `task` for its tick `at` under its lease, records the run, skips (as missed) the
    /// ticks that came meanwhile, and sets the next tick.
    fn run_task(
        &mut self,
        task: usize,
        at: DateTime<Utc>,
        trigger: Trigger,
        request: Option<i64>,
    ) -> Result<(), StepError> {
        let id = self.installation.id.clone();
        let name = self.installation.tasks[task].name.clone();
        let lease = match self.lock.acquire(&format!("{id}/{name}"), LEASE_TTL) {
            Ok(Some(lease)) => lease,
            // Another node runs this task now: that node records the run, and the ticks its run
            // overlaps as missed.
            Ok(None) => return self.skip_to_next(task, at),
            Err(error) => {
                let why = format!("no lease: {error}");
                self.history.missed(&id, &name, millis(at), &why)?;
                return self.advance(task, at, Utc::now());
            }
        };
        // Another node may have run this tick already (it took the lease first).
        if trigger != Trigger::Manual
            && self
                .history
                .last_tick(&id, &name)?
                .is_some_and(|last| last >= millis(at))
        {
            self.lock.release(&lease);
            return self.skip_to_next(task, at);
        }
        let run = self.history.run_started(&NewRun {
            installation: &id,
            task: &name,
            trigger,
            scheduled_at: millis(at),
            fencing_token: lease.fencing_token,
            request,
            holder: &self.holder,
        })?;
        let lock = self.lock.clone();
        let result = heartbeat(&*lock, &lease, |_| {
            self.call(&lease, |instance| instance.run_task(&name, millis(at)))
        });
        let error = result.err().map(|e| e.to_string());
        let ended = self.history.run_ended(run, error.as_deref());
        // The tick is recorded handled before the lease goes, so that no node runs it again.
        let advanced = self.after_run(task, at, trigger);
        self.lock.release(&lease);
        if let Err(HistoryError::Fenced(why)) = &ended {
            tracing::warn!(installation = %id, task = %name, "the end of a run was refused: {why}");
            log::record(
                &self.installation.settings.context,
                Level::Warn,
                &format!(
                    "task `{name}`: its lease was taken over while it ran, so its end is not recorded ({why})"
                ),
            );
            return advanced;
        }
        ended?;
        advanced?;
        let outcome = if error.is_some() { "failed" } else { "ok" };
        metrics::counter!("sluice_task_runs_total", "installation" => id.to_string(), "task" => name.clone(), "outcome" => outcome)
            .increment(1);
        if let Some(error) = &error {
            tracing::warn!(installation = %id, task = %name, "task failed: {error}");
            log::record(
                &self.installation.settings.context,
                Level::Error,
                &format!("task `{name}` failed: {error}"),
            );
        }
        Ok(())
    }

    /// Sets what comes after a run of `task` for tick `at`.
    fn after_run(
        &mut self,
        task: usize,
        at: DateTime<Utc>,
        trigger: Trigger,
    ) -> Result<(), StepError> {
        if trigger == Trigger::Manual {
            // A manual run leaves the schedule as it was, but for the ticks it overlapped
            // (the next due tick included).
            let next = self.due[task].as_ref().map_or(at, |due| due.at);
            return self.skip_overlapped(
                task,
                next - chrono::Duration::milliseconds(1),
                Utc::now(),
            );
        }
        self.advance(task, at, Utc::now())
    }

    /// Leaves tick `at` of `task` to the node that has it, and sets the next tick after now.
    fn skip_to_next(&mut self, task: usize, at: DateTime<Utc>) -> Result<(), StepError> {
        let schedule = &self.installation.tasks[task].schedule;
        self.due[task] = schedule.after(Utc::now().max(at)).map(|at| Due {
            at,
            trigger: Trigger::Schedule,
        });
        Ok(())
    }

    /// Marks tick `at` of `task` handled and sets its next tick after `now`, recording the ticks
    /// between them (which came while a run was going) as missed.
    fn advance(
        &mut self,
        task: usize,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StepError> {
        self.history.set_last_tick(
            &self.installation.id,
            &self.installation.tasks[task].name,
            millis(at),
        )?;
        self.skip_overlapped(task, at, now)
    }

    /// Records ticks of `task` after `from` up to `now` as missed, and sets the next one.
    fn skip_overlapped(
        &mut self,
        task: usize,
        from: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StepError> {
        let id = self.installation.id.clone();
        let schedule = self.installation.tasks[task].schedule.clone();
        let name = self.installation.tasks[task].name.clone();
        let overlapped: Vec<DateTime<Utc>> = schedule
            .ticks_after(from)
            .take_while(|t| *t <= now)
            .take(MAX_CATCH_UP_TICKS)
            .collect();
        if let (Some(first), Some(last)) = (overlapped.first(), overlapped.last()) {
            let why = format!(
                "{} tick(s) came while a run of the task was still going",
                overlapped.len()
            );
            self.history.missed(&id, &name, millis(*first), &why)?;
            self.history.set_last_tick(&id, &name, millis(*last))?;
            self.record_missed(&name, overlapped.len());
        }
        self.due[task] = schedule.after(now.max(from)).map(|at| Due {
            at,
            trigger: Trigger::Schedule,
        });
        Ok(())
    }

    fn record_missed(&self, task: &str, count: usize) {
        metrics::counter!("sluice_task_missed_total", "installation" => self.installation.id.to_string(), "task" => task.to_owned())
            .increment(count as u64);
    }

    /// Runs the installation's job due first, if any, under the lease of its jobs; returns
    /// whether it ran one.
    fn run_due_job(&mut self, now: DateTime<Utc>) -> Result<bool, StepError> {
        let Some(jobs) = self.jobs.clone() else {
            return Ok(false);
        };
        let id = self.installation.id.clone();
        // A job running elsewhere may have lost its holder: taking the lease finds out.
        let due = jobs.next_due(&id)?.is_some_and(|due| due <= millis(now));
        if !due && !jobs.running(&id)? {
            return Ok(false);
        }
        let lease = match self.lock.acquire(&format!("{id}/jobs"), LEASE_TTL) {
            Ok(Some(lease)) => lease,
            Ok(None) => return Ok(false),
            Err(error) => {
                tracing::warn!(installation = %id, %error, "jobs wait for their lease");
                return Ok(false);
            }
        };
        // What a holder that lost this lease left running runs again.
        match jobs.requeue_fenced(&id, lease.fencing_token) {
            Ok(0) => {}
            Ok(requeued) => {
                tracing::warn!(installation = %id, requeued, "jobs left running under a lost lease are queued again")
            }
            Err(error) => {
                self.lock.release(&lease);
                return Err(error.into());
            }
        }
        let claimed = jobs.claim(&id, &self.holder, lease.fencing_token, millis(now));
        let ran = match claimed {
            Ok(Some(job)) => {
                let lock = self.lock.clone();
                heartbeat(&*lock, &lease, |_| self.run_job(jobs.as_ref(), job, &lease))
            }
            Ok(None) => Ok(false),
            Err(error) => Err(error.into()),
        };
        self.lock.release(&lease);
        ran
    }

    /// Runs one claimed job and records what became of it.
    fn run_job(
        &mut self,
        jobs: &dyn JobQueue,
        job: QueuedJob,
        lease: &Lease,
    ) -> Result<bool, StepError> {
        let Some(config) = self.installation.jobs.clone() else {
            return Ok(false);
        };
        let call = Job {
            id: job.id.clone(),
            name: job.name.clone(),
            payload: job.payload.clone(),
            attempt: job.attempts,
            run_at: job.run_at,
        };
        let result = self.call(lease, |instance| instance.run_job(&call));
        let id = self.installation.id.to_string();
        let error = result.err().map(|error| {
            tracing::warn!(installation = %id, job = %job.id, name = %job.name, attempt = job.attempts, "job failed: {error}");
            log::record(
                &self.installation.settings.context,
                Level::Error,
                &format!(
                    "job `{}` ({}) failed on attempt {}: {error}",
                    job.name, job.id, job.attempts
                ),
            );
            let retryable = match &error {
                CallError::Plugin { retryable, .. } => *retryable,
                CallError::Trap { .. } => true,
            };
            (error.to_string(), retryable)
        });
        let outcome = match &error {
            None => Outcome::Done,
            Some((message, true)) if job.attempts < config.max_attempts => Outcome::Retry(
                message,
                now_ms()
                    + backoff(
                        config.retry_base_seconds,
                        config.retry_max_seconds,
                        job.attempts,
                    ),
            ),
            Some((message, _)) => Outcome::Failed(message),
        };
        let label = match outcome {
            Outcome::Done => "ok",
            Outcome::Retry(..) => "retried",
            Outcome::Failed(_) => "failed",
        };
        metrics::counter!("sluice_jobs_total", "installation" => id.clone(), "outcome" => label)
            .increment(1);
        if !jobs.finish(&job.id, &self.holder, lease.fencing_token, outcome)? {
            tracing::warn!(installation = %id, job = %job.id, "job outcome refused: the job was claimed again under a newer lease");
        }
        Ok(true)
    }
}

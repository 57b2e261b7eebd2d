//! One installation's runner: its tasks' ticks, operators' run requests, and its due jobs, one
//! at a time on its own thread (see the semantics in [`super`]).

use super::TaskInstallation;
use super::lock::RunLock;
use super::state::{self, QueuedJob, Trigger};
use crate::capabilities::log::{self, Level};
use crate::retry::backoff;
use crate::runtime::hooks::jobs::Job;
use crate::runtime::{CallError, Instance};
use crate::store::{self, StoreError, now_ms};
use chrono::{DateTime, Utc};
use rusqlite::Connection;
use std::path::Path;
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

pub(super) struct Runner {
    installation: Arc<TaskInstallation>,
    conn: Connection,
    lock: Arc<dyn RunLock>,
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
        data_dir: &Path,
        lock: Arc<dyn RunLock>,
    ) -> Result<Self, StoreError> {
        let conn = store::open(data_dir)?;
        state::interrupted(&conn, &installation.id)?;
        let mut runner = Self {
            due: Vec::new(),
            installation,
            conn,
            lock,
            instance: None,
        };
        runner.due = runner.catch_up(Utc::now())?;
        Ok(runner)
    }

    /// The first tick of every task: a tick missed while sluice was down, if recent enough, or
    /// the next one after now. Missed ticks are recorded.
    fn catch_up(&self, now: DateTime<Utc>) -> Result<Vec<Option<Due>>, StoreError> {
        let id = &self.installation.id;
        let mut due = Vec::new();
        for task in &self.installation.tasks {
            let last = state::last_tick(&self.conn, id, &task.name)?;
            if last.is_none() {
                state::set_last_tick(&self.conn, id, &task.name, millis(now))?;
            }
            state::record_schedule(&self.conn, id, &task.name, &task.schedule)?;
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
                state::missed(&self.conn, id, &task.name, millis(missed[0]), &why)?;
                self.record_missed(&task.name, skipped);
            }
            if recent {
                due.push(Some(Due {
                    at: latest,
                    trigger: Trigger::CatchUp,
                }));
            } else {
                state::set_last_tick(&self.conn, id, &task.name, millis(latest))?;
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
                    tracing::error!(installation = %self.installation.id, %error, "task runner cannot use the database; retrying");
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
        let jobs = self.installation.jobs.as_ref().and_then(|_| {
            state::next_job_due(&self.conn, &self.installation.id)
                .ok()
                .flatten()
        });
        ticks.into_iter().chain(jobs).min()
    }

    /// Does one thing that is due at `now`: an operator's request, a task's tick, or a job.
    /// Returns whether it did anything.
    fn step(&mut self, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let id = self.installation.id.clone();
        if let Some((request, name)) = state::take_request(&self.conn, &id)? {
            match self.installation.tasks.iter().position(|t| t.name == name) {
                Some(task) => self.run_task(task, now, Trigger::Manual, Some(request))?,
                None => {
                    let run = state::run_started(
                        &self.conn,
                        &id,
                        &name,
                        Trigger::Manual,
                        millis(now),
                        0,
                        Some(request),
                    )?;
                    state::run_ended(
                        &self.conn,
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
                state::missed(
                    &self.conn,
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
        if self.installation.jobs.is_some()
            && let Some(job) = state::take_due_job(&self.conn, &id, millis(now))?
        {
            self.run_job(job)?;
            return Ok(true);
        }
        Ok(false)
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

    /// Calls `f` on the instance; a trap discards it.
    fn call(
        &mut self,
        f: impl FnOnce(&mut Instance) -> Result<(), CallError>,
    ) -> Result<(), CallError> {
        let result = self.instance().and_then(f);
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
    ) -> Result<(), StoreError> {
        let id = self.installation.id.clone();
        let name = self.installation.tasks[task].name.clone();
        let ttl = self.installation.settings.context.timeout + Duration::from_secs(30);
        let Some(lease) = self.lock.acquire(&format!("{id}/{name}"), ttl) else {
            state::missed(
                &self.conn,
                &id,
                &name,
                millis(at),
                "another node holds the task's lease",
            )?;
            return self.advance(task, at, Utc::now());
        };
        let run = state::run_started(
            &self.conn,
            &id,
            &name,
            trigger,
            millis(at),
            lease.fencing_token,
            request,
        )?;
        let result = self.call(|instance| instance.run_task(&name, millis(at)));
        self.lock.release(&lease);
        let error = result.err().map(|e| e.to_string());
        state::run_ended(&self.conn, run, error.as_deref())?;
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

    /// Marks tick `at` of `task` handled and sets its next tick after `now`, recording the ticks
    /// between them (which came while a run was going) as missed.
    fn advance(
        &mut self,
        task: usize,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        state::set_last_tick(
            &self.conn,
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
    ) -> Result<(), StoreError> {
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
            state::missed(&self.conn, &id, &name, millis(*first), &why)?;
            state::set_last_tick(&self.conn, &id, &name, millis(*last))?;
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

    /// Runs one job taken from the queue and records what became of it.
    fn run_job(&mut self, job: QueuedJob) -> Result<(), StoreError> {
        let Some(config) = self.installation.jobs.clone() else {
            return Ok(());
        };
        let call = Job {
            id: job.id.clone(),
            name: job.name.clone(),
            payload: job.payload.clone(),
            attempt: job.attempts,
            run_at: job.run_at,
        };
        let result = self.call(|instance| instance.run_job(&call));
        let id = self.installation.id.to_string();
        let outcome = match &result {
            Ok(()) => Ok(()),
            Err(error) => {
                let retryable = match error {
                    CallError::Plugin { retryable, .. } => *retryable,
                    CallError::Trap { .. } => true,
                };
                let retry = (retryable && job.attempts < config.max_attempts).then(|| {
                    now_ms()
                        + backoff(
                            config.retry_base_seconds,
                            config.retry_max_seconds,
                            job.attempts,
                        )
                });
                tracing::warn!(installation = %id, job = %job.id, name = %job.name, attempt = job.attempts, "job failed: {error}");
                log::record(
                    &self.installation.settings.context,
                    Level::Error,
                    &format!(
                        "job `{}` ({}) failed on attempt {}: {error}",
                        job.name, job.id, job.attempts
                    ),
                );
                Err((error.to_string(), retry))
            }
        };
        let label = match &outcome {
            Ok(()) => "ok",
            Err((_, Some(_))) => "retried",
            Err((_, None)) => "failed",
        };
        metrics::counter!("sluice_jobs_total", "installation" => id, "outcome" => label)
            .increment(1);
        state::job_ended(
            &self.conn,
            &job.id,
            outcome
                .as_ref()
                .map(|_| ())
                .map_err(|(error, retry)| (error.as_str(), *retry)),
        )
    }
}

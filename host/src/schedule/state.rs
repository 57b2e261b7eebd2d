//! The durable state of tasks and jobs, in the SQLite database: the last tick handled per task
//! (`task_state`), every run (`task_runs`), runs asked for by operators (`task_requests`), and
//! the job queue (`jobs`).

use super::timing::Schedule;
use crate::store::{StoreError, now_ms, rfc3339};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// Why a run happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Its tick came.
    Schedule,
    /// Its tick came while sluice was down, within the starting deadline.
    CatchUp,
    /// An operator asked (`sluice tasks run`).
    Manual,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch_up",
            Trigger::Manual => "manual",
        }
    }
}

/// The last tick handled of `task` (run, or counted as missed).
pub fn last_tick(
    conn: &Connection,
    installation: &str,
    task: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT last_tick_ms FROM task_state WHERE installation = ?1 AND task = ?2",
            params![installation, task],
            |row| row.get(0),
        )
        .optional()?)
}

/// Records `tick` as the last tick handled of `task`.
pub fn set_last_tick(
    conn: &Connection,
    installation: &str,
    task: &str,
    tick: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO task_state (installation, task, last_tick_ms) VALUES (?1, ?2, ?3) \
         ON CONFLICT (installation, task) DO UPDATE SET last_tick_ms = MAX(last_tick_ms, ?3)",
        params![installation, task, tick],
    )?;
    Ok(())
}

/// Records the schedule `task` runs on, for `sluice tasks schedules`.
pub fn record_schedule(
    conn: &Connection,
    installation: &str,
    task: &str,
    schedule: &Schedule,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE task_state SET schedule = ?3, time_zone = ?4 WHERE installation = ?1 AND task = ?2",
        params![installation, task, schedule.text, schedule.zone()],
    )?;
    Ok(())
}

/// A task's schedule as `sluice tasks schedules` prints it.
#[derive(Debug, Serialize)]
pub struct TaskSchedule {
    /// `team-<team id>/<installation id>`.
    pub installation: String,
    /// The task.
    pub task: String,
    /// Its schedule, as written.
    pub schedule: String,
    /// The time zone it is read in.
    pub time_zone: String,
    /// The last tick handled, RFC 3339 UTC.
    pub last_tick: String,
    /// The next tick after now, RFC 3339 UTC (none if the schedule has no more).
    pub next_tick: Option<String>,
}

/// The schedules of the tasks the server last started (of `installation`, if given).
pub fn schedules(
    conn: &Connection,
    installation: Option<&str>,
) -> Result<Vec<TaskSchedule>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT installation, task, schedule, time_zone, last_tick_ms FROM task_state \
         WHERE schedule IS NOT NULL AND (?1 IS NULL OR installation = ?1) ORDER BY installation, task",
    )?;
    let now = chrono::Utc::now();
    let rows = stmt
        .query_map(params![installation], |row| {
            let schedule: String = row.get(2)?;
            let time_zone: String = row.get(3)?;
            let next_tick = Schedule::parse(&schedule, &time_zone)
                .ok()
                .and_then(|s| s.after(now))
                .map(|t| rfc3339(t.timestamp_millis()));
            Ok(TaskSchedule {
                installation: row.get(0)?,
                task: row.get(1)?,
                schedule,
                time_zone,
                last_tick: rfc3339(row.get(4)?),
                next_tick,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Records that a run of `task` for the tick at `scheduled_at` started; returns its id.
pub fn run_started(
    conn: &Connection,
    installation: &str,
    task: &str,
    trigger: Trigger,
    scheduled_at: i64,
    fencing_token: u64,
    request: Option<i64>,
) -> Result<i64, StoreError> {
    conn.execute(
        "INSERT INTO task_runs (installation, task, trigger, scheduled_at_ms, started_at_ms, outcome, \
         fencing_token, request_id) VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7)",
        params![
            installation,
            task,
            trigger.label(),
            scheduled_at,
            now_ms(),
            fencing_token as i64,
            request
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Records how run `id` ended: `ok`, or `failed` with `error`.
pub fn run_ended(conn: &Connection, id: i64, error: Option<&str>) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE task_runs SET ended_at_ms = ?2, outcome = ?3, error = ?4 WHERE id = ?1",
        params![
            id,
            now_ms(),
            if error.is_some() { "failed" } else { "ok" },
            error
        ],
    )?;
    Ok(())
}

/// Records ticks of `task` that did not run (`why`), the first at `scheduled_at`.
pub fn missed(
    conn: &Connection,
    installation: &str,
    task: &str,
    scheduled_at: i64,
    why: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO task_runs (installation, task, trigger, scheduled_at_ms, outcome, error) \
         VALUES (?1, ?2, 'schedule', ?3, 'missed', ?4)",
        params![installation, task, scheduled_at, why],
    )?;
    Ok(())
}

/// Runs of `installation` left `running` by a crash: they are recorded as interrupted.
pub fn interrupted(conn: &Connection, installation: &str) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE task_runs SET outcome = 'interrupted', error = 'sluice stopped during the run', \
         ended_at_ms = ?2 WHERE installation = ?1 AND outcome = 'running'",
        params![installation, now_ms()],
    )?;
    conn.execute(
        "UPDATE jobs SET status = 'queued' WHERE installation = ?1 AND status = 'running'",
        [installation],
    )?;
    Ok(())
}

/// Asks for a run of `task` of `installation` now; returns the request's id.
pub fn request_run(conn: &Connection, installation: &str, task: &str) -> Result<i64, StoreError> {
    conn.execute(
        "INSERT INTO task_requests (installation, task, requested_at_ms) VALUES (?1, ?2, ?3)",
        params![installation, task, now_ms()],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Takes the oldest request for `installation` not taken yet: its id and task.
pub fn take_request(
    conn: &Connection,
    installation: &str,
) -> Result<Option<(i64, String)>, StoreError> {
    let request: Option<(i64, String)> = conn
        .query_row(
            "SELECT id, task FROM task_requests WHERE installation = ?1 AND taken_at_ms IS NULL \
             ORDER BY id LIMIT 1",
            [installation],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    if let Some((id, _)) = &request {
        conn.execute(
            "UPDATE task_requests SET taken_at_ms = ?2 WHERE id = ?1",
            params![id, now_ms()],
        )?;
    }
    Ok(request)
}

/// Whether request `id` was taken by a running sluice.
pub fn request_taken(conn: &Connection, id: i64) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT taken_at_ms IS NOT NULL FROM task_requests WHERE id = ?1",
            [id],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or(false))
}

/// One run as `sluice tasks` prints it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskRun {
    /// Its id.
    pub id: i64,
    /// The installation.
    pub installation: String,
    /// The task.
    pub task: String,
    /// `schedule`, `catch_up` or `manual`.
    pub trigger: String,
    /// The tick it was for.
    pub scheduled_at: String,
    /// When it started.
    pub started_at: Option<String>,
    /// When it ended.
    pub ended_at: Option<String>,
    /// `running`, `ok`, `failed`, `missed` or `interrupted`.
    pub outcome: String,
    /// Why it failed or was missed.
    pub error: Option<String>,
    /// The fencing token of the lease it ran under.
    pub fencing_token: Option<u64>,
}

/// The newest `limit` runs (of `installation`, and of request `request`, if given), oldest first.
pub fn runs(
    conn: &Connection,
    installation: Option<&str>,
    request: Option<i64>,
    limit: usize,
) -> Result<Vec<TaskRun>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, installation, task, trigger, scheduled_at_ms, started_at_ms, ended_at_ms, outcome, \
         error, fencing_token FROM task_runs WHERE (?1 IS NULL OR installation = ?1) \
         AND (?2 IS NULL OR request_id = ?2) ORDER BY id DESC LIMIT ?3",
    )?;
    let mut runs = stmt
        .query_map(params![installation, request, limit as i64], |row| {
            Ok(TaskRun {
                id: row.get(0)?,
                installation: row.get(1)?,
                task: row.get(2)?,
                trigger: row.get(3)?,
                scheduled_at: rfc3339(row.get(4)?),
                started_at: row.get::<_, Option<i64>>(5)?.map(rfc3339),
                ended_at: row.get::<_, Option<i64>>(6)?.map(rfc3339),
                outcome: row.get(7)?,
                error: row.get(8)?,
                fencing_token: row.get::<_, Option<i64>>(9)?.map(|t| t as u64),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    runs.reverse();
    Ok(runs)
}

/// A job to run.
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
    /// Attempts made, this one included once it is taken.
    pub attempts: u32,
}

/// Queues job `name` of `installation` with `payload` to run at `run_at`; returns its id.
pub fn enqueue(
    conn: &Connection,
    installation: &str,
    name: &str,
    payload: &str,
    run_at: i64,
) -> Result<String, StoreError> {
    let id = uuid::Uuid::now_v7().to_string();
    let now = now_ms();
    conn.execute(
        "INSERT INTO jobs (id, installation, name, payload, run_at_ms, status, created_at_ms, updated_at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?6)",
        params![id, installation, name, payload, run_at, now],
    )?;
    Ok(id)
}

/// Takes the job of `installation` due first (at `now` at the latest), marking it running with one
/// more attempt, durably before it runs.
pub fn take_due_job(
    conn: &Connection,
    installation: &str,
    now: i64,
) -> Result<Option<QueuedJob>, StoreError> {
    let job = conn
        .query_row(
            "SELECT id, name, payload, run_at_ms, attempts FROM jobs WHERE installation = ?1 \
             AND status = 'queued' AND run_at_ms <= ?2 ORDER BY run_at_ms, created_at_ms LIMIT 1",
            params![installation, now],
            |row| {
                Ok(QueuedJob {
                    id: row.get(0)?,
                    name: row.get(1)?,
                    payload: row.get(2)?,
                    run_at: row.get(3)?,
                    attempts: row.get::<_, u32>(4)? + 1,
                })
            },
        )
        .optional()?;
    if let Some(job) = &job {
        conn.execute(
            "UPDATE jobs SET status = 'running', attempts = ?2, updated_at_ms = ?3 WHERE id = ?1",
            params![job.id, job.attempts, now],
        )?;
    }
    Ok(job)
}

/// When the next queued job of `installation` is due, if any.
pub fn next_job_due(conn: &Connection, installation: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn.query_row(
        "SELECT MIN(run_at_ms) FROM jobs WHERE installation = ?1 AND status = 'queued'",
        [installation],
        |row| row.get(0),
    )?)
}

/// Records how a job ended: done (removed), queued again at `retry_at`, or failed for good.
pub fn job_ended(
    conn: &Connection,
    id: &str,
    outcome: Result<(), (&str, Option<i64>)>,
) -> Result<(), StoreError> {
    match outcome {
        Ok(()) => conn.execute("DELETE FROM jobs WHERE id = ?1", [id])?,
        Err((error, Some(retry_at))) => conn.execute(
            "UPDATE jobs SET status = 'queued', run_at_ms = ?2, last_error = ?3, updated_at_ms = ?4 WHERE id = ?1",
            params![id, retry_at, error, now_ms()],
        )?,
        Err((error, None)) => conn.execute(
            "UPDATE jobs SET status = 'failed', last_error = ?2, updated_at_ms = ?3 WHERE id = ?1",
            params![id, error, now_ms()],
        )?,
    };
    Ok(())
}

/// Queues the failed jobs of `installation` (only job `id`, if given) again, due now, with
/// their attempts reset; returns how many.
pub fn retry_failed(
    conn: &Connection,
    installation: &str,
    id: Option<&str>,
) -> Result<usize, StoreError> {
    let now = now_ms();
    Ok(conn.execute(
        "UPDATE jobs SET status = 'queued', attempts = 0, run_at_ms = ?3, updated_at_ms = ?3 \
         WHERE installation = ?1 AND status = 'failed' AND (?2 IS NULL OR id = ?2)",
        params![installation, id, now],
    )?)
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
}

/// The jobs (of `installation`, if given) queued, running or failed, by due time.
pub fn jobs(conn: &Connection, installation: Option<&str>) -> Result<Vec<JobStatus>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, installation, name, payload, run_at_ms, attempts, status, last_error FROM jobs \
         WHERE ?1 IS NULL OR installation = ?1 ORDER BY run_at_ms, created_at_ms",
    )?;
    let jobs = stmt
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
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(jobs)
}

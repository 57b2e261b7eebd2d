//! The task-run history seam: the last tick handled per task, every run, and runs operators ask
//! for, behind [`TaskHistory`]. The embedded history is in the database ([`SqliteHistory`]:
//! `task_state`, `task_runs`, `task_requests`).
//!
//! # The contract every task history keeps
//!
//! - **Durable when it returns**, so a restart knows the last tick handled of each task (and
//!   catches up or records misses from there) and every run stays listed.
//! - **The last tick only moves forward**: recording an older tick than the one stored keeps the
//!   stored one.
//! - **Runs carry their fencing token and holder** (the node that ran them), so a run recorded
//!   by a node that lost its lease can be told apart; a node that restarts marks only its own
//!   unfinished runs `interrupted`.
//! - **Fenced ends.** Ending a run whose task has since started a run under a larger fencing
//!   token is refused ([`HistoryError::Fenced`]): the node that ran it lost its lease (it was
//!   paused past it) and another node went on.
//! - **A request is taken once**: [`TaskHistory::take_request`] hands each operator request to
//!   one runner.

use super::timing::Schedule;
use crate::store::{self, StoreError, now_ms, rfc3339};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use std::path::Path;

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
    /// How it is recorded.
    pub fn label(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch_up",
            Trigger::Manual => "manual",
        }
    }
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
    /// The node it ran on (its data folder's node id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// A run as it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRun<'a> {
    /// The installation.
    pub installation: &'a str,
    /// The task.
    pub task: &'a str,
    /// Why it runs.
    pub trigger: Trigger,
    /// The tick it is for, epoch ms.
    pub scheduled_at: i64,
    /// The fencing token of the lease it runs under (0: none).
    pub fencing_token: u64,
    /// The operator's request it answers, if any.
    pub request: Option<i64>,
    /// The node it runs on.
    pub holder: &'a str,
}

/// Why the task history could not answer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum HistoryError {
    /// The backend failed or cannot be reached; trying again later may work.
    #[error("the task history is unavailable: {0}")]
    Unavailable(String),
    /// A write under a lease that another node has taken over since.
    #[error("refused a write under a stale lease: {0}")]
    Fenced(String),
}

impl From<rusqlite::Error> for HistoryError {
    fn from(error: rusqlite::Error) -> Self {
        HistoryError::Unavailable(error.to_string())
    }
}

/// Where task runs and ticks are recorded (see the module docs for the contract).
pub trait TaskHistory: Send {
    /// The last tick handled of `task` (run, or counted as missed).
    fn last_tick(&self, installation: &str, task: &str) -> Result<Option<i64>, HistoryError>;

    /// Records `tick` as the last tick handled of `task`.
    fn set_last_tick(&self, installation: &str, task: &str, tick: i64) -> Result<(), HistoryError>;

    /// Records the schedule `task` runs on, for `sluice tasks schedules`.
    fn record_schedule(
        &self,
        installation: &str,
        task: &str,
        schedule: &Schedule,
    ) -> Result<(), HistoryError>;

    /// The schedules of the tasks the server last started (of `installation`, if given).
    fn schedules(&self, installation: Option<&str>) -> Result<Vec<TaskSchedule>, HistoryError>;

    /// Records that `run` started; returns its id.
    fn run_started(&self, run: &NewRun<'_>) -> Result<i64, HistoryError>;

    /// Records how run `id` ended: `ok`, or `failed` with `error`.
    fn run_ended(&self, id: i64, error: Option<&str>) -> Result<(), HistoryError>;

    /// Records ticks of `task` that did not run (`why`), the first at `scheduled_at`.
    fn missed(
        &self,
        installation: &str,
        task: &str,
        scheduled_at: i64,
        why: &str,
    ) -> Result<(), HistoryError>;

    /// Runs of `installation` that `holder` left `running` (it stopped during them): they are
    /// recorded as interrupted.
    fn interrupted(&self, installation: &str, holder: &str) -> Result<(), HistoryError>;

    /// Asks for a run of `task` of `installation` now; returns the request's id.
    fn request_run(&self, installation: &str, task: &str) -> Result<i64, HistoryError>;

    /// Takes the oldest request for `installation` not taken yet: its id and task.
    fn take_request(&self, installation: &str) -> Result<Option<(i64, String)>, HistoryError>;

    /// Whether request `id` was taken by a running sluice.
    fn request_taken(&self, id: i64) -> Result<bool, HistoryError>;

    /// The newest `limit` runs (of `installation`, and of request `request`, if given), oldest first.
    fn runs(
        &self,
        installation: Option<&str>,
        request: Option<i64>,
        limit: usize,
    ) -> Result<Vec<TaskRun>, HistoryError>;
}

/// The refusal of ending run `id` under token `mine` after a run under `newest` started.
pub(crate) fn fenced(id: i64, mine: u64, newest: u64) -> HistoryError {
    HistoryError::Fenced(format!(
        "run {id} ran under fencing token {mine}, but a run of its task started under token {newest} since"
    ))
}

/// The task tables of the embedded database.
pub struct SqliteHistory {
    conn: Connection,
}

impl SqliteHistory {
    /// The history in the database of `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            conn: store::open(data_dir)?,
        })
    }
}

impl TaskHistory for SqliteHistory {
    fn last_tick(&self, installation: &str, task: &str) -> Result<Option<i64>, HistoryError> {
        Ok(self
            .conn
            .query_row(
                "SELECT last_tick_ms FROM task_state WHERE installation = ?1 AND task = ?2",
                params![installation, task],
                |row| row.get(0),
            )
            .optional()?)
    }

    fn set_last_tick(&self, installation: &str, task: &str, tick: i64) -> Result<(), HistoryError> {
        self.conn.execute(
            "INSERT INTO task_state (installation, task, last_tick_ms) VALUES (?1, ?2, ?3) \
             ON CONFLICT (installation, task) DO UPDATE SET last_tick_ms = MAX(last_tick_ms, ?3)",
            params![installation, task, tick],
        )?;
        Ok(())
    }

    fn record_schedule(
        &self,
        installation: &str,
        task: &str,
        schedule: &Schedule,
    ) -> Result<(), HistoryError> {
        self.conn.execute(
            "UPDATE task_state SET schedule = ?3, time_zone = ?4 WHERE installation = ?1 AND task = ?2",
            params![installation, task, schedule.text, schedule.zone()],
        )?;
        Ok(())
    }

    fn schedules(&self, installation: Option<&str>) -> Result<Vec<TaskSchedule>, HistoryError> {
        let mut stmt = self.conn.prepare(
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

    fn run_started(&self, run: &NewRun<'_>) -> Result<i64, HistoryError> {
        self.conn.execute(
            "INSERT INTO task_runs (installation, task, trigger, scheduled_at_ms, started_at_ms, outcome, \
             fencing_token, request_id, holder) VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7, ?8)",
            params![
                run.installation,
                run.task,
                run.trigger.label(),
                run.scheduled_at,
                now_ms(),
                run.fencing_token as i64,
                run.request,
                run.holder
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    fn run_ended(&self, id: i64, error: Option<&str>) -> Result<(), HistoryError> {
        let tokens: Option<(i64, i64)> = self
            .conn
            .query_row(
                "SELECT r.fencing_token, (SELECT MAX(fencing_token) FROM task_runs o                  WHERE o.installation = r.installation AND o.task = r.task)                  FROM task_runs r WHERE r.id = ?1",
                [id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        if let Some((mine, newest)) = tokens
            && mine < newest
        {
            return Err(fenced(id, mine as u64, newest as u64));
        }
        self.conn.execute(
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

    fn missed(
        &self,
        installation: &str,
        task: &str,
        scheduled_at: i64,
        why: &str,
    ) -> Result<(), HistoryError> {
        self.conn.execute(
            "INSERT INTO task_runs (installation, task, trigger, scheduled_at_ms, outcome, error) \
             VALUES (?1, ?2, 'schedule', ?3, 'missed', ?4)",
            params![installation, task, scheduled_at, why],
        )?;
        Ok(())
    }

    fn interrupted(&self, installation: &str, holder: &str) -> Result<(), HistoryError> {
        self.conn.execute(
            "UPDATE task_runs SET outcome = 'interrupted', error = 'sluice stopped during the run', \
             ended_at_ms = ?3 WHERE installation = ?1 AND outcome = 'running' \
             AND (holder = ?2 OR holder IS NULL)",
            params![installation, holder, now_ms()],
        )?;
        Ok(())
    }

    fn request_run(&self, installation: &str, task: &str) -> Result<i64, HistoryError> {
        self.conn.execute(
            "INSERT INTO task_requests (installation, task, requested_at_ms) VALUES (?1, ?2, ?3)",
            params![installation, task, now_ms()],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    fn take_request(&self, installation: &str) -> Result<Option<(i64, String)>, HistoryError> {
        let request: Option<(i64, String)> = self.conn
            .query_row(
                "SELECT id, task FROM task_requests WHERE installation = ?1 AND taken_at_ms IS NULL \
                 ORDER BY id LIMIT 1",
                [installation],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        if let Some((id, _)) = &request {
            self.conn.execute(
                "UPDATE task_requests SET taken_at_ms = ?2 WHERE id = ?1",
                params![id, now_ms()],
            )?;
        }
        Ok(request)
    }

    fn request_taken(&self, id: i64) -> Result<bool, HistoryError> {
        Ok(self
            .conn
            .query_row(
                "SELECT taken_at_ms IS NOT NULL FROM task_requests WHERE id = ?1",
                [id],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or(false))
    }

    fn runs(
        &self,
        installation: Option<&str>,
        request: Option<i64>,
        limit: usize,
    ) -> Result<Vec<TaskRun>, HistoryError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, installation, task, trigger, scheduled_at_ms, started_at_ms, ended_at_ms, outcome, \
             error, fencing_token, holder FROM task_runs WHERE (?1 IS NULL OR installation = ?1) \
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
                    holder: row.get(10)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        runs.reverse();
        Ok(runs)
    }
}

/// The contract's tests, which every task history runs.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The contract every task history keeps (see the module docs), on `history`.
    pub(crate) fn keeps_the_contract(history: &dyn TaskHistory) {
        assert_eq!(history.last_tick("i", "t").unwrap(), None);
        history.set_last_tick("i", "t", 20).unwrap();
        history.set_last_tick("i", "t", 10).unwrap();
        assert_eq!(
            history.last_tick("i", "t").unwrap(),
            Some(20),
            "only forward"
        );

        let run = |holder| NewRun {
            installation: "i",
            task: "t",
            trigger: Trigger::Schedule,
            scheduled_at: 20,
            fencing_token: 7,
            request: None,
            holder,
        };
        let mine = history.run_started(&run("a")).unwrap();
        history.run_started(&run("b")).unwrap();
        history.interrupted("i", "a").unwrap();
        let outcomes: Vec<(String, Option<u64>)> = history
            .runs(Some("i"), None, 10)
            .unwrap()
            .into_iter()
            .map(|r| (r.outcome, r.fencing_token))
            .collect();
        assert_eq!(
            outcomes,
            [("interrupted".into(), Some(7)), ("running".into(), Some(7))],
            "a node marks only its own runs interrupted"
        );
        history.run_ended(mine, Some("late")).unwrap();

        let request = history.request_run("i", "t").unwrap();
        assert!(!history.request_taken(request).unwrap());
        assert_eq!(
            history.take_request("i").unwrap(),
            Some((request, "t".to_owned()))
        );
        assert_eq!(history.take_request("i").unwrap(), None, "taken once");
        assert!(history.request_taken(request).unwrap());

        // A paused node's late end is refused once a run under a larger token started.
        let paused = history.run_started(&run("a")).unwrap();
        let newer = history
            .run_started(&NewRun {
                fencing_token: 8,
                ..run("b")
            })
            .unwrap();
        assert!(matches!(
            history.run_ended(paused, None),
            Err(HistoryError::Fenced(_))
        ));
        history.run_ended(newer, None).unwrap();
        let last = history.runs(Some("i"), None, 1).unwrap();
        assert_eq!(
            (last[0].outcome.as_str(), last[0].fencing_token),
            ("ok", Some(8))
        );
        assert_eq!(history.runs(Some("other"), None, 10).unwrap(), []);
        assert_eq!(history.runs(None, Some(request), 10).unwrap(), []);
    }

    #[test]
    fn the_embedded_history_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        keeps_the_contract(&SqliteHistory::open(dir.path()).unwrap());
    }
}

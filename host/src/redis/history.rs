//! The task history on Redis: ticks, runs and operators' requests that every scheduler node and
//! `sluice tasks` see, keeping the contract of [`crate::schedule::history`].
//!
//! Keys (after the prefix, under `tasks:`): `last_tick` and `schedule` hashes by
//! `installation/task`; `run:<id>` hashes, listed newest first by the sorted sets `runs`,
//! `runs:<installation>` and `runs:request:<id>`; `max_token` by `installation/task` (the largest
//! fencing token a run of the task started under, which fenced ends are checked against);
//! `requests:<installation>` lists of request ids, taken with `LPOP` (once), and `request:<id>`
//! hashes. Every change that must be atomic is one script.

use super::Redis;
use crate::schedule::history::{HistoryError, NewRun, TaskHistory, TaskRun, TaskSchedule, fenced};
use crate::schedule::timing::Schedule;
use crate::store::{now_ms, rfc3339};
use redis::Script;
use std::collections::HashMap;
use std::sync::LazyLock;

/// `HSET KEYS[1] ARGV[1] ARGV[2]` unless the stored tick is larger.
static SET_LAST_TICK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if current == nil or tonumber(ARGV[2]) > current then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"#,
    )
});

/// Records a run: `KEYS` = counter, `run:` prefix, `runs`, `runs:<installation>`,
/// `runs:request:<id>` (or empty), `max_token`; `ARGV` = task key, token, then field/value pairs.
static RUN_STARTED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local id = redis.call('INCR', KEYS[1])
local key = KEYS[2] .. id
redis.call('HSET', key, 'id', id, unpack(ARGV, 3))
redis.call('ZADD', KEYS[3], id, id)
redis.call('ZADD', KEYS[4], id, id)
if KEYS[5] ~= '' then redis.call('ZADD', KEYS[5], id, id) end
local token = tonumber(ARGV[2])
if token > 0 and token > tonumber(redis.call('HGET', KEYS[6], ARGV[1]) or '0') then
  redis.call('HSET', KEYS[6], ARGV[1], ARGV[2])
end
return id
"#,
    )
});

/// Ends run `KEYS[1]` unless its task started a run under a larger token (`KEYS[2]` max tokens):
/// `ARGV` = ended at, outcome, error (or empty); returns `{mine, newest}` when refused.
static RUN_ENDED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local run = redis.call('HMGET', KEYS[1], 'installation', 'task', 'fencing_token')
if not run[1] then return 0 end
local mine = tonumber(run[3] or '0')
local newest = tonumber(redis.call('HGET', KEYS[2], run[1] .. '/' .. run[2]) or '0')
if mine > 0 and mine < newest then return {mine, newest} end
redis.call('HSET', KEYS[1], 'ended_at_ms', ARGV[1], 'outcome', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
return 1
"#,
    )
});

/// Marks the runs of `runs:<installation>` (`KEYS[1]`) that holder `ARGV[1]` left running as
/// interrupted at `ARGV[2]`; `KEYS[2]` is the `run:` prefix.
static INTERRUPTED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = KEYS[2] .. id
  local run = redis.call('HMGET', key, 'outcome', 'holder')
  if run[1] == 'running' and (run[2] == ARGV[1] or not run[2]) then
    redis.call('HSET', key, 'outcome', 'interrupted', 'error', 'sluice stopped during the run', 'ended_at_ms', ARGV[2])
  end
end
return 1
"#,
    )
});

/// Deletes the finished runs among the oldest `ARGV[5]` of `KEYS[1]` (`runs`) scheduled before
/// `ARGV[4]`, with their entries in the per-installation and per-request sets (prefix
/// `ARGV[2]`) and a request whose runs are all gone (prefix `ARGV[3]`); `ARGV[1]` is the `run:`
/// prefix. How many.
static PRUNE_RUNS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local pruned = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[5]) - 1)) do
  local key = ARGV[1] .. id
  local run = redis.call('HMGET', key, 'outcome', 'scheduled_at_ms', 'installation', 'request_id')
  if run[1] ~= 'running' and tonumber(run[2] or '0') < tonumber(ARGV[4]) then
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], id)
    if run[3] then redis.call('ZREM', ARGV[2] .. run[3], id) end
    if run[4] then
      local requested = ARGV[2] .. 'request:' .. run[4]
      redis.call('ZREM', requested, id)
      if redis.call('ZCARD', requested) == 0 then redis.call('DEL', requested, ARGV[3] .. run[4]) end
    end
    pruned = pruned + 1
  end
end
return pruned
"#,
    )
});

/// The task history on Redis.
pub struct RedisHistory {
    redis: Redis,
}

impl RedisHistory {
    /// The history on `redis`.
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut all = vec!["tasks"];
        all.extend_from_slice(parts);
        self.redis.key(&all)
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, HistoryError> {
        self.redis
            .with(f)
            .map_err(|e| HistoryError::Unavailable(e.message))
    }

    /// Deletes finished runs scheduled before `before_ms`, looking at most at the `limit` oldest;
    /// how many it deleted.
    pub fn prune(&self, before_ms: i64, limit: i64) -> Result<usize, HistoryError> {
        self.with(|conn| {
            PRUNE_RUNS
                .key(self.key(&["runs"]))
                .arg(self.key(&["run", ""]))
                .arg(self.key(&["runs", ""]))
                .arg(self.key(&["request", ""]))
                .arg(before_ms)
                .arg(limit)
                .invoke(conn)
        })
    }

    /// Records a run with `fields`, for the task key `task` under `token`; its id.
    fn record_run(
        &self,
        installation: &str,
        task_key: &str,
        token: u64,
        request: Option<i64>,
        fields: &[(&str, String)],
    ) -> Result<i64, HistoryError> {
        let request_set = request.map_or_else(String::new, |r| {
            self.key(&["runs", "request", &r.to_string()])
        });
        self.with(|conn| {
            let mut invocation = RUN_STARTED.key(self.key(&["run_id"]));
            invocation
                .key(self.key(&["run", ""]))
                .key(self.key(&["runs"]))
                .key(self.key(&["runs", installation]))
                .key(request_set)
                .key(self.key(&["max_token"]))
                .arg(task_key)
                .arg(token);
            for (field, value) in fields {
                invocation.arg(*field).arg(value);
            }
            invocation.invoke(conn)
        })
    }
}

/// `installation/task`, the field of a task in the per-task hashes.
fn task_key(installation: &str, task: &str) -> String {
    format!("{installation}/{task}")
}

/// A stored run hash as `sluice tasks` prints it.
fn task_run(fields: &HashMap<String, String>) -> Option<TaskRun> {
    let number = |name: &str| fields.get(name).and_then(|v| v.parse::<i64>().ok());
    Some(TaskRun {
        id: number("id")?,
        installation: fields.get("installation")?.clone(),
        task: fields.get("task")?.clone(),
        trigger: fields.get("trigger")?.clone(),
        scheduled_at: rfc3339(number("scheduled_at_ms")?),
        started_at: number("started_at_ms").map(rfc3339),
        ended_at: number("ended_at_ms").map(rfc3339),
        outcome: fields.get("outcome")?.clone(),
        error: fields.get("error").cloned(),
        fencing_token: number("fencing_token").map(|t| t as u64),
        holder: fields.get("holder").cloned(),
    })
}

impl TaskHistory for RedisHistory {
    fn last_tick(&self, installation: &str, task: &str) -> Result<Option<i64>, HistoryError> {
        self.with(|conn| {
            redis::cmd("HGET")
                .arg(self.key(&["last_tick"]))
                .arg(task_key(installation, task))
                .query(conn)
        })
    }

    fn set_last_tick(&self, installation: &str, task: &str, tick: i64) -> Result<(), HistoryError> {
        self.with(|conn| {
            SET_LAST_TICK
                .key(self.key(&["last_tick"]))
                .arg(task_key(installation, task))
                .arg(tick)
                .invoke::<i64>(conn)
        })
        .map(drop)
    }

    fn record_schedule(
        &self,
        installation: &str,
        task: &str,
        schedule: &Schedule,
    ) -> Result<(), HistoryError> {
        let value = format!("{}\t{}", schedule.text, schedule.zone());
        self.with(|conn| {
            redis::cmd("HSET")
                .arg(self.key(&["schedule"]))
                .arg(task_key(installation, task))
                .arg(value)
                .exec(conn)
        })
    }

    fn schedules(&self, installation: Option<&str>) -> Result<Vec<TaskSchedule>, HistoryError> {
        let (schedules, ticks): (HashMap<String, String>, HashMap<String, i64>) =
            self.with(|conn| {
                Ok((
                    redis::cmd("HGETALL")
                        .arg(self.key(&["schedule"]))
                        .query(conn)?,
                    redis::cmd("HGETALL")
                        .arg(self.key(&["last_tick"]))
                        .query(conn)?,
                ))
            })?;
        let now = chrono::Utc::now();
        let mut rows: Vec<TaskSchedule> = schedules
            .into_iter()
            .filter_map(|(key, value)| {
                let (inst, task) = key.rsplit_once('/')?;
                let (schedule, time_zone) = value.split_once('\t')?;
                let next_tick = Schedule::parse(schedule, time_zone)
                    .ok()
                    .and_then(|s| s.after(now))
                    .map(|t| rfc3339(t.timestamp_millis()));
                Some(TaskSchedule {
                    installation: inst.to_owned(),
                    task: task.to_owned(),
                    schedule: schedule.to_owned(),
                    time_zone: time_zone.to_owned(),
                    last_tick: rfc3339(ticks.get(&key).copied().unwrap_or_default()),
                    next_tick,
                })
            })
            .filter(|row| installation.is_none_or(|i| row.installation == i))
            .collect();
        rows.sort_by(|a, b| (&a.installation, &a.task).cmp(&(&b.installation, &b.task)));
        Ok(rows)
    }

    fn run_started(&self, run: &NewRun<'_>) -> Result<i64, HistoryError> {
        let mut fields = vec![
            ("installation", run.installation.to_owned()),
            ("task", run.task.to_owned()),
            ("trigger", run.trigger.label().to_owned()),
            ("scheduled_at_ms", run.scheduled_at.to_string()),
            ("started_at_ms", now_ms().to_string()),
            ("outcome", "running".to_owned()),
            ("fencing_token", run.fencing_token.to_string()),
            ("holder", run.holder.to_owned()),
        ];
        if let Some(request) = run.request {
            fields.push(("request_id", request.to_string()));
        }
        self.record_run(
            run.installation,
            &task_key(run.installation, run.task),
            run.fencing_token,
            run.request,
            &fields,
        )
    }

    fn run_ended(&self, id: i64, error: Option<&str>) -> Result<(), HistoryError> {
        let refused: Option<(u64, u64)> = self.with(|conn| {
            let answer: redis::Value = RUN_ENDED
                .key(self.key(&["run", &id.to_string()]))
                .key(self.key(&["max_token"]))
                .arg(now_ms())
                .arg(if error.is_some() { "failed" } else { "ok" })
                .arg(error.unwrap_or_default())
                .invoke(conn)?;
            Ok(redis::from_redis_value::<(u64, u64)>(answer).ok())
        })?;
        match refused {
            Some((mine, newest)) => Err(fenced(id, mine, newest)),
            None => Ok(()),
        }
    }

    fn missed(
        &self,
        installation: &str,
        task: &str,
        scheduled_at: i64,
        why: &str,
    ) -> Result<(), HistoryError> {
        let fields = [
            ("installation", installation.to_owned()),
            ("task", task.to_owned()),
            ("trigger", "schedule".to_owned()),
            ("scheduled_at_ms", scheduled_at.to_string()),
            ("outcome", "missed".to_owned()),
            ("error", why.to_owned()),
        ];
        self.record_run(
            installation,
            &task_key(installation, task),
            0,
            None,
            &fields,
        )
        .map(drop)
    }

    fn interrupted(&self, installation: &str, holder: &str) -> Result<(), HistoryError> {
        self.with(|conn| {
            INTERRUPTED
                .key(self.key(&["runs", installation]))
                .key(self.key(&["run", ""]))
                .arg(holder)
                .arg(now_ms())
                .invoke::<i64>(conn)
        })
        .map(drop)
    }

    fn request_run(&self, installation: &str, task: &str) -> Result<i64, HistoryError> {
        self.with(|conn| {
            let id: i64 = redis::cmd("INCR")
                .arg(self.key(&["request_id"]))
                .query(conn)?;
            redis::pipe()
                .atomic()
                .hset_multiple(
                    self.key(&["request", &id.to_string()]),
                    &[("installation", installation), ("task", task)],
                )
                .ignore()
                .rpush(self.key(&["requests", installation]), id)
                .ignore()
                .exec(conn)?;
            Ok(id)
        })
    }

    fn take_request(&self, installation: &str) -> Result<Option<(i64, String)>, HistoryError> {
        self.with(|conn| {
            let Some(id): Option<i64> = redis::cmd("LPOP")
                .arg(self.key(&["requests", installation]))
                .query(conn)?
            else {
                return Ok(None);
            };
            let request = self.key(&["request", &id.to_string()]);
            redis::cmd("HSET")
                .arg(&request)
                .arg("taken_at_ms")
                .arg(now_ms())
                .exec(conn)?;
            let task: Option<String> = redis::cmd("HGET").arg(&request).arg("task").query(conn)?;
            Ok(task.map(|task| (id, task)))
        })
    }

    fn request_taken(&self, id: i64) -> Result<bool, HistoryError> {
        self.with(|conn| {
            redis::cmd("HEXISTS")
                .arg(self.key(&["request", &id.to_string()]))
                .arg("taken_at_ms")
                .query(conn)
        })
    }

    fn runs(
        &self,
        installation: Option<&str>,
        request: Option<i64>,
        limit: usize,
    ) -> Result<Vec<TaskRun>, HistoryError> {
        let index = match (request, installation) {
            (Some(request), _) => self.key(&["runs", "request", &request.to_string()]),
            (None, Some(installation)) => self.key(&["runs", installation]),
            (None, None) => self.key(&["runs"]),
        };
        let mut runs: Vec<TaskRun> = self.with(|conn| {
            let ids: Vec<i64> = redis::cmd("ZREVRANGE")
                .arg(&index)
                .arg(0)
                .arg(limit.saturating_sub(1) as i64)
                .query(conn)?;
            let mut runs = Vec::with_capacity(ids.len());
            for id in ids {
                let fields: HashMap<String, String> = redis::cmd("HGETALL")
                    .arg(self.key(&["run", &id.to_string()]))
                    .query(conn)?;
                runs.extend(task_run(&fields));
            }
            Ok(runs)
        })?;
        runs.retain(|run| installation.is_none_or(|i| run.installation == i));
        runs.reverse();
        Ok(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::testing::TestRedis;
    use crate::schedule::history::tests::keeps_the_contract;

    #[test]
    fn the_redis_history_keeps_the_contract() {
        let test = TestRedis::start();
        keeps_the_contract(&RedisHistory::new(test.redis.clone()));
    }
}

//! The job queue on Redis: a job queued on one node runs on any node, never on two at once,
//! keeping the contract of [`crate::schedule::jobs`].
//!
//! Keys (after the prefix, under `jobs:`): `job:<id>` hashes; per installation (hash-tagged, so
//! a Redis Cluster keeps them together) a sorted set of queued ids by due time (`queued`; ties
//! in id order, and ids are time-ordered UUIDv7, so in order of queueing), and sets of `running`
//! and `failed` ids; `installations`, the set of installations with jobs, for listings. Each
//! change is one script, so a claim, a fenced finish or a re-queue is atomic.

use super::Redis;
use crate::schedule::jobs::{JobError, JobQueue, JobStatus, MAX_QUEUED, Outcome, QueuedJob};
use crate::store::{now_ms, rfc3339};
use redis::Script;
use std::collections::HashMap;
use std::sync::LazyLock;

/// `KEYS`: job, queued, installations; `ARGV`: id, installation, name, payload, run at, now, cap.
static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[7]) then return redis.error_reply('FULL') end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'installation', ARGV[2], 'name', ARGV[3],
  'payload', ARGV[4], 'run_at_ms', ARGV[5], 'created_at_ms', ARGV[6], 'attempts', 0, 'status', 'queued')
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"#,
    )
});

/// `KEYS`: queued, running; `ARGV`: job key prefix, now, holder, token. The claimed job's
/// `{id, name, payload, run_at_ms, attempts}`, or nothing.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local id = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, 1)[1]
if not id then return false end
local job = ARGV[1] .. id
redis.call('ZREM', KEYS[1], id)
redis.call('SADD', KEYS[2], id)
local attempts = redis.call('HINCRBY', job, 'attempts', 1)
redis.call('HSET', job, 'status', 'running', 'holder', ARGV[3], 'fencing_token', ARGV[4], 'updated_at_ms', ARGV[2])
local fields = redis.call('HMGET', job, 'name', 'payload', 'run_at_ms')
return {id, fields[1], fields[2], fields[3], attempts}
"#,
    )
});

/// `KEYS`: job, queued, running, failed; `ARGV`: holder, token, outcome (`done`, `retry`,
/// `failed`), error, retry at, now. 1 if recorded, 0 if the claim is not the caller's.
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local job = redis.call('HMGET', KEYS[1], 'id', 'status', 'holder', 'fencing_token')
if job[2] ~= 'running' or job[3] ~= ARGV[1] or job[4] ~= ARGV[2] then return 0 end
redis.call('SREM', KEYS[3], job[1])
if ARGV[3] == 'done' then
  redis.call('DEL', KEYS[1])
elseif ARGV[3] == 'retry' then
  redis.call('HSET', KEYS[1], 'status', 'queued', 'holder', '', 'run_at_ms', ARGV[5], 'last_error', ARGV[4], 'updated_at_ms', ARGV[6])
  redis.call('ZADD', KEYS[2], ARGV[5], job[1])
else
  redis.call('HSET', KEYS[1], 'status', 'failed', 'holder', '', 'last_error', ARGV[4], 'updated_at_ms', ARGV[6])
  redis.call('SADD', KEYS[4], job[1])
end
return 1
"#,
    )
});

/// Moves the ids of set `KEYS[1]` (those of holder `ARGV[2]`, only id `ARGV[3]`, or those
/// claimed under a token below `ARGV[6]`, where given) back to the queue `KEYS[2]`, due at
/// their time or `ARGV[4]`; `ARGV[1]` is the job key prefix, `ARGV[5]` whether attempts start
/// again. How many moved.
static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local moved = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local job = ARGV[1] .. id
  local holder, run_at, token = unpack(redis.call('HMGET', job, 'holder', 'run_at_ms', 'fencing_token'))
  if (ARGV[2] == '' or holder == ARGV[2]) and (ARGV[3] == '' or id == ARGV[3])
     and (ARGV[6] == '' or tonumber(token or '0') < tonumber(ARGV[6])) then
    if ARGV[4] ~= '' then run_at = ARGV[4] end
    redis.call('HSET', job, 'status', 'queued', 'holder', '', 'run_at_ms', run_at)
    if ARGV[5] == '1' then redis.call('HSET', job, 'attempts', 0) end
    redis.call('SREM', KEYS[1], id)
    redis.call('ZADD', KEYS[2], run_at, id)
    moved = moved + 1
  end
end
return moved
"#,
    )
});

/// Deletes the jobs of the `failed` set `KEYS[1]` (at most `ARGV[3]` of them, looked at in
/// random order) that failed before `ARGV[2]`; `ARGV[1]` is the job key prefix. How many.
static PRUNE_FAILED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local pruned = 0
for _, id in ipairs(redis.call('SRANDMEMBER', KEYS[1], ARGV[3])) do
  local job = ARGV[1] .. id
  if tonumber(redis.call('HGET', job, 'updated_at_ms') or '0') < tonumber(ARGV[2]) then
    redis.call('DEL', job)
    redis.call('SREM', KEYS[1], id)
    pruned = pruned + 1
  end
end
return pruned
"#,
    )
});

/// Which jobs of a set go back to the queue.
enum Which<'a> {
    /// Those `holder` claimed.
    Holder(&'a str),
    /// That one, or all.
    Id(Option<&'a str>),
    /// Those claimed under a token below this.
    Below(u64),
}

/// Jobs on Redis.
pub struct RedisJobs {
    redis: Redis,
}

impl RedisJobs {
    /// The job queue on `redis`.
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut all = vec!["jobs"];
        all.extend_from_slice(parts);
        self.redis.key(&all)
    }

    /// The key of `set` (`queued`, `running`, `failed`) of `installation`.
    fn set(&self, installation: &str, set: &str) -> String {
        self.key(&[&format!("{{{installation}}}"), set])
    }

    fn job(&self, id: &str) -> String {
        self.key(&["job", id])
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, JobError> {
        self.redis
            .with(f)
            .map_err(|e| JobError::Unavailable(e.message))
    }

    /// Deletes jobs that failed for good before `before_ms`, at most `limit` per installation;
    /// how many it deleted.
    pub fn prune_failed(&self, before_ms: i64, limit: i64) -> Result<usize, JobError> {
        self.with(|conn| {
            let installations: Vec<String> = redis::cmd("SMEMBERS")
                .arg(self.key(&["installations"]))
                .query(conn)?;
            let mut pruned = 0;
            for installation in installations {
                pruned += PRUNE_FAILED
                    .key(self.set(&installation, "failed"))
                    .arg(self.job(""))
                    .arg(before_ms)
                    .arg(limit)
                    .invoke::<usize>(conn)?;
            }
            Ok(pruned)
        })
    }

    /// Moves jobs of `installation` from `set` back to the queue (see [`REQUEUE`]).
    fn requeue(
        &self,
        installation: &str,
        set: &str,
        which: Which<'_>,
        due: Option<i64>,
    ) -> Result<usize, JobError> {
        let (holder, id, below) = match which {
            Which::Holder(holder) => (holder, "", String::new()),
            Which::Id(id) => ("", id.unwrap_or_default(), String::new()),
            Which::Below(token) => ("", "", token.to_string()),
        };
        self.with(|conn| {
            REQUEUE
                .key(self.set(installation, set))
                .key(self.set(installation, "queued"))
                .arg(self.job(""))
                .arg(holder)
                .arg(id)
                .arg(due.map(|d| d.to_string()).unwrap_or_default())
                .arg(if due.is_some() { "1" } else { "0" })
                .arg(below)
                .invoke(conn)
        })
    }
}

impl JobQueue for RedisJobs {
    fn enqueue(
        &self,
        installation: &str,
        name: &str,
        payload: &str,
        run_at: i64,
    ) -> Result<String, JobError> {
        let id = uuid::Uuid::now_v7().to_string();
        let queued = self.redis.with(|conn| {
            ENQUEUE
                .key(self.job(&id))
                .key(self.set(installation, "queued"))
                .key(self.key(&["installations"]))
                .arg(&id)
                .arg(installation)
                .arg(name)
                .arg(payload)
                .arg(run_at)
                .arg(now_ms())
                .arg(MAX_QUEUED)
                .invoke::<i64>(conn)
        });
        match queued {
            Ok(_) => Ok(id),
            Err(error) if error.message.contains("FULL") => {
                Err(JobError::Full(installation.to_owned()))
            }
            Err(error) => Err(JobError::Unavailable(error.message)),
        }
    }

    fn claim(
        &self,
        installation: &str,
        holder: &str,
        token: u64,
        now: i64,
    ) -> Result<Option<QueuedJob>, JobError> {
        let claimed: Option<(String, String, String, i64, u32)> = self.with(|conn| {
            CLAIM
                .key(self.set(installation, "queued"))
                .key(self.set(installation, "running"))
                .arg(self.job(""))
                .arg(now)
                .arg(holder)
                .arg(token)
                .invoke(conn)
        })?;
        Ok(
            claimed.map(|(id, name, payload, run_at, attempts)| QueuedJob {
                id,
                name,
                payload,
                run_at,
                attempts,
            }),
        )
    }

    fn finish(
        &self,
        id: &str,
        holder: &str,
        token: u64,
        outcome: Outcome<'_>,
    ) -> Result<bool, JobError> {
        let installation: Option<String> = self.with(|conn| {
            redis::cmd("HGET")
                .arg(self.job(id))
                .arg("installation")
                .query(conn)
        })?;
        let Some(installation) = installation else {
            return Ok(false);
        };
        let (kind, error, retry_at) = match outcome {
            Outcome::Done => ("done", "", 0),
            Outcome::Retry(error, at) => ("retry", error, at),
            Outcome::Failed(error) => ("failed", error, 0),
        };
        self.with(|conn| {
            FINISH
                .key(self.job(id))
                .key(self.set(&installation, "queued"))
                .key(self.set(&installation, "running"))
                .key(self.set(&installation, "failed"))
                .arg(holder)
                .arg(token)
                .arg(kind)
                .arg(error)
                .arg(retry_at)
                .arg(now_ms())
                .invoke::<i64>(conn)
        })
        .map(|recorded| recorded == 1)
    }

    fn next_due(&self, installation: &str) -> Result<Option<i64>, JobError> {
        let first: Vec<(String, i64)> = self.with(|conn| {
            redis::cmd("ZRANGE")
                .arg(self.set(installation, "queued"))
                .arg(0)
                .arg(0)
                .arg("WITHSCORES")
                .query(conn)
        })?;
        Ok(first.first().map(|(_, due)| *due))
    }

    fn running(&self, installation: &str) -> Result<bool, JobError> {
        self.with(|conn| {
            redis::cmd("SCARD")
                .arg(self.set(installation, "running"))
                .query::<i64>(conn)
                .map(|n| n > 0)
        })
    }

    fn requeue_interrupted(&self, installation: &str, holder: &str) -> Result<usize, JobError> {
        self.requeue(installation, "running", Which::Holder(holder), None)
    }

    fn requeue_fenced(&self, installation: &str, token: u64) -> Result<usize, JobError> {
        self.requeue(installation, "running", Which::Below(token), None)
    }

    fn retry_failed(&self, installation: &str, id: Option<&str>) -> Result<usize, JobError> {
        self.requeue(installation, "failed", Which::Id(id), Some(now_ms()))
    }

    fn list(&self, installation: Option<&str>) -> Result<Vec<JobStatus>, JobError> {
        let installations: Vec<String> = match installation {
            Some(installation) => vec![installation.to_owned()],
            None => self.with(|conn| {
                redis::cmd("SMEMBERS")
                    .arg(self.key(&["installations"]))
                    .query(conn)
            })?,
        };
        let mut jobs: Vec<(i64, String, JobStatus)> = Vec::new();
        self.with(|conn| {
            for installation in &installations {
                let mut ids: Vec<String> = redis::cmd("ZRANGE")
                    .arg(self.set(installation, "queued"))
                    .arg(0)
                    .arg(-1)
                    .query(conn)?;
                for set in ["running", "failed"] {
                    let more: Vec<String> = redis::cmd("SMEMBERS")
                        .arg(self.set(installation, set))
                        .query(conn)?;
                    ids.extend(more);
                }
                for id in ids {
                    let fields: HashMap<String, String> =
                        redis::cmd("HGETALL").arg(self.job(&id)).query(conn)?;
                    jobs.extend(job_status(&fields));
                }
            }
            Ok(())
        })?;
        jobs.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        Ok(jobs.into_iter().map(|(_, _, job)| job).collect())
    }
}

/// A stored job as `sluice jobs` prints it, with its due time and id to sort by.
fn job_status(fields: &HashMap<String, String>) -> Option<(i64, String, JobStatus)> {
    let run_at: i64 = fields.get("run_at_ms")?.parse().ok()?;
    let payload = fields.get("payload")?.clone();
    let id = fields.get("id")?.clone();
    Some((
        run_at,
        id.clone(),
        JobStatus {
            id,
            installation: fields.get("installation")?.clone(),
            name: fields.get("name")?.clone(),
            payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
            run_at: rfc3339(run_at),
            attempts: fields.get("attempts")?.parse().ok()?,
            status: fields.get("status")?.clone(),
            last_error: fields.get("last_error").cloned(),
            holder: fields.get("holder").filter(|h| !h.is_empty()).cloned(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::testing::TestRedis;
    use crate::schedule::jobs::tests::{keeps_the_contract, two_runners_claim_each_job_once};

    #[test]
    fn the_redis_queue_keeps_the_contract_and_two_nodes_claim_each_job_once() {
        let test = TestRedis::start();
        keeps_the_contract(&RedisJobs::new(test.redis.clone()));
        let settings = test.settings();
        two_runners_claim_each_job_once(&|| {
            Box::new(RedisJobs::new(
                crate::redis::Redis::connect(&settings).unwrap(),
            ))
        });
    }
}

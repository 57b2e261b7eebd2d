//! The export state on Redis, where every exporter node sees it, keeping the contract of
//! [`crate::export::state`].
//!
//! Keys (after the prefix, under `exports:`): `installations`, the set of registered
//! installations; per installation, with the installation as hash tag: `{<installation>}` (a
//! hash: team, cursor, counters, last error and success, `token`, the largest fencing token
//! written under, and `holder`, the node that claimed it), `{<installation>}:batch` (the batch in flight, a hash),
//! `{<installation>}:dead` (dead-letter ids by the time they died) and
//! `{<installation>}:dead:<id>` (each dead letter, a hash). Every fenced write is one script
//! that checks the token first, so it is refused or done whole.

use super::Redis;
use crate::export::source::Cursor;
use crate::export::state::{
    Batch, ExportDeadLetter, ExportState, ExportStatus, Replayed, StateError, fenced,
};
use crate::store::{now_ms, rfc3339};
use redis::Script;
use std::collections::HashMap;
use std::sync::LazyLock;

/// The start of every fenced script: `KEYS[1]` is the installation's hash, `ARGV[1]` the
/// writer's token; returns `{mine, newest}` when a larger token was recorded.
const FENCE: &str = r#"
local mine = tonumber(ARGV[1])
local newest = tonumber(redis.call('HGET', KEYS[1], 'token') or '0')
if mine < newest then return {mine, newest} end
redis.call('HSET', KEYS[1], 'token', ARGV[1])
"#;

/// A fenced script: [`FENCE`], then `body`.
fn fenced_script(body: &str) -> Script {
    Script::new(&format!("{FENCE}{body}\nreturn 1"))
}

/// The installation is held by node `ARGV[2]`.
static CLAIM: LazyLock<Script> =
    LazyLock::new(|| fenced_script("redis.call('HSET', KEYS[1], 'holder', ARGV[2])"));

/// The batch in flight `KEYS[2]` becomes the field/value pairs `ARGV[4..]`; a last error
/// `ARGV[3]` (unless empty) at `ARGV[2]` is the installation's too.
static RECORD: LazyLock<Script> = LazyLock::new(|| {
    fenced_script(
        r#"
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'last_error', ARGV[3], 'last_error_ms', ARGV[2]) end
"#,
    )
});

/// The batch in flight `KEYS[2]` is done: the cursor becomes `ARGV[2]`, `ARGV[3]` events are
/// counted, delivered at `ARGV[4]`.
static DELIVERED: LazyLock<Script> = LazyLock::new(|| {
    fenced_script(
        r#"
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'cursor', ARGV[2], 'last_success_ms', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'exported_events', ARGV[3])
"#,
    )
});

/// The batch in flight `KEYS[2]` becomes dead letter `KEYS[4]` (id `ARGV[5]` in `KEYS[3]`, its
/// fields `ARGV[6..]`); the cursor becomes `ARGV[2]`, the error `ARGV[3]` at `ARGV[4]`.
static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
    fenced_script(
        r#"
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[4], unpack(ARGV, 6))
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'cursor', ARGV[2], 'last_error', ARGV[3], 'last_error_ms', ARGV[4])
"#,
    )
});

/// Dead letter `KEYS[3]` (id `ARGV[2]` in `KEYS[2]`) replayed: removed, `ARGV[3]` events counted
/// at `ARGV[4]`.
static REPLAY_DELIVERED: LazyLock<Script> = LazyLock::new(|| {
    fenced_script(
        r#"
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
redis.call('HINCRBY', KEYS[1], 'exported_events', ARGV[3])
redis.call('HSET', KEYS[1], 'last_success_ms', ARGV[4])
"#,
    )
});

/// Dead letter `KEYS[3]`'s replay failed with `ARGV[2]` after `ARGV[3]` attempts; tried again at
/// `ARGV[4]`, or given up when it is empty.
static REPLAY_FAILED: LazyLock<Script> = LazyLock::new(|| {
    fenced_script(
        r#"
if redis.call('EXISTS', KEYS[3]) == 0 then return 1 end
redis.call('HSET', KEYS[3], 'error', ARGV[2], 'replay_attempts', ARGV[3])
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[3], 'replay_next_ms', 'replay_requested_ms')
else
  redis.call('HSET', KEYS[3], 'replay_next_ms', ARGV[4])
end
"#,
    )
});

/// The dead letters of `KEYS[1]` (ids; hashes under the prefix `KEYS[2]`), or only `ARGV[2]`,
/// asked to be replayed at `ARGV[1]`; returns how many.
static REQUEST_REPLAY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
if ARGV[2] ~= '' then ids = redis.call('ZSCORE', KEYS[1], ARGV[2]) and {ARGV[2]} or {} end
for _, id in ipairs(ids) do
  redis.call('HSET', KEYS[2] .. id, 'replay_requested_ms', ARGV[1], 'replay_attempts', 0, 'replay_next_ms', ARGV[1])
end
return #ids
"#,
    )
});

/// The dead letters of `KEYS[1]` (ids; hashes under the prefix `KEYS[2]`), or only `ARGV[1]`,
/// removed; returns how many.
static DISCARD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
if ARGV[1] ~= '' then ids = redis.call('ZSCORE', KEYS[1], ARGV[1]) and {ARGV[1]} or {} end
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('DEL', KEYS[2] .. id)
end
return #ids
"#,
    )
});

/// Deletes the dead letters of `KEYS[1]` (ids by the time they died; hashes under the prefix
/// `ARGV[1]`) that died before `ARGV[2]` and are not asked to be replayed, looking at most at
/// `ARGV[3]`. How many.
static PRUNE_DEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local pruned = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0, ARGV[3])) do
  local key = ARGV[1] .. id
  if not redis.call('HGET', key, 'replay_requested_ms') then
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], id)
    pruned = pruned + 1
  end
end
return pruned
"#,
    )
});

/// The export state on Redis.
pub struct RedisExportState {
    redis: Redis,
}

/// The fields of one hash.
type Fields = HashMap<String, String>;

impl RedisExportState {
    /// The state on `redis`.
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// `exports:{<installation>}` followed by `parts`.
    fn key(&self, installation: &str, parts: &[&str]) -> String {
        let tagged = format!("{{{installation}}}");
        let mut all = vec!["exports", &tagged];
        all.extend_from_slice(parts);
        self.redis.key(&all)
    }

    fn installations_key(&self) -> String {
        self.redis.key(&["exports", "installations"])
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StateError> {
        self.redis
            .with(f)
            .map_err(|e| StateError::Unavailable(e.message))
    }

    /// Runs the fenced `script` for `installation` under `token`, with `keys` after the
    /// installation's hash and `args` after the token.
    fn fenced(
        &self,
        script: &Script,
        installation: &str,
        token: u64,
        keys: &[String],
        args: &[String],
    ) -> Result<(), StateError> {
        let answer: redis::Value = self.with(|conn| {
            let mut invocation = script.key(self.key(installation, &[]));
            for key in keys {
                invocation.key(key);
            }
            invocation.arg(token);
            for arg in args {
                invocation.arg(arg);
            }
            invocation.invoke(conn)
        })?;
        match redis::from_redis_value::<(u64, u64)>(answer) {
            Ok((mine, newest)) => Err(fenced(installation, mine, newest)),
            Err(_) => Ok(()),
        }
    }

    fn hash(&self, key: String) -> Result<Fields, StateError> {
        self.with(|conn| redis::cmd("HGETALL").arg(key).query(conn))
    }

    /// The registered installations (only `installation`, if given and registered), sorted.
    fn installations(&self, only: Option<&str>) -> Result<Vec<String>, StateError> {
        let mut all: Vec<String> = self.with(|conn| {
            redis::cmd("SMEMBERS")
                .arg(self.installations_key())
                .query(conn)
        })?;
        all.retain(|i| only.is_none_or(|only| only == i));
        all.sort();
        Ok(all)
    }

    /// Deletes dead letters that died before `before_ms` and are not being replayed, at most
    /// `limit` per installation; how many it deleted.
    pub fn prune_dead_letters(&self, before_ms: i64, limit: i64) -> Result<usize, StateError> {
        let mut pruned = 0;
        for installation in self.installations(None)? {
            pruned += self.with(|conn| {
                PRUNE_DEAD
                    .key(self.key(&installation, &["dead"]))
                    .arg(self.key(&installation, &["dead", ""]))
                    .arg(before_ms)
                    .arg(limit)
                    .invoke::<usize>(conn)
            })?;
        }
        Ok(pruned)
    }

    /// The dead letters of `installation`, oldest first, as their hashes.
    fn dead(&self, installation: &str) -> Result<Vec<Fields>, StateError> {
        let ids: Vec<String> = self.with(|conn| {
            redis::cmd("ZRANGE")
                .arg(self.key(installation, &["dead"]))
                .arg(0)
                .arg(-1)
                .query(conn)
        })?;
        ids.iter()
            .map(|id| self.hash(self.key(installation, &["dead", id])))
            .collect()
    }
}

/// A number field of `fields` (zero if missing).
fn number(fields: &Fields, name: &str) -> i64 {
    optional(fields, name).unwrap_or(0)
}

fn optional(fields: &Fields, name: &str) -> Option<i64> {
    fields.get(name).and_then(|v| v.parse().ok())
}

/// The field/value pairs of `batch`'s range and creation.
fn range_fields(batch: &Batch) -> Vec<String> {
    [
        ("id", batch.id.clone()),
        ("team_id", batch.team_id.to_string()),
        ("first_cursor", batch.first.to_string()),
        ("last_cursor", batch.last.to_string()),
        ("created_at_ms", batch.created_at_ms.to_string()),
    ]
    .into_iter()
    .flat_map(|(field, value)| [field.to_owned(), value])
    .collect()
}

/// A batch from its hash (`attempts`, `next` and `error` name the fields of its attempts);
/// `None` if there is none.
fn batch(fields: &Fields, attempts: &str, next: &str, error: &str) -> Option<Batch> {
    Some(Batch {
        id: fields.get("id")?.clone(),
        team_id: number(fields, "team_id") as u64,
        first: Cursor::from_recorded(fields.get("first_cursor")?.clone()),
        last: Cursor::from_recorded(fields.get("last_cursor")?.clone()),
        created_at_ms: number(fields, "created_at_ms"),
        attempts: number(fields, attempts) as u32,
        next_attempt_ms: number(fields, next),
        last_error: fields.get(error).cloned(),
    })
}

impl ExportState for RedisExportState {
    fn register(&mut self, installation: &str, team_id: u64) -> Result<(), StateError> {
        let key = self.key(installation, &[]);
        self.with(|conn| {
            redis::pipe()
                .cmd("HSETNX")
                .arg(&key)
                .arg("team_id")
                .arg(team_id)
                .cmd("HSETNX")
                .arg(&key)
                .arg("cursor")
                .arg(Cursor::start().as_str())
                .cmd("SADD")
                .arg(self.installations_key())
                .arg(installation)
                .exec(conn)
        })
    }

    fn claim(&mut self, installation: &str, token: u64, holder: &str) -> Result<(), StateError> {
        self.fenced(&CLAIM, installation, token, &[], &[holder.to_owned()])
    }

    fn cursor(&mut self, installation: &str) -> Result<Cursor, StateError> {
        let cursor: Option<String> = self.with(|conn| {
            redis::cmd("HGET")
                .arg(self.key(installation, &[]))
                .arg("cursor")
                .query(conn)
        })?;
        cursor.map(Cursor::from_recorded).ok_or_else(|| {
            StateError::Unavailable(format!(
                "export installation {installation} is not registered"
            ))
        })
    }

    fn in_flight(&mut self, installation: &str) -> Result<Option<Batch>, StateError> {
        let fields = self.hash(self.key(installation, &["batch"]))?;
        Ok(batch(&fields, "attempts", "next_attempt_ms", "last_error"))
    }

    fn record(&mut self, installation: &str, batch: &Batch, token: u64) -> Result<(), StateError> {
        let mut args = vec![
            now_ms().to_string(),
            batch.last_error.clone().unwrap_or_default(),
        ];
        args.extend(range_fields(batch));
        args.extend([
            "attempts".to_owned(),
            batch.attempts.to_string(),
            "next_attempt_ms".to_owned(),
            batch.next_attempt_ms.to_string(),
        ]);
        if let Some(error) = &batch.last_error {
            args.extend(["last_error".to_owned(), error.clone()]);
        }
        let keys = [self.key(installation, &["batch"])];
        self.fenced(&RECORD, installation, token, &keys, &args)
    }

    fn delivered(
        &mut self,
        installation: &str,
        batch: &Batch,
        exported: u64,
        token: u64,
    ) -> Result<(), StateError> {
        let keys = [self.key(installation, &["batch"])];
        let args = [
            batch.last.to_string(),
            exported.to_string(),
            now_ms().to_string(),
        ];
        self.fenced(&DELIVERED, installation, token, &keys, &args)
    }

    fn dead_letter(
        &mut self,
        installation: &str,
        batch: &Batch,
        error: &str,
        token: u64,
    ) -> Result<(), StateError> {
        let now = now_ms().to_string();
        let keys = [
            self.key(installation, &["batch"]),
            self.key(installation, &["dead"]),
            self.key(installation, &["dead", &batch.id]),
        ];
        let mut args = vec![
            batch.last.to_string(),
            error.to_owned(),
            now.clone(),
            batch.id.clone(),
        ];
        args.extend(range_fields(batch));
        args.extend(
            [
                ("attempts", batch.attempts.to_string()),
                ("error", error.to_owned()),
                ("dead_at_ms", now),
            ]
            .into_iter()
            .flat_map(|(field, value)| [field.to_owned(), value]),
        );
        self.fenced(&DEAD_LETTER, installation, token, &keys, &args)
    }

    fn request_replay(
        &mut self,
        installation: &str,
        batch: Option<&str>,
    ) -> Result<usize, StateError> {
        self.with(|conn| {
            REQUEST_REPLAY
                .key(self.key(installation, &["dead"]))
                .key(self.key(installation, &["dead", ""]))
                .arg(now_ms())
                .arg(batch.unwrap_or_default())
                .invoke(conn)
        })
    }

    fn discard(&mut self, installation: &str, batch: Option<&str>) -> Result<usize, StateError> {
        self.with(|conn| {
            DISCARD
                .key(self.key(installation, &["dead"]))
                .key(self.key(installation, &["dead", ""]))
                .arg(batch.unwrap_or_default())
                .invoke(conn)
        })
    }

    fn due_replay(&mut self, installation: &str, now: i64) -> Result<Option<Batch>, StateError> {
        Ok(self.dead(installation)?.iter().find_map(|fields| {
            optional(fields, "replay_next_ms")
                .filter(|at| *at <= now && fields.contains_key("replay_requested_ms"))
                .and_then(|_| batch(fields, "replay_attempts", "replay_next_ms", "-"))
        }))
    }

    fn replayed(
        &mut self,
        installation: &str,
        batch: &Batch,
        result: Replayed<'_>,
        token: u64,
    ) -> Result<(), StateError> {
        match result {
            Ok(exported) => {
                let keys = [
                    self.key(installation, &["dead"]),
                    self.key(installation, &["dead", &batch.id]),
                ];
                let args = [batch.id.clone(), exported.to_string(), now_ms().to_string()];
                self.fenced(&REPLAY_DELIVERED, installation, token, &keys, &args)
            }
            Err((error, retry_at)) => {
                let keys = [
                    self.key(installation, &["dead"]),
                    self.key(installation, &["dead", &batch.id]),
                ];
                let args = [
                    error.to_owned(),
                    batch.attempts.to_string(),
                    retry_at.map_or_else(String::new, |at| at.to_string()),
                ];
                self.fenced(&REPLAY_FAILED, installation, token, &keys, &args)
            }
        }
    }

    fn recorded(&mut self) -> Result<Vec<ExportStatus>, StateError> {
        self.installations(None)?
            .into_iter()
            .map(|installation| {
                let state = self.hash(self.key(&installation, &[]))?;
                let batch = self.hash(self.key(&installation, &["batch"]))?;
                let dead: u64 = self.with(|conn| {
                    redis::cmd("ZCARD")
                        .arg(self.key(&installation, &["dead"]))
                        .query(conn)
                })?;
                Ok(ExportStatus {
                    team_id: number(&state, "team_id") as u64,
                    cursor: state.get("cursor").cloned().unwrap_or_default(),
                    exported_events: number(&state, "exported_events") as u64,
                    lag_events: 0,
                    lag_seconds: 0.0,
                    last_success: optional(&state, "last_success_ms").map(rfc3339),
                    last_error: state.get("last_error").cloned(),
                    last_error_at: optional(&state, "last_error_ms").map(rfc3339),
                    batch: batch.get("id").cloned(),
                    attempts: number(&batch, "attempts") as u32,
                    retrying_until: optional(&batch, "next_attempt_ms")
                        .filter(|_| batch.contains_key("last_error"))
                        .map(rfc3339),
                    dead_letters: dead,
                    holder: state.get("holder").cloned(),
                    fencing_token: number(&state, "token") as u64,
                    installation,
                })
            })
            .collect()
    }

    fn dead_letters(
        &mut self,
        installation: Option<&str>,
    ) -> Result<Vec<ExportDeadLetter>, StateError> {
        let mut letters = Vec::new();
        for installation in self.installations(installation)? {
            for fields in self.dead(&installation)? {
                let text = |name: &str| fields.get(name).cloned().unwrap_or_default();
                letters.push((
                    number(&fields, "dead_at_ms"),
                    ExportDeadLetter {
                        installation: installation.clone(),
                        batch: text("id"),
                        team_id: number(&fields, "team_id") as u64,
                        first_cursor: text("first_cursor"),
                        last_cursor: text("last_cursor"),
                        attempts: number(&fields, "attempts") as u32,
                        error: text("error"),
                        dead_at: rfc3339(number(&fields, "dead_at_ms")),
                        replaying: fields.contains_key("replay_requested_ms"),
                    },
                ));
            }
        }
        letters.sort_by(|(a, x), (b, y)| (a, &x.batch).cmp(&(b, &y.batch)));
        Ok(letters.into_iter().map(|(_, letter)| letter).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::testing::TestRedis;

    #[test]
    fn the_redis_export_state_keeps_the_contract_across_nodes() {
        let test = TestRedis::start();
        let other = crate::redis::Redis::connect(&test.settings()).unwrap();
        crate::export::state::tests::keeps_the_contract(
            &mut RedisExportState::new(test.redis.clone()),
            &mut RedisExportState::new(other),
        );
    }
}

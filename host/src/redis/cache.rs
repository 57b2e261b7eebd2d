//! The `cache` capability on Redis: each plugin key is a Redis key of its own, so expiry,
//! counters and lists are Redis's own (`SET EX`, `INCRBY`, `LPUSH`...), shared by every node.
//!
//! The caps of the embedded backend hold here too. Value sizes, keys and push counts are checked
//! before Redis is called; the list length and the namespace's byte budget are kept by scripts
//! that change a key and its accounting atomically: a hash of each key's size and a total per
//! namespace. A key that expired is still counted until the namespace is full, when the script
//! drops the sizes of keys that no longer exist and tries again, as the embedded backend purges
//! expired keys.

use super::Redis;
use crate::capabilities::cache::Backend;
use redis::Script;
use sluice_abi::limits::{
    self, ErrorKind, HostError, MAX_CACHE_LIST_LEN, MAX_CACHE_NAMESPACE_BYTES,
    MAX_CACHE_VALUE_BYTES,
};
use std::sync::LazyLock;

/// What every script starts with. `KEYS[1]` is the plugin's key, `KEYS[2]` the namespace's size
/// hash (the bytes each key is counted for), `KEYS[3]` its byte total; `ARGV[1]` is the plugin's key name, `ARGV[2]` the prefix of
/// the namespace's keys (to check which still exist), `ARGV[3]` the namespace's byte budget.
const PRELUDE: &str = r#"
local function size_of()
  return tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
end
local function account(old, new)
  if new == 0 then redis.call('HDEL', KEYS[2], ARGV[1]) else redis.call('HSET', KEYS[2], ARGV[1], new) end
  redis.call('INCRBY', KEYS[3], new - old)
end
local function reserve(added)
  local budget = tonumber(ARGV[3])
  if tonumber(redis.call('GET', KEYS[3]) or '0') + added <= budget then return end
  local gone = 0
  for _, name in ipairs(redis.call('HKEYS', KEYS[2])) do
    if name ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. name) == 0 then
      gone = gone + tonumber(redis.call('HGET', KEYS[2], name))
      redis.call('HDEL', KEYS[2], name)
    end
  end
  redis.call('DECRBY', KEYS[3], gone)
  if tonumber(redis.call('GET', KEYS[3]) or '0') + added > budget then
    return redis.error_reply('TOOLARGE the cache namespace is full (' .. budget .. ' bytes)')
  end
end
"#;

/// Builds a script from the prelude and `body`.
fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// `SET key value [PX ttl]`: `ARGV[4]` the value, `ARGV[5]` the TTL in ms or empty.
static SET: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local old = size_of()
local new = #ARGV[1] + #ARGV[4]
local full = reserve(new - old)
if full then return full end
if ARGV[5] == '' then redis.call('SET', KEYS[1], ARGV[4]) else redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5]) end
account(old, new)
return 1
"#,
    )
});

/// `DEL key`; whether it existed.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local old = size_of()
local existed = redis.call('DEL', KEYS[1])
account(old, 0)
return existed
"#,
    )
});

/// `INCRBY key by` (`ARGV[4]`), keeping the key's expiry; the new value as text (Lua numbers
/// would round 64-bit integers). Room is made for the longest integer (20 bytes) first.
static INCREMENT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local old = size_of()
local full = reserve(#ARGV[1] + 20 - old)
if full then return full end
redis.call('INCRBY', KEYS[1], ARGV[4])
local value = redis.call('GET', KEYS[1])
account(old, #ARGV[1] + #value)
return value
"#,
    )
});

/// `PEXPIRE key ttl` (`ARGV[4]`, ms; 0 deletes); whether the key exists.
static EXPIRE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local old = size_of()
if ARGV[4] == '0' then
  local existed = redis.call('DEL', KEYS[1])
  account(old, 0)
  return existed
end
return redis.call('PEXPIRE', KEYS[1], ARGV[4])
"#,
    )
});

/// `LPUSH key values...` (`ARGV[5..]`) within the list cap (`ARGV[4]`); the new length.
static LIST_PUSH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'list' then
  return redis.error_reply('WRONGTYPE the key holds a value of the other type (value vs list)')
end
local len = redis.call('LLEN', KEYS[1])
local count = #ARGV - 4
if len + count > tonumber(ARGV[4]) then
  return redis.error_reply('TOOLARGE the list would exceed ' .. ARGV[4] .. ' elements')
end
local old = size_of()
local new = old
if len == 0 then new = #ARGV[1] end
for i = 5, #ARGV do new = new + #ARGV[i] end
local full = reserve(new - old)
if full then return full end
local pushed = redis.call('LPUSH', KEYS[1], unpack(ARGV, 5))
account(old, new)
return pushed
"#,
    )
});

/// `LREM key count value` (`ARGV[4]`, `ARGV[5]`); how many were removed.
static LIST_REMOVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local old = size_of()
local removed = redis.call('LREM', KEYS[1], ARGV[4], ARGV[5])
if redis.call('EXISTS', KEYS[1]) == 0 then account(old, 0) else account(old, old - removed * #ARGV[5]) end
return removed
"#,
    )
});

/// `LPOP key count` (`ARGV[4]`); the values popped.
static LIST_POP: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local old = size_of()
local popped = redis.call('LPOP', KEYS[1], ARGV[4])
if not popped then return {} end
local freed = 0
for _, value in ipairs(popped) do freed = freed + #value end
if redis.call('EXISTS', KEYS[1]) == 0 then account(old, 0) else account(old, old - freed) end
return popped
"#,
    )
});

/// Cache namespaces in Redis, shared by every node.
pub struct RedisCache {
    redis: Redis,
}

impl RedisCache {
    /// The cache in `redis`.
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// The Redis key of `key` in `namespace`.
    fn key(&self, namespace: &str, key: &str) -> String {
        format!("{}{key}", self.key_prefix(namespace))
    }

    /// What every key of `namespace` starts with.
    fn key_prefix(&self, namespace: &str) -> String {
        self.redis.key(&["cache", &format!("{{{namespace}}}"), "k"]) + ":"
    }

    /// Runs `script` on `key` of `namespace` with `args` after the prelude's.
    fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        namespace: &str,
        key: &str,
        args: &[&[u8]],
    ) -> Result<T, HostError> {
        limits::check_key(key)?;
        let sizes = self
            .redis
            .key(&["cache", &format!("{{{namespace}}}"), "sizes"]);
        let total = self
            .redis
            .key(&["cache", &format!("{{{namespace}}}"), "bytes"]);
        self.redis.with(|conn| {
            let mut invocation = script.key(self.key(namespace, key));
            invocation
                .key(sizes)
                .key(total)
                .arg(key)
                .arg(self.key_prefix(namespace))
                .arg(MAX_CACHE_NAMESPACE_BYTES);
            for arg in args {
                invocation.arg(*arg);
            }
            invocation.invoke(conn)
        })
    }
}

/// The error of a value of the other type, as the embedded backend words it.
fn wrong_type(error: HostError) -> HostError {
    match error.kind {
        ErrorKind::Invalid if error.message.contains("WRONGTYPE") => HostError::new(
            ErrorKind::Invalid,
            "the key holds a value of the other type (value vs list)",
        ),
        _ => error,
    }
}

impl Backend for RedisCache {
    fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        limits::check_key(key)?;
        self.redis
            .with(|conn| redis::cmd("GET").arg(self.key(ns, key)).query(conn))
            .map_err(wrong_type)
    }

    fn set(&self, ns: &str, key: &str, value: Vec<u8>, ttl: Option<u32>) -> Result<(), HostError> {
        limits::check_value(&value, MAX_CACHE_VALUE_BYTES)?;
        let ttl = ttl.map_or_else(String::new, |s| (u64::from(s) * 1000).to_string());
        self.run::<i64>(&SET, ns, key, &[&value, ttl.as_bytes()])
            .map(drop)
    }

    fn delete(&self, ns: &str, key: &str) -> Result<bool, HostError> {
        self.run::<i64>(&DELETE, ns, key, &[]).map(|n| n > 0)
    }

    fn increment(&self, ns: &str, key: &str, by: i64) -> Result<i64, HostError> {
        let value: String = self
            .run(&INCREMENT, ns, key, &[by.to_string().as_bytes()])
            .map_err(|error| match error.kind {
                ErrorKind::Invalid if error.message.contains("overflow") => {
                    HostError::new(ErrorKind::Invalid, "increment overflows a 64-bit integer")
                }
                ErrorKind::Invalid if !error.message.contains("WRONGTYPE") => {
                    HostError::new(ErrorKind::Invalid, "value is not an integer")
                }
                _ => wrong_type(error),
            })?;
        value
            .parse()
            .map_err(|_| HostError::new(ErrorKind::Invalid, "value is not an integer"))
    }

    fn expire(&self, ns: &str, key: &str, ttl: u32) -> Result<bool, HostError> {
        let ttl = (u64::from(ttl) * 1000).to_string();
        self.run::<i64>(&EXPIRE, ns, key, &[ttl.as_bytes()])
            .map(|n| n > 0)
    }

    fn list_push(&self, ns: &str, key: &str, values: Vec<Vec<u8>>) -> Result<u32, HostError> {
        limits::check_push(&values)?;
        let cap = MAX_CACHE_LIST_LEN.to_string();
        let mut args: Vec<&[u8]> = vec![cap.as_bytes()];
        args.extend(values.iter().map(Vec::as_slice));
        self.run(&LIST_PUSH, ns, key, &args).map_err(wrong_type)
    }

    fn list_range(
        &self,
        ns: &str,
        key: &str,
        start: i64,
        stop: i64,
    ) -> Result<Vec<Vec<u8>>, HostError> {
        limits::check_key(key)?;
        self.redis
            .with(|conn| {
                redis::cmd("LRANGE")
                    .arg(self.key(ns, key))
                    .arg(start)
                    .arg(stop)
                    .query(conn)
            })
            .map_err(wrong_type)
    }

    fn list_length(&self, ns: &str, key: &str) -> Result<u32, HostError> {
        limits::check_key(key)?;
        self.redis
            .with(|conn| redis::cmd("LLEN").arg(self.key(ns, key)).query(conn))
            .map_err(wrong_type)
    }

    fn list_remove(&self, ns: &str, key: &str, count: i64, value: &[u8]) -> Result<u32, HostError> {
        let count = count.to_string();
        self.run(&LIST_REMOVE, ns, key, &[count.as_bytes(), value])
            .map_err(wrong_type)
    }

    fn list_pop(&self, ns: &str, key: &str, count: u32) -> Result<Vec<Vec<u8>>, HostError> {
        let count = count.to_string();
        self.run(&LIST_POP, ns, key, &[count.as_bytes()])
            .map_err(wrong_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::testing::TestRedis;

    #[test]
    fn a_redis_restart_is_unavailable_meanwhile_then_served_again() {
        let mut test = TestRedis::start();
        let cache = RedisCache::new(test.redis.clone());
        assert_eq!(cache.increment("p/1", "n", 1).unwrap(), 1);
        test.server.kill();
        let down = cache.increment("p/1", "n", 1).unwrap_err();
        assert_eq!(down.kind, ErrorKind::Unavailable, "{down:?}");
        assert!(down.message.contains("Redis"), "{down:?}");
        test.server.resume();
        // The pool drops the broken connections and opens new ones; what Redis acknowledged
        // before (fsynced to its append-only file) is still there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let value = loop {
            match cache.increment("p/1", "n", 1) {
                Ok(value) => break value,
                Err(error) => assert!(std::time::Instant::now() < deadline, "{error:?}"),
            }
        };
        assert_eq!(value, 2);
    }

    #[test]
    fn the_redis_backend_behaves_as_the_memory_backend() {
        let server = TestRedis::start_volatile();
        crate::capabilities::cache::tests::behaves_as_a_cache(&RedisCache::new(
            server.redis.clone(),
        ));
    }
}

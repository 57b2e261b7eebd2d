//! The `storage` capability on Redis: one hash per installation, shared by every node.
//!
//! How it keeps the contract of [`crate::capabilities::storage`]: the key cap is checked in the
//! same script that writes (a new key beyond [`MAX_STORAGE_KEYS`] is refused, an existing one
//! always fits); increments are optimistic transactions (`WATCH`, read, `MULTI`/`EXEC`, again if
//! another node wrote in between), computed in Rust with the embedded backend's integer rules;
//! listing sorts the hash's keys. **Durable when it returns** holds as far as Redis's own
//! persistence does: run it with `appendonly yes` and `appendfsync always` (or accept
//! `everysec`'s second) and a replica, as `examples/cluster/README.md` says.

use super::Redis;
use crate::capabilities::storage::Backend;
use redis::Script;
use sluice_abi::limits::{self, ErrorKind, HostError, MAX_LIST_KEYS, MAX_STORAGE_KEYS};
use std::sync::LazyLock;

/// `HSET hash key value` unless `key` is new and the hash has `ARGV[3]` keys already.
static SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return redis.error_reply('TOOLARGE installation already has ' .. ARGV[3] .. ' keys')
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#,
    )
});

/// Installations' key-value in Redis.
pub struct RedisStorage {
    redis: Redis,
}

impl RedisStorage {
    /// The storage in `redis`.
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    fn hash(&self, installation: &str) -> String {
        self.redis.key(&["storage", &format!("{{{installation}}}")])
    }

    fn write(&self, installation: &str, key: &str, value: &[u8]) -> Result<(), HostError> {
        self.redis
            .with(|conn| {
                SET.key(self.hash(installation))
                    .arg(key)
                    .arg(value)
                    .arg(MAX_STORAGE_KEYS)
                    .invoke::<i64>(conn)
            })
            .map(drop)
            .map_err(|error| match error.kind {
                ErrorKind::TooLarge => HostError::new(
                    ErrorKind::TooLarge,
                    format!("installation {installation} already has {MAX_STORAGE_KEYS} keys"),
                ),
                _ => error,
            })
    }
}

impl Backend for RedisStorage {
    fn get(&self, installation: &str, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.redis.with(|conn| {
            redis::cmd("HGET")
                .arg(self.hash(installation))
                .arg(key)
                .query(conn)
        })
    }

    fn set(&self, installation: &str, key: &str, value: &[u8]) -> Result<(), HostError> {
        self.write(installation, key, value)
    }

    fn delete(&self, installation: &str, key: &str) -> Result<bool, HostError> {
        self.redis.with(|conn| {
            redis::cmd("HDEL")
                .arg(self.hash(installation))
                .arg(key)
                .query::<i64>(conn)
                .map(|n| n > 0)
        })
    }

    fn increment(&self, installation: &str, key: &str, by: i64) -> Result<i64, HostError> {
        let hash = self.hash(installation);
        // On one connection: WATCH, read, compute here, write only if nobody wrote in between.
        self.redis.with(|conn| {
            loop {
                redis::cmd("WATCH").arg(&hash).exec(conn)?;
                let current: Option<Vec<u8>> =
                    redis::cmd("HGET").arg(&hash).arg(key).query(conn)?;
                let keys: usize = redis::cmd("HLEN").arg(&hash).query(conn)?;
                let refused = match limits::add_to_integer(current.as_deref(), by) {
                    Err(error) => Some(error),
                    Ok(_) if current.is_none() && keys >= MAX_STORAGE_KEYS => Some(HostError::new(
                        ErrorKind::TooLarge,
                        format!("installation {installation} already has {MAX_STORAGE_KEYS} keys"),
                    )),
                    Ok(value) => {
                        let written: Option<()> = redis::pipe()
                            .atomic()
                            .hset(&hash, key, value.to_string())
                            .ignore()
                            .query(conn)?;
                        if written.is_some() {
                            return Ok(Ok(value));
                        }
                        None
                    }
                };
                if let Some(error) = refused {
                    redis::cmd("UNWATCH").exec(conn)?;
                    return Ok(Err(error));
                }
            }
        })?
    }

    fn list_keys(
        &self,
        installation: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, HostError> {
        let mut keys: Vec<String> = self
            .redis
            .with(|conn| redis::cmd("HKEYS").arg(self.hash(installation)).query(conn))?;
        keys.retain(|k| k.starts_with(prefix) && after.is_none_or(|after| k.as_str() > after));
        keys.sort();
        keys.truncate(limit.min(MAX_LIST_KEYS) as usize);
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::testing::TestRedis;

    #[test]
    fn the_redis_backend_keeps_the_storage_contract_and_its_key_cap() {
        let server = TestRedis::start();
        let store = RedisStorage::new(server.redis.clone());
        crate::capabilities::storage::tests::keeps_the_contract(&store);
        // Another connection (another node) sees what was written.
        let other = RedisStorage::new(server.redis.clone());
        assert_eq!(other.get("a", "n").unwrap(), Some(b"5".to_vec()));

        server
            .redis
            .with(|conn| {
                let mut pipe = redis::pipe();
                for i in 0..MAX_STORAGE_KEYS {
                    pipe.hset(store.hash("full"), format!("k{i}"), "").ignore();
                }
                pipe.exec(conn)
            })
            .unwrap();
        assert_eq!(
            store.set("full", "one-more", b"").unwrap_err().kind,
            ErrorKind::TooLarge
        );
        assert_eq!(
            store.increment("full", "one-more", 1).unwrap_err().kind,
            ErrorKind::TooLarge
        );
        store.set("full", "k1", b"replaced").unwrap();
        store.set("other", "k1", b"other installation").unwrap();
    }
}

//! The run lock on Redis (after redis.io's single-instance lock, with fencing): every scheduler
//! and exporter node asks the same Redis, so one node at a time holds a task's or an export's
//! lease.
//!
//! How it keeps the contract of [`crate::schedule::lock`]: acquiring is one script that sets the
//! lease key only if it is absent (`SET NX PX` semantics) and takes the next fencing token with
//! `INCR` of the key's counter, stored as the lease's value; extending (`PEXPIRE`) and releasing
//! (`DEL`) are scripts that act only while the value is still the caller's token. Tokens grow
//! as long as Redis keeps its data (persistence on), so a holder paused past its lease carries a
//! token smaller than its successor's, which fenced writers refuse.

use super::Redis;
use crate::schedule::lock::{Lease, LockError, RunLock};
use redis::Script;
use std::sync::LazyLock;
use std::time::Duration;

/// The lease `KEYS[1]` for `ARGV[1]` ms if free, with the next token of counter `KEYS[2]`.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'PX', ARGV[1])
return token
"#,
    )
});

/// `PEXPIRE KEYS[1] ARGV[2]` if its value is still token `ARGV[1]`.
static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"#,
    )
});

/// `DEL KEYS[1]` if its value is still token `ARGV[1]`.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

/// Leases on Redis.
pub struct RedisLock {
    redis: Redis,
}

impl RedisLock {
    /// The lock on `redis`.
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// The lease key of `key` and its token counter.
    fn keys(&self, key: &str) -> (String, String) {
        let tagged = format!("{{{key}}}");
        (
            self.redis.key(&["lock", &tagged]),
            self.redis.key(&["lock", &tagged, "token"]),
        )
    }
}

fn unavailable(error: sluice_abi::limits::HostError) -> LockError {
    LockError::Unavailable(error.message)
}

impl RunLock for RedisLock {
    fn acquire(&self, key: &str, ttl: Duration) -> Result<Option<Lease>, LockError> {
        let (lease, counter) = self.keys(key);
        let token: Option<u64> = self
            .redis
            .with(|conn| {
                ACQUIRE
                    .key(lease)
                    .key(counter)
                    .arg(ttl.as_millis().max(1) as u64)
                    .invoke(conn)
            })
            .map_err(unavailable)?;
        Ok(token.map(|fencing_token| Lease {
            key: key.to_owned(),
            fencing_token,
        }))
    }

    fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool, LockError> {
        let (key, _) = self.keys(&lease.key);
        self.redis
            .with(|conn| {
                EXTEND
                    .key(key)
                    .arg(lease.fencing_token)
                    .arg(ttl.as_millis().max(1) as u64)
                    .invoke::<i64>(conn)
            })
            .map(|extended| extended == 1)
            .map_err(unavailable)
    }

    fn release(&self, lease: &Lease) {
        let (key, _) = self.keys(&lease.key);
        let released = self.redis.with(|conn| {
            RELEASE
                .key(key)
                .arg(lease.fencing_token)
                .invoke::<i64>(conn)
        });
        if let Err(error) = released {
            // It expires on its own.
            tracing::warn!(key = %lease.key, error = %error.message, "cannot release a lease; it will expire");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::testing::TestRedis;
    use crate::schedule::lock::tests::keeps_the_contract;

    #[test]
    fn the_redis_lock_keeps_the_contract_for_every_node_and_its_tokens_outlive_a_restart() {
        let mut test = TestRedis::start();
        let last = keeps_the_contract(&RedisLock::new(test.redis.clone()));
        // Another node (another pool) sees the same leases and counters.
        let other = RedisLock::new(crate::redis::Redis::connect(&test.settings()).unwrap());
        let held = RedisLock::new(test.redis.clone())
            .acquire("i/v", Duration::from_secs(60))
            .unwrap()
            .unwrap();
        assert_eq!(other.acquire("i/v", Duration::from_secs(60)).unwrap(), None);
        other.release(&held);
        test.server.kill();
        assert!(matches!(
            other.acquire("i/t", Duration::from_secs(1)),
            Err(LockError::Unavailable(_))
        ));
        test.server.resume();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let lease = loop {
            if let Ok(Some(lease)) = other.acquire("i/t", Duration::from_secs(60)) {
                break lease;
            }
            assert!(std::time::Instant::now() < deadline, "never acquired again");
        };
        assert!(
            lease.fencing_token > last,
            "{} > {last}",
            lease.fencing_token
        );
    }
}

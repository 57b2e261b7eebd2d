//! Redis: where nodes share what must outlive a call and be the same on every node. Each backend
//! here implements an embedded seam with the same contract: the `cache` ([`cache`]) and
//! `storage` ([`storage`]) capabilities, the run lock ([`lock`]), the task history
//! ([`history`]), the job queue ([`jobs`]) and the export state ([`exports`]).
//!
//! Every key sluice writes starts with the configured prefix (`sluice` by default), so several
//! deployments can share one Redis; keys of one namespace share a hash tag (`{...}`), so a
//! Redis Cluster keeps each namespace on one node and its scripts stay atomic.

pub mod cache;
pub mod exports;
pub mod history;
pub mod jobs;
pub mod lock;
pub mod retention;
pub mod storage;

use redis::{ErrorKind as RedisErrorKind, RedisError};
use sluice_abi::limits::{ErrorKind, HostError};
use std::time::Duration;

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// What every key starts with.
    pub prefix: String,
    /// Most connections open at once.
    pub pool_size: u32,
}

/// A pool of connections to one Redis, cheap to clone.
#[derive(Clone)]
pub struct Redis {
    pool: r2d2::Pool<redis::Client>,
    prefix: String,
}

/// How long a call waits for a free connection (or a new one) before it fails: short, so that
/// a plugin calling a Redis that is down gets `unavailable` well within its deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

impl Redis {
    /// Connects to `settings.url` and checks that Redis answers.
    pub fn connect(settings: &RedisSettings) -> Result<Self, String> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| format!("{} is not a usable Redis URL: {e}", settings.url))?;
        let pool = r2d2::Pool::builder()
            .max_size(settings.pool_size)
            .min_idle(Some(0))
            .connection_timeout(CONNECT_TIMEOUT)
            // No PING before every call: a broken connection fails its call and is dropped.
            .test_on_check_out(false)
            .build_unchecked(client);
        let redis = Self {
            pool,
            prefix: settings.prefix.clone(),
        };
        redis
            .with(|conn| redis::cmd("PING").query::<String>(conn))
            .map_err(|e| format!("Redis at {} does not answer: {}", settings.url, e.message))?;
        Ok(redis)
    }

    /// `parts` joined by `:` after the prefix.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// Runs `f` on a pooled connection; Redis's errors become [`HostError`]s.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, HostError> {
        let mut conn = self
            .pool
            .get()
            .map_err(|e| HostError::new(ErrorKind::Unavailable, format!("Redis: {e}")))?;
        f(&mut conn).map_err(host_error)
    }
}

/// What a Redis error means to a plugin: a refused value (wrong type, not an integer, a cap of
/// sluice's scripts) or an unavailable backend.
fn host_error(error: RedisError) -> HostError {
    let message = error.detail().unwrap_or_default().to_owned();
    match (error.kind(), error.code()) {
        (_, Some("TOOLARGE")) => HostError::new(ErrorKind::TooLarge, message),
        (RedisErrorKind::Server(_), _) | (_, Some("WRONGTYPE")) => {
            HostError::new(ErrorKind::Invalid, error.to_string())
        }
        _ => HostError::new(ErrorKind::Unavailable, format!("Redis: {error}")),
    }
}

#[cfg(test)]
#[path = "../../../tests/e2e/redis_server.rs"]
mod redis_server;

/// A Redis server for the backends' tests, and a pool to it with a prefix of its own.
#[cfg(test)]
pub(crate) mod testing {
    use super::redis_server::RedisServer;
    use super::{Redis, RedisSettings};

    /// A running test server and a pool to it.
    pub struct TestRedis {
        /// The server, killed when this is dropped.
        pub server: RedisServer,
        /// A pool to it.
        pub redis: Redis,
    }

    impl TestRedis {
        pub fn start() -> Self {
            Self::on(RedisServer::start())
        }

        /// On a server without persistence, as a cache's Redis may be.
        pub fn start_volatile() -> Self {
            Self::on(RedisServer::start_volatile())
        }

        fn on(server: RedisServer) -> Self {
            let redis = Redis::connect(&settings(&server)).unwrap();
            Self { server, redis }
        }

        /// Settings for another pool to the same server (another node).
        pub fn settings(&self) -> RedisSettings {
            settings(&self.server)
        }
    }

    fn settings(server: &RedisServer) -> RedisSettings {
        RedisSettings {
            url: server.url.clone(),
            prefix: "test".into(),
            pool_size: 4,
        }
    }
}

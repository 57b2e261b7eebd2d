//! `[redis]`: state every node shares, on Redis instead of this process's memory and SQLite: the
//! `cache` and `storage` capabilities.

use super::Collector;
use crate::redis::RedisSettings;
use serde::{Deserialize, Serialize};

/// `[redis]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` (or `SLUICE_REDIS_URL`, to keep a password out
    /// of the file).
    #[serde(serialize_with = "super::redacted_url")]
    pub url: String,
    /// What every key sluice writes starts with, so deployments can share a Redis.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// Most connections a process opens.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
}

fn default_prefix() -> String {
    "sluice".into()
}

fn default_pool_size() -> u32 {
    16
}

impl RedisConfig {
    /// Where Redis is.
    pub fn settings(&self) -> RedisSettings {
        RedisSettings {
            url: self.url.clone(),
            prefix: self.key_prefix.clone(),
            pool_size: self.pool_size,
        }
    }
}

/// Reads `[redis]`, if the file has it.
pub(super) fn load(
    c: &mut Collector,
    table: &toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<RedisConfig> {
    let mut redis: RedisConfig = c.value("redis", table.get("redis")?.clone())?;
    if let Some(url) = env("SLUICE_REDIS_URL") {
        redis.url = url;
    }
    if !(redis.url.starts_with("redis://") || redis.url.starts_with("rediss://")) {
        c.add(
            "redis.url",
            "must be a redis:// URL such as redis://127.0.0.1:6379/0",
        );
    }
    if redis.key_prefix.is_empty() || redis.key_prefix.contains(['{', '}', ' ']) {
        c.add(
            "redis.key_prefix",
            "must be a non-empty name without braces or spaces",
        );
    }
    if !(1..=1_024).contains(&redis.pool_size) {
        c.add("redis.pool_size", "must be between 1 and 1024");
    }
    Some(redis)
}

//! `cache`: fast, non-durable key-value, counters and lists with expiry, shared by this plugin's
//! installations in one team (needs the `cache` grant). Semantics follow Redis; each function
//! names its Redis command.
//!
//! Natively, the host's own in-memory implementation, one per test thread.

use super::HostError;

macro_rules! cache_functions {
    ($($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $name($($arg: $ty),*) -> Result<$ret, HostError> {
                imp::$name($($arg),*)
            }
        )*
    };
}

cache_functions! {
    /// The value under `key`, if any and not expired (`GET`).
    fn get(key: &str) -> Option<Vec<u8>>;
    /// Stores `value`, expiring after `ttl_seconds` if given (`SET ... EX`).
    fn set(key: &str, value: &[u8], ttl_seconds: Option<u32>) -> ();
    /// Removes `key`; whether it existed (`DEL`).
    fn delete(key: &str) -> bool;
    /// Adds `by` to the integer under `key` (absent counts as 0) (`INCRBY`).
    fn increment(key: &str, by: i64) -> i64;
    /// Makes `key` expire after `ttl_seconds`; whether it exists (`EXPIRE`).
    fn expire(key: &str, ttl_seconds: u32) -> bool;
    /// Pushes `values` to the head of the list, in order; its new length (`LPUSH`).
    fn list_push(key: &str, values: &[Vec<u8>]) -> u32;
    /// Elements `start..=stop`, negative counting from the end (`LRANGE`).
    fn list_range(key: &str, start: i64, stop: i64) -> Vec<Vec<u8>>;
    /// Length of the list, 0 if absent (`LLEN`).
    fn list_length(key: &str) -> u32;
    /// Removes up to `count` elements equal to `value` (head first if > 0, tail first if < 0,
    /// all if 0); how many (`LREM`).
    fn list_remove(key: &str, count: i64, value: &[u8]) -> u32;
    /// Removes and returns up to `count` elements from the head (`LPOP`).
    fn list_pop(key: &str, count: u32) -> Vec<Vec<u8>>;
}

#[cfg(target_family = "wasm")]
mod imp {
    use super::super::{HostError, from_wit};
    use crate::bindings::sluice::plugin::cache;

    pub fn get(key: &str) -> Result<Option<Vec<u8>>, HostError> {
        cache::get(key).map_err(from_wit)
    }
    pub fn set(key: &str, value: &[u8], ttl_seconds: Option<u32>) -> Result<(), HostError> {
        cache::set(key, value, ttl_seconds).map_err(from_wit)
    }
    pub fn delete(key: &str) -> Result<bool, HostError> {
        cache::delete(key).map_err(from_wit)
    }
    pub fn increment(key: &str, by: i64) -> Result<i64, HostError> {
        cache::increment(key, by).map_err(from_wit)
    }
    pub fn expire(key: &str, ttl_seconds: u32) -> Result<bool, HostError> {
        cache::expire(key, ttl_seconds).map_err(from_wit)
    }
    pub fn list_push(key: &str, values: &[Vec<u8>]) -> Result<u32, HostError> {
        cache::list_push(key, values).map_err(from_wit)
    }
    pub fn list_range(key: &str, start: i64, stop: i64) -> Result<Vec<Vec<u8>>, HostError> {
        cache::list_range(key, start, stop).map_err(from_wit)
    }
    pub fn list_length(key: &str) -> Result<u32, HostError> {
        cache::list_length(key).map_err(from_wit)
    }
    pub fn list_remove(key: &str, count: i64, value: &[u8]) -> Result<u32, HostError> {
        cache::list_remove(key, count, value).map_err(from_wit)
    }
    pub fn list_pop(key: &str, count: u32) -> Result<Vec<Vec<u8>>, HostError> {
        cache::list_pop(key, count).map_err(from_wit)
    }
}

#[cfg(not(target_family = "wasm"))]
mod imp {
    use super::HostError;
    use crate::testing::fakes;
    use std::time::Instant;

    pub fn get(key: &str) -> Result<Option<Vec<u8>>, HostError> {
        fakes::using("cache", |f| f.cache.get(key, Instant::now()))
    }
    pub fn set(key: &str, value: &[u8], ttl_seconds: Option<u32>) -> Result<(), HostError> {
        fakes::using("cache", |f| {
            f.cache
                .set(key, value.to_vec(), ttl_seconds, Instant::now())
        })
    }
    pub fn delete(key: &str) -> Result<bool, HostError> {
        fakes::using("cache", |f| f.cache.delete(key, Instant::now()))
    }
    pub fn increment(key: &str, by: i64) -> Result<i64, HostError> {
        fakes::using("cache", |f| f.cache.increment(key, by, Instant::now()))
    }
    pub fn expire(key: &str, ttl_seconds: u32) -> Result<bool, HostError> {
        fakes::using("cache", |f| {
            f.cache.expire(key, ttl_seconds, Instant::now())
        })
    }
    pub fn list_push(key: &str, values: &[Vec<u8>]) -> Result<u32, HostError> {
        fakes::using("cache", |f| {
            f.cache.list_push(key, values.to_vec(), Instant::now())
        })
    }
    pub fn list_range(key: &str, start: i64, stop: i64) -> Result<Vec<Vec<u8>>, HostError> {
        fakes::using("cache", |f| {
            f.cache.list_range(key, start, stop, Instant::now())
        })
    }
    pub fn list_length(key: &str) -> Result<u32, HostError> {
        fakes::using("cache", |f| f.cache.list_length(key, Instant::now()))
    }
    pub fn list_remove(key: &str, count: i64, value: &[u8]) -> Result<u32, HostError> {
        fakes::using("cache", |f| {
            f.cache.list_remove(key, count, value, Instant::now())
        })
    }
    pub fn list_pop(key: &str, count: u32) -> Result<Vec<Vec<u8>>, HostError> {
        fakes::using("cache", |f| f.cache.list_pop(key, count, Instant::now()))
    }
}

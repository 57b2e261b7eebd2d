//! `cache`: TTL key-value, counters and lists per (plugin, team), behind [`Backend`]. The
//! embedded backend keeps namespaces in memory ([`MemoryBackend`]); a Redis backend implements
//! the same trait at scale.

use super::{Capability, HasCapabilities, HasView, View, to_wit};
use crate::bindings::sluice::plugin::cache::{self, Host};
use crate::bindings::types;
use sluice_abi::cache::Namespace;
use sluice_abi::limits::{ErrorKind, HostError};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;
use wasmtime::component::Linker;

/// The `cache` capability.
pub const CAPABILITY: Capability = Capability {
    name: "cache",
    interface: "sluice:plugin/cache",
};

/// Where cache namespaces live. `namespace` is `<plugin>/<team>`; each operation follows the
/// Redis command named on it.
pub trait Backend: Send + Sync {
    /// `GET`.
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, HostError>;
    /// `SET [EX]`.
    fn set(
        &self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<u32>,
    ) -> Result<(), HostError>;
    /// `DEL`.
    fn delete(&self, namespace: &str, key: &str) -> Result<bool, HostError>;
    /// `INCRBY`.
    fn increment(&self, namespace: &str, key: &str, by: i64) -> Result<i64, HostError>;
    /// `EXPIRE`.
    fn expire(&self, namespace: &str, key: &str, ttl: u32) -> Result<bool, HostError>;
    /// `LPUSH`.
    fn list_push(&self, namespace: &str, key: &str, values: Vec<Vec<u8>>)
    -> Result<u32, HostError>;
    /// `LRANGE`.
    fn list_range(
        &self,
        namespace: &str,
        key: &str,
        start: i64,
        stop: i64,
    ) -> Result<Vec<Vec<u8>>, HostError>;
    /// `LLEN`.
    fn list_length(&self, namespace: &str, key: &str) -> Result<u32, HostError>;
    /// `LREM`.
    fn list_remove(
        &self,
        namespace: &str,
        key: &str,
        count: i64,
        value: &[u8],
    ) -> Result<u32, HostError>;
    /// `LPOP`.
    fn list_pop(&self, namespace: &str, key: &str, count: u32) -> Result<Vec<Vec<u8>>, HostError>;
}

/// Namespaces in this process's memory, lost on restart (as the contract allows).
#[derive(Default)]
pub struct MemoryBackend {
    namespaces: Mutex<HashMap<String, Namespace>>,
}

impl MemoryBackend {
    fn with<T>(
        &self,
        namespace: &str,
        f: impl FnOnce(&mut Namespace, Instant) -> Result<T, HostError>,
    ) -> Result<T, HostError> {
        let mut namespaces = self
            .namespaces
            .lock()
            .map_err(|_| HostError::new(ErrorKind::Unavailable, "cache lock poisoned"))?;
        let space = namespaces.entry(namespace.to_owned()).or_default();
        f(space, Instant::now())
    }
}

impl Backend for MemoryBackend {
    fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.with(ns, |n, now| n.get(key, now))
    }
    fn set(&self, ns: &str, key: &str, value: Vec<u8>, ttl: Option<u32>) -> Result<(), HostError> {
        self.with(ns, |n, now| n.set(key, value, ttl, now))
    }
    fn delete(&self, ns: &str, key: &str) -> Result<bool, HostError> {
        self.with(ns, |n, now| n.delete(key, now))
    }
    fn increment(&self, ns: &str, key: &str, by: i64) -> Result<i64, HostError> {
        self.with(ns, |n, now| n.increment(key, by, now))
    }
    fn expire(&self, ns: &str, key: &str, ttl: u32) -> Result<bool, HostError> {
        self.with(ns, |n, now| n.expire(key, ttl, now))
    }
    fn list_push(&self, ns: &str, key: &str, values: Vec<Vec<u8>>) -> Result<u32, HostError> {
        self.with(ns, |n, now| n.list_push(key, values, now))
    }
    fn list_range(
        &self,
        ns: &str,
        key: &str,
        start: i64,
        stop: i64,
    ) -> Result<Vec<Vec<u8>>, HostError> {
        self.with(ns, |n, now| n.list_range(key, start, stop, now))
    }
    fn list_length(&self, ns: &str, key: &str) -> Result<u32, HostError> {
        self.with(ns, |n, now| n.list_length(key, now))
    }
    fn list_remove(&self, ns: &str, key: &str, count: i64, value: &[u8]) -> Result<u32, HostError> {
        self.with(ns, |n, now| n.list_remove(key, count, value, now))
    }
    fn list_pop(&self, ns: &str, key: &str, count: u32) -> Result<Vec<Vec<u8>>, HostError> {
        self.with(ns, |n, now| n.list_pop(key, count, now))
    }
}

impl View<'_, ()> {
    /// Runs `f` on the cache backend in the namespace of the current installation's plugin and
    /// team, if `cache` is granted.
    fn cache<T>(
        &self,
        f: impl FnOnce(&dyn Backend, &str) -> Result<T, HostError>,
    ) -> Result<T, types::HostError> {
        self.ctx.check(&CAPABILITY).map_err(to_wit)?;
        let namespace = format!("{}/{}", self.ctx.plugin, self.ctx.team_id);
        f(&*self.ctx.services.cache, &namespace).map_err(to_wit)
    }
}

impl Host for View<'_, ()> {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, types::HostError> {
        self.journaled("cache.get", &key, || self.cache(|b, ns| b.get(ns, &key)))
    }
    fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl: Option<u32>,
    ) -> Result<(), types::HostError> {
        self.journaled("cache.set", (&key, &value, ttl), || {
            self.cache(|b, ns| b.set(ns, &key, value.clone(), ttl))
        })
    }
    fn delete(&mut self, key: String) -> Result<bool, types::HostError> {
        self.journaled("cache.delete", &key, || {
            self.cache(|b, ns| b.delete(ns, &key))
        })
    }
    fn increment(&mut self, key: String, by: i64) -> Result<i64, types::HostError> {
        self.journaled("cache.increment", (&key, by), || {
            self.cache(|b, ns| b.increment(ns, &key, by))
        })
    }
    fn expire(&mut self, key: String, ttl: u32) -> Result<bool, types::HostError> {
        self.journaled("cache.expire", (&key, ttl), || {
            self.cache(|b, ns| b.expire(ns, &key, ttl))
        })
    }
    fn list_push(&mut self, key: String, values: Vec<Vec<u8>>) -> Result<u32, types::HostError> {
        self.journaled("cache.list-push", (&key, &values), || {
            self.cache(|b, ns| b.list_push(ns, &key, values.clone()))
        })
    }
    fn list_range(
        &mut self,
        key: String,
        start: i64,
        stop: i64,
    ) -> Result<Vec<Vec<u8>>, types::HostError> {
        self.journaled("cache.list-range", (&key, start, stop), || {
            self.cache(|b, ns| b.list_range(ns, &key, start, stop))
        })
    }
    fn list_length(&mut self, key: String) -> Result<u32, types::HostError> {
        self.journaled("cache.list-length", &key, || {
            self.cache(|b, ns| b.list_length(ns, &key))
        })
    }
    fn list_remove(
        &mut self,
        key: String,
        count: i64,
        value: Vec<u8>,
    ) -> Result<u32, types::HostError> {
        self.journaled("cache.list-remove", (&key, count, &value), || {
            self.cache(|b, ns| b.list_remove(ns, &key, count, &value))
        })
    }
    fn list_pop(&mut self, key: String, count: u32) -> Result<Vec<Vec<u8>>, types::HostError> {
        self.journaled("cache.list-pop", (&key, count), || {
            self.cache(|b, ns| b.list_pop(ns, &key, count))
        })
    }
}

/// Adds `cache` to `linker`.
pub(super) fn add_to_linker<T: HasCapabilities>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    cache::add_to_linker::<T, HasView<()>>(linker, |data| data.capabilities().serving())
}

/// The behaviour every backend shows, which the memory and Redis backends both run.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sluice_abi::limits::{MAX_CACHE_LIST_LEN, MAX_CACHE_NAMESPACE_BYTES, MAX_CACHE_PUSH};
    use std::time::Duration;

    fn values(items: &[&str]) -> Vec<Vec<u8>> {
        items.iter().map(|v| v.as_bytes().to_vec()).collect()
    }

    fn kind<T: std::fmt::Debug>(result: Result<T, HostError>) -> ErrorKind {
        result.unwrap_err().kind
    }

    /// Values, counters, expiry, lists, namespaces and caps, on `cache` (which must be empty).
    pub(crate) fn behaves_as_a_cache(cache: &dyn Backend) {
        // Values, and namespaces apart.
        assert_eq!(cache.get("p/1", "k").unwrap(), None);
        cache.set("p/1", "k", b"v".to_vec(), None).unwrap();
        assert_eq!(cache.get("p/1", "k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(cache.get("p/2", "k").unwrap(), None, "another team");
        assert_eq!(cache.get("q/1", "k").unwrap(), None, "another plugin");
        assert!(cache.delete("p/1", "k").unwrap());
        assert!(!cache.delete("p/1", "k").unwrap());

        // Counters: from nothing, from text, keeping their expiry; refusals.
        assert_eq!(cache.increment("p/1", "n", 5).unwrap(), 5);
        assert_eq!(cache.increment("p/1", "n", -7).unwrap(), -2);
        cache
            .set("p/1", "n", b"9223372036854775806".to_vec(), None)
            .unwrap();
        assert_eq!(cache.increment("p/1", "n", 1).unwrap(), i64::MAX);
        assert_eq!(kind(cache.increment("p/1", "n", 1)), ErrorKind::Invalid);
        cache.set("p/1", "t", b"ten".to_vec(), None).unwrap();
        assert_eq!(kind(cache.increment("p/1", "t", 1)), ErrorKind::Invalid);
        assert_eq!(kind(cache.get("p/1", "")), ErrorKind::Invalid);

        // Expiry, also of counters after an increment; a TTL of 0 deletes.
        cache.set("p/1", "e", b"1".to_vec(), Some(1)).unwrap();
        cache.increment("p/1", "e", 1).unwrap();
        assert!(cache.expire("p/1", "n", 1).unwrap());
        assert!(!cache.expire("p/1", "missing", 1).unwrap());
        assert!(cache.expire("p/1", "t", 0).unwrap());
        assert_eq!(cache.get("p/1", "t").unwrap(), None);
        std::thread::sleep(Duration::from_millis(1_100));
        assert_eq!(cache.get("p/1", "e").unwrap(), None, "expired");
        assert_eq!(cache.get("p/1", "n").unwrap(), None, "expired");
        assert_eq!(cache.increment("p/1", "e", 1).unwrap(), 1, "starts again");

        // Lists: LPUSH order, ranges, length, removal, pop; the other type refused.
        assert_eq!(
            cache
                .list_push("p/1", "l", values(&["a", "b", "a", "c"]))
                .unwrap(),
            4
        );
        assert_eq!(
            cache.list_range("p/1", "l", 0, -1).unwrap(),
            values(&["c", "a", "b", "a"])
        );
        assert_eq!(
            cache.list_range("p/1", "l", -2, -1).unwrap(),
            values(&["b", "a"])
        );
        assert_eq!(cache.list_length("p/1", "l").unwrap(), 4);
        assert_eq!(cache.list_remove("p/1", "l", 0, b"a").unwrap(), 2);
        assert_eq!(cache.list_pop("p/1", "l", 1).unwrap(), values(&["c"]));
        assert_eq!(cache.list_pop("p/1", "l", 5).unwrap(), values(&["b"]));
        assert_eq!(cache.list_length("p/1", "l").unwrap(), 0);
        assert!(cache.list_pop("p/1", "l", 1).unwrap().is_empty());
        cache.set("p/1", "v", b"x".to_vec(), None).unwrap();
        assert_eq!(
            kind(cache.list_push("p/1", "v", values(&["a"]))),
            ErrorKind::Invalid
        );
        cache.list_push("p/1", "l", values(&["a"])).unwrap();
        assert_eq!(kind(cache.get("p/1", "l")), ErrorKind::Invalid);

        // Caps: one push, one list, one namespace (whose expired keys make room).
        let many = vec![b"x".to_vec(); MAX_CACHE_PUSH + 1];
        assert_eq!(
            kind(cache.list_push("p/1", "big", many)),
            ErrorKind::TooLarge
        );
        for _ in 0..MAX_CACHE_LIST_LEN / MAX_CACHE_PUSH {
            cache
                .list_push("p/1", "big", vec![b"x".to_vec(); MAX_CACHE_PUSH])
                .unwrap();
        }
        assert_eq!(
            kind(cache.list_push("p/1", "big", values(&["x"]))),
            ErrorKind::TooLarge
        );
        let mib = vec![b'x'; 1 << 20];
        let almost = vec![b'x'; (1 << 20) - 64];
        for i in 0..MAX_CACHE_NAMESPACE_BYTES / mib.len() {
            cache
                .set("f/1", &format!("k{i}"), almost.clone(), Some(1))
                .unwrap();
        }
        assert_eq!(
            kind(cache.set("f/1", "one-more", mib.clone(), None)),
            ErrorKind::TooLarge
        );
        cache.set("f/2", "other-team", mib.clone(), None).unwrap();
        std::thread::sleep(Duration::from_millis(1_100));
        cache.set("f/1", "one-more", mib, None).unwrap();
    }

    #[test]
    fn the_memory_backend_behaves_as_a_cache() {
        behaves_as_a_cache(&MemoryBackend::default());
    }
}

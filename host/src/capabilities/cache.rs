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
        self.cache(|b, ns| b.get(ns, &key))
    }
    fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl: Option<u32>,
    ) -> Result<(), types::HostError> {
        self.cache(|b, ns| b.set(ns, &key, value, ttl))
    }
    fn delete(&mut self, key: String) -> Result<bool, types::HostError> {
        self.cache(|b, ns| b.delete(ns, &key))
    }
    fn increment(&mut self, key: String, by: i64) -> Result<i64, types::HostError> {
        self.cache(|b, ns| b.increment(ns, &key, by))
    }
    fn expire(&mut self, key: String, ttl: u32) -> Result<bool, types::HostError> {
        self.cache(|b, ns| b.expire(ns, &key, ttl))
    }
    fn list_push(&mut self, key: String, values: Vec<Vec<u8>>) -> Result<u32, types::HostError> {
        self.cache(|b, ns| b.list_push(ns, &key, values))
    }
    fn list_range(
        &mut self,
        key: String,
        start: i64,
        stop: i64,
    ) -> Result<Vec<Vec<u8>>, types::HostError> {
        self.cache(|b, ns| b.list_range(ns, &key, start, stop))
    }
    fn list_length(&mut self, key: String) -> Result<u32, types::HostError> {
        self.cache(|b, ns| b.list_length(ns, &key))
    }
    fn list_remove(
        &mut self,
        key: String,
        count: i64,
        value: Vec<u8>,
    ) -> Result<u32, types::HostError> {
        self.cache(|b, ns| b.list_remove(ns, &key, count, &value))
    }
    fn list_pop(&mut self, key: String, count: u32) -> Result<Vec<Vec<u8>>, types::HostError> {
        self.cache(|b, ns| b.list_pop(ns, &key, count))
    }
}

/// Adds `cache` to `linker`.
pub(super) fn add_to_linker<T: HasCapabilities>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    cache::add_to_linker::<T, HasView<()>>(linker, |data| data.capabilities().serving())
}

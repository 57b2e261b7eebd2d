//! `storage`: durable key-value per installation, behind [`Backend`]. The embedded backend
//! ([`SqliteStorage`]) keeps it in its own SQLite file in the data directory
//! (`plugin-storage.sqlite`), every write committed with `synchronous=FULL` before it returns.
//!
//! # The contract every storage backend keeps
//!
//! - **Durable when it returns.** A write that returned `Ok` survives a crash of the process
//!   (and, at scale, of any one node).
//! - **Per installation.** `installation` (`team-<id>/<installation>`) is the namespace: no call
//!   reads or changes another installation's keys.
//! - **Atomic increments.** Two concurrent `increment`s of one key both count.
//! - **Caps.** At most [`MAX_STORAGE_KEYS`] keys per installation: a write of a new key beyond
//!   it is `too-large`, a write of an existing key always fits. Keys and values are checked
//!   by the capability before a backend sees them.
//! - **Ordered listing.** `list_keys` returns keys in byte order, at most [`MAX_LIST_KEYS`].
//! - Failures of the backend itself are `unavailable` (the plugin may retry).

use super::{Capability, HasCapabilities, HasView, View, to_wit};
use crate::bindings::sluice::plugin::storage::{self, Host};
use crate::bindings::types;
use crate::store::StoreError;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sluice_abi::limits::{
    self, ErrorKind, HostError, MAX_LIST_KEYS, MAX_STORAGE_KEYS, MAX_STORAGE_VALUE_BYTES,
};
use std::path::Path;
use std::sync::Mutex;
use wasmtime::component::Linker;

/// The `storage` capability.
pub const CAPABILITY: Capability = Capability {
    name: "storage",
    interface: "sluice:plugin/storage",
};

/// File name of the store in the data directory.
pub const FILE_NAME: &str = "plugin-storage.sqlite";

/// Where installations' durable key-value lives (see the module docs for the contract).
pub trait Backend: Send + Sync {
    /// The value of `key`.
    fn get(&self, installation: &str, key: &str) -> Result<Option<Vec<u8>>, HostError>;
    /// Stores `value` under `key`.
    fn set(&self, installation: &str, key: &str, value: &[u8]) -> Result<(), HostError>;
    /// Removes `key`; whether it existed.
    fn delete(&self, installation: &str, key: &str) -> Result<bool, HostError>;
    /// Adds `by` to the integer under `key` (absent counts as 0) and returns it.
    fn increment(&self, installation: &str, key: &str, by: i64) -> Result<i64, HostError>;
    /// Keys starting with `prefix`, in byte order, after `after`, at most `limit`.
    fn list_keys(
        &self,
        installation: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, HostError>;
}

/// The embedded key-value store of every installation.
pub struct SqliteStorage {
    conn: Mutex<Connection>,
}

fn unavailable(error: impl std::fmt::Display) -> HostError {
    HostError::new(ErrorKind::Unavailable, format!("storage failed: {error}"))
}

impl SqliteStorage {
    /// Opens (creating if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(FILE_NAME);
        let conn = Connection::open(&path).map_err(|e| StoreError::open(&path, e))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS storage (
                 installation TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                 PRIMARY KEY (installation, key)) WITHOUT ROWID;",
        )
        .map_err(|e| StoreError::open(&path, e))?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, HostError>,
    ) -> Result<T, HostError> {
        let mut conn = self.conn.lock().map_err(unavailable)?;
        f(&mut conn)
    }
}

impl Backend for SqliteStorage {
    fn get(&self, installation: &str, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.with(|conn| read(conn, installation, key))
    }

    fn set(&self, installation: &str, key: &str, value: &[u8]) -> Result<(), HostError> {
        self.with(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            write(&tx, installation, key, value)?;
            tx.commit().map_err(unavailable)
        })
    }

    fn delete(&self, installation: &str, key: &str) -> Result<bool, HostError> {
        self.with(|conn| {
            conn.execute(
                "DELETE FROM storage WHERE installation = ?1 AND key = ?2",
                params![installation, key],
            )
            .map(|n| n > 0)
            .map_err(unavailable)
        })
    }

    /// In one transaction, which takes the write lock before it reads (a transaction that read
    /// first could not take it later without failing at once).
    fn increment(&self, installation: &str, key: &str, by: i64) -> Result<i64, HostError> {
        self.with(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let current = read(&tx, installation, key)?;
            let value = limits::add_to_integer(current.as_deref(), by)?;
            write(&tx, installation, key, value.to_string().as_bytes())?;
            tx.commit().map_err(unavailable)?;
            Ok(value)
        })
    }

    fn list_keys(
        &self,
        installation: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, HostError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT key FROM storage WHERE installation = ?1 AND key >= ?2
                       AND substr(key, 1, length(?2)) = ?2 AND (?3 IS NULL OR key > ?3)
                     ORDER BY key LIMIT ?4",
                )
                .map_err(unavailable)?;
            let keys = stmt
                .query_map(
                    params![installation, prefix, after, limit.min(MAX_LIST_KEYS)],
                    |row| row.get(0),
                )
                .and_then(|rows| rows.collect())
                .map_err(unavailable)?;
            Ok(keys)
        })
    }
}

fn read(conn: &Connection, installation: &str, key: &str) -> Result<Option<Vec<u8>>, HostError> {
    conn.prepare_cached("SELECT value FROM storage WHERE installation = ?1 AND key = ?2")
        .and_then(|mut stmt| {
            stmt.query_row(params![installation, key], |row| row.get(0))
                .optional()
        })
        .map_err(unavailable)
}

/// Upserts `key`, refusing a new key beyond [`MAX_STORAGE_KEYS`].
fn write(conn: &Connection, installation: &str, key: &str, value: &[u8]) -> Result<(), HostError> {
    let updated = conn
        .execute(
            "UPDATE storage SET value = ?3 WHERE installation = ?1 AND key = ?2",
            params![installation, key, value],
        )
        .map_err(unavailable)?;
    if updated > 0 {
        return Ok(());
    }
    let keys: usize = conn
        .query_row(
            "SELECT count(*) FROM storage WHERE installation = ?1",
            params![installation],
            |row| row.get(0),
        )
        .map_err(unavailable)?;
    if keys >= MAX_STORAGE_KEYS {
        return Err(HostError::new(
            ErrorKind::TooLarge,
            format!("installation {installation} already has {MAX_STORAGE_KEYS} keys"),
        ));
    }
    conn.execute(
        "INSERT INTO storage (installation, key, value) VALUES (?1, ?2, ?3)",
        params![installation, key, value],
    )
    .map(drop)
    .map_err(unavailable)
}

impl View<'_, ()> {
    /// The backend, if `storage` is granted.
    fn storage(&self) -> Result<&dyn Backend, HostError> {
        self.ctx.check(&CAPABILITY)?;
        self.ctx
            .services
            .storage
            .as_deref()
            .ok_or_else(|| HostError::new(ErrorKind::Unavailable, "no storage in this host"))
    }
}

impl Host for View<'_, ()> {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, types::HostError> {
        self.journaled("storage.get", &key, || {
            limits::check_key(&key)
                .and_then(|()| self.storage()?.get(&self.ctx.installation, &key))
                .map_err(to_wit)
        })
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), types::HostError> {
        self.journaled("storage.set", (&key, &value), || {
            limits::check_key(&key)
                .and_then(|()| limits::check_value(&value, MAX_STORAGE_VALUE_BYTES))
                .and_then(|()| self.storage()?.set(&self.ctx.installation, &key, &value))
                .map_err(to_wit)
        })
    }

    fn delete(&mut self, key: String) -> Result<bool, types::HostError> {
        self.journaled("storage.delete", &key, || {
            limits::check_key(&key)
                .and_then(|()| self.storage()?.delete(&self.ctx.installation, &key))
                .map_err(to_wit)
        })
    }

    fn increment(&mut self, key: String, by: i64) -> Result<i64, types::HostError> {
        self.journaled("storage.increment", (&key, by), || {
            limits::check_key(&key)
                .and_then(|()| self.storage()?.increment(&self.ctx.installation, &key, by))
                .map_err(to_wit)
        })
    }

    fn list_keys(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<String>, types::HostError> {
        self.journaled("storage.list-keys", (&prefix, &after, limit), || {
            self.storage()
                .and_then(|s| s.list_keys(&self.ctx.installation, &prefix, after.as_deref(), limit))
                .map_err(to_wit)
        })
    }
}

/// Adds `storage` to `linker`.
pub(super) fn add_to_linker<T: HasCapabilities>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    storage::add_to_linker::<T, HasView<()>>(linker, |data| data.capabilities().serving())
}

/// The contract's tests, which every backend runs.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The contract every backend keeps (see the module docs), on `store`.
    pub(crate) fn keeps_the_contract(store: &dyn Backend) {
        store.set("a", "k", b"v").unwrap();
        assert_eq!(store.get("b", "k").unwrap(), None);
        assert_eq!(store.increment("a", "n", 2).unwrap(), 2);
        assert_eq!(store.increment("a", "n", 3).unwrap(), 5);
        assert_eq!(
            store.increment("a", "k", 1).unwrap_err().kind,
            ErrorKind::Invalid
        );
        for key in ["p/2", "p/1", "q/1", "p/3"] {
            store.set("a", key, b"").unwrap();
        }
        assert_eq!(
            store.list_keys("a", "p/", None, 10).unwrap(),
            ["p/1", "p/2", "p/3"]
        );
        assert_eq!(store.list_keys("a", "p/", Some("p/1"), 1).unwrap(), ["p/2"]);
        assert!(store.delete("a", "k").unwrap());
        assert!(!store.delete("a", "k").unwrap());
        let both: Vec<i64> = std::thread::scope(|scope| {
            let add = || {
                scope.spawn(|| {
                    (0..100)
                        .map(|_| store.increment("a", "c", 1).unwrap())
                        .max()
                })
            };
            let (one, two) = (add(), add());
            [one, two]
                .into_iter()
                .filter_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(both.into_iter().max(), Some(200), "no increment is lost");
    }

    #[test]
    fn the_embedded_backend_keeps_the_contract_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStorage::open(dir.path()).unwrap();
        keeps_the_contract(&store);
        drop(store);
        let reopened = SqliteStorage::open(dir.path()).unwrap();
        assert_eq!(reopened.get("a", "n").unwrap(), Some(b"5".to_vec()));
    }

    #[test]
    fn an_installation_cannot_exceed_its_key_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStorage::open(dir.path()).unwrap();
        {
            let mut conn = store.conn.lock().unwrap();
            let tx = conn.transaction().unwrap();
            for i in 0..MAX_STORAGE_KEYS {
                tx.execute(
                    "INSERT INTO storage VALUES ('a', ?1, x'')",
                    params![format!("k{i}")],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        assert_eq!(
            store.set("a", "one-more", b"").unwrap_err().kind,
            ErrorKind::TooLarge
        );
        store.set("a", "k1", b"replaced").unwrap();
        store.set("b", "k1", b"other installation").unwrap();
    }
}

//! Which node runs a task.
//!
//! # The contract of a [`RunLock`]
//!
//! - Before running a tick of a task, a node asks for the lease of the task's key
//!   (`<installation>/<task>`) for at least the run's deadline plus a margin. At most one holder
//!   has an unexpired lease of a key at any time; a node without the lease does not run the
//!   tick (another node does).
//! - Every lease carries a **fencing token** that is larger than the token of every lease granted
//!   for that key before. A holder can be paused (GC, swap, a stopped VM) past its lease's
//!   expiry while another node takes over; so whatever a run writes that matters should carry
//!   its token, and the writer should refuse a token smaller than one it has seen (sluice
//!   records the token with each run).
//! - The holder releases the lease when the run ends; a lease that is not released (a crash)
//!   expires on its own.
//!
//! - A lock that cannot tell (its store is away) says so ([`LockError`]); the caller does not
//!   run the work then.
//!
//! The embedded mode runs one process, so [`LocalLock`] holds leases in memory; its fencing
//! tokens are counted per key in the database, so they keep growing across restarts. At scale,
//! a Redis implementation keeps the same contract: `SET key holder NX PX ttl` to acquire, `INCR`
//! of a per-key counter for the fencing token, and a compare-and-delete script to release.

use crate::store::{self, StoreError};
use rusqlite::Connection;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use thiserror::Error;

/// The right to run one task until it is released or expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The key it is for.
    pub key: String,
    /// Larger than every token granted for this key before.
    pub fencing_token: u64,
}

/// Why a lock could not tell whether a lease is free.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LockError {
    /// The lock's store failed or cannot be reached.
    #[error("the run lock is unavailable: {0}")]
    Unavailable(String),
}

/// Decides which node runs a task (see the module docs for the contract).
pub trait RunLock: Send + Sync {
    /// The lease of `key` for `ttl`, or `None` while another holder has it.
    fn acquire(&self, key: &str, ttl: Duration) -> Result<Option<Lease>, LockError>;

    /// Gives `lease` back (nothing if it expired and was granted again meanwhile).
    fn release(&self, lease: &Lease);
}

/// The lock of one process: leases in memory, fencing tokens in the database of its data
/// folder (`fencing_tokens`).
pub struct LocalLock {
    held: Mutex<HashMap<String, (u64, Instant)>>,
    tokens: Mutex<Connection>,
}

impl LocalLock {
    /// The lock of the process using `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            held: Mutex::default(),
            tokens: Mutex::new(store::open(data_dir)?),
        })
    }

    /// The next fencing token of `key`, durably counted.
    fn next_token(&self, key: &str) -> Result<u64, LockError> {
        let conn = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        conn.prepare_cached(
            "INSERT INTO fencing_tokens (key, token) VALUES (?1, 1) \
             ON CONFLICT (key) DO UPDATE SET token = token + 1 RETURNING token",
        )
        .and_then(|mut stmt| stmt.query_row([key], |row| row.get::<_, i64>(0)))
        .map(|token| token as u64)
        .map_err(|e| LockError::Unavailable(e.to_string()))
    }
}

impl RunLock for LocalLock {
    fn acquire(&self, key: &str, ttl: Duration) -> Result<Option<Lease>, LockError> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if held.get(key).is_some_and(|(_, until)| *until > now) {
            return Ok(None);
        }
        let token = self.next_token(key)?;
        held.insert(key.to_owned(), (token, now + ttl));
        Ok(Some(Lease {
            key: key.to_owned(),
            fencing_token: token,
        }))
    }

    fn release(&self, lease: &Lease) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held
            .get(&lease.key)
            .is_some_and(|(token, _)| *token == lease.fencing_token)
        {
            held.remove(&lease.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract every run lock keeps, on `lock`: one holder at a time, tokens that grow,
    /// expiry, and releases that free only their own lease.
    pub(crate) fn keeps_the_contract(lock: &dyn RunLock) -> u64 {
        let long = Duration::from_secs(60);
        let first = lock.acquire("i/t", long).unwrap().unwrap();
        assert_eq!(lock.acquire("i/t", long).unwrap(), None);
        lock.acquire("i/u", long).unwrap().unwrap();
        lock.release(&first);
        let second = lock
            .acquire("i/t", Duration::from_millis(1))
            .unwrap()
            .unwrap();
        assert!(second.fencing_token > first.fencing_token);
        let deadline = Instant::now() + Duration::from_secs(5);
        let third = loop {
            // The short lease expires: another holder takes over with a larger token.
            if let Some(lease) = lock.acquire("i/t", long).unwrap() {
                break lease;
            }
            assert!(Instant::now() < deadline, "the lease never expired");
        };
        assert!(third.fencing_token > second.fencing_token);
        lock.release(&second);
        assert_eq!(
            lock.acquire("i/t", long).unwrap(),
            None,
            "a stale release does not free the new holder's lease"
        );
        lock.release(&third);
        third.fencing_token
    }

    #[test]
    fn the_local_lock_keeps_the_contract_and_its_tokens_grow_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let last = keeps_the_contract(&LocalLock::open(dir.path()).unwrap());
        let restarted = LocalLock::open(dir.path()).unwrap();
        let lease = restarted
            .acquire("i/t", Duration::from_secs(60))
            .unwrap()
            .unwrap();
        assert!(
            lease.fencing_token > last,
            "{} > {last}",
            lease.fencing_token
        );
    }
}

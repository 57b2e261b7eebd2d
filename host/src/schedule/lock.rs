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
//! - The holder may **extend** its lease while it still holds it (a heartbeat for long work);
//!   extending a lease that expired, or that another holder has now, fails.
//! - The holder releases the lease when the run ends; a lease that is not released (a crash)
//!   expires on its own.
//!
//! - A lock that cannot tell (its store is away) says so ([`LockError`]); the caller does not
//!   run the work then.
//!
//! The embedded mode runs one process, so [`LocalLock`] holds leases in memory; its fencing
//! tokens are counted per key in the database, so they keep growing across restarts. At scale,
//! [`crate::redis::lock::RedisLock`] keeps the same contract on Redis.

use crate::store::{self, StoreError};
use rusqlite::Connection;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
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

    /// Makes `lease` last `ttl` from now, if it is still held; whether it was.
    fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool, LockError>;

    /// Gives `lease` back (nothing if it expired and was granted again meanwhile).
    fn release(&self, lease: &Lease);
}

/// How long a lease lasts without a heartbeat: a node that dies (or is paused) while it runs
/// something is replaced within this. Its heartbeat extends it every third of it.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// Runs `work` while a heartbeat keeps `lease` of `lock` alive (for [`LEASE_TTL`] at a time);
/// the flag `work` is given is set once the lease is lost (another holder may have it).
pub fn heartbeat<T>(lock: &dyn RunLock, lease: &Lease, work: impl FnOnce(&AtomicBool) -> T) -> T {
    let (done, beat) = std::sync::mpsc::channel::<()>();
    let lost = AtomicBool::new(false);
    let lost_flag = &lost;
    std::thread::scope(|scope| {
        scope.spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = beat.recv_timeout(LEASE_TTL / 3) {
                match lock.extend(lease, LEASE_TTL) {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(key = %lease.key, "a lease was lost while its work went on; what the work records is fenced");
                        lost_flag.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(error) => tracing::warn!(key = %lease.key, %error, "cannot extend a lease"),
                }
            }
        });
        let result = work(&lost);
        drop(done);
        result
    })
}

/// A lease and the lock it is from: what work done under the lease checks before it writes
/// where no fencing token can be checked.
pub struct Fence {
    /// The lock.
    pub lock: std::sync::Arc<dyn RunLock>,
    /// The lease the work runs under.
    pub lease: Lease,
}

impl Fence {
    /// Whether the lease is still held (it is extended for [`LEASE_TTL`] if so).
    pub fn holds(&self) -> Result<bool, LockError> {
        self.lock.extend(&self.lease, LEASE_TTL)
    }
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

    fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool, LockError> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match held.get_mut(&lease.key) {
            Some((token, until)) if *token == lease.fencing_token && *until > now => {
                *until = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
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

/// The contract's tests, which every run lock runs.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The contract every run lock keeps, on `lock`: one holder at a time, tokens that grow,
    /// expiry, extension by the holder only, and releases that free only their own lease.
    pub(crate) fn keeps_the_contract(lock: &dyn RunLock) -> u64 {
        let long = Duration::from_secs(60);
        let first = lock.acquire("i/t", long).unwrap().unwrap();
        assert_eq!(lock.acquire("i/t", long).unwrap(), None);
        lock.acquire("i/u", long).unwrap().unwrap();
        assert!(lock.extend(&first, long).unwrap());
        lock.release(&first);
        assert!(!lock.extend(&first, long).unwrap(), "released");
        let second = lock
            .acquire("i/t", Duration::from_millis(300))
            .unwrap()
            .unwrap();
        assert!(second.fencing_token > first.fencing_token);
        // The holder's heartbeat keeps it past its first expiry.
        std::thread::sleep(Duration::from_millis(200));
        assert!(lock.extend(&second, Duration::from_millis(300)).unwrap());
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(lock.acquire("i/t", long).unwrap(), None, "extended");
        let deadline = Instant::now() + Duration::from_secs(5);
        let third = loop {
            // The short lease expires: another holder takes over with a larger token.
            if let Some(lease) = lock.acquire("i/t", long).unwrap() {
                break lease;
            }
            assert!(Instant::now() < deadline, "the lease never expired");
        };
        assert!(third.fencing_token > second.fencing_token);
        assert!(
            !lock.extend(&second, long).unwrap(),
            "an expired lease cannot be extended once another holder has it"
        );
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

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
//! The embedded mode runs one process, so [`LocalLock`] is exact. At scale, a Redis
//! implementation keeps the same contract: `SET key holder NX PX ttl` to acquire, `INCR` of a
//! per-key counter for the fencing token, and a compare-and-delete script to release.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The right to run one task until it is released or expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The key it is for.
    pub key: String,
    /// Larger than every token granted for this key before.
    pub fencing_token: u64,
}

/// Decides which node runs a task (see the module docs for the contract).
pub trait RunLock: Send + Sync {
    /// The lease of `key` for `ttl`, or `None` while another holder has it.
    fn acquire(&self, key: &str, ttl: Duration) -> Option<Lease>;

    /// Gives `lease` back (nothing if it expired and was granted again meanwhile).
    fn release(&self, lease: &Lease);
}

/// The lock of one process.
#[derive(Debug, Default)]
pub struct LocalLock {
    state: Mutex<LocalState>,
}

#[derive(Debug, Default)]
struct LocalState {
    last_token: u64,
    held: HashMap<String, (u64, Instant)>,
}

impl RunLock for LocalLock {
    fn acquire(&self, key: &str, ttl: Duration) -> Option<Lease> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if state.held.get(key).is_some_and(|(_, until)| *until > now) {
            return None;
        }
        state.last_token += 1;
        let token = state.last_token;
        state.held.insert(key.to_owned(), (token, now + ttl));
        Some(Lease {
            key: key.to_owned(),
            fencing_token: token,
        })
    }

    fn release(&self, lease: &Lease) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state
            .held
            .get(&lease.key)
            .is_some_and(|(token, _)| *token == lease.fencing_token)
        {
            state.held.remove(&lease.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_tokens_only_grow() {
        let lock = LocalLock::default();
        let first = lock.acquire("i/t", Duration::from_secs(60)).unwrap();
        assert_eq!(lock.acquire("i/t", Duration::from_secs(60)), None);
        let other = lock.acquire("i/u", Duration::from_secs(60)).unwrap();
        lock.release(&first);
        let second = lock.acquire("i/t", Duration::from_millis(1)).unwrap();
        assert!(second.fencing_token > first.fencing_token.max(other.fencing_token));
        std::thread::sleep(Duration::from_millis(5));
        let third = lock.acquire("i/t", Duration::from_secs(60)).unwrap();
        assert!(
            third.fencing_token > second.fencing_token,
            "expired lease taken over"
        );
        lock.release(&second);
        assert_eq!(
            lock.acquire("i/t", Duration::from_secs(60)),
            None,
            "a stale release does not free the new holder's lease"
        );
    }
}

//! A generation counter threads wait on: the queue wakes the worker when rows arrive, the worker
//! wakes the export runners when events are stored.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

/// Wakes threads waiting for something to change.
#[derive(Debug, Default)]
pub struct Signal {
    generation: Mutex<u64>,
    changed: Condvar,
}

impl Signal {
    /// Marks that something changed and wakes every waiter.
    pub fn notify(&self) {
        *self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
        self.changed.notify_all();
    }

    /// Waits until [`Signal::notify`] is called after `seen`, or `timeout`; returns the current
    /// generation to pass next time.
    pub fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let guard = self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |generation| *generation == seen)
            .unwrap_or_else(PoisonError::into_inner);
        *guard
    }

    /// The current generation, to pass to [`Signal::wait`].
    pub fn generation(&self) -> u64 {
        *self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

//! `jobs`: queue jobs for this installation's [`crate::Jobs`] hook (needs the `jobs` grant).
//! Queued jobs are durable; each runs at least once, in the order of when it is due. Natively,
//! a queue per test thread that [`crate::testing::Harness::drain_jobs`] runs.

use super::HostError;
use crate::TimeUnit;

/// Queues job `name` with `payload` (JSON text) to run now; returns its id.
pub fn enqueue(name: &str, payload: &str) -> Result<String, HostError> {
    imp::enqueue(name, payload, 0)
}

/// Queues job `name` with `payload` to run after `amount` `unit`s (PostHog's `runIn`).
pub fn enqueue_in(
    name: &str,
    payload: &str,
    amount: u64,
    unit: TimeUnit,
) -> Result<String, HostError> {
    let delay = u64::try_from(unit.times(amount).as_millis()).unwrap_or(u64::MAX);
    imp::enqueue(name, payload, delay)
}

/// Queues job `name` with `payload` to run at `at_ms` (epoch milliseconds; PostHog's `runAt`).
pub fn enqueue_at(name: &str, payload: &str, at_ms: i64) -> Result<String, HostError> {
    imp::enqueue_at(name, payload, at_ms)
}

#[cfg(target_family = "wasm")]
mod imp {
    use super::super::{HostError, from_wit};
    use crate::bindings::sluice::plugin::job_queue;

    pub fn enqueue(name: &str, payload: &str, delay_ms: u64) -> Result<String, HostError> {
        job_queue::enqueue(name, payload, delay_ms).map_err(from_wit)
    }

    pub fn enqueue_at(name: &str, payload: &str, at_ms: i64) -> Result<String, HostError> {
        job_queue::enqueue_at(name, payload, at_ms).map_err(from_wit)
    }
}

#[cfg(not(target_family = "wasm"))]
mod imp {
    use super::super::HostError;
    use crate::testing::{fakes, now_ms};
    use sluice_abi::limits;

    pub fn enqueue(name: &str, payload: &str, delay_ms: u64) -> Result<String, HostError> {
        enqueue_at(
            name,
            payload,
            now_ms().saturating_add(i64::try_from(delay_ms).unwrap_or(i64::MAX)),
        )
    }

    pub fn enqueue_at(name: &str, payload: &str, at_ms: i64) -> Result<String, HostError> {
        limits::check_job(name, payload)?;
        Ok(fakes::using("jobs", |f| f.queue(name, payload, at_ms)))
    }
}

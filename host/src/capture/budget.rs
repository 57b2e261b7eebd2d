//! The bound on capture's memory: every request reserves the bytes it holds (its body as it
//! arrives, then its decoded text and the parsed tree, then the tree and the encoded payload)
//! from one budget, and keeps them until the queue has taken its events. A request that does not fit is answered
//! `503` with `Retry-After` at once, so a flood of large batches costs at most the budget plus
//! what the few decoders at work hold, and the server keeps answering everything else.

use super::error::CaptureError;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

/// Bytes per permit of the budget's semaphore.
const UNIT: usize = 1024;

/// The bytes every request in flight may hold together, and the decoders that may run at once.
pub struct Budget {
    bytes: Arc<Semaphore>,
    decoders: Semaphore,
    capacity: usize,
}

impl Budget {
    /// A budget of `max_bytes`, with `decoders` requests decoded at once.
    pub fn new(max_bytes: usize, decoders: usize) -> Self {
        let units = max_bytes.div_ceil(UNIT).min(Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(units)),
            decoders: Semaphore::new(decoders.max(1)),
            capacity: units,
        }
    }

    /// An empty reservation for one request.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            bytes: self.bytes.clone(),
            held: None,
        }
    }

    /// Waits for a decoder to be free; decoding runs off the async threads while the permit is
    /// held.
    pub async fn decoder(&self) -> Result<SemaphorePermit<'_>, CaptureError> {
        self.decoders
            .acquire()
            .await
            .map_err(|_| CaptureError::Busy)
    }

    /// Bytes reserved now.
    pub fn in_flight(&self) -> usize {
        (self.capacity - self.bytes.available_permits()) * UNIT
    }
}

/// Bytes one request holds; given back when dropped.
pub struct Reservation {
    bytes: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// Reserves `bytes` more, or fails with [`CaptureError::Busy`] if the budget is spent.
    pub fn grow(&mut self, bytes: usize) -> Result<(), CaptureError> {
        let units = u32::try_from(bytes.div_ceil(UNIT)).map_err(|_| CaptureError::Busy)?;
        if units == 0 {
            return Ok(());
        }
        let more = self
            .bytes
            .clone()
            .try_acquire_many_owned(units)
            .map_err(|_| CaptureError::Busy)?;
        match &mut self.held {
            Some(held) => held.merge(more),
            None => self.held = Some(more),
        }
        Ok(())
    }

    /// Gives back `bytes` the request no longer holds (at most what it reserved).
    pub fn release(&mut self, bytes: usize) {
        let units = bytes.div_ceil(UNIT);
        if let Some(held) = &mut self.held {
            let units = units.min(held.num_permits());
            drop(held.split(units));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_budget_and_give_it_back_when_dropped() {
        let budget = Budget::new(10 * UNIT, 1);
        let mut first = budget.reservation();
        first.grow(6 * UNIT).unwrap();
        let mut second = budget.reservation();
        assert_eq!(second.grow(5 * UNIT), Err(CaptureError::Busy));
        second.grow(4 * UNIT).unwrap();
        assert_eq!(budget.in_flight(), 10 * UNIT);
        drop(first);
        assert_eq!(budget.in_flight(), 4 * UNIT);
        second.release(3 * UNIT);
        assert_eq!(budget.in_flight(), UNIT);
        second.release(100 * UNIT);
        assert_eq!(budget.in_flight(), 0);
        second.grow(4 * UNIT).unwrap();
        second.grow(6 * UNIT).unwrap();
        assert_eq!(second.grow(1), Err(CaptureError::Busy));
    }
}

//! The ingest seam: where capture puts events ([`Append`]) and where the worker takes them from
//! ([`Ingest`]). The embedded queue ([`sqlite`]) is the first implementation.
//!
//! # The contract every ingest backend keeps
//!
//! - **Durable before acknowledged.** [`Append::append`] returns `Ok` only once the events
//!   survive a crash of the process (embedded: committed with `synchronous = FULL`; Kafka:
//!   acknowledged by all in-sync replicas, `acks=all`). Capture answers `200` only after that.
//! - **Arrival order per key.** [`Ingest::poll`] hands out events of one `(team, distinct_id)` in
//!   the order they were appended (embedded: one queue in arrival order; Kafka: the message key is
//!   `token:distinct_id`, so one key stays in one partition, read in offset order).
//! - **At-least-once.** Events stay in the ingest until [`Ingest::ack`] is called with the
//!   receipt of the poll that returned them, which the worker does only after the sink stored
//!   their results. A crash, or a failed store, before that means the same events are polled
//!   again. Receipts are acknowledged in the order they were polled, and acknowledging a receipt
//!   acknowledges everything polled before it (Kafka: commit the lowest contiguous offset).
//! - Together with a sink that stores idempotently on the event `uuid` (see [`crate::sink`]),
//!   at-least-once delivery gives no loss and no duplicates.
//!
//! When the ingest and the sink share one store (the embedded SQLite database), the sink
//! recognises the ingest's own receipt type (a [`Receipt`] is `Any`) and settles it inside its
//! own transaction, so storing and acknowledging are one atomic step and nothing is processed
//! twice even after a crash. [`Ingest::ack`] is still called afterwards.

pub mod kafka;
pub mod sqlite;

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use thiserror::Error;

/// Why events were not appended.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AppendError {
    /// The ingest holds its maximum number of events; try again later.
    #[error("the ingest queue is full ({0} events waiting)")]
    Full(u64),
    /// The ingest could not store the events durably.
    #[error("the ingest queue could not store the events: {0}")]
    Unavailable(String),
    /// An event is larger than the ingest takes; sending it again cannot help.
    #[error("an event is too large for the ingest: {0}")]
    TooLarge(String),
}

/// One request's events, as capture appends them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The team of every event in it.
    pub team_id: u64,
    /// The project token they were sent with (a Kafka ingest keys each event by
    /// `token:distinct_id`, as PostHog does).
    pub token: String,
    /// How many events it holds.
    pub events: u64,
    /// A batch in the wire encoding.
    pub payload: Vec<u8>,
    /// Whether it is history being migrated (PostHog's `historical_migration`), counted apart
    /// from live traffic.
    pub historical: bool,
}

/// The future [`Append::append`] returns.
pub type Appending<'a> = Pin<Box<dyn Future<Output = Result<(), AppendError>> + Send + 'a>>;

/// Where capture puts events. Cheap to share between request handlers.
pub trait Append: Send + Sync {
    /// Stores one request's events durably; resolves only once they would survive a crash.
    fn append(&self, appended: Appended) -> Appending<'_>;

    /// Events appended and not yet acknowledged, and those of requests still waiting to be
    /// appended.
    fn depth(&self) -> u64;

    /// Whether the backend can take events now (for `/ready`); blocks for at most a second.
    fn reachable(&self) -> Result<(), String> {
        Ok(())
    }
}

/// One appended payload as the worker receives it.
#[derive(Debug)]
pub struct Ingested {
    /// Where it is in the ingest, opaque, for logs and quarantine (embedded: the queue row id).
    pub position: String,
    /// The team of every event in it.
    pub team_id: u64,
    /// How many events capture appended in it.
    pub events: u64,
    /// A batch in the wire encoding.
    pub payload: Vec<u8>,
}

/// What one poll returned.
#[derive(Debug)]
pub struct Polled<R> {
    /// Payloads in arrival order.
    pub batches: Vec<Ingested>,
    /// Number of events in them.
    pub events: u64,
    /// What acknowledges them.
    pub receipt: R,
}

/// Acknowledges what one poll returned. A sink that shares its store with the ingest downcasts
/// it (`&mut dyn Any`) to the ingest's receipt type to settle it in its own transaction.
pub trait Receipt: Any + Send {}

/// Why the worker could not read or acknowledge. Every failure is transient to the worker: it
/// tries again, and the events stay in the ingest meanwhile.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IngestError {
    /// The backend failed or cannot be reached.
    #[error("the ingest is unavailable: {0}")]
    Unavailable(String),
}

/// Where the worker takes events from, in arrival order.
pub trait Ingest: Send {
    /// What acknowledges a poll.
    type Receipt: Receipt;

    /// Up to about `max_events` events not yet acknowledged, waiting at most `wait` for some to
    /// arrive; `None` if none did. Until acknowledged, the same events are returned again.
    fn poll(
        &mut self,
        max_events: usize,
        wait: Duration,
    ) -> Result<Option<Polled<Self::Receipt>>, IngestError>;

    /// Acknowledges what the poll of `receipt` returned, once the sink stored its results.
    fn ack(&mut self, receipt: Self::Receipt) -> Result<(), IngestError>;
}

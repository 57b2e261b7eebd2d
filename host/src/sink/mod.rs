//! The sink seam: where the worker stores what the chains produced. The embedded SQLite store
//! ([`sqlite`]) is the first implementation.
//!
//! # The contract every sink keeps
//!
//! - **Durable when it returns.** [`Sink::store`] returns `Ok` only once everything in the
//!   [`Output`] would survive a crash (embedded: one committed transaction with
//!   `synchronous = FULL`; ClickHouse: the insert acknowledged). Only then does the worker
//!   acknowledge the ingest.
//! - **Idempotent on `(team, uuid)`.** Storing an event whose `uuid` is already stored for its
//!   team keeps one copy; the same uuid in another team is another event, so no tenant can
//!   suppress another's events (embedded: `INSERT OR IGNORE` on a unique `(team_id, uuid)`;
//!   ClickHouse: a `ReplacingMergeTree` ordered by team and uuid plus insert de-duplication
//!   tokens). Recordings and dead letters (per installation) are keyed the same way. The ingest delivers at least once, so after a crash
//!   the same output can arrive again: idempotence turns that into no duplicates.
//! - **All or nothing per call.** A failed call may have stored part of the output; the worker
//!   then stores it again (or polls the same events again after a crash), which idempotence
//!   absorbs. The worker may also store parts of an output without a receipt (to find what
//!   cannot be stored) before it stores the rest with the receipt.
//! - **Dead letters of damaged events.** A dead letter's event may be damaged (that is why it
//!   is one): a sink reads only its envelope (team, uuid) and keeps its bytes as they are.
//! - If the ingest lives in the same store, the sink settles the poll's [`Receipt`] in the
//!   same transaction (the embedded sink recognises the embedded queue's receipt).

pub mod kafka;
pub mod sqlite;

use crate::ingest::Receipt;
use thiserror::Error;

/// An event a plugin failed on, kept for operators with the error.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The installation that failed.
    pub installation: String,
    /// The event as it was before that plugin (encoded, with length prefix).
    pub encoded: Vec<u8>,
    /// What went wrong, in one line.
    pub error: String,
    /// Where in the plugin it went wrong, when known.
    pub backtrace: Option<String>,
}

/// An ingested payload that cannot be read as events (damaged storage), set aside whole for
/// operators (`sluice quarantine`) instead of being acknowledged away.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantined {
    /// Where it was in the ingest.
    pub position: String,
    /// The team the ingest recorded for it.
    pub team_id: u64,
    /// How many events the ingest recorded in it.
    pub events: u64,
    /// The payload as it was read.
    pub payload: Vec<u8>,
    /// Why it cannot be read.
    pub error: String,
}

/// What the chains made of one poll of the ingest.
#[derive(Debug, Default)]
pub struct Output {
    /// Events to store, encoded (with length prefix), in order.
    pub events: Vec<Vec<u8>>,
    /// Events plugins failed on, under a `dead_letter` policy, and events the worker or the
    /// sink could not handle.
    pub dead_letters: Vec<DeadLetter>,
    /// Session-recording events, which skip chains.
    pub recordings: Vec<Vec<u8>>,
    /// Ingested payloads that cannot be read.
    pub quarantined: Vec<Quarantined>,
}

/// How much of an [`Output`] was new.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    /// Events not stored before.
    pub events: usize,
    /// Recording events not stored before.
    pub recordings: usize,
}

/// Why a sink could not store. The worker retries either, then stores the output in parts to
/// set aside only what still cannot be stored.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SinkError {
    /// The backend failed or cannot be reached; trying again later may work.
    #[error("the sink is unavailable: {0}")]
    Unavailable(String),
    /// The backend refused what it was given (a damaged event, a value it cannot hold).
    #[error("the sink refused it: {0}")]
    Refused(String),
}

/// Where processed events go.
pub trait Sink: Send {
    /// Stores `output` durably and idempotently, settling `receipt` in the same transaction when
    /// the sink can (see the module docs).
    fn store(&mut self, output: &Output, receipt: &mut dyn Receipt) -> Result<Stored, SinkError>;
}

/// The `$session_id` (empty if missing) and `$window_id` of a recording event's `properties`,
/// which recordings are kept by.
pub fn session_and_window(properties: &str) -> (String, Option<String>) {
    let properties: serde_json::Value = serde_json::from_str(properties).unwrap_or_default();
    let text = |key: &str| {
        properties
            .get(key)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    (text("$session_id").unwrap_or_default(), text("$window_id"))
}

/// An encoded event of `team_id` with uuid bytes all `n` and name `name`, for tests.
#[cfg(test)]
pub(crate) fn test_event(team_id: u64, n: u8, name: &str) -> Vec<u8> {
    sluice_abi::wire::EventFields {
        uuid: [n; 16],
        team_id,
        timestamp_ms: 0,
        event: name,
        distinct_id: "u",
        ip: None,
        properties: "{}",
        set: None,
        set_once: None,
    }
    .encode()
    .expect("a test event encodes")
}

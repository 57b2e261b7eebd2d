//! The sink seam: where the worker stores what the chains produced. The embedded SQLite store
//! ([`sqlite`]) is the first implementation.
//!
//! # The contract every sink keeps
//!
//! - **Durable when it returns.** [`Sink::store`] returns `Ok` only once everything in the
//!   [`Output`] would survive a crash (embedded: one committed transaction with
//!   `synchronous = FULL`; ClickHouse: the insert acknowledged). Only then does the worker
//!   acknowledge the ingest.
//! - **Idempotent on `uuid`.** Storing an event whose `uuid` is already stored keeps one copy
//!   (embedded: `INSERT OR IGNORE` on a unique uuid; ClickHouse: a `ReplacingMergeTree` ordered by
//!   uuid plus insert de-duplication tokens). The ingest delivers at least once, so after a crash
//!   the same output can arrive again: idempotence turns that into no duplicates.
//! - **All or nothing per call.** A failed call may have stored part of the output; the worker
//!   then polls the same events again and stores them again, which idempotence absorbs.
//! - If the ingest lives in the same database, the sink settles the poll's [`Receipt`] in the
//!   same transaction ([`Receipt::settle_in`]).

pub mod sqlite;

use crate::ingest::Receipt;
use crate::store::StoreError;
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

/// What the chains made of one poll of the ingest.
#[derive(Debug, Default)]
pub struct Output {
    /// Events to store, encoded (with length prefix), in order.
    pub events: Vec<Vec<u8>>,
    /// Events plugins failed on, under a `dead_letter` policy.
    pub dead_letters: Vec<DeadLetter>,
    /// Session-recording events, which skip chains.
    pub recordings: Vec<Vec<u8>>,
}

/// How much of an [`Output`] was new.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    /// Events not stored before.
    pub events: usize,
    /// Recording events not stored before.
    pub recordings: usize,
}

/// Why a sink could not store.
#[derive(Debug, Error)]
pub enum SinkError {
    /// The embedded database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where processed events go.
pub trait Sink: Send {
    /// Stores `output` durably and idempotently, settling `receipt` in the same transaction when
    /// the sink can (see the module docs).
    fn store(&mut self, output: &Output, receipt: &mut dyn Receipt) -> Result<Stored, SinkError>;
}

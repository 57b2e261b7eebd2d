//! The export source seam: where export runners read stored events. The embedded store
//! ([`SqliteSource`]) is the first implementation.
//!
//! # The contract every source keeps
//!
//! - **One stable order per team.** A team's stored events have one order that new events only
//!   extend: an event stored after a read comes after every event that read returned (embedded:
//!   the store's sequence; ClickHouse: the order of the processed-events topic, per partition).
//! - **Opaque cursors.** A [`Cursor`] names a place in that order; only the source that handed it
//!   out reads it, and it stays valid for as long as the events it names are stored. Cursors are
//!   made of key-safe characters (letters, digits, `-`, `_`, `.`), because a batch's id is
//!   derived from the cursors of its first and last event and plugins name objects after it.
//! - **Ranges are reproducible.** [`Source::range`] returns exactly the events it returned the
//!   first time for the same cursors (no event is ever inserted inside a range already read),
//!   so a batch sent again after a crash is the same batch.
//! - **Wake on new events.** [`Source::wait`] returns soon after new events may be readable, or
//!   after its timeout; a runner never needs to poll faster than that.

use crate::signal::Signal;
use crate::store::{self, StoreError};
use rusqlite::{Connection, params};
use sluice_abi::wire::EventFields;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// A place in a team's stored events, as the source defines it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor(String);

impl Cursor {
    /// Before every event.
    pub fn start() -> Self {
        Self("0".to_owned())
    }

    /// A cursor the source handed out, as it was recorded.
    pub fn from_recorded(text: String) -> Self {
        Self(text)
    }

    /// The cursor as text, to record it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One stored event as exports read it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Where it is.
    pub cursor: Cursor,
    /// When it was stored, epoch ms.
    pub stored_at_ms: i64,
    /// Its name.
    pub event: String,
    /// The event in the wire encoding (with its length prefix).
    pub encoded: Vec<u8>,
}

/// How far behind a cursor is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lag {
    /// Events after the cursor.
    pub events: u64,
    /// When the oldest of them was stored, epoch ms.
    pub oldest_stored_at_ms: Option<i64>,
}

/// Why a source could not answer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SourceError {
    /// The backend failed or cannot be reached; trying again later may work.
    #[error("the event source is unavailable: {0}")]
    Unavailable(String),
    /// A cursor this source did not hand out.
    #[error("`{0}` is not a cursor of this event source")]
    InvalidCursor(String),
    /// A stored event cannot be read.
    #[error("a stored event cannot be read: {0}")]
    Corrupt(String),
}

/// Where export runners read stored events.
pub trait Source: Send {
    /// Events of `team` after `after`, in storage order: at most `max_events`, and (but for the
    /// first) at most `max_bytes` of encoded events.
    fn after(
        &mut self,
        team: u64,
        after: &Cursor,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, SourceError>;

    /// Events of `team` from `first` through `last` (cursors of events it returned), in
    /// storage order.
    fn range(
        &mut self,
        team: u64,
        first: &Cursor,
        last: &Cursor,
    ) -> Result<Vec<StoredEvent>, SourceError>;

    /// How far `after` is behind the team's last stored event.
    fn lag(&mut self, team: u64, after: &Cursor) -> Result<Lag, SourceError>;

    /// Returns once new events may be readable (since the last call), or after `timeout`.
    fn wait(&mut self, timeout: Duration);
}

impl From<StoreError> for SourceError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Corrupt(reason) => SourceError::Corrupt(reason.to_string()),
            other => SourceError::Unavailable(other.to_string()),
        }
    }
}

impl From<rusqlite::Error> for SourceError {
    fn from(error: rusqlite::Error) -> Self {
        SourceError::Unavailable(error.to_string())
    }
}

/// The embedded store's events; a cursor is the text of an event's sequence number.
pub struct SqliteSource {
    conn: Connection,
    stored: Arc<Signal>,
    seen: u64,
}

impl SqliteSource {
    /// Reads the database of `data_dir`; `stored` is notified whenever events are stored.
    pub fn open(data_dir: &Path, stored: Arc<Signal>) -> Result<Self, StoreError> {
        Ok(Self {
            conn: store::open(data_dir)?,
            seen: stored.generation(),
            stored,
        })
    }

    /// The sequence number `cursor` names.
    fn seq(cursor: &Cursor) -> Result<i64, SourceError> {
        cursor
            .0
            .parse()
            .map_err(|_| SourceError::InvalidCursor(cursor.0.clone()))
    }

    fn read(
        &self,
        team: u64,
        after: i64,
        through: i64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, SourceError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, stored_at_ms, uuid, team_id, timestamp_ms, event, distinct_id, ip, properties, \
             set_json, set_once_json FROM events WHERE team_id = ?1 AND seq > ?2 AND seq <= ?3 \
             ORDER BY seq LIMIT ?4",
        )?;
        let limit = i64::try_from(max_events).unwrap_or(i64::MAX);
        let mut rows = stmt.query(params![team as i64, after, through, limit])?;
        let mut found = Vec::new();
        let mut bytes = 0;
        while let Some(row) = rows.next()? {
            let uuid: Vec<u8> = row.get(2)?;
            let event: String = row.get(5)?;
            let distinct_id: String = row.get(6)?;
            let ip: Option<String> = row.get(7)?;
            let properties: String = row.get(8)?;
            let set: Option<String> = row.get(9)?;
            let set_once: Option<String> = row.get(10)?;
            let fields = EventFields {
                uuid: <[u8; 16]>::try_from(uuid.as_slice()).unwrap_or_default(),
                team_id: row.get::<_, i64>(3)? as u64,
                timestamp_ms: row.get(4)?,
                event: &event,
                distinct_id: &distinct_id,
                ip: ip.as_deref(),
                properties: &properties,
                set: set.as_deref(),
                set_once: set_once.as_deref(),
            };
            let encoded = fields
                .encode()
                .map_err(|e| SourceError::Corrupt(e.to_string()))?;
            if !found.is_empty() && bytes + encoded.len() > max_bytes {
                break;
            }
            bytes += encoded.len();
            found.push(StoredEvent {
                cursor: Cursor(row.get::<_, i64>(0)?.to_string()),
                stored_at_ms: row.get(1)?,
                encoded,
                event,
            });
        }
        Ok(found)
    }
}

impl Source for SqliteSource {
    fn after(
        &mut self,
        team: u64,
        after: &Cursor,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, SourceError> {
        self.read(team, Self::seq(after)?, i64::MAX, max_events, max_bytes)
    }

    fn range(
        &mut self,
        team: u64,
        first: &Cursor,
        last: &Cursor,
    ) -> Result<Vec<StoredEvent>, SourceError> {
        let (first, last) = (Self::seq(first)?, Self::seq(last)?);
        self.read(team, first - 1, last, usize::MAX, usize::MAX)
    }

    fn lag(&mut self, team: u64, after: &Cursor) -> Result<Lag, SourceError> {
        let after = Self::seq(after)?;
        let (events, oldest): (i64, Option<i64>) = self.conn.query_row(
            "SELECT COUNT(*), MIN(stored_at_ms) FROM events WHERE team_id = ?1 AND seq > ?2",
            params![team as i64, after],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        Ok(Lag {
            events: events as u64,
            oldest_stored_at_ms: oldest,
        })
    }

    fn wait(&mut self, timeout: Duration) {
        self.seen = self.stored.wait(self.seen, timeout);
    }
}

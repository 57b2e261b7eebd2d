//! The embedded sink: events, recordings and dead letters in the SQLite database, with the
//! queue's receipt settled in the same transaction (an event is never in neither, and never
//! processed twice).

use super::{DeadLetter, Output, Quarantined, Sink, SinkError, Stored};
use crate::ingest::Receipt;
use crate::ingest::sqlite::QueueReceipt;
use crate::store::{self, StoreError};
use rusqlite::{Connection, Transaction, params};
use serde_json::Value;
use sluice_abi::wire::{self, EventFields};
use std::any::Any;
use std::path::Path;

impl From<StoreError> for SinkError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Corrupt(reason) => SinkError::Refused(reason.to_string()),
            other => SinkError::Unavailable(other.to_string()),
        }
    }
}

/// The SQLite store of one data folder.
pub struct SqliteSink {
    conn: Connection,
}

impl SqliteSink {
    /// Opens the database in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            conn: store::open(data_dir)?,
        })
    }
}

impl Sink for SqliteSink {
    fn store(&mut self, output: &Output, receipt: &mut dyn Receipt) -> Result<Stored, SinkError> {
        let tx = self.conn.transaction().map_err(StoreError::from)?;
        let stored = Stored {
            recordings: insert_recordings(&tx, &output.recordings)?,
            events: insert_events(&tx, &output.events)?,
        };
        insert_dead_letters(&tx, &output.dead_letters)?;
        insert_quarantined(&tx, &output.quarantined)?;
        if let Some(queue) = (receipt as &mut dyn Any).downcast_mut::<QueueReceipt>() {
            queue.settle_in(&tx)?;
        }
        tx.commit().map_err(StoreError::from)?;
        Ok(stored)
    }
}

fn decode(encoded: &[u8]) -> Result<EventFields<'_>, StoreError> {
    Ok(wire::parse_encoded(encoded).and_then(|raw| raw.fields())?)
}

/// Stores events, skipping those whose `(team, uuid)` is already stored; returns how many were
/// new.
fn insert_events(tx: &Transaction<'_>, events: &[Vec<u8>]) -> Result<usize, StoreError> {
    let now = store::now_ms();
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO events (uuid, team_id, timestamp_ms, event, distinct_id, ip, \
         properties, set_json, set_once_json, stored_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    let mut inserted = 0;
    for encoded in events {
        // Plugins' edits are applied here, once, as the event is written.
        inserted += wire::parse_encoded(encoded)?.with_patch_applied(|fields| {
            insert.execute(params![
                &fields.uuid[..],
                fields.team_id as i64,
                fields.timestamp_ms,
                fields.event,
                fields.distinct_id,
                fields.ip,
                fields.properties,
                fields.set,
                fields.set_once,
                now,
            ])
        })??;
    }
    Ok(inserted)
}

fn insert_dead_letters(tx: &Transaction<'_>, letters: &[DeadLetter]) -> Result<(), StoreError> {
    let now = store::now_ms();
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO dead_letters (team_id, installation, uuid, event, error, backtrace, created_at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for letter in letters {
        // Only the envelope: the rest of a dead letter's event may be what is damaged.
        let event = wire::parse_encoded(&letter.encoded).map_err(StoreError::from)?;
        insert.execute(params![
            event.team_id() as i64,
            letter.installation,
            &event.uuid()[..],
            letter.encoded,
            letter.error,
            letter.backtrace,
            now,
        ])?;
    }
    Ok(())
}

fn insert_quarantined(tx: &Transaction<'_>, rows: &[Quarantined]) -> Result<(), StoreError> {
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO queue_quarantine (position, team_id, events, payload, error, \
         quarantined_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for row in rows {
        insert.execute(params![
            row.position,
            row.team_id as i64,
            row.events as i64,
            row.payload,
            row.error,
            store::now_ms(),
        ])?;
    }
    Ok(())
}

/// Stores `$snapshot` events in the recordings table, keyed by team, `$session_id`, `$window_id`
/// and time (skipping a `(team, uuid)` already stored). Returns how many were new.
fn insert_recordings(tx: &Transaction<'_>, recordings: &[Vec<u8>]) -> Result<usize, StoreError> {
    let now = store::now_ms();
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO recordings (uuid, team_id, session_id, window_id, distinct_id, \
         timestamp_ms, properties, stored_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut inserted = 0;
    for encoded in recordings {
        let fields = decode(encoded)?;
        let properties: Value = serde_json::from_str(fields.properties).unwrap_or_default();
        let text = |key: &str| {
            properties
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        inserted += insert.execute(params![
            &fields.uuid[..],
            fields.team_id as i64,
            text("$session_id").unwrap_or_default(),
            text("$window_id"),
            fields.distinct_id,
            fields.timestamp_ms,
            fields.properties,
            now,
        ])?;
    }
    Ok(inserted)
}

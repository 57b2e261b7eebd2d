//! The embedded sink: events, recordings and dead letters in the SQLite database, with the
//! queue's receipt settled in the same transaction (an event is never in neither, and never
//! processed twice).

use super::{DeadLetter, Output, Quarantined, Sink, SinkError, Stored};
use crate::ingest::Receipt;
use crate::ingest::sqlite::QueueReceipt;
use crate::store::{self, StoreError};
use rusqlite::{Connection, Transaction, params};
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
        let (session, window) = super::session_and_window(fields.properties);
        inserted += insert.execute(params![
            &fields.uuid[..],
            fields.team_id as i64,
            session,
            window,
            fields.distinct_id,
            fields.timestamp_ms,
            fields.properties,
            now,
        ])?;
    }
    Ok(inserted)
}

/// The ingest and sink contracts (see `ingest/mod.rs` and `sink/mod.rs`), on the embedded queue
/// and store together, as the server wires them.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::source::{Cursor, Source, SqliteSource};
    use crate::ingest::sqlite::Queue;
    use crate::ingest::{Append, AppendError, Appended, Ingest};
    use sluice_abi::wire::BatchWriter;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::sink::test_event as event;

    fn payload(events: &[Vec<u8>]) -> Vec<u8> {
        let mut batch = BatchWriter::default();
        for event in events {
            batch.push_encoded(event);
        }
        batch.finish()
    }

    fn appended(team_id: u64, events: u64, payload: Vec<u8>) -> Appended {
        Appended {
            team_id,
            token: format!("phc_{team_id}"),
            events,
            payload,
            historical: false,
        }
    }

    /// A receipt of no ingest.
    struct NoReceipt;

    impl Receipt for NoReceipt {}

    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn appended_is_durable_polled_in_order_until_acknowledged_and_stored_once_per_team() {
        let dir = tempfile::tempdir().unwrap();
        let (queue, writer, _) = Queue::start(dir.path(), 3, false).unwrap();
        block_on(queue.append(appended(1, 1, payload(&[event(1, 1, "a")])))).unwrap();
        block_on(queue.append(appended(
            2,
            2,
            payload(&[event(2, 1, "b"), event(2, 2, "c")]),
        )))
        .unwrap();
        // Bounded: past `max_depth` events waiting, an append is refused, not queued.
        assert_eq!(
            block_on(queue.append(appended(1, 1, payload(&[event(1, 3, "d")])))),
            Err(AppendError::Full(3))
        );
        assert_eq!(queue.depth(), 3);
        drop(queue);
        writer.join();

        // Durable before acknowledged: a new process finds what was appended, in order.
        let (_queue, _writer, mut reader) = Queue::start(dir.path(), 10, true).unwrap();
        let polled = reader.poll(10, Duration::ZERO).unwrap().unwrap();
        assert_eq!(polled.events, 3);
        assert_eq!(
            polled.batches.iter().map(|b| b.team_id).collect::<Vec<_>>(),
            [1, 2]
        );
        // At least once: until acknowledged, the same events come again.
        let again = reader.poll(10, Duration::ZERO).unwrap().unwrap();
        assert_eq!(again.events, 3);

        // The sink stores per (team, uuid) and settles the receipt in its transaction.
        let mut sink = SqliteSink::open(dir.path()).unwrap();
        let mut receipt = again.receipt;
        let output = Output {
            // Team 2 used team 1's uuid: another event. The repeat of team 1's is one copy.
            events: vec![
                event(1, 1, "a"),
                event(2, 1, "b"),
                event(2, 2, "c"),
                event(1, 1, "a"),
            ],
            ..Output::default()
        };
        assert_eq!(sink.store(&output, &mut receipt).unwrap().events, 3);
        reader.ack(receipt).unwrap();
        assert!(
            reader.poll(10, Duration::ZERO).unwrap().is_none(),
            "acknowledged"
        );
        // Stored again after a crash before the ack: nothing new.
        let mut unsettled = polled.receipt;
        assert_eq!(sink.store(&output, &mut unsettled).unwrap().events, 0);

        // The export source reads each team's stored events in storage order.
        let mut source = SqliteSource::open(dir.path(), Arc::default()).unwrap();
        let team2 = source.after(2, &Cursor::start(), 10, usize::MAX).unwrap();
        assert_eq!(team2.len(), 2);
        let range = source.range(2, &team2[0].cursor, &team2[1].cursor).unwrap();
        assert_eq!(range.len(), 2, "a range reads the same events again");
        let after_first = source.after(2, &team2[0].cursor, 10, usize::MAX).unwrap();
        assert_eq!(after_first.len(), 1);
        assert_eq!(source.lag(2, &team2[0].cursor).unwrap().events, 1);
        let invalid = source.after(2, &Cursor::from_recorded("x".into()), 1, 1);
        assert!(matches!(
            invalid,
            Err(crate::export::source::SourceError::InvalidCursor(_))
        ));
    }

    #[test]
    fn a_dead_letter_is_kept_by_its_envelope_even_when_its_event_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = SqliteSink::open(dir.path()).unwrap();
        let mut damaged = event(1, 9, "e");
        let last = damaged.len() - 1;
        damaged[last] = 0xff; // not UTF-8 any more
        let letter = DeadLetter {
            installation: "team-1/p".into(),
            encoded: damaged,
            error: "boom".into(),
            backtrace: None,
        };
        let output = Output {
            dead_letters: vec![letter.clone(), letter],
            ..Output::default()
        };
        sink.store(&output, &mut NoReceipt).unwrap();
        let kept: i64 = sink
            .conn
            .query_row("SELECT COUNT(*) FROM dead_letters", [], |row| row.get(0))
            .unwrap();
        assert_eq!(kept, 1, "one per (team, installation, uuid)");
    }
}

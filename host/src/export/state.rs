//! The durable state of exports, in the SQLite database: one cursor per export installation
//! (`export_cursors`: the [`Cursor`] of the last event exported or passed over), at most one
//! batch in flight (`export_batches`: its cursor range, recorded before the first call), and the
//! export dead letters (`export_dead_letters`). The cursor moves only in the transaction that
//! records a batch's success or its dead letter. Cursors are the event source's, opaque here.

use super::source::{Cursor, Source, SourceError};
use crate::store::{StoreError, now_ms, rfc3339};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// A batch of one installation: a range of its team's stored events, by cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Stable id, derived from the range.
    pub id: String,
    /// The team.
    pub team_id: u64,
    /// Cursor of the first event covered.
    pub first: Cursor,
    /// Cursor of the last event covered.
    pub last: Cursor,
    /// When it was formed, epoch ms.
    pub created_at_ms: i64,
    /// Calls made so far.
    pub attempts: u32,
    /// When the next call may be made, epoch ms.
    pub next_attempt_ms: i64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

impl Batch {
    /// A new batch of `team_id` covering `first..=last`, formed now.
    pub fn new(team_id: u64, first: Cursor, last: Cursor, now_ms: i64) -> Self {
        Self {
            id: format!("{first}-{last}"),
            team_id,
            first,
            last,
            created_at_ms: now_ms,
            attempts: 0,
            next_attempt_ms: now_ms,
            last_error: None,
        }
    }
}

/// Gives the installation a cursor at the start of its team's events, unless it has one.
pub fn register(conn: &Connection, installation: &str, team_id: u64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT OR IGNORE INTO export_cursors (installation, team_id, cursor) VALUES (?1, ?2, ?3)",
        params![installation, team_id as i64, Cursor::start().as_str()],
    )?;
    Ok(())
}

/// The installation's cursor.
pub fn cursor(conn: &Connection, installation: &str) -> Result<Cursor, StoreError> {
    Ok(Cursor::from_recorded(conn.query_row(
        "SELECT cursor FROM export_cursors WHERE installation = ?1",
        [installation],
        |row| row.get(0),
    )?))
}

/// The columns [`batch`] reads, in its order.
const BATCH_COLUMNS: &str =
    "id, team_id, first_cursor, last_cursor, created_at_ms, attempts, next_attempt_ms, last_error";

/// A [`Batch`] from a row of [`BATCH_COLUMNS`].
fn batch(row: &rusqlite::Row<'_>) -> rusqlite::Result<Batch> {
    Ok(Batch {
        id: row.get(0)?,
        team_id: row.get::<_, i64>(1)? as u64,
        first: Cursor::from_recorded(row.get(2)?),
        last: Cursor::from_recorded(row.get(3)?),
        created_at_ms: row.get(4)?,
        attempts: row.get(5)?,
        next_attempt_ms: row.get(6)?,
        last_error: row.get(7)?,
    })
}

/// The batch of `installation` in flight, if any.
pub fn in_flight(conn: &Connection, installation: &str) -> Result<Option<Batch>, StoreError> {
    let sql = format!("SELECT {BATCH_COLUMNS} FROM export_batches WHERE installation = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([installation], batch)
        .optional()?)
}

/// Records `batch` as in flight (before its first call), or its new attempt count and retry
/// time.
pub fn record(conn: &Connection, installation: &str, batch: &Batch) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO export_batches (installation, id, team_id, first_cursor, last_cursor, \
         created_at_ms, attempts, next_attempt_ms, last_error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
         ON CONFLICT (installation) DO UPDATE SET attempts = ?7, next_attempt_ms = ?8, last_error = ?9",
        params![
            installation,
            batch.id,
            batch.team_id as i64,
            batch.first.as_str(),
            batch.last.as_str(),
            batch.created_at_ms,
            batch.attempts,
            batch.next_attempt_ms,
            batch.last_error,
        ],
    )?;
    if let Some(error) = &batch.last_error {
        conn.execute(
            "UPDATE export_cursors SET last_error = ?2, last_error_ms = ?3 WHERE installation = ?1",
            params![installation, error, now_ms()],
        )?;
    }
    Ok(())
}

/// Records that `batch` (with `exported` events sent) was delivered: the batch is done and the
/// cursor moves past it, in one transaction.
pub fn delivered(
    conn: &mut Connection,
    installation: &str,
    batch: &Batch,
    exported: u64,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    tx.execute(
        "DELETE FROM export_batches WHERE installation = ?1",
        [installation],
    )?;
    tx.execute(
        "UPDATE export_cursors SET cursor = ?2, exported_events = exported_events + ?3, \
         last_success_ms = ?4 WHERE installation = ?1",
        params![installation, batch.last.as_str(), exported as i64, now_ms()],
    )?;
    tx.commit()?;
    Ok(())
}

/// Moves `batch` to the dead letters with `error`, and the cursor past it, in one transaction.
pub fn dead_letter(
    conn: &mut Connection,
    installation: &str,
    batch: &Batch,
    error: &str,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    let now = now_ms();
    tx.execute(
        "INSERT OR REPLACE INTO export_dead_letters (installation, id, team_id, first_cursor, \
         last_cursor, created_at_ms, attempts, error, dead_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            installation,
            batch.id,
            batch.team_id as i64,
            batch.first.as_str(),
            batch.last.as_str(),
            batch.created_at_ms,
            batch.attempts,
            error,
            now,
        ],
    )?;
    tx.execute(
        "DELETE FROM export_batches WHERE installation = ?1",
        [installation],
    )?;
    tx.execute(
        "UPDATE export_cursors SET cursor = ?2, last_error = ?3, last_error_ms = ?4 \
         WHERE installation = ?1",
        params![installation, batch.last.as_str(), error, now],
    )?;
    tx.commit()?;
    Ok(())
}

/// Asks for the dead letters of `installation` (only `batch`, if given) to be sent again;
/// returns how many.
pub fn request_replay(
    conn: &Connection,
    installation: &str,
    batch: Option<&str>,
) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE export_dead_letters SET replay_requested_ms = ?3, replay_attempts = 0, replay_next_ms = ?3 \
         WHERE installation = ?1 AND (?2 IS NULL OR id = ?2)",
        params![installation, batch, now_ms()],
    )?)
}

/// A dead letter of `installation` whose replay is due at `now`, as a batch to send (its
/// attempts are those of the replay).
pub fn due_replay(
    conn: &Connection,
    installation: &str,
    now: i64,
) -> Result<Option<Batch>, StoreError> {
    // The dead letter's replay columns stand in for the batch's attempt columns.
    let columns = BATCH_COLUMNS.replace(
        "attempts, next_attempt_ms, last_error",
        "replay_attempts, replay_next_ms, NULL",
    );
    let sql = format!(
        "SELECT {columns} FROM export_dead_letters WHERE installation = ?1 \
         AND replay_requested_ms IS NOT NULL AND replay_next_ms <= ?2 ORDER BY dead_at_ms, id LIMIT 1"
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params![installation, now], batch)
        .optional()?)
}

/// Records the outcome of replaying the dead letter `batch`: delivered (it is removed and its
/// events counted), retried later (`retry_at`), or given up (`None`: it stays, with `error`).
pub fn replayed(
    conn: &Connection,
    installation: &str,
    batch: &Batch,
    result: Result<u64, (&str, Option<i64>)>,
) -> Result<(), StoreError> {
    match result {
        Ok(exported) => {
            conn.execute(
                "DELETE FROM export_dead_letters WHERE installation = ?1 AND id = ?2",
                params![installation, batch.id],
            )?;
            conn.execute(
                "UPDATE export_cursors SET exported_events = exported_events + ?2, last_success_ms = ?3 \
                 WHERE installation = ?1",
                params![installation, exported as i64, now_ms()],
            )?;
        }
        Err((error, retry_at)) => {
            conn.execute(
                "UPDATE export_dead_letters SET error = ?3, replay_attempts = ?4, replay_next_ms = ?5, \
                 replay_requested_ms = CASE WHEN ?5 IS NULL THEN NULL ELSE replay_requested_ms END \
                 WHERE installation = ?1 AND id = ?2",
                params![installation, batch.id, error, batch.attempts, retry_at],
            )?;
        }
    }
    Ok(())
}

/// What `sluice exports` prints for one installation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExportStatus {
    /// The installation.
    pub installation: String,
    /// Its team.
    pub team_id: u64,
    /// Cursor of the last event exported (or passed over), as the event source wrote it.
    pub cursor: String,
    /// Events exported so far.
    pub exported_events: u64,
    /// Stored events not exported yet.
    pub lag_events: u64,
    /// How long the oldest of them has waited, in seconds.
    pub lag_seconds: f64,
    /// When a batch was last delivered.
    pub last_success: Option<String>,
    /// The last failure, and when.
    pub last_error: Option<String>,
    /// When the last failure happened.
    pub last_error_at: Option<String>,
    /// The batch in flight, if any.
    pub batch: Option<String>,
    /// Calls made for the batch in flight.
    pub attempts: u32,
    /// When the batch in flight is tried again, if it failed.
    pub retrying_until: Option<String>,
    /// Batches in the export dead letters.
    pub dead_letters: u64,
}

/// Why the status of exports could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The export state could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The event source could not tell the lag.
    #[error(transparent)]
    Source(#[from] SourceError),
}

impl From<rusqlite::Error> for StatusError {
    fn from(error: rusqlite::Error) -> Self {
        StatusError::Store(error.into())
    }
}

/// The status of every export installation known to the database; `source` tells the lag.
pub fn status(
    conn: &Connection,
    source: &mut dyn Source,
) -> Result<Vec<ExportStatus>, StatusError> {
    let mut stmt = conn.prepare(
        "SELECT c.installation, c.team_id, c.cursor, c.exported_events, c.last_success_ms, \
         c.last_error, c.last_error_ms, b.id, b.attempts, b.next_attempt_ms, b.last_error IS NOT NULL, \
         (SELECT COUNT(*) FROM export_dead_letters d WHERE d.installation = c.installation) \
         FROM export_cursors c LEFT JOIN export_batches b ON b.installation = c.installation \
         ORDER BY c.installation",
    )?;
    let rows = stmt
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)? as u64,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)? as u64,
                row.get::<_, Option<i64>>(4)?,
                row.get::<_, Option<String>>(5)?,
                row.get::<_, Option<i64>>(6)?,
                row.get::<_, Option<String>>(7)?,
                row.get::<_, Option<u32>>(8)?,
                row.get::<_, Option<i64>>(9)?,
                row.get::<_, Option<bool>>(10)?,
                row.get::<_, i64>(11)? as u64,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let now = now_ms();
    rows.into_iter()
        .map(
            |(
                installation,
                team_id,
                cursor,
                exported,
                success,
                error,
                error_at,
                batch,
                attempts,
                next,
                failed,
                dead,
            )| {
                let lag = source.lag(team_id, &Cursor::from_recorded(cursor.clone()))?;
                Ok(ExportStatus {
                    installation,
                    team_id,
                    cursor,
                    exported_events: exported,
                    lag_events: lag.events,
                    lag_seconds: lag
                        .oldest_stored_at_ms
                        .map_or(0.0, |t| (now - t).max(0) as f64 / 1e3),
                    last_success: success.map(rfc3339),
                    last_error: error,
                    last_error_at: error_at.map(rfc3339),
                    batch,
                    attempts: attempts.unwrap_or(0),
                    retrying_until: next.filter(|_| failed == Some(true)).map(rfc3339),
                    dead_letters: dead,
                })
            },
        )
        .collect()
}

/// A batch in the export dead letters, as `sluice exports dead-letters` prints it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExportDeadLetter {
    /// The installation.
    pub installation: String,
    /// The batch id.
    pub batch: String,
    /// The team.
    pub team_id: u64,
    /// Cursor of the first event covered.
    pub first_cursor: String,
    /// Cursor of the last event covered.
    pub last_cursor: String,
    /// Calls made before it was dead-lettered.
    pub attempts: u32,
    /// Why.
    pub error: String,
    /// When it was dead-lettered.
    pub dead_at: String,
    /// Whether a replay is under way.
    pub replaying: bool,
}

/// The export dead letters (of `installation`, if given), oldest first.
pub fn dead_letters(
    conn: &Connection,
    installation: Option<&str>,
) -> Result<Vec<ExportDeadLetter>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT installation, id, team_id, first_cursor, last_cursor, attempts, error, dead_at_ms, \
         replay_requested_ms IS NOT NULL FROM export_dead_letters WHERE ?1 IS NULL OR installation = ?1 \
         ORDER BY dead_at_ms, id",
    )?;
    let letters = stmt
        .query_map([installation], |row| {
            Ok(ExportDeadLetter {
                installation: row.get(0)?,
                batch: row.get(1)?,
                team_id: row.get::<_, i64>(2)? as u64,
                first_cursor: row.get(3)?,
                last_cursor: row.get(4)?,
                attempts: row.get(5)?,
                error: row.get(6)?,
                dead_at: rfc3339(row.get(7)?),
                replaying: row.get(8)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(letters)
}

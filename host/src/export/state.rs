//! The durable state of exports, in the SQLite database: one cursor per export installation
//! (`export_cursors`: the storage position of the last event exported or passed over), at most
//! one batch in flight (`export_batches`: its range, recorded before the first call), and the
//! export dead letters (`export_dead_letters`). The cursor moves only in the transaction that
//! records a batch's success or its dead letter.

use crate::store::{StoreError, now_ms, rfc3339};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sluice_abi::wire::EventFields;

/// A batch of one installation: a range of storage positions of its team's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Stable id, derived from the range.
    pub id: String,
    /// The team.
    pub team_id: u64,
    /// Storage position of the first event covered.
    pub first: i64,
    /// Storage position of the last event covered.
    pub last: i64,
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
    pub fn new(team_id: u64, first: i64, last: i64, now_ms: i64) -> Self {
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

/// One stored event waiting for export.
#[derive(Debug)]
pub struct Pending {
    /// Its storage position.
    pub position: i64,
    /// When it was stored, epoch ms.
    pub stored_at_ms: i64,
    /// Its name.
    pub event: String,
    /// The event in the wire encoding (with its length prefix).
    pub encoded: Vec<u8>,
}

/// Gives the installation a cursor at the start of its team's events, unless it has one.
pub fn register(conn: &Connection, installation: &str, team_id: u64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT OR IGNORE INTO export_cursors (installation, team_id, position) VALUES (?1, ?2, 0)",
        params![installation, team_id as i64],
    )?;
    Ok(())
}

/// The installation's cursor.
pub fn cursor(conn: &Connection, installation: &str) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT position FROM export_cursors WHERE installation = ?1",
        [installation],
        |row| row.get(0),
    )?)
}

/// Events of `team_id` after `position`, in storage order, at most `max_events` and (but for
/// the first) `max_bytes` of encoded events.
pub fn pending(
    conn: &Connection,
    team_id: u64,
    position: i64,
    max_events: usize,
    max_bytes: usize,
) -> Result<Vec<Pending>, StoreError> {
    events(conn, team_id, position, i64::MAX, max_events, max_bytes)
}

/// Events of `team_id` in `first..=last`, in storage order.
pub fn batch_events(conn: &Connection, batch: &Batch) -> Result<Vec<Pending>, StoreError> {
    events(
        conn,
        batch.team_id,
        batch.first - 1,
        batch.last,
        usize::MAX,
        usize::MAX,
    )
}

fn events(
    conn: &Connection,
    team_id: u64,
    after: i64,
    through: i64,
    max_events: usize,
    max_bytes: usize,
) -> Result<Vec<Pending>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, stored_at_ms, uuid, team_id, timestamp_ms, event, distinct_id, ip, properties, \
         set_json, set_once_json FROM events WHERE team_id = ?1 AND seq > ?2 AND seq <= ?3 \
         ORDER BY seq LIMIT ?4",
    )?;
    let limit = i64::try_from(max_events).unwrap_or(i64::MAX);
    let mut rows = stmt.query(params![team_id as i64, after, through, limit])?;
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
        let encoded = fields.encode()?;
        if !found.is_empty() && bytes + encoded.len() > max_bytes {
            break;
        }
        bytes += encoded.len();
        found.push(Pending {
            position: row.get(0)?,
            stored_at_ms: row.get(1)?,
            encoded,
            event,
        });
    }
    Ok(found)
}

/// The columns [`batch`] reads, in its order.
const BATCH_COLUMNS: &str = "id, team_id, first_position, last_position, created_at_ms, attempts, next_attempt_ms, last_error";

/// A [`Batch`] from a row of [`BATCH_COLUMNS`].
fn batch(row: &rusqlite::Row<'_>) -> rusqlite::Result<Batch> {
    Ok(Batch {
        id: row.get(0)?,
        team_id: row.get::<_, i64>(1)? as u64,
        first: row.get(2)?,
        last: row.get(3)?,
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
        "INSERT INTO export_batches (installation, id, team_id, first_position, last_position, \
         created_at_ms, attempts, next_attempt_ms, last_error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
         ON CONFLICT (installation) DO UPDATE SET attempts = ?7, next_attempt_ms = ?8, last_error = ?9",
        params![
            installation,
            batch.id,
            batch.team_id as i64,
            batch.first,
            batch.last,
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
        "UPDATE export_cursors SET position = MAX(position, ?2), exported_events = exported_events + ?3, \
         last_success_ms = ?4 WHERE installation = ?1",
        params![installation, batch.last, exported as i64, now_ms()],
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
        "INSERT OR REPLACE INTO export_dead_letters (installation, id, team_id, first_position, \
         last_position, created_at_ms, attempts, error, dead_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            installation,
            batch.id,
            batch.team_id as i64,
            batch.first,
            batch.last,
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
        "UPDATE export_cursors SET position = MAX(position, ?2), last_error = ?3, last_error_ms = ?4 \
         WHERE installation = ?1",
        params![installation, batch.last, error, now],
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
         AND replay_requested_ms IS NOT NULL AND replay_next_ms <= ?2 ORDER BY first_position LIMIT 1"
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

/// How far behind an installation is: events after its cursor, and since when the oldest of them
/// has waited (epoch ms).
pub fn lag(
    conn: &Connection,
    team_id: u64,
    position: i64,
) -> Result<(u64, Option<i64>), StoreError> {
    let (count, oldest): (i64, Option<i64>) = conn.query_row(
        "SELECT COUNT(*), MIN(stored_at_ms) FROM events WHERE team_id = ?1 AND seq > ?2",
        params![team_id as i64, position],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    Ok((count as u64, oldest))
}

/// What `sluice exports` prints for one installation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExportStatus {
    /// The installation.
    pub installation: String,
    /// Its team.
    pub team_id: u64,
    /// Storage position of the last event exported (or passed over).
    pub cursor: i64,
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

/// The status of every export installation known to the database.
pub fn status(conn: &Connection) -> Result<Vec<ExportStatus>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT c.installation, c.team_id, c.position, c.exported_events, c.last_success_ms, \
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
                row.get::<_, i64>(2)?,
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
                let (lag_events, oldest) = lag(conn, team_id, cursor)?;
                Ok(ExportStatus {
                    installation,
                    team_id,
                    cursor,
                    exported_events: exported,
                    lag_events,
                    lag_seconds: oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1e3),
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
    /// First storage position covered.
    pub first_position: i64,
    /// Last storage position covered.
    pub last_position: i64,
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
        "SELECT installation, id, team_id, first_position, last_position, attempts, error, dead_at_ms, \
         replay_requested_ms IS NOT NULL FROM export_dead_letters WHERE ?1 IS NULL OR installation = ?1 \
         ORDER BY dead_at_ms, first_position",
    )?;
    let letters = stmt
        .query_map([installation], |row| {
            Ok(ExportDeadLetter {
                installation: row.get(0)?,
                batch: row.get(1)?,
                team_id: row.get::<_, i64>(2)? as u64,
                first_position: row.get(3)?,
                last_position: row.get(4)?,
                attempts: row.get(5)?,
                error: row.get(6)?,
                dead_at: rfc3339(row.get(7)?),
                replaying: row.get(8)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(letters)
}

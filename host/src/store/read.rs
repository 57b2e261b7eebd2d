//! What the commands print: stored events, recordings and dead letters, newest last.

use super::{StoreError, rfc3339, uuid_text};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_abi::wire::{self, EventFields};

/// A stored event as `sluice events` prints it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct StoredEvent {
    /// Event UUID.
    pub uuid: String,
    /// Event name.
    pub event: String,
    /// Distinct id.
    pub distinct_id: String,
    /// Team id.
    pub team_id: u64,
    /// Event time, RFC 3339 UTC with milliseconds.
    pub timestamp: String,
    /// Client IP.
    pub ip: Option<String>,
    /// Properties.
    pub properties: Value,
    /// `$set` person properties.
    #[serde(rename = "$set", skip_serializing_if = "Option::is_none")]
    pub set: Option<Value>,
    /// `$set_once` person properties.
    #[serde(rename = "$set_once", skip_serializing_if = "Option::is_none")]
    pub set_once: Option<Value>,
}

impl StoredEvent {
    /// The printable form of an event's fields.
    pub fn from_fields(fields: &EventFields<'_>) -> Self {
        Self {
            uuid: uuid_text(&fields.uuid),
            event: fields.event.to_owned(),
            distinct_id: fields.distinct_id.to_owned(),
            team_id: fields.team_id,
            timestamp: rfc3339(fields.timestamp_ms),
            ip: fields.ip.map(str::to_owned),
            properties: json(fields.properties.to_owned()),
            set: fields.set.map(|s| json(s.to_owned())),
            set_once: fields.set_once.map(|s| json(s.to_owned())),
        }
    }
}

/// A dead letter as `sluice dead-letters` prints it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredDeadLetter {
    /// The installation that failed.
    pub installation: String,
    /// What went wrong, in one line.
    pub error: String,
    /// Where in the plugin it went wrong, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backtrace: Option<String>,
    /// The event as it was before that plugin, or its bytes if it cannot be read.
    pub event: DeadEvent,
}

/// The event of a dead letter.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum DeadEvent {
    /// It can be read.
    Readable(StoredEvent),
    /// It is damaged: why, and its bytes (base64, with length prefix).
    Damaged {
        /// Why it cannot be read.
        damaged: String,
        /// The encoded event, base64.
        bytes_base64: String,
    },
}

impl DeadEvent {
    /// The event of a dead letter from its bytes (with length prefix): as it was before the
    /// plugin that failed, earlier plugins' edits applied, or why it cannot be read.
    pub fn of(encoded: &[u8]) -> Self {
        wire::parse_encoded(encoded)
            .and_then(|raw| raw.with_patch_applied(StoredEvent::from_fields))
            .map_or_else(
                |error| DeadEvent::Damaged {
                    damaged: error.to_string(),
                    bytes_base64: BASE64.encode(encoded),
                },
                DeadEvent::Readable,
            )
    }
}

/// A quarantined ingest payload as `sluice quarantine` prints it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredQuarantine {
    /// Where it was in the ingest.
    pub position: String,
    /// The team the ingest recorded.
    pub team_id: u64,
    /// How many events the ingest recorded in it.
    pub events: u64,
    /// Why it cannot be read.
    pub error: String,
    /// When it was set aside, RFC 3339 UTC.
    pub quarantined_at: String,
    /// The payload, base64.
    pub payload_base64: String,
}

/// A stored recording event as `sluice recordings` prints it (and as archives hold it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredRecording {
    /// Event UUID.
    pub uuid: String,
    /// Team id.
    pub team_id: u64,
    /// `$session_id`.
    pub session_id: String,
    /// `$window_id`.
    pub window_id: Option<String>,
    /// Distinct id.
    pub distinct_id: String,
    /// Event time, RFC 3339 UTC with milliseconds.
    pub timestamp: String,
    /// The event's properties (`$snapshot_data` and the rest).
    pub properties: Value,
}

/// The newest `limit` stored events (of `team`, if given), oldest first.
pub fn recent_events(
    conn: &Connection,
    team: Option<u64>,
    limit: usize,
) -> Result<Vec<StoredEvent>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT uuid, event, distinct_id, team_id, timestamp_ms, ip, properties, set_json, set_once_json \
         FROM events WHERE ?1 IS NULL OR team_id = ?1 ORDER BY seq DESC LIMIT ?2",
    )?;
    let mut events = stmt
        .query_map(params![team.map(|t| t as i64), limit as i64], |row| {
            let uuid: Vec<u8> = row.get(0)?;
            Ok(StoredEvent {
                uuid: uuid_text(&uuid),
                event: row.get(1)?,
                distinct_id: row.get(2)?,
                team_id: row.get::<_, i64>(3)? as u64,
                timestamp: rfc3339(row.get(4)?),
                ip: row.get(5)?,
                properties: json(row.get::<_, String>(6)?),
                set: row.get::<_, Option<String>>(7)?.map(json),
                set_once: row.get::<_, Option<String>>(8)?.map(json),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    events.reverse();
    Ok(events)
}

/// The newest `limit` dead letters (of `team`, if given), oldest first.
pub fn recent_dead_letters(
    conn: &Connection,
    team: Option<u64>,
    limit: usize,
) -> Result<Vec<StoredDeadLetter>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT installation, error, event, backtrace FROM dead_letters \
         WHERE ?1 IS NULL OR team_id = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![team.map(|t| t as i64), limit as i64], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Vec<u8>>(2)?,
                row.get::<_, Option<String>>(3)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut letters = rows
        .into_iter()
        .map(|(installation, error, encoded, backtrace)| {
            Ok(StoredDeadLetter {
                installation,
                error,
                backtrace,
                event: DeadEvent::of(&encoded),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    letters.reverse();
    Ok(letters)
}

/// The newest `limit` quarantined ingest payloads (of `team`, if given), oldest first.
pub fn recent_quarantined(
    conn: &Connection,
    team: Option<u64>,
    limit: usize,
) -> Result<Vec<StoredQuarantine>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT position, team_id, events, error, quarantined_at_ms, payload FROM queue_quarantine \
         WHERE ?1 IS NULL OR team_id = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let mut rows = stmt
        .query_map(params![team.map(|t| t as i64), limit as i64], |row| {
            Ok(StoredQuarantine {
                position: row.get(0)?,
                team_id: row.get::<_, i64>(1)? as u64,
                events: row.get::<_, i64>(2)? as u64,
                error: row.get(3)?,
                quarantined_at: rfc3339(row.get(4)?),
                payload_base64: BASE64.encode(row.get::<_, Vec<u8>>(5)?),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.reverse();
    Ok(rows)
}

/// The newest `limit` recording events (of `team` and `session`, if given), in session order.
pub fn recent_recordings(
    conn: &Connection,
    team: Option<u64>,
    session: Option<&str>,
    limit: usize,
) -> Result<Vec<StoredRecording>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT uuid, team_id, session_id, window_id, distinct_id, timestamp_ms, properties FROM recordings \
         WHERE (?1 IS NULL OR team_id = ?1) AND (?2 IS NULL OR session_id = ?2) \
         ORDER BY seq DESC LIMIT ?3",
    )?;
    let mut recordings = stmt
        .query_map(
            params![team.map(|t| t as i64), session, limit as i64],
            |row| {
                let uuid: Vec<u8> = row.get(0)?;
                Ok(StoredRecording {
                    uuid: uuid_text(&uuid),
                    team_id: row.get::<_, i64>(1)? as u64,
                    session_id: row.get(2)?,
                    window_id: row.get(3)?,
                    distinct_id: row.get(4)?,
                    timestamp: rfc3339(row.get(5)?),
                    properties: json(row.get::<_, String>(6)?),
                })
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    recordings.reverse();
    Ok(recordings)
}

fn json(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// Where a session was archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingArchive {
    /// The team.
    pub team_id: u64,
    /// The object store.
    pub store: String,
    /// The object's full key.
    pub key: String,
}

/// The archives of session `session` (of `team`, if given).
pub fn recording_archives(
    conn: &Connection,
    team: Option<u64>,
    session: &str,
) -> Result<Vec<RecordingArchive>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT team_id, store, key FROM recording_archives WHERE session_id = ?1 \
         AND (?2 IS NULL OR team_id = ?2) ORDER BY team_id, first_timestamp_ms, key",
    )?;
    let archives = stmt
        .query_map(params![session, team.map(|t| t as i64)], |row| {
            Ok(RecordingArchive {
                team_id: row.get::<_, i64>(0)? as u64,
                store: row.get(1)?,
                key: row.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(archives)
}

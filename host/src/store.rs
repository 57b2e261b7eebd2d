//! The embedded SQLite database: durable ingest queue, stored events, session recordings, dead
//! letters.
//!
//! One file (`<data_dir>/sluice.db`) in WAL mode with `synchronous = FULL`, so a committed
//! transaction survives a crash of the process or the machine. Moving events from the queue to
//! the events table happens in one transaction: an event is never in neither, and a replay after
//! a crash is absorbed by the `uuid` uniqueness of the events table.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;
use serde_json::Value;
use sluice_abi::wire::{self, EventFields};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// File name of the database inside the data folder.
pub const DB_FILE: &str = "sluice.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY,
    team_id INTEGER NOT NULL,
    events INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    uuid BLOB NOT NULL UNIQUE,
    team_id INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    event TEXT NOT NULL,
    distinct_id TEXT NOT NULL,
    ip TEXT,
    properties TEXT NOT NULL,
    set_json TEXT,
    set_once_json TEXT,
    stored_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_team ON events (team_id, seq);
CREATE TABLE IF NOT EXISTS recordings (
    seq INTEGER PRIMARY KEY,
    uuid BLOB NOT NULL UNIQUE,
    team_id INTEGER NOT NULL,
    session_id TEXT NOT NULL,
    window_id TEXT,
    distinct_id TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    properties TEXT NOT NULL,
    stored_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS recordings_by_session ON recordings (team_id, session_id, window_id, timestamp_ms);
CREATE TABLE IF NOT EXISTS plugin_logs (
    id INTEGER PRIMARY KEY,
    installation TEXT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    time_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS plugin_logs_by_installation ON plugin_logs (installation, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    team_id INTEGER NOT NULL,
    installation TEXT NOT NULL,
    uuid BLOB NOT NULL,
    event BLOB NOT NULL,
    error TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
";

/// Opens (creating if needed) the database in `data_dir`.
pub fn open(data_dir: &Path) -> rusqlite::Result<Connection> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        rusqlite::Error::InvalidPath(PathBuf::from(format!("{}: {e}", data_dir.display())))
    })?;
    let conn = Connection::open(data_dir.join(DB_FILE))?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// An event a plugin failed on, kept for operators with the error.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The installation that failed.
    pub installation: String,
    /// The event as it was before that plugin (encoded, with length prefix).
    pub encoded: Vec<u8>,
    /// What went wrong.
    pub error: String,
}

/// Stores processed events (skipping uuids already stored), records dead letters, and removes
/// queue rows up to `last_queue_id`, all in `tx`. Returns how many events were new.
pub fn commit_processed(
    tx: &Transaction<'_>,
    events: &[Vec<u8>],
    dead_letters: &[DeadLetter],
    last_queue_id: i64,
) -> rusqlite::Result<usize> {
    let now = now_ms();
    let mut inserted = 0;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO events (uuid, team_id, timestamp_ms, event, distinct_id, ip, \
             properties, set_json, set_once_json, stored_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for encoded in events {
            let fields = decode(encoded)?;
            inserted += insert.execute(params![
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
            ])?;
        }
        let mut dead = tx.prepare_cached(
            "INSERT INTO dead_letters (team_id, installation, uuid, event, error, created_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for letter in dead_letters {
            let fields = decode(&letter.encoded)?;
            dead.execute(params![
                fields.team_id as i64,
                letter.installation,
                &fields.uuid[..],
                letter.encoded,
                letter.error,
                now,
            ])?;
        }
    }
    tx.execute("DELETE FROM queue WHERE id <= ?1", [last_queue_id])?;
    Ok(inserted)
}

/// The name of session-recording events, which are stored apart and skip plugin chains.
pub const SNAPSHOT_EVENT: &str = "$snapshot";

/// Stores `$snapshot` events in the recordings table (skipping uuids already stored), keyed by
/// team, `$session_id`, `$window_id` and time. Returns how many were new.
pub fn insert_recordings(tx: &Transaction<'_>, recordings: &[Vec<u8>]) -> rusqlite::Result<usize> {
    let now = now_ms();
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

/// A stored recording event as `sluice recordings` prints it.
#[derive(Debug, Clone, Serialize, PartialEq)]
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

/// The newest `limit` recording events (of `team` and `session`, if given), in session order.
pub fn recent_recordings(
    conn: &Connection,
    team: Option<u64>,
    session: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<StoredRecording>> {
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

fn decode(encoded: &[u8]) -> rusqlite::Result<EventFields<'_>> {
    wire::parse_encoded(encoded)
        .and_then(|raw| raw.fields())
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A stored event as `sluice events` prints it.
#[derive(Debug, Clone, Serialize, PartialEq)]
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

/// A dead letter as `sluice dead-letters` prints it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredDeadLetter {
    /// The installation that failed.
    pub installation: String,
    /// What went wrong.
    pub error: String,
    /// The event as it was before that plugin.
    pub event: StoredEvent,
}

/// The newest `limit` stored events (of `team`, if given), oldest first.
pub fn recent_events(
    conn: &Connection,
    team: Option<u64>,
    limit: usize,
) -> rusqlite::Result<Vec<StoredEvent>> {
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
) -> rusqlite::Result<Vec<StoredDeadLetter>> {
    let mut stmt = conn.prepare(
        "SELECT installation, error, event FROM dead_letters WHERE ?1 IS NULL OR team_id = ?1 \
         ORDER BY id DESC LIMIT ?2",
    )?;
    let mut letters = stmt
        .query_map(params![team.map(|t| t as i64), limit as i64], |row| {
            let encoded: Vec<u8> = row.get(2)?;
            let fields = decode(&encoded)?;
            Ok(StoredDeadLetter {
                installation: row.get(0)?,
                error: row.get(1)?,
                event: StoredEvent {
                    uuid: uuid_text(&fields.uuid),
                    event: fields.event.to_owned(),
                    distinct_id: fields.distinct_id.to_owned(),
                    team_id: fields.team_id,
                    timestamp: rfc3339(fields.timestamp_ms),
                    ip: fields.ip.map(str::to_owned),
                    properties: json(fields.properties.to_owned()),
                    set: fields.set.map(|s| json(s.to_owned())),
                    set_once: fields.set_once.map(|s| json(s.to_owned())),
                },
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    letters.reverse();
    Ok(letters)
}

/// One line a plugin logged (through `log`, or on stdout/stderr).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PluginLog {
    /// Row id; lines are numbered in the order they were stored.
    #[serde(skip)]
    pub id: i64,
    /// When it was logged, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The installation, `team-<id>/<installation id>`.
    pub installation: String,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// The line.
    pub message: String,
}

/// Stores plugin log lines: (installation, level, message, time in epoch ms).
pub fn insert_plugin_logs(
    tx: &Transaction<'_>,
    lines: &[(String, &'static str, String, i64)],
) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO plugin_logs (installation, level, message, time_ms) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (installation, level, message, time_ms) in lines {
        insert.execute(params![installation, level, message, time_ms])?;
    }
    Ok(())
}

/// Plugin log lines with an id above `after` (of `team` and `installation`, if given), oldest
/// first; with `after = None`, the newest `limit` lines.
pub fn plugin_logs(
    conn: &Connection,
    team: Option<u64>,
    installation: Option<&str>,
    after: Option<i64>,
    limit: usize,
) -> rusqlite::Result<Vec<PluginLog>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, installation, level, message, time_ms FROM plugin_logs \
         WHERE (?1 IS NULL OR installation = ?1) AND id > ?2 \
         AND (?5 IS NULL OR installation LIKE 'team-' || ?5 || '/%') \
         ORDER BY CASE WHEN ?3 THEN id END ASC, id DESC LIMIT ?4",
    )?;
    let team = team.map(|t| t as i64);
    let params = params![
        installation,
        after.unwrap_or(0),
        after.is_some(),
        limit as i64,
        team
    ];
    let mut lines = stmt
        .query_map(params, |row| {
            Ok(PluginLog {
                id: row.get(0)?,
                installation: row.get(1)?,
                level: row.get(2)?,
                message: row.get(3)?,
                time: rfc3339(row.get(4)?),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    lines.sort_by_key(|line| line.id);
    Ok(lines)
}

/// The id of the newest plugin log line (0 when there is none).
pub fn last_plugin_log_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COALESCE(MAX(id), 0) FROM plugin_logs", [], |row| {
        row.get(0)
    })
}

/// Number of events waiting in the queue.
pub fn queue_depth(conn: &Connection) -> rusqlite::Result<u64> {
    let depth: Option<i64> = conn
        .query_row("SELECT SUM(events) FROM queue", [], |row| row.get(0))
        .optional()?
        .flatten();
    Ok(depth.unwrap_or(0) as u64)
}

fn uuid_text(bytes: &[u8]) -> String {
    uuid::Uuid::from_slice(bytes).map_or_else(|_| String::from("invalid"), |u| u.to_string())
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

fn json(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

//! The rows of sluice's ClickHouse tables, as JSON objects: what the worker's sink produces to
//! the topics, what the loader inserts (adding where it read each row), and what reads return.

use super::Table;
use crate::sink::{DeadLetter, Quarantined, SinkError};
use crate::store::logs::LogLine;
use crate::store::uuid_text;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_abi::wire::{self, EventFields};

/// A row of [`Table::Events`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventRow {
    /// Team id.
    pub team_id: u64,
    /// Event uuid, hyphenated.
    pub uuid: String,
    /// Event name.
    pub event: String,
    /// Distinct id.
    pub distinct_id: String,
    /// Event time, epoch milliseconds.
    pub timestamp_ms: i64,
    /// Client IP.
    pub ip: Option<String>,
    /// Properties, JSON.
    pub properties: String,
    /// `$set`, JSON.
    pub set_json: Option<String>,
    /// `$set_once`, JSON.
    pub set_once_json: Option<String>,
    /// When the worker stored it, epoch milliseconds: of two copies, the later is kept.
    pub stored_at_ms: i64,
    /// The topic partition it was loaded from (on rows read back, when selected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_partition: Option<i32>,
    /// The topic offset it was loaded from (on rows read back, when selected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_offset: Option<i64>,
}

/// A row of [`Table::Recordings`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordingRow {
    /// Team id.
    pub team_id: u64,
    /// Event uuid, hyphenated.
    pub uuid: String,
    /// `$session_id`.
    pub session_id: String,
    /// `$window_id`.
    pub window_id: Option<String>,
    /// Distinct id.
    pub distinct_id: String,
    /// Event time, epoch milliseconds.
    pub timestamp_ms: i64,
    /// Properties, JSON.
    pub properties: String,
    /// When the worker stored it, epoch milliseconds: of two copies, the later is kept.
    pub stored_at_ms: i64,
}

/// A row of [`Table::DeadLetters`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetterRow {
    /// Team id.
    pub team_id: u64,
    /// The installation that failed; `(ingest)` for an ingest message that cannot be read.
    pub installation: String,
    /// The event's uuid; for an unreadable ingest message, where it was in the ingest.
    pub uuid: String,
    /// The event as it was before that installation (encoded, with length prefix), base64.
    pub event_base64: String,
    /// What went wrong.
    pub error: String,
    /// Where in the plugin, when known.
    pub backtrace: Option<String>,
    /// When the worker set it aside, epoch milliseconds: of two copies, the later is kept.
    pub created_at_ms: i64,
}

/// A row of [`Table::Logs`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogRow {
    /// The line's own id, so a line loaded twice is kept once.
    pub id: String,
    /// The installation, `team-<id>/<installation id>`.
    pub installation: String,
    /// Its level.
    pub level: String,
    /// The line.
    pub message: String,
    /// When it was logged, epoch milliseconds.
    pub time_ms: i64,
}

/// The installation named in dead letters of ingest messages that cannot be read.
pub const INGEST: &str = "(ingest)";

/// One row, ready to produce: its table, its message key and the JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The table it goes to.
    pub table: Table,
    /// The message key (rows of one key stay in order).
    pub key: String,
    /// The JSON object, on one line.
    pub json: Vec<u8>,
}

impl Row {
    fn new(table: Table, key: String, row: &impl Serialize) -> Self {
        Self {
            table,
            key,
            // Rows are plain structs of strings and numbers: serializing cannot fail.
            json: serde_json::to_vec(row).unwrap_or_default(),
        }
    }
}

fn refused(error: wire::WireError) -> SinkError {
    SinkError::Refused(error.to_string())
}

/// The row of a processed event, its plugins' edits applied, stored at `now_ms`.
pub fn event(encoded: &[u8], now_ms: i64) -> Result<Row, SinkError> {
    wire::parse_encoded(encoded)
        .and_then(|raw| {
            raw.with_patch_applied(|fields| {
                let row = EventRow {
                    team_id: fields.team_id,
                    uuid: uuid_text(&fields.uuid),
                    event: fields.event.to_owned(),
                    distinct_id: fields.distinct_id.to_owned(),
                    timestamp_ms: fields.timestamp_ms,
                    ip: fields.ip.map(str::to_owned),
                    properties: fields.properties.to_owned(),
                    set_json: fields.set.map(str::to_owned),
                    set_once_json: fields.set_once.map(str::to_owned),
                    stored_at_ms: now_ms,
                    kafka_partition: None,
                    kafka_offset: None,
                };
                let key = format!("{}:{}", row.team_id, row.distinct_id);
                Row::new(Table::Events, key, &row)
            })
        })
        .map_err(refused)
}

/// The row of a session-recording event, stored at `now_ms`.
pub fn recording(encoded: &[u8], now_ms: i64) -> Result<Row, SinkError> {
    let fields = wire::parse_encoded(encoded)
        .and_then(|raw| raw.fields())
        .map_err(refused)?;
    let properties: Value = serde_json::from_str(fields.properties).unwrap_or_default();
    let text = |key: &str| {
        properties
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let row = RecordingRow {
        team_id: fields.team_id,
        uuid: uuid_text(&fields.uuid),
        session_id: text("$session_id").unwrap_or_default(),
        window_id: text("$window_id"),
        distinct_id: fields.distinct_id.to_owned(),
        timestamp_ms: fields.timestamp_ms,
        properties: fields.properties.to_owned(),
        stored_at_ms: now_ms,
    };
    let key = format!("{}:{}", row.team_id, row.session_id);
    Ok(Row::new(Table::Recordings, key, &row))
}

/// The row of a dead letter, created at `now_ms`. Only the event's envelope is read: the rest
/// may be what is damaged.
pub fn dead_letter(letter: &DeadLetter, now_ms: i64) -> Result<Row, SinkError> {
    let event = wire::parse_encoded(&letter.encoded).map_err(refused)?;
    let row = DeadLetterRow {
        team_id: event.team_id(),
        installation: letter.installation.clone(),
        uuid: uuid_text(&event.uuid()),
        event_base64: BASE64.encode(&letter.encoded),
        error: letter.error.clone(),
        backtrace: letter.backtrace.clone(),
        created_at_ms: now_ms,
    };
    let key = format!("{}:{}", row.team_id, row.uuid);
    Ok(Row::new(Table::DeadLetters, key, &row))
}

/// The dead letter of an ingest message that cannot be read, created at `now_ms`.
pub fn quarantined(payload: &Quarantined, now_ms: i64) -> Row {
    let row = DeadLetterRow {
        team_id: payload.team_id,
        installation: INGEST.into(),
        uuid: payload.position.clone(),
        event_base64: BASE64.encode(&payload.payload),
        error: payload.error.clone(),
        backtrace: None,
        created_at_ms: now_ms,
    };
    let key = format!("{}:{}", row.team_id, row.uuid);
    Row::new(Table::DeadLetters, key, &row)
}

/// The row of a plugin log line.
pub fn log(line: &LogLine) -> Row {
    let row = LogRow {
        id: uuid::Uuid::now_v7().to_string(),
        installation: line.installation.clone(),
        level: line.level.to_owned(),
        message: line.message.clone(),
        time_ms: line.time_ms,
    };
    Row::new(Table::Logs, row.installation.clone(), &row)
}

/// The fields of a stored event row, to print it as the embedded store does.
pub fn event_fields(row: &EventRow) -> EventFields<'_> {
    EventFields {
        uuid: uuid::Uuid::parse_str(&row.uuid).map_or([0; 16], |u| u.into_bytes()),
        team_id: row.team_id,
        timestamp_ms: row.timestamp_ms,
        event: &row.event,
        distinct_id: &row.distinct_id,
        ip: row.ip.as_deref(),
        properties: &row.properties,
        set: row.set_json.as_deref(),
        set_once: row.set_once_json.as_deref(),
    }
}

/// `row` with the topic partition and offset it was read from, as the loader inserts it.
pub fn with_position(row: &[u8], partition: i32, offset: i64) -> Option<Vec<u8>> {
    let body = row.trim_ascii_end().strip_suffix(b"}")?;
    let mut out = Vec::with_capacity(body.len() + 48);
    out.extend_from_slice(body);
    if body.trim_ascii_end().last() != Some(&b'{') {
        out.push(b',');
    }
    out.extend_from_slice(
        format!("\"kafka_partition\":{partition},\"kafka_offset\":{offset}}}").as_bytes(),
    );
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_row_holds_the_event_with_its_edits_and_reads_back_as_stored() {
        let encoded = crate::sink::test_event(7, 3, "signup");
        let row = event(&encoded, 1_000).unwrap();
        assert_eq!(row.table, Table::Events);
        assert_eq!(row.key, "7:u");
        let loaded = with_position(&row.json, 2, 41).unwrap();
        let value: Value = serde_json::from_slice(&loaded).unwrap();
        assert_eq!(value["kafka_partition"], 2);
        assert_eq!(value["kafka_offset"], 41);
        assert_eq!(value["stored_at_ms"], 1_000);
        let back: EventRow = serde_json::from_slice(&loaded).unwrap();
        let fields = event_fields(&back);
        assert_eq!(fields.uuid, [3; 16]);
        assert_eq!((fields.team_id, fields.event), (7, "signup"));
        assert_eq!(
            with_position(b"{}", 0, 1).as_deref(),
            Some(&br#"{"kafka_partition":0,"kafka_offset":1}"#[..])
        );
        assert_eq!(with_position(b"not json", 0, 1), None);
    }

    #[test]
    fn a_damaged_dead_letter_keeps_its_bytes_and_is_keyed_by_its_envelope() {
        let mut damaged = crate::sink::test_event(1, 9, "e");
        let last = damaged.len() - 1;
        damaged[last] = 0xff;
        let letter = DeadLetter {
            installation: "team-1/p".into(),
            encoded: damaged.clone(),
            error: "boom".into(),
            backtrace: None,
        };
        let row: DeadLetterRow =
            serde_json::from_slice(&dead_letter(&letter, 5).unwrap().json).unwrap();
        assert_eq!(row.uuid, uuid_text(&[9; 16]));
        assert_eq!(BASE64.decode(row.event_base64).unwrap(), damaged);
    }
}

//! What the commands print, read from ClickHouse: the same lines as from the embedded store,
//! each row once (`FINAL`), newest last. Rows stored in the same millisecond keep the order of
//! the topic partition they were loaded from, which is per-user order for events.

use super::recordings::{ARCHIVES, ArchiveRow};
use super::rows::{DeadLetterRow, EventRow, LogRow, RecordingRow, event_fields};
use super::{ClickHouse, ClickHouseError, Table};
use crate::store::dead_letters::{self, Letter, Selector};
use crate::store::logs::PluginLog;
use crate::store::read::{
    DeadEvent, RecordingArchive, StoredDeadLetter, StoredEvent, StoredRecording,
};
use crate::store::rfc3339;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::DeserializeOwned;

/// Single quotes around `text`, escaped for ClickHouse.
pub(super) fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The newest `limit` rows of `table` matching `filter` (a condition, or `1`) in `order`
/// (newest first), returned oldest first.
fn newest<T: DeserializeOwned>(
    clickhouse: &ClickHouse,
    table: Table,
    columns: &str,
    filter: &str,
    order: &str,
    limit: usize,
) -> Result<Vec<T>, ClickHouseError> {
    let mut rows = clickhouse.select(&format!(
        "SELECT {columns} FROM {}.{} FINAL WHERE {filter} ORDER BY {order} LIMIT {limit}",
        clickhouse.database(),
        table.name()
    ))?;
    rows.reverse();
    Ok(rows)
}

fn team_filter(team: Option<u64>) -> String {
    team.map_or_else(|| "1".into(), |team| format!("team_id = {team}"))
}

/// The newest `limit` stored events (of `team`, if given), oldest first.
pub fn recent_events(
    clickhouse: &ClickHouse,
    team: Option<u64>,
    limit: usize,
) -> Result<Vec<StoredEvent>, ClickHouseError> {
    let rows: Vec<EventRow> = newest(
        clickhouse,
        Table::Events,
        "team_id, uuid, event, distinct_id, timestamp_ms, ip, properties, set_json, \
         set_once_json, stored_at_ms",
        &team_filter(team),
        "stored_at_ms DESC, kafka_partition DESC, kafka_offset DESC",
        limit,
    )?;
    Ok(rows
        .iter()
        .map(|row| StoredEvent::from_fields(&event_fields(row)))
        .collect())
}

/// The newest `limit` dead letters (of `team`, if given), oldest first.
pub fn recent_dead_letters(
    clickhouse: &ClickHouse,
    team: Option<u64>,
    limit: usize,
) -> Result<Vec<StoredDeadLetter>, ClickHouseError> {
    let rows: Vec<DeadLetterRow> = newest(
        clickhouse,
        Table::DeadLetters,
        "team_id, installation, uuid, event_base64, error, backtrace, created_at_ms",
        &team_filter(team),
        "created_at_ms DESC, kafka_partition DESC, kafka_offset DESC",
        limit,
    )?;
    Ok(rows
        .into_iter()
        .map(|row| StoredDeadLetter {
            event: DeadEvent::of(&BASE64.decode(&row.event_base64).unwrap_or_default()),
            installation: row.installation,
            error: row.error,
            backtrace: row.backtrace,
        })
        .collect())
}

/// The newest `limit` recording events (of `team` and `session`, if given), oldest first.
pub fn recent_recordings(
    clickhouse: &ClickHouse,
    team: Option<u64>,
    session: Option<&str>,
    limit: usize,
) -> Result<Vec<StoredRecording>, ClickHouseError> {
    let mut filter = team_filter(team);
    if let Some(session) = session {
        filter.push_str(&format!(" AND session_id = {}", quoted(session)));
    }
    let rows: Vec<RecordingRow> = newest(
        clickhouse,
        Table::Recordings,
        "team_id, uuid, session_id, window_id, distinct_id, timestamp_ms, properties, stored_at_ms",
        &filter,
        "stored_at_ms DESC, kafka_partition DESC, kafka_offset DESC",
        limit,
    )?;
    Ok(rows
        .into_iter()
        .map(|row| StoredRecording {
            uuid: row.uuid,
            team_id: row.team_id,
            session_id: row.session_id,
            window_id: row.window_id,
            distinct_id: row.distinct_id,
            timestamp: rfc3339(row.timestamp_ms),
            properties: serde_json::from_str(&row.properties)
                .unwrap_or(serde_json::Value::String(row.properties)),
        })
        .collect())
}

/// The dead letters `selector` names, newest copy of each (at most
/// [`dead_letters::MAX_PER_REQUEST`]).
pub fn dead_letters_named(
    clickhouse: &ClickHouse,
    selector: &Selector,
) -> Result<Vec<Letter>, ClickHouseError> {
    let mut filter = format!("team_id = {}", selector.team);
    if let Some(installation) = &selector.installation {
        filter.push_str(&format!(" AND installation = {}", quoted(installation)));
    }
    if let Some(uuid) = &selector.uuid {
        filter.push_str(&format!(" AND uuid = {}", quoted(uuid)));
    }
    let rows: Vec<DeadLetterRow> = clickhouse.select(&format!(
        "SELECT team_id, installation, uuid, event_base64, error, backtrace, created_at_ms \
         FROM {}.{} FINAL WHERE {filter} ORDER BY created_at_ms LIMIT {}",
        clickhouse.database(),
        Table::DeadLetters.name(),
        dead_letters::MAX_PER_REQUEST
    ))?;
    Ok(rows
        .into_iter()
        .map(|row| Letter {
            event: BASE64.decode(&row.event_base64).unwrap_or_default(),
            installation: row.installation,
            uuid: row.uuid,
        })
        .collect())
}

/// Removes the dead letters of `team` that `letters` are, and waits until ClickHouse has.
pub fn remove_dead_letters(
    clickhouse: &ClickHouse,
    team: u64,
    letters: &[Letter],
) -> Result<(), ClickHouseError> {
    if letters.is_empty() {
        return Ok(());
    }
    let pairs: Vec<String> = letters
        .iter()
        .map(|l| format!("({}, {})", quoted(&l.installation), quoted(&l.uuid)))
        .collect();
    clickhouse.delete_where(
        Table::DeadLetters.name(),
        &format!(
            "team_id = {team} AND (installation, uuid) IN ({})",
            pairs.join(", ")
        ),
        std::time::Duration::from_secs(60),
    )
}

/// The archives of session `session` (of `team`, if given).
pub fn recording_archives(
    clickhouse: &ClickHouse,
    team: Option<u64>,
    session: &str,
) -> Result<Vec<RecordingArchive>, ClickHouseError> {
    let rows: Vec<ArchiveRow> = clickhouse.select(&format!(
        "SELECT * FROM {}.{ARCHIVES} FINAL WHERE {} AND session_id = {} \
         ORDER BY team_id, first_timestamp_ms, key",
        clickhouse.database(),
        team_filter(team),
        quoted(session)
    ))?;
    Ok(rows
        .into_iter()
        .map(|row| RecordingArchive {
            team_id: row.team_id,
            store: row.store,
            key: row.key,
        })
        .collect())
}

/// The newest `limit` plugin log lines (of `team` and `installation`, if given), oldest first.
pub fn recent_logs(
    clickhouse: &ClickHouse,
    team: Option<u64>,
    installation: Option<&str>,
    limit: usize,
) -> Result<Vec<PluginLog>, ClickHouseError> {
    let mut filter = vec!["1".to_owned()];
    if let Some(team) = team {
        filter.push(format!("startsWith(installation, 'team-{team}/')"));
    }
    if let Some(installation) = installation {
        filter.push(format!("installation = {}", quoted(installation)));
    }
    let rows: Vec<LogRow> = newest(
        clickhouse,
        Table::Logs,
        "id, installation, level, message, time_ms",
        &filter.join(" AND "),
        "time_ms DESC, kafka_partition DESC, kafka_offset DESC",
        limit,
    )?;
    Ok(rows
        .into_iter()
        .enumerate()
        .map(|(n, row)| PluginLog {
            id: n as i64,
            time: rfc3339(row.time_ms),
            installation: row.installation,
            level: row.level,
            message: row.message,
        })
        .collect())
}

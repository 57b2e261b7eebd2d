//! The `plugin_logs` table: what plugins logged (their `log` calls, stdout and stderr).

use super::{StoreError, rfc3339};
use rusqlite::{Connection, params};
use serde::Serialize;

/// One line to store.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// The installation, `team-<id>/<installation id>`.
    pub installation: String,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// The line.
    pub message: String,
    /// When it was logged, epoch milliseconds.
    pub time_ms: i64,
}

/// One stored line as `sluice logs` prints it.
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

/// Stores `lines` in one transaction.
pub fn insert(conn: &mut Connection, lines: &[LogLine]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO plugin_logs (installation, level, message, time_ms) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for line in lines {
            insert.execute(params![
                line.installation,
                line.level,
                line.message,
                line.time_ms
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Plugin log lines with an id above `after` (of `team` and `installation`, if given), oldest
/// first; with `after = None`, the newest `limit` lines.
pub fn read(
    conn: &Connection,
    team: Option<u64>,
    installation: Option<&str>,
    after: Option<i64>,
    limit: usize,
) -> Result<Vec<PluginLog>, StoreError> {
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
pub fn last_id(conn: &Connection) -> Result<i64, StoreError> {
    Ok(
        conn.query_row("SELECT COALESCE(MAX(id), 0) FROM plugin_logs", [], |row| {
            row.get(0)
        })?,
    )
}

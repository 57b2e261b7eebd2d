//! Plugin logs: what plugins logged (their `log` calls, stdout and stderr), behind [`LogStore`].
//! The embedded store is the `plugin_logs` table ([`SqliteLogs`]).
//!
//! # The contract every log store keeps
//!
//! - **Ordered ids.** Each stored line gets an id larger than that of every line stored before
//!   it, so a reader follows the log by asking for the lines after the last id it saw.
//! - **Stored lines survive a restart.** Appending is best effort for the plugins: the `log`
//!   capability hands lines to one writer and drops (and counts) what it cannot keep up with,
//!   so a slow store never holds up a plugin.
//! - **Filters.** Reads filter by team and installation, and return lines oldest first.

use super::{StoreError, rfc3339};
use rusqlite::{Connection, params};
use serde::Serialize;
use std::path::Path;

/// One line to store.
#[derive(Debug, Clone, PartialEq, Serialize)]
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

/// Which lines to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery<'a> {
    /// Only this team's.
    pub team: Option<u64>,
    /// Only this installation's.
    pub installation: Option<&'a str>,
    /// Only lines with a larger id, oldest first; `None`: the newest `limit` lines.
    pub after: Option<i64>,
    /// At most this many.
    pub limit: usize,
}

/// Where plugin log lines are written (see the module docs for the contract); each store has
/// its own reader for the commands.
pub trait LogStore: Send {
    /// Stores `lines`, in order.
    fn append(&mut self, lines: &[LogLine]) -> Result<(), StoreError>;
}

/// The `plugin_logs` table of the embedded database.
pub struct SqliteLogs {
    conn: Connection,
}

impl SqliteLogs {
    /// The log table of the database in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            conn: super::open(data_dir)?,
        })
    }
}

impl LogStore for SqliteLogs {
    fn append(&mut self, lines: &[LogLine]) -> Result<(), StoreError> {
        insert(&mut self.conn, lines)
    }
}

impl SqliteLogs {
    /// The lines `query` asks for, oldest first.
    pub fn read(&self, query: &LogQuery<'_>) -> Result<Vec<PluginLog>, StoreError> {
        read(&self.conn, query)
    }

    /// The id of the newest line (0 when there is none).
    pub fn last_id(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM plugin_logs", [], |row| {
                row.get(0)
            })?)
    }
}

/// Stores `lines` in one transaction.
fn insert(conn: &mut Connection, lines: &[LogLine]) -> Result<(), StoreError> {
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

/// The lines `query` asks for, oldest first.
pub fn read(conn: &Connection, query: &LogQuery<'_>) -> Result<Vec<PluginLog>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, installation, level, message, time_ms FROM plugin_logs \
         WHERE (?1 IS NULL OR installation = ?1) AND id > ?2 \
         AND (?5 IS NULL OR installation LIKE 'team-' || ?5 || '/%') \
         ORDER BY CASE WHEN ?3 THEN id END ASC, id DESC LIMIT ?4",
    )?;
    let params = params![
        query.installation,
        query.after.unwrap_or(0),
        query.after.is_some(),
        query.limit as i64,
        query.team.map(|t| t as i64)
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

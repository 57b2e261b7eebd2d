//! The `recordings` capability on ClickHouse: sessions listed, read and deleted in the
//! `recordings` table, archives recorded in `recording_archives`.
//!
//! **Positions.** The worker produces a session's events under one key (team and session), so
//! they are in one partition of the recordings topic, in the order stored; a row's position is
//! the offset it was loaded from, plus one (0 stays "before every event"). A session's order is
//! therefore its offsets', and what a plugin read is a prefix of it.
//!
//! **Deletes** are `ALTER TABLE … DELETE` mutations, which ClickHouse applies in the background;
//! [`RecordingStore::delete_session`] waits until the table has no mutation left to do, so once
//! it returns no read finds the deleted rows. A mutation rewrites the parts that hold the
//! session: fine for a retention run deleting hundreds or thousands of sessions, not for
//! deleting events one at a time.
//!
//! Each call makes its own HTTP client: the store lives in the capability services, which may
//! be dropped on an async thread, where a blocking client must not be.

use super::read::quoted;
use super::{ClickHouse, ClickHouseSettings, Table};
use crate::bindings::sluice::plugin::recordings::{Session, Snapshot};
use crate::capabilities::recordings::{Archive, MAX_PAGE, MAX_PAGE_BYTES, RecordingStore};
use crate::store::now_ms;
use serde::{Deserialize, Serialize};
use sluice_abi::limits::{ErrorKind, HostError};
use std::time::Duration;

/// The table of archives: where (part of) a session was archived.
pub const ARCHIVES: &str = "recording_archives";

/// Its columns and engine; archiving the same part again (same key) replaces its row.
pub const ARCHIVES_DEFINITION: &str = "(team_id UInt64, session_id String, store String, \
     key String, first_timestamp_ms Int64, last_timestamp_ms Int64, events UInt64, \
     archived_at_ms Int64) ENGINE = ReplacingMergeTree(archived_at_ms) \
     ORDER BY (team_id, session_id, key)";

/// Longest a delete waits for its mutation.
const MUTATION_DEADLINE: Duration = Duration::from_secs(60);

/// A row of [`ARCHIVES`].
#[derive(Debug, Serialize, Deserialize)]
pub struct ArchiveRow {
    /// The team.
    pub team_id: u64,
    /// The session.
    pub session_id: String,
    /// The object store.
    pub store: String,
    /// The object's full key.
    pub key: String,
    /// Time of its first event, epoch ms.
    pub first_timestamp_ms: i64,
    /// Time of its last event, epoch ms.
    pub last_timestamp_ms: i64,
    /// Events it holds.
    pub events: u64,
    /// When it was recorded, epoch ms.
    pub archived_at_ms: i64,
}

/// The recordings of every team in ClickHouse.
pub struct ClickHouseRecordings {
    settings: ClickHouseSettings,
}

fn unavailable(error: impl std::fmt::Display) -> HostError {
    HostError::new(ErrorKind::Unavailable, format!("recordings: {error}"))
}

/// A count.
#[derive(Deserialize)]
struct Counted {
    n: u64,
}

impl ClickHouseRecordings {
    /// The recordings of the ClickHouse `settings` name.
    pub fn new(settings: ClickHouseSettings) -> Self {
        Self { settings }
    }

    fn client(&self) -> Result<ClickHouse, HostError> {
        ClickHouse::new(&self.settings).map_err(unavailable)
    }

    fn select<T: serde::de::DeserializeOwned>(&self, query: &str) -> Result<Vec<T>, HostError> {
        self.client()?.select(query).map_err(unavailable)
    }

    /// `count()` of the recordings of `session` of `team` whose rows match `condition`.
    fn count(&self, team: u64, session: &str, condition: &str) -> Result<u64, HostError> {
        let counted: Vec<Counted> = self.select(&format!(
            "SELECT count() AS n FROM {} FINAL WHERE team_id = {team} AND session_id = {} AND {condition}",
            self.table(),
            quoted(session)
        ))?;
        Ok(counted.first().map_or(0, |c| c.n))
    }

    fn table(&self) -> String {
        format!("{}.{}", self.settings.database, Table::Recordings.name())
    }
}

impl RecordingStore for ClickHouseRecordings {
    fn list_sessions(
        &self,
        team: u64,
        last_before: i64,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(Session, u64)>, HostError> {
        #[derive(Deserialize)]
        struct Listed {
            session_id: String,
            first_ms: i64,
            last_ms: i64,
            events: u64,
            last_offset: i64,
        }
        let after = after.map_or_else(String::new, |a| format!(" AND session_id > {}", quoted(a)));
        let listed: Vec<Listed> = self.select(&format!(
            "SELECT session_id, min(timestamp_ms) AS first_ms, max(timestamp_ms) AS last_ms, \
             count() AS events, max(kafka_offset) AS last_offset FROM {} FINAL \
             WHERE team_id = {team}{after} GROUP BY session_id HAVING last_ms < {last_before} \
             ORDER BY session_id LIMIT {}",
            self.table(),
            limit.min(MAX_PAGE)
        ))?;
        Ok(listed
            .into_iter()
            .map(|l| {
                let position = l.last_offset as u64 + 1;
                let session = Session {
                    team_id: team,
                    session_id: l.session_id,
                    first_timestamp: l.first_ms,
                    last_timestamp: l.last_ms,
                    events: l.events,
                    cursor: position.to_string(),
                };
                (session, position)
            })
            .collect())
    }

    fn read_session(
        &self,
        team: u64,
        session: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(Snapshot, u64)>, HostError> {
        #[derive(Deserialize)]
        struct Read {
            uuid: String,
            window_id: Option<String>,
            distinct_id: String,
            timestamp_ms: i64,
            properties: String,
            kafka_offset: i64,
        }
        let rows: Vec<Read> = self.select(&format!(
            "SELECT uuid, window_id, distinct_id, timestamp_ms, properties, kafka_offset FROM {} FINAL \
             WHERE team_id = {team} AND session_id = {} AND kafka_offset >= {after} \
             ORDER BY kafka_offset LIMIT {}",
            self.table(),
            quoted(session),
            limit.min(MAX_PAGE)
        ))?;
        let mut page = Vec::new();
        let mut bytes = 0;
        for row in rows {
            bytes += row.properties.len();
            let snapshot = Snapshot {
                uuid: row.uuid,
                window_id: row.window_id,
                distinct_id: row.distinct_id,
                timestamp: row.timestamp_ms,
                properties: row.properties,
            };
            page.push((snapshot, row.kafka_offset as u64 + 1));
            if bytes >= MAX_PAGE_BYTES {
                break;
            }
        }
        Ok(page)
    }

    fn record_archive(&self, archive: &Archive<'_>) -> Result<(), HostError> {
        let row = ArchiveRow {
            team_id: archive.team,
            session_id: archive.session.to_owned(),
            store: archive.store.to_owned(),
            key: archive.key.to_owned(),
            first_timestamp_ms: archive.first_timestamp,
            last_timestamp_ms: archive.last_timestamp,
            events: archive.events,
            archived_at_ms: now_ms(),
        };
        let line = serde_json::to_vec(&row).map_err(unavailable)?;
        self.client()?
            .insert_into(ARCHIVES, &line)
            .map_err(unavailable)
    }

    fn has_after(&self, team: u64, session: &str, after: u64) -> Result<bool, HostError> {
        Ok(self.count(team, session, &format!("kafka_offset >= {after}"))? > 0)
    }

    fn delete_session(&self, team: u64, session: &str, through: u64) -> Result<u64, HostError> {
        let condition = format!("kafka_offset < {through}");
        let deleted = self.count(team, session, &condition)?;
        self.client()?
            .delete_where(
                Table::Recordings.name(),
                &format!(
                    "team_id = {team} AND session_id = {} AND {condition}",
                    quoted(session)
                ),
                MUTATION_DEADLINE,
            )
            .map_err(unavailable)?;
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::recordings::tests::keeps_the_contract;
    use crate::clickhouse::clickhouse_server::ClickHouseServer;
    use crate::clickhouse::read::recording_archives;
    use crate::clickhouse::rows::{RecordingRow, with_position};
    use crate::store::uuid_text;

    #[test]
    fn the_recordings_in_clickhouse_keep_the_contract() {
        let server = ClickHouseServer::start();
        let settings = ClickHouseSettings {
            url: server.url.clone(),
            database: "recordings_test".into(),
            user: "default".into(),
            password: None,
        };
        let clickhouse = ClickHouse::new(&settings).unwrap();
        clickhouse.create_tables().unwrap();
        let mut offset = 0;
        keeps_the_contract(&ClickHouseRecordings::new(settings), &mut |events| {
            let mut rows = Vec::new();
            for (team, session, at, n) in events {
                let row = RecordingRow {
                    team_id: *team,
                    uuid: uuid_text(&[*n; 16]),
                    session_id: (*session).to_owned(),
                    window_id: None,
                    distinct_id: "u".into(),
                    timestamp_ms: *at,
                    properties: "{}".into(),
                    stored_at_ms: *at,
                };
                let json = serde_json::to_vec(&row).unwrap();
                rows.extend(with_position(&json, 0, offset).unwrap());
                rows.push(b'\n');
                offset += 1;
            }
            clickhouse.insert(Table::Recordings, &rows).unwrap();
        });
        let archives = recording_archives(&clickhouse, Some(1), "o'x\\").unwrap();
        assert_eq!(archives[0].key, "rec/o'x");
    }
}

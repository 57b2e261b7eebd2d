//! `recordings`: a retention-type plugin lists, reads, archives and deletes its team's stored
//! session recordings (the `recordings` table), and records where a session was archived
//! (`recording_archives`), so that `sluice recordings --session` finds it there.

use super::{Capability, HasCapabilities, HasView, View, to_wit};
use crate::bindings::sluice::plugin::recordings::{self, Host, Session, Snapshot};
use crate::bindings::types;
use crate::store::{self, StoreError, now_ms, uuid_text};
use rusqlite::{Connection, params};
use sluice_abi::limits::{ErrorKind, HostError};
use std::path::Path;
use std::sync::Mutex;
use wasmtime::component::Linker;

/// The `recordings` capability.
pub const CAPABILITY: Capability = Capability {
    name: "recordings",
    interface: "sluice:plugin/recordings",
};

/// Most sessions or events one call returns.
pub const MAX_PAGE: u32 = 1_000;
/// About the most bytes of properties one `read-session` call returns.
pub const MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// The recordings of every team.
pub struct Recordings {
    conn: Mutex<Connection>,
}

fn unavailable(error: impl std::fmt::Display) -> HostError {
    HostError::new(ErrorKind::Unavailable, format!("recordings: {error}"))
}

impl Recordings {
    /// Opens the recordings in the database of `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            conn: Mutex::new(store::open(data_dir)?),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, HostError> {
        let conn = self.conn.lock().map_err(unavailable)?;
        f(&conn).map_err(unavailable)
    }

    /// Sessions of `team` whose last event is before `last_before`, after `after`.
    pub fn list_sessions(
        &self,
        team: u64,
        last_before: i64,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Session>, HostError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT session_id, MIN(timestamp_ms), MAX(timestamp_ms), COUNT(*) FROM recordings \
                 WHERE team_id = ?1 AND (?3 IS NULL OR session_id > ?3) GROUP BY session_id \
                 HAVING MAX(timestamp_ms) < ?2 ORDER BY session_id LIMIT ?4",
            )?;
            stmt.query_map(
                params![team as i64, last_before, after, limit.min(MAX_PAGE)],
                |row| {
                    Ok(Session {
                        team_id: team,
                        session_id: row.get(0)?,
                        first_timestamp: row.get(1)?,
                        last_timestamp: row.get(2)?,
                        events: row.get::<_, i64>(3)? as u64,
                    })
                },
            )?
            .collect()
        })
    }

    /// Events of session `session` of `team` after storage position `after`, in storage order.
    pub fn read_session(
        &self,
        team: u64,
        session: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Snapshot>, HostError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, uuid, window_id, distinct_id, timestamp_ms, properties FROM recordings \
                 WHERE team_id = ?1 AND session_id = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
            )?;
            let mut rows = stmt.query(params![team as i64, session, after as i64, limit.min(MAX_PAGE)])?;
            let mut page = Vec::new();
            let mut bytes = 0;
            while let Some(row) = rows.next()? {
                let properties: String = row.get(5)?;
                bytes += properties.len();
                page.push(Snapshot {
                    position: row.get::<_, i64>(0)? as u64,
                    uuid: uuid_text(&row.get::<_, Vec<u8>>(1)?),
                    window_id: row.get(2)?,
                    distinct_id: row.get(3)?,
                    timestamp: row.get(4)?,
                    properties,
                });
                if bytes >= MAX_PAGE_BYTES {
                    break;
                }
            }
            Ok(page)
        })
    }

    /// Records that (part of) session `session` of `team` was archived at `key` of `store`. A
    /// session archived in parts (events that came after its archive) has one row per part;
    /// archiving the same part again (same key) replaces its row.
    #[allow(clippy::too_many_arguments)]
    pub fn record_archive(
        &self,
        team: u64,
        session: &str,
        store: &str,
        key: &str,
        first: i64,
        last: i64,
        events: u64,
    ) -> Result<(), HostError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO recording_archives (team_id, session_id, store, key, first_timestamp_ms, \
                 last_timestamp_ms, events, archived_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (team_id, session_id, key) DO UPDATE SET store = ?3, \
                 first_timestamp_ms = ?5, last_timestamp_ms = ?6, events = ?7, archived_at_ms = ?8",
                params![team as i64, session, store, key, first, last, events as i64, now_ms()],
            )
            .map(drop)
        })
    }

    /// Deletes session `session` of `team`; returns how many events it had.
    pub fn delete_session(&self, team: u64, session: &str) -> Result<u64, HostError> {
        self.with(|conn| {
            conn.execute(
                "DELETE FROM recordings WHERE team_id = ?1 AND session_id = ?2",
                params![team as i64, session],
            )
            .map(|n| n as u64)
        })
    }
}

impl View<'_, ()> {
    fn recordings(&self) -> Result<(&Recordings, u64), HostError> {
        self.ctx.check(&CAPABILITY)?;
        let recordings =
            self.ctx.services.recordings.as_deref().ok_or_else(|| {
                HostError::new(ErrorKind::Unavailable, "no recordings in this host")
            })?;
        Ok((recordings, self.ctx.team_id))
    }
}

impl Host for View<'_, ()> {
    fn list_sessions(
        &mut self,
        last_before: i64,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<Session>, types::HostError> {
        self.recordings()
            .and_then(|(r, team)| r.list_sessions(team, last_before, after.as_deref(), limit))
            .map_err(to_wit)
    }

    fn read_session(
        &mut self,
        session_id: String,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Snapshot>, types::HostError> {
        self.recordings()
            .and_then(|(r, team)| r.read_session(team, &session_id, after, limit))
            .map_err(to_wit)
    }

    fn record_archive(
        &mut self,
        session_id: String,
        store: String,
        key: String,
        first_timestamp: i64,
        last_timestamp: i64,
        events: u64,
    ) -> Result<(), types::HostError> {
        let grant = &self.ctx.grants.object_store;
        let full_key = format!("{}{key}", grant.prefix);
        self.recordings()
            .and_then(|(r, team)| {
                if !grant.stores.contains(&store) {
                    return Err(HostError::new(
                        ErrorKind::Refused,
                        format!("store `{store}` is not granted to this installation"),
                    ));
                }
                r.record_archive(
                    team,
                    &session_id,
                    &store,
                    &full_key,
                    first_timestamp,
                    last_timestamp,
                    events,
                )
            })
            .map_err(to_wit)
    }

    fn delete_session(&mut self, session_id: String) -> Result<u64, types::HostError> {
        self.recordings()
            .and_then(|(r, team)| r.delete_session(team, &session_id))
            .map_err(to_wit)
    }
}

/// Adds `recordings` to `linker`.
pub(super) fn add_to_linker<T: HasCapabilities>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    recordings::add_to_linker::<T, HasView<()>>(linker, |data| data.capabilities().serving())
}

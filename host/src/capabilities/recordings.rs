//! `recordings`: a retention-type plugin lists, reads, archives and deletes its team's stored
//! session recordings (the `recordings` table), and records where a session was archived
//! (`recording_archives`), so that `sluice recordings --session` finds it there.
//!
//! **Deleting only what the plugin read.** Events keep arriving while a plugin archives a
//! session. `read-session` pages by an opaque cursor (here: the text of the SQLite sequence of
//! the page's last event), and `delete-session` deletes only up to the cursor the plugin names:
//! an event stored after the plugin read (and archived) the session stays for the next run.
//! 0.5.0 plugins name no cursor; the instance then remembers what it listed or read
//! ([`RecordingsState`]) and deletes up to there (`capabilities::v0_5`).

use super::{Capability, Context, HasCapabilities, HasView, View, to_wit};
use crate::bindings::sluice::plugin::recordings::{self, Host, Session, Snapshot, SnapshotPage};
use crate::bindings::types;
use crate::store::{self, StoreError, now_ms, uuid_text};
use rusqlite::{Connection, params};
use sluice_abi::limits::{ErrorKind, HostError};
use std::collections::HashMap;
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

    /// Sessions of `team` whose last event is before `last_before`, after `after`, each with
    /// the position of its last stored event (which is also its `cursor`).
    pub fn list_sessions(
        &self,
        team: u64,
        last_before: i64,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(Session, u64)>, HostError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT session_id, MIN(timestamp_ms), MAX(timestamp_ms), COUNT(*), MAX(seq) \
                 FROM recordings WHERE team_id = ?1 AND (?3 IS NULL OR session_id > ?3) \
                 GROUP BY session_id HAVING MAX(timestamp_ms) < ?2 ORDER BY session_id LIMIT ?4",
            )?;
            stmt.query_map(
                params![team as i64, last_before, after, limit.min(MAX_PAGE)],
                |row| {
                    let last = row.get::<_, i64>(4)? as u64;
                    let session = Session {
                        team_id: team,
                        session_id: row.get(0)?,
                        first_timestamp: row.get(1)?,
                        last_timestamp: row.get(2)?,
                        events: row.get::<_, i64>(3)? as u64,
                        cursor: last.to_string(),
                    };
                    Ok((session, last))
                },
            )?
            .collect()
        })
    }

    /// Events of session `session` of `team` after storage position `after`, in storage order,
    /// each with its position.
    pub fn read_session(
        &self,
        team: u64,
        session: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(Snapshot, u64)>, HostError> {
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
                let snapshot = Snapshot {
                    uuid: uuid_text(&row.get::<_, Vec<u8>>(1)?),
                    window_id: row.get(2)?,
                    distinct_id: row.get(3)?,
                    timestamp: row.get(4)?,
                    properties,
                };
                page.push((snapshot, row.get::<_, i64>(0)? as u64));
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

    /// Whether session `session` of `team` has events after position `after`.
    pub fn has_after(&self, team: u64, session: &str, after: u64) -> Result<bool, HostError> {
        self.with(|conn| {
            conn.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM recordings WHERE team_id = ?1 AND session_id = ?2 \
                 AND seq > ?3)",
            )?
            .query_row(params![team as i64, session, after as i64], |row| {
                row.get(0)
            })
        })
    }

    /// Deletes the events of session `session` of `team` up to position `through`; returns
    /// how many there were.
    pub fn delete_session(&self, team: u64, session: &str, through: u64) -> Result<u64, HostError> {
        self.with(|conn| {
            conn.execute(
                "DELETE FROM recordings WHERE team_id = ?1 AND session_id = ?2 AND seq <= ?3",
                params![team as i64, session, through as i64],
            )
            .map(|n| n as u64)
        })
    }
}

/// The position a cursor handed out by [`Recordings`] names.
fn position(cursor: &str) -> Result<u64, HostError> {
    cursor.parse().map_err(|_| {
        HostError::new(
            ErrorKind::Invalid,
            format!("`{cursor}` is not a recordings cursor of this host"),
        )
    })
}

/// Per-instance state of 0.5.0 plugins, which delete without naming a cursor: per
/// `(team, session)`, the last position the plugin listed or read, which bounds what
/// `delete-session` deletes.
#[derive(Debug, Default)]
pub struct RecordingsState {
    seen: HashMap<(u64, String), u64>,
}

impl RecordingsState {
    /// Remembers that the plugin listed or read session `session` of `team` up to `position`.
    pub(super) fn saw(&mut self, team: u64, session: &str, position: u64) {
        let seen = self.seen.entry((team, session.to_owned())).or_default();
        *seen = (*seen).max(position);
    }

    /// Forgets session `session` of `team`, returning how far the plugin listed or read it.
    pub(super) fn take(&mut self, team: u64, session: &str) -> Option<u64> {
        self.seen.remove(&(team, session.to_owned()))
    }
}

impl<'a, S> View<'a, S> {
    /// The recordings and the team of the installation, if it was granted `recordings`.
    pub(super) fn recordings(&self) -> Result<(&'a Recordings, u64), HostError> {
        let ctx: &'a Context = self.ctx;
        ctx.check(&CAPABILITY)?;
        let recordings =
            ctx.services.recordings.as_deref().ok_or_else(|| {
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
        let (recordings, team) = self.recordings().map_err(to_wit)?;
        let listed = recordings
            .list_sessions(team, last_before, after.as_deref(), limit)
            .map_err(to_wit)?;
        Ok(listed.into_iter().map(|(session, _)| session).collect())
    }

    fn read_session(
        &mut self,
        session_id: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<SnapshotPage, types::HostError> {
        let (recordings, team) = self.recordings().map_err(to_wit)?;
        let after = after.as_deref().map(position).transpose().map_err(to_wit)?;
        let after = after.unwrap_or(0);
        let page = recordings
            .read_session(team, &session_id, after, limit)
            .map_err(to_wit)?;
        let end = page.last().map_or(after, |(_, position)| *position);
        let more = recordings
            .has_after(team, &session_id, end)
            .map_err(to_wit)?;
        Ok(SnapshotPage {
            snapshots: page.into_iter().map(|(snapshot, _)| snapshot).collect(),
            cursor: end.to_string(),
            more,
        })
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

    fn delete_session(
        &mut self,
        session_id: String,
        through: String,
    ) -> Result<u64, types::HostError> {
        let (recordings, team) = self.recordings().map_err(to_wit)?;
        let through = position(&through).map_err(to_wit)?;
        recordings
            .delete_session(team, &session_id, through)
            .map_err(to_wit)
    }
}

/// Adds `recordings` to `linker`.
pub(super) fn add_to_linker<T: HasCapabilities>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    recordings::add_to_linker::<T, HasView<()>>(linker, |data| data.capabilities().serving())
}

//! `recordings`: a retention-type plugin lists, reads, archives and deletes its team's stored
//! session recordings, and records where a session was archived, so that `sluice recordings
//! --session` finds it there. Where recordings are stored is a seam ([`RecordingStore`]): the
//! embedded database ([`SqliteRecordings`]: the `recordings` and `recording_archives` tables) or
//! ClickHouse ([`crate::clickhouse::recordings`]).
//!
//! **Deleting only what the plugin read.** Events keep arriving while a plugin archives a
//! session. `read-session` pages by an opaque cursor (here: the text of the SQLite sequence of
//! the page's last event), and `delete-session` deletes only up to the cursor the plugin names:
//! an event stored after the plugin read (and archived) the session stays for the next run.
//! 0.5.0 plugins name no cursor; the instance then remembers what it listed or read
//! ([`RecordingsState`]) and deletes up to there (`capabilities::v0_5`).
//!
//! **Fenced deletes.** A plugin deletes from a scheduled task or a job, which runs under a
//! lease. Before each delete the host checks that the lease is still this run's (and extends
//! it): a node paused past its lease while another took the work over has its deletes refused
//! (`refused`) and logged. The stores cannot check a token themselves, so a pause between the
//! check and the delete (microseconds) is the window left.

use super::{Capability, Context, HasCapabilities, HasView, View, to_wit};
use crate::bindings::sluice::plugin::recordings::{self, Host, Session, Snapshot, SnapshotPage};
use crate::bindings::types;
use crate::schedule::lock::Fence;
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

/// Where (part of) a session was archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive<'a> {
    /// The team.
    pub team: u64,
    /// The session.
    pub session: &'a str,
    /// The object store.
    pub store: &'a str,
    /// The object's full key.
    pub key: &'a str,
    /// Time of its first event, epoch ms.
    pub first_timestamp: i64,
    /// Time of its last event, epoch ms.
    pub last_timestamp: i64,
    /// Events it holds.
    pub events: u64,
}

/// Where session recordings are stored, for the `recordings` capability. Positions order a
/// session's events as stored (an event stored later has a larger one) and are never 0, so 0
/// stands for "before every event".
pub trait RecordingStore: Send + Sync {
    /// Sessions of `team` whose last event is before `last_before`, after `after`, each with
    /// the position of its last stored event (which is also its `cursor`).
    fn list_sessions(
        &self,
        team: u64,
        last_before: i64,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(Session, u64)>, HostError>;

    /// Events of session `session` of `team` after position `after`, in storage order, each
    /// with its position: at most `limit`, and about [`MAX_PAGE_BYTES`] of properties.
    fn read_session(
        &self,
        team: u64,
        session: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(Snapshot, u64)>, HostError>;

    /// Records that (part of) a session was archived. A session archived in parts (events that
    /// came after its archive) has one record per part; archiving the same part again (same
    /// key) replaces its record.
    fn record_archive(&self, archive: &Archive<'_>) -> Result<(), HostError>;

    /// Whether session `session` of `team` has events after position `after`.
    fn has_after(&self, team: u64, session: &str, after: u64) -> Result<bool, HostError>;

    /// Deletes the events of session `session` of `team` up to position `through` (once this
    /// returns, no read finds them); returns how many there were.
    fn delete_session(&self, team: u64, session: &str, through: u64) -> Result<u64, HostError>;
}

/// The recordings of every team in the embedded database.
pub struct SqliteRecordings {
    conn: Mutex<Connection>,
}

fn unavailable(error: impl std::fmt::Display) -> HostError {
    HostError::new(ErrorKind::Unavailable, format!("recordings: {error}"))
}

impl SqliteRecordings {
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
}

impl RecordingStore for SqliteRecordings {
    fn list_sessions(
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

    fn read_session(
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

    fn record_archive(&self, archive: &Archive<'_>) -> Result<(), HostError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO recording_archives (team_id, session_id, store, key, first_timestamp_ms, \
                 last_timestamp_ms, events, archived_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (team_id, session_id, key) DO UPDATE SET store = ?3, \
                 first_timestamp_ms = ?5, last_timestamp_ms = ?6, events = ?7, archived_at_ms = ?8",
                params![
                    archive.team as i64,
                    archive.session,
                    archive.store,
                    archive.key,
                    archive.first_timestamp,
                    archive.last_timestamp,
                    archive.events as i64,
                    now_ms()
                ],
            )
            .map(drop)
        })
    }

    fn has_after(&self, team: u64, session: &str, after: u64) -> Result<bool, HostError> {
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

    fn delete_session(&self, team: u64, session: &str, through: u64) -> Result<u64, HostError> {
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

/// Per-instance state of `recordings`: the lease the current call runs under, if any, which
/// deletes are fenced by; and for 0.5.0 plugins, which delete without naming a cursor, per
/// `(team, session)` the last position the plugin listed or read, which bounds what
/// `delete-session` deletes.
#[derive(Default)]
pub struct RecordingsState {
    /// The lease of the task run or job the instance is running, if any.
    pub fence: Option<Fence>,
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

impl View<'_, &mut RecordingsState> {
    /// Refuses a delete when the lease of the current run was lost (another node took its
    /// work over).
    pub(super) fn check_fence(&self) -> Result<(), HostError> {
        let Some(fence) = &self.state.fence else {
            return Ok(());
        };
        match fence.holds() {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::warn!(installation = %self.ctx.installation, key = %fence.lease.key, fencing_token = fence.lease.fencing_token, "a delete of recordings was refused: the run's lease was taken over by another node");
                Err(HostError::new(
                    ErrorKind::Refused,
                    format!(
                        "recordings: the lease `{}` (fencing token {}) was taken over by another node, so this run may not delete",
                        fence.lease.key, fence.lease.fencing_token
                    ),
                ))
            }
            Err(error) => Err(unavailable(error)),
        }
    }
}

impl<'a, S> View<'a, S> {
    /// The recordings and the team of the installation, if it was granted `recordings`.
    pub(super) fn recordings(&self) -> Result<(&'a dyn RecordingStore, u64), HostError> {
        let ctx: &'a Context = self.ctx;
        ctx.check(&CAPABILITY)?;
        let recordings =
            ctx.services.recordings.as_deref().ok_or_else(|| {
                HostError::new(ErrorKind::Unavailable, "no recordings in this host")
            })?;
        Ok((recordings, self.ctx.team_id))
    }
}

impl Host for View<'_, &mut RecordingsState> {
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
                r.record_archive(&Archive {
                    team,
                    session: &session_id,
                    store: &store,
                    key: &full_key,
                    first_timestamp,
                    last_timestamp,
                    events,
                })
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
        self.check_fence().map_err(to_wit)?;
        recordings
            .delete_session(team, &session_id, through)
            .map_err(to_wit)
    }
}

/// Adds `recordings` to `linker`.
pub(super) fn add_to_linker<T: HasCapabilities>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    recordings::add_to_linker::<T, HasView<&'static mut RecordingsState>>(linker, |data| {
        data.capabilities().recordings_view()
    })
}

/// The contract's tests, which every recording store runs.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A recording event to store: team, session, time, and its uuid's bytes (all this one).
    pub(crate) type Recorded = (u64, &'static str, i64, u8);

    /// The contract every recording store keeps, on `store`; `add` stores events in order.
    pub(crate) fn keeps_the_contract(store: &dyn RecordingStore, add: &mut dyn FnMut(&[Recorded])) {
        let odd = "o'x\\";
        add(&[
            (1, "a", 10, 1),
            (1, "b", 100, 2),
            (1, "a", 20, 3),
            (2, "a", 5, 4),
            (1, "a", 30, 5),
            (1, odd, 50, 6),
        ]);
        let listed = store.list_sessions(1, 1_000, None, 10).unwrap();
        let names: Vec<&str> = listed.iter().map(|(s, _)| s.session_id.as_str()).collect();
        assert_eq!(names, ["a", "b", odd]);
        let (a, last_of_a) = &listed[0];
        assert_eq!(
            (a.first_timestamp, a.last_timestamp, a.events, a.team_id),
            (10, 30, 3, 1)
        );
        assert_eq!(a.cursor, last_of_a.to_string());
        let names = |listed: Vec<(Session, u64)>| -> Vec<String> {
            listed.into_iter().map(|(s, _)| s.session_id).collect()
        };
        assert_eq!(
            names(store.list_sessions(1, 100, None, 10).unwrap()),
            ["a", odd]
        );
        assert_eq!(
            names(store.list_sessions(1, 1_000, Some("a"), 1).unwrap()),
            ["b"]
        );

        // Pages in storage order, each event with a growing position.
        let first = store.read_session(1, "a", 0, 2).unwrap();
        let times: Vec<i64> = first.iter().map(|(s, _)| s.timestamp).collect();
        assert_eq!(times, [10, 20]);
        assert!(first[0].1 > 0 && first[0].1 < first[1].1);
        assert_eq!(first[0].0.uuid, uuid_text(&[1; 16]));
        let rest = store.read_session(1, "a", first[1].1, 10).unwrap();
        assert_eq!(rest.len(), 1);
        let read_through = rest[0].1;
        assert_eq!(read_through, *last_of_a);
        assert!(store.has_after(1, "a", first[1].1).unwrap());
        assert!(!store.has_after(1, "a", read_through).unwrap());
        assert_eq!(store.read_session(1, odd, 0, 10).unwrap().len(), 1);

        // An event stored after the plugin read the session survives its delete.
        add(&[(1, "a", 40, 7)]);
        assert!(store.has_after(1, "a", read_through).unwrap());
        assert_eq!(store.delete_session(1, "a", read_through).unwrap(), 3);
        let left = store.read_session(1, "a", 0, 10).unwrap();
        let times: Vec<i64> = left.iter().map(|(s, _)| s.timestamp).collect();
        assert_eq!(times, [40]);
        assert_eq!(
            store.read_session(2, "a", 0, 10).unwrap().len(),
            1,
            "team 2's"
        );
        assert_eq!(store.delete_session(1, odd, u64::MAX >> 2).unwrap(), 1);
        assert_eq!(
            names(store.list_sessions(1, 1_000, None, 10).unwrap()),
            ["a", "b"]
        );
        store
            .record_archive(&Archive {
                team: 1,
                session: odd,
                store: "lake",
                key: "rec/o'x",
                first_timestamp: 50,
                last_timestamp: 50,
                events: 1,
            })
            .unwrap();
    }

    #[test]
    fn the_embedded_recordings_keep_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteRecordings::open(dir.path()).unwrap();
        let conn = store::open(dir.path()).unwrap();
        keeps_the_contract(&store, &mut |events| {
            for (team, session, at, n) in events {
                conn.execute(
                    "INSERT INTO recordings (uuid, team_id, session_id, distinct_id, timestamp_ms, \
                     properties, stored_at_ms) VALUES (?1, ?2, ?3, 'u', ?4, '{}', ?4)",
                    params![vec![*n; 16], *team as i64, session, at],
                )
                .unwrap();
            }
        });
        let archives = store::read::recording_archives(&conn, Some(1), "o'x\\").unwrap();
        assert_eq!(archives[0].key, "rec/o'x");
    }

    #[test]
    fn a_delete_under_a_lease_another_node_took_over_is_refused() {
        use crate::schedule::lock::{LocalLock, RunLock};
        let dir = tempfile::tempdir().unwrap();
        let lock: std::sync::Arc<dyn RunLock> =
            std::sync::Arc::new(LocalLock::open(dir.path()).unwrap());
        let ctx = Context::ungranted("team-1/retention", super::super::Services::detached());
        let check = |key: &str, expires: std::time::Duration, taken_over: bool| {
            let lease = lock.acquire(key, expires).unwrap().unwrap();
            if taken_over {
                std::thread::sleep(expires * 2);
                lock.acquire(key, std::time::Duration::from_secs(60))
                    .unwrap()
                    .unwrap();
            }
            let mut state = RecordingsState {
                fence: Some(Fence {
                    lock: lock.clone(),
                    lease,
                }),
                ..RecordingsState::default()
            };
            View {
                ctx: &ctx,
                state: &mut state,
                journal: &crate::capabilities::journal::Journal::off(),
            }
            .check_fence()
        };
        check("held", std::time::Duration::from_secs(60), false).unwrap();
        let refused = check("lost", std::time::Duration::from_millis(50), true).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::Refused, "{refused:?}");
    }
}

//! `recordings`: the stored session recordings of the installation's team (needs the
//! `recordings` grant; for retention-type plugins). Natively, what
//! [`crate::testing::Harness::add_recording`] stored, per test thread, as team 1.

use super::HostError;

/// One session, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The team (the installation's).
    pub team_id: u64,
    /// `$session_id`.
    pub session_id: String,
    /// Time of its first event, epoch milliseconds.
    pub first_timestamp_ms: i64,
    /// Time of its last event.
    pub last_timestamp_ms: i64,
    /// Its stored events.
    pub events: u64,
}

/// One stored `$snapshot` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Storage position, for paging ([`read_session`]'s `after`).
    pub position: u64,
    /// Event uuid.
    pub uuid: String,
    /// `$window_id`, if any.
    pub window_id: Option<String>,
    /// Who it was.
    pub distinct_id: String,
    /// When, epoch milliseconds.
    pub timestamp_ms: i64,
    /// The event's properties, JSON text.
    pub properties: String,
}

/// Where a session was archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// The session.
    pub session_id: String,
    /// The object store (`[object_stores.NAME]`).
    pub store: String,
    /// The object's key.
    pub key: String,
    /// Time of its first event.
    pub first_timestamp_ms: i64,
    /// Time of its last event.
    pub last_timestamp_ms: i64,
    /// Its events.
    pub events: u64,
}

/// Sessions whose last event is before `last_before_ms`, in session-id order, after `after`, at
/// most `limit` (≤ 1,000).
pub fn list_sessions(
    last_before_ms: i64,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<Session>, HostError> {
    imp::list_sessions(last_before_ms, after, limit)
}

/// The events of `session_id` in storage order, after position `after`, at most `limit`
/// (≤ 1,000, and about 8 MiB).
pub fn read_session(session_id: &str, after: u64, limit: u32) -> Result<Vec<Snapshot>, HostError> {
    imp::read_session(session_id, after, limit)
}

/// Records that a session was archived (see [`Archive`]), so that `sluice recordings --session`
/// reads it back from the archive once it is deleted.
pub fn record_archive(archive: &Archive) -> Result<(), HostError> {
    imp::record_archive(archive)
}

/// Deletes the stored events of `session_id` that this instance listed (with
/// [`list_sessions`]) or read (with [`read_session`]), and none stored after that, so an event
/// that arrives while the session is being archived stays for the next run; returns how many.
pub fn delete_session(session_id: &str) -> Result<u64, HostError> {
    imp::delete_session(session_id)
}

#[cfg(target_family = "wasm")]
mod imp {
    use super::super::{HostError, from_wit};
    use super::{Archive, Session, Snapshot};
    use crate::bindings::sluice::plugin::recordings as wit;

    pub fn list_sessions(
        last_before_ms: i64,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Session>, HostError> {
        let sessions = wit::list_sessions(last_before_ms, after, limit).map_err(from_wit)?;
        Ok(sessions
            .into_iter()
            .map(|s| Session {
                team_id: s.team_id,
                session_id: s.session_id,
                first_timestamp_ms: s.first_timestamp,
                last_timestamp_ms: s.last_timestamp,
                events: s.events,
            })
            .collect())
    }

    pub fn read_session(
        session_id: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Snapshot>, HostError> {
        let events = wit::read_session(session_id, after, limit).map_err(from_wit)?;
        Ok(events
            .into_iter()
            .map(|e| Snapshot {
                position: e.position,
                uuid: e.uuid,
                window_id: e.window_id,
                distinct_id: e.distinct_id,
                timestamp_ms: e.timestamp,
                properties: e.properties,
            })
            .collect())
    }

    pub fn record_archive(archive: &Archive) -> Result<(), HostError> {
        wit::record_archive(
            &archive.session_id,
            &archive.store,
            &archive.key,
            archive.first_timestamp_ms,
            archive.last_timestamp_ms,
            archive.events,
        )
        .map_err(from_wit)
    }

    pub fn delete_session(session_id: &str) -> Result<u64, HostError> {
        wit::delete_session(session_id).map_err(from_wit)
    }
}

#[cfg(not(target_family = "wasm"))]
mod imp {
    use super::super::HostError;
    use super::{Archive, Session, Snapshot};
    use crate::testing::fakes;
    use std::collections::BTreeMap;

    pub fn list_sessions(
        last_before_ms: i64,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Session>, HostError> {
        let mut sessions: BTreeMap<String, Session> = BTreeMap::new();
        fakes::with(|f| {
            for (session_id, snapshot) in &f.recordings {
                let session = sessions.entry(session_id.clone()).or_insert(Session {
                    team_id: 1,
                    session_id: session_id.clone(),
                    first_timestamp_ms: i64::MAX,
                    last_timestamp_ms: i64::MIN,
                    events: 0,
                });
                session.first_timestamp_ms = session.first_timestamp_ms.min(snapshot.timestamp_ms);
                session.last_timestamp_ms = session.last_timestamp_ms.max(snapshot.timestamp_ms);
                session.events += 1;
            }
        });
        let listed: Vec<Session> = sessions
            .into_values()
            .filter(|s| s.last_timestamp_ms < last_before_ms)
            .filter(|s| after.is_none_or(|a| s.session_id.as_str() > a))
            .take(limit.min(1_000) as usize)
            .collect();
        fakes::with(|f| {
            for session in &listed {
                let last = f
                    .recordings
                    .iter()
                    .filter(|(id, _)| *id == session.session_id)
                    .map(|(_, snapshot)| snapshot.position)
                    .max();
                saw(f, &session.session_id, last);
            }
        });
        Ok(listed)
    }

    fn saw(f: &mut fakes::Fakes, session_id: &str, position: Option<u64>) {
        if let Some(position) = position {
            let seen = f.recordings_seen.entry(session_id.to_owned()).or_default();
            *seen = (*seen).max(position);
        }
    }

    pub fn read_session(
        session_id: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Snapshot>, HostError> {
        Ok(fakes::with(|f| {
            let page: Vec<Snapshot> = f
                .recordings
                .iter()
                .filter(|(id, snapshot)| id == session_id && snapshot.position > after)
                .map(|(_, snapshot)| snapshot.clone())
                .take(limit.min(1_000) as usize)
                .collect();
            saw(f, session_id, page.last().map(|s| s.position));
            page
        }))
    }

    pub fn record_archive(archive: &Archive) -> Result<(), HostError> {
        fakes::with(|f| {
            f.archives.retain(|a| a.session_id != archive.session_id);
            f.archives.push(archive.clone());
        });
        Ok(())
    }

    pub fn delete_session(session_id: &str) -> Result<u64, HostError> {
        Ok(fakes::with(|f| {
            let Some(through) = f.recordings_seen.remove(session_id) else {
                return 0;
            };
            let before = f.recordings.len();
            f.recordings
                .retain(|(id, snapshot)| id != session_id || snapshot.position > through);
            (before - f.recordings.len()) as u64
        }))
    }
}

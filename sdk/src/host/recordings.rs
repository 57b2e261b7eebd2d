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
    /// Where its stored events ended when it was listed: [`delete_session`] through it deletes
    /// exactly the events listed.
    pub cursor: Cursor,
}

/// Where a page of [`read_session`] ends: opaque, only the host understands it. Pass it back as
/// `after` to read on, and as `through` to [`delete_session`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(pub(crate) String);

/// One page of a session's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPage {
    /// The events, in storage order.
    pub snapshots: Vec<Snapshot>,
    /// Where this page ends.
    pub cursor: Cursor,
    /// Whether the session had more events after this page when it was read.
    pub more: bool,
}

/// One stored `$snapshot` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
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

/// The events of `session_id` in storage order, after the cursor `after` (from the start if
/// none), at most `limit` (≤ 1,000, and about 8 MiB).
pub fn read_session(
    session_id: &str,
    after: Option<&Cursor>,
    limit: u32,
) -> Result<SnapshotPage, HostError> {
    imp::read_session(session_id, after, limit)
}

/// Records that a session was archived (see [`Archive`]), so that `sluice recordings --session`
/// reads it back from the archive once it is deleted.
pub fn record_archive(archive: &Archive) -> Result<(), HostError> {
    imp::record_archive(archive)
}

/// Deletes the stored events of `session_id` up to and including the cursor `through` (a page's
/// [`SnapshotPage::cursor`]), and none stored after it, so an event that arrives while the
/// session is being archived stays for the next run; returns how many.
pub fn delete_session(session_id: &str, through: &Cursor) -> Result<u64, HostError> {
    imp::delete_session(session_id, through)
}

#[cfg(target_family = "wasm")]
mod imp {
    use super::super::{HostError, from_wit};
    use super::{Archive, Cursor, Session, Snapshot, SnapshotPage};
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
                cursor: Cursor(s.cursor),
            })
            .collect())
    }

    pub fn read_session(
        session_id: &str,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<SnapshotPage, HostError> {
        let page =
            wit::read_session(session_id, after.map(|c| c.0.as_str()), limit).map_err(from_wit)?;
        Ok(SnapshotPage {
            snapshots: page
                .snapshots
                .into_iter()
                .map(|e| Snapshot {
                    uuid: e.uuid,
                    window_id: e.window_id,
                    distinct_id: e.distinct_id,
                    timestamp_ms: e.timestamp,
                    properties: e.properties,
                })
                .collect(),
            cursor: Cursor(page.cursor),
            more: page.more,
        })
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

    pub fn delete_session(session_id: &str, through: &Cursor) -> Result<u64, HostError> {
        wit::delete_session(session_id, &through.0).map_err(from_wit)
    }
}

#[cfg(not(target_family = "wasm"))]
mod imp {
    use super::super::{ErrorKind, HostError};
    use super::{Archive, Cursor, Session, SnapshotPage};
    use crate::testing::fakes;
    use std::collections::BTreeMap;

    pub fn list_sessions(
        last_before_ms: i64,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Session>, HostError> {
        let mut sessions: BTreeMap<String, Session> = BTreeMap::new();
        fakes::using("recordings", |f| {
            for stored in &f.recordings {
                let snapshot = &stored.snapshot;
                let session = sessions
                    .entry(stored.session_id.clone())
                    .or_insert(Session {
                        team_id: 1,
                        session_id: stored.session_id.clone(),
                        first_timestamp_ms: i64::MAX,
                        last_timestamp_ms: i64::MIN,
                        events: 0,
                        cursor: Cursor(String::new()),
                    });
                session.first_timestamp_ms = session.first_timestamp_ms.min(snapshot.timestamp_ms);
                session.last_timestamp_ms = session.last_timestamp_ms.max(snapshot.timestamp_ms);
                session.events += 1;
                session.cursor = Cursor(stored.position.to_string());
            }
        });
        Ok(sessions
            .into_values()
            .filter(|s| s.last_timestamp_ms < last_before_ms)
            .filter(|s| after.is_none_or(|a| s.session_id.as_str() > a))
            .take(limit.min(1_000) as usize)
            .collect())
    }

    /// The position a cursor of the fake names.
    fn position(cursor: &Cursor) -> Result<u64, HostError> {
        cursor.0.parse().map_err(|_| {
            HostError::new(
                ErrorKind::Invalid,
                format!("`{}` is not a recordings cursor of this host", cursor.0),
            )
        })
    }

    pub fn read_session(
        session_id: &str,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<SnapshotPage, HostError> {
        let after = after.map(position).transpose()?.unwrap_or(0);
        Ok(fakes::using("recordings", |f| {
            let mut session = f
                .recordings
                .iter()
                .filter(|r| r.session_id == session_id && r.position > after);
            let page: Vec<_> = session.by_ref().take(limit.min(1_000) as usize).collect();
            let end = page.last().map_or(after, |r| r.position);
            SnapshotPage {
                snapshots: page.into_iter().map(|r| r.snapshot.clone()).collect(),
                cursor: Cursor(end.to_string()),
                more: session.next().is_some(),
            }
        }))
    }

    pub fn record_archive(archive: &Archive) -> Result<(), HostError> {
        fakes::using("recordings", |f| {
            f.archives.retain(|a| a.session_id != archive.session_id);
            f.archives.push(archive.clone());
        });
        Ok(())
    }

    pub fn delete_session(session_id: &str, through: &Cursor) -> Result<u64, HostError> {
        let through = position(through)?;
        Ok(fakes::using("recordings", |f| {
            let before = f.recordings.len();
            f.recordings
                .retain(|r| r.session_id != session_id || r.position > through);
            (before - f.recordings.len()) as u64
        }))
    }
}

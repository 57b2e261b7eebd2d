//! Replaying and discarding the chains' dead letters in the embedded database: which ones an
//! operator names, and removing them once their events are back in the ingest (or discarded).
//! [`crate::stored`] does the same on ClickHouse.

use super::{StoreError, uuid_text};
use rusqlite::{Connection, params};
use serde::Deserialize;

/// Which dead letters: of a team, of one installation and of one event, if given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// The team.
    pub team: u64,
    /// Only this installation's (`team-1/geoip`).
    pub installation: Option<String>,
    /// Only this event's (its uuid, hyphenated).
    pub uuid: Option<String>,
}

/// Most dead letters one request replays or discards.
pub const MAX_PER_REQUEST: i64 = 10_000;

/// One dead letter: which installation failed on which event, and the event as it was before
/// that installation (encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    /// The installation.
    pub installation: String,
    /// The event's uuid, hyphenated.
    pub uuid: String,
    /// The event, encoded.
    pub event: Vec<u8>,
}

/// The dead letters `selector` names (at most [`MAX_PER_REQUEST`], oldest first).
pub fn select(conn: &Connection, selector: &Selector) -> Result<Vec<Letter>, StoreError> {
    let uuid = match selector.uuid.as_deref().map(uuid::Uuid::parse_str) {
        Some(Ok(uuid)) => Some(uuid.as_bytes().to_vec()),
        Some(Err(_)) => return Ok(Vec::new()),
        None => None,
    };
    let mut stmt = conn.prepare(
        "SELECT installation, uuid, event FROM dead_letters WHERE team_id = ?1 \
         AND (?2 IS NULL OR installation = ?2) AND (?3 IS NULL OR uuid = ?3) ORDER BY id LIMIT ?4",
    )?;
    let rows = stmt
        .query_map(
            params![
                selector.team as i64,
                selector.installation,
                uuid,
                MAX_PER_REQUEST
            ],
            |row| {
                Ok(Letter {
                    installation: row.get(0)?,
                    uuid: uuid_text(&row.get::<_, Vec<u8>>(1)?),
                    event: row.get(2)?,
                })
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Removes the dead letters of `team` that `letters` are; how many there were.
pub fn remove(conn: &Connection, team: u64, letters: &[Letter]) -> Result<usize, StoreError> {
    let mut removed = 0;
    let mut stmt = conn.prepare_cached(
        "DELETE FROM dead_letters WHERE team_id = ?1 AND installation = ?2 AND uuid = ?3",
    )?;
    for letter in letters {
        let uuid = uuid::Uuid::parse_str(&letter.uuid)
            .map(|u| u.as_bytes().to_vec())
            .unwrap_or_default();
        removed += stmt.execute(params![team as i64, letter.installation, uuid])?;
    }
    Ok(removed)
}

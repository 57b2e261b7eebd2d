//! Replaying and discarding the chains' dead letters in the embedded database: which ones an
//! operator names, and removing them once their events are back in the ingest (or discarded).

use super::StoreError;
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

/// The dead letters `selector` names (at most [`MAX_PER_REQUEST`], oldest first): row id and
/// the event as it was before the installation that failed on it (encoded).
pub fn select(conn: &Connection, selector: &Selector) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    let uuid = match selector.uuid.as_deref().map(uuid::Uuid::parse_str) {
        Some(Ok(uuid)) => Some(uuid.as_bytes().to_vec()),
        Some(Err(_)) => return Ok(Vec::new()),
        None => None,
    };
    let mut stmt = conn.prepare(
        "SELECT id, event FROM dead_letters WHERE team_id = ?1 \
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
            |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?)),
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Removes the dead letters with row ids `ids`; how many there were.
pub fn remove(conn: &Connection, ids: &[i64]) -> Result<usize, StoreError> {
    let mut removed = 0;
    let mut stmt = conn.prepare_cached("DELETE FROM dead_letters WHERE id = ?1")?;
    for id in ids {
        removed += stmt.execute([id])?;
    }
    Ok(removed)
}

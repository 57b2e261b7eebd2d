//! The export state in the embedded database: `export_cursors` (the cursor, counters, and the
//! largest fencing token written under and the node that claimed it), `export_batches` (the batch in flight) and
//! `export_dead_letters`. Every fenced write is one transaction that checks the token first.

use super::{Batch, ExportDeadLetter, ExportState, ExportStatus, Replayed, StateError, fenced};
use crate::export::source::Cursor;
use crate::store::{self, StoreError, now_ms, rfc3339};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use std::path::Path;

/// The columns [`batch`] reads, in its order.
const BATCH_COLUMNS: &str =
    "id, team_id, first_cursor, last_cursor, created_at_ms, attempts, next_attempt_ms, last_error";

/// A [`Batch`] from a row of [`BATCH_COLUMNS`].
fn batch(row: &rusqlite::Row<'_>) -> rusqlite::Result<Batch> {
    Ok(Batch {
        id: row.get(0)?,
        team_id: row.get::<_, i64>(1)? as u64,
        first: Cursor::from_recorded(row.get(2)?),
        last: Cursor::from_recorded(row.get(3)?),
        created_at_ms: row.get(4)?,
        attempts: row.get(5)?,
        next_attempt_ms: row.get(6)?,
        last_error: row.get(7)?,
    })
}

/// The export tables of one database.
pub struct SqliteExportState {
    conn: Connection,
}

impl SqliteExportState {
    /// The state in the database of `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            conn: store::open(data_dir)?,
        })
    }

    /// Runs `write` in a transaction once `token` is checked against (and recorded as) the
    /// largest token `installation` was written under.
    fn fenced<T>(
        &mut self,
        installation: &str,
        token: u64,
        write: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        // Immediate: the token is read and written under the write lock, waiting for it as
        // long as the connection's busy timeout (a deferred transaction that read first could
        // not take the lock later without failing at once).
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let newest: i64 = tx.query_row(
            "SELECT fencing_token FROM export_cursors WHERE installation = ?1",
            [installation],
            |row| row.get(0),
        )?;
        if (token as i64) < newest {
            return Err(fenced(installation, token, newest as u64));
        }
        tx.execute(
            "UPDATE export_cursors SET fencing_token = ?2 WHERE installation = ?1",
            params![installation, token as i64],
        )?;
        let written = write(&tx)?;
        tx.commit()?;
        Ok(written)
    }
}

impl ExportState for SqliteExportState {
    fn register(&mut self, installation: &str, team_id: u64) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO export_cursors (installation, team_id, cursor) VALUES (?1, ?2, ?3)",
            params![installation, team_id as i64, Cursor::start().as_str()],
        )?;
        Ok(())
    }

    fn claim(&mut self, installation: &str, token: u64, holder: &str) -> Result<(), StateError> {
        self.fenced(installation, token, |tx| {
            tx.execute(
                "UPDATE export_cursors SET holder = ?2 WHERE installation = ?1",
                params![installation, holder],
            )?;
            Ok(())
        })
    }

    fn cursor(&mut self, installation: &str) -> Result<Cursor, StateError> {
        Ok(Cursor::from_recorded(self.conn.query_row(
            "SELECT cursor FROM export_cursors WHERE installation = ?1",
            [installation],
            |row| row.get(0),
        )?))
    }

    fn in_flight(&mut self, installation: &str) -> Result<Option<Batch>, StateError> {
        let sql = format!("SELECT {BATCH_COLUMNS} FROM export_batches WHERE installation = ?1");
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row([installation], batch)
            .optional()?)
    }

    fn record(&mut self, installation: &str, batch: &Batch, token: u64) -> Result<(), StateError> {
        self.fenced(installation, token, |tx| {
            tx.execute(
                "INSERT INTO export_batches (installation, id, team_id, first_cursor, last_cursor, \
                 created_at_ms, attempts, next_attempt_ms, last_error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                 ON CONFLICT (installation) DO UPDATE SET attempts = ?7, next_attempt_ms = ?8, last_error = ?9",
                params![
                    installation,
                    batch.id,
                    batch.team_id as i64,
                    batch.first.as_str(),
                    batch.last.as_str(),
                    batch.created_at_ms,
                    batch.attempts,
                    batch.next_attempt_ms,
                    batch.last_error,
                ],
            )?;
            if let Some(error) = &batch.last_error {
                tx.execute(
                    "UPDATE export_cursors SET last_error = ?2, last_error_ms = ?3 WHERE installation = ?1",
                    params![installation, error, now_ms()],
                )?;
            }
            Ok(())
        })
    }

    fn delivered(
        &mut self,
        installation: &str,
        batch: &Batch,
        exported: u64,
        token: u64,
    ) -> Result<(), StateError> {
        self.fenced(installation, token, |tx| {
            tx.execute(
                "DELETE FROM export_batches WHERE installation = ?1",
                [installation],
            )?;
            tx.execute(
                "UPDATE export_cursors SET cursor = ?2, exported_events = exported_events + ?3, \
                 last_success_ms = ?4 WHERE installation = ?1",
                params![installation, batch.last.as_str(), exported as i64, now_ms()],
            )?;
            Ok(())
        })
    }

    fn dead_letter(
        &mut self,
        installation: &str,
        batch: &Batch,
        error: &str,
        token: u64,
    ) -> Result<(), StateError> {
        self.fenced(installation, token, |tx| {
            let now = now_ms();
            tx.execute(
                "INSERT OR REPLACE INTO export_dead_letters (installation, id, team_id, first_cursor, \
                 last_cursor, created_at_ms, attempts, error, dead_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    installation,
                    batch.id,
                    batch.team_id as i64,
                    batch.first.as_str(),
                    batch.last.as_str(),
                    batch.created_at_ms,
                    batch.attempts,
                    error,
                    now,
                ],
            )?;
            tx.execute(
                "DELETE FROM export_batches WHERE installation = ?1",
                [installation],
            )?;
            tx.execute(
                "UPDATE export_cursors SET cursor = ?2, last_error = ?3, last_error_ms = ?4 \
                 WHERE installation = ?1",
                params![installation, batch.last.as_str(), error, now],
            )?;
            Ok(())
        })
    }

    fn request_replay(
        &mut self,
        installation: &str,
        batch: Option<&str>,
    ) -> Result<usize, StateError> {
        Ok(self.conn.execute(
            "UPDATE export_dead_letters SET replay_requested_ms = ?3, replay_attempts = 0, replay_next_ms = ?3 \
             WHERE installation = ?1 AND (?2 IS NULL OR id = ?2)",
            params![installation, batch, now_ms()],
        )?)
    }

    fn discard(&mut self, installation: &str, batch: Option<&str>) -> Result<usize, StateError> {
        Ok(self.conn.execute(
            "DELETE FROM export_dead_letters WHERE installation = ?1 AND (?2 IS NULL OR id = ?2)",
            params![installation, batch],
        )?)
    }

    fn due_replay(&mut self, installation: &str, now: i64) -> Result<Option<Batch>, StateError> {
        // The dead letter's replay columns stand in for the batch's attempt columns.
        let columns = BATCH_COLUMNS.replace(
            "attempts, next_attempt_ms, last_error",
            "replay_attempts, replay_next_ms, NULL",
        );
        let sql = format!(
            "SELECT {columns} FROM export_dead_letters WHERE installation = ?1 \
             AND replay_requested_ms IS NOT NULL AND replay_next_ms <= ?2 ORDER BY dead_at_ms, id LIMIT 1"
        );
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row(params![installation, now], batch)
            .optional()?)
    }

    fn replayed(
        &mut self,
        installation: &str,
        batch: &Batch,
        result: Replayed<'_>,
        token: u64,
    ) -> Result<(), StateError> {
        self.fenced(installation, token, |tx| {
            match result {
                Ok(exported) => {
                    tx.execute(
                        "DELETE FROM export_dead_letters WHERE installation = ?1 AND id = ?2",
                        params![installation, batch.id],
                    )?;
                    tx.execute(
                        "UPDATE export_cursors SET exported_events = exported_events + ?2, last_success_ms = ?3 \
                         WHERE installation = ?1",
                        params![installation, exported as i64, now_ms()],
                    )?;
                }
                Err((error, retry_at)) => {
                    tx.execute(
                        "UPDATE export_dead_letters SET error = ?3, replay_attempts = ?4, replay_next_ms = ?5, \
                         replay_requested_ms = CASE WHEN ?5 IS NULL THEN NULL ELSE replay_requested_ms END \
                         WHERE installation = ?1 AND id = ?2",
                        params![installation, batch.id, error, batch.attempts, retry_at],
                    )?;
                }
            }
            Ok(())
        })
    }

    fn recorded(&mut self) -> Result<Vec<ExportStatus>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT c.installation, c.team_id, c.cursor, c.exported_events, c.last_success_ms, \
             c.last_error, c.last_error_ms, b.id, b.attempts, b.next_attempt_ms, b.last_error IS NOT NULL, \
             (SELECT COUNT(*) FROM export_dead_letters d WHERE d.installation = c.installation), \
             c.holder, c.fencing_token \
             FROM export_cursors c LEFT JOIN export_batches b ON b.installation = c.installation \
             ORDER BY c.installation",
        )?;
        let statuses = stmt
            .query_map([], |row| {
                let failed: Option<bool> = row.get(10)?;
                Ok(ExportStatus {
                    installation: row.get(0)?,
                    team_id: row.get::<_, i64>(1)? as u64,
                    cursor: row.get(2)?,
                    exported_events: row.get::<_, i64>(3)? as u64,
                    lag_events: 0,
                    lag_seconds: 0.0,
                    last_success: row.get::<_, Option<i64>>(4)?.map(rfc3339),
                    last_error: row.get(5)?,
                    last_error_at: row.get::<_, Option<i64>>(6)?.map(rfc3339),
                    batch: row.get(7)?,
                    attempts: row.get::<_, Option<u32>>(8)?.unwrap_or(0),
                    retrying_until: row
                        .get::<_, Option<i64>>(9)?
                        .filter(|_| failed == Some(true))
                        .map(rfc3339),
                    dead_letters: row.get::<_, i64>(11)? as u64,
                    holder: row.get(12)?,
                    fencing_token: row.get::<_, i64>(13)? as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(statuses)
    }

    fn dead_letters(
        &mut self,
        installation: Option<&str>,
    ) -> Result<Vec<ExportDeadLetter>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT installation, id, team_id, first_cursor, last_cursor, attempts, error, dead_at_ms, \
             replay_requested_ms IS NOT NULL FROM export_dead_letters WHERE ?1 IS NULL OR installation = ?1 \
             ORDER BY dead_at_ms, id",
        )?;
        let letters = stmt
            .query_map([installation], |row| {
                Ok(ExportDeadLetter {
                    installation: row.get(0)?,
                    batch: row.get(1)?,
                    team_id: row.get::<_, i64>(2)? as u64,
                    first_cursor: row.get(3)?,
                    last_cursor: row.get(4)?,
                    attempts: row.get(5)?,
                    error: row.get(6)?,
                    dead_at: rfc3339(row.get(7)?),
                    replaying: row.get(8)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(letters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_export_state_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        super::super::tests::keeps_the_contract(
            &mut SqliteExportState::open(dir.path()).unwrap(),
            &mut SqliteExportState::open(dir.path()).unwrap(),
        );
    }
}

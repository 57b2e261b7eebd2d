//! The durable state of exports, the seam its backends implement: one cursor per export
//! installation (the [`Cursor`] of the last event exported or passed over), at most one batch in
//! flight (its cursor range, recorded before the first call), and the export dead letters.
//! Cursors are the event source's, opaque here.
//!
//! # The contract every backend keeps
//!
//! - The cursor moves only in the write that records a batch's success or its dead letter, and
//!   that write also ends the batch in flight: both happen or neither.
//! - **Fenced writes.** A runner writes under the fencing token of its lease on the
//!   installation. [`ExportState::claim`] records the token first (before the runner reads the
//!   state), and every write a runner makes ([`ExportState::record`], `delivered`,
//!   `dead_letter`, `replayed`) is refused with [`StateError::Fenced`] when a larger token was
//!   recorded since: a runner paused past its lease, while another node took the installation
//!   over, changes nothing when it wakes.
//! - Operators' requests ([`ExportState::request_replay`]) are not fenced: whichever runner
//!   holds the installation acts on them.
//!
//! The embedded database keeps this state in its tables ([`sqlite`]); at scale,
//! [`crate::redis::exports`] keeps it on Redis, where every exporter node sees it.

pub mod sqlite;

use super::source::{Cursor, Source, SourceError};
use crate::store::{StoreError, now_ms};
use serde::Serialize;
use thiserror::Error;

/// A batch of one installation: a range of its team's stored events, by cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Stable id, derived from the range.
    pub id: String,
    /// The team.
    pub team_id: u64,
    /// Cursor of the first event covered.
    pub first: Cursor,
    /// Cursor of the last event covered.
    pub last: Cursor,
    /// When it was formed, epoch ms.
    pub created_at_ms: i64,
    /// Calls made so far.
    pub attempts: u32,
    /// When the next call may be made, epoch ms.
    pub next_attempt_ms: i64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

impl Batch {
    /// A new batch of `team_id` covering `first..=last`, formed now.
    pub fn new(team_id: u64, first: Cursor, last: Cursor, now_ms: i64) -> Self {
        Self {
            id: format!("{first}-{last}"),
            team_id,
            first,
            last,
            created_at_ms: now_ms,
            attempts: 0,
            next_attempt_ms: now_ms,
            last_error: None,
        }
    }
}

/// What became of a dead letter's replay: delivered with this many events, or failed with an
/// error, to be tried again at the given time (`None`: given up, it stays a dead letter).
pub type Replayed<'a> = Result<u64, (&'a str, Option<i64>)>;

/// Why the export state could not be read or written.
#[derive(Debug, Error)]
pub enum StateError {
    /// The backend failed or cannot be reached; trying again later may work.
    #[error("the export state is unavailable: {0}")]
    Unavailable(String),
    /// A write under a lease that another node has taken over since.
    #[error("refused a write under a stale lease: {0}")]
    Fenced(String),
}

impl From<StoreError> for StateError {
    fn from(error: StoreError) -> Self {
        StateError::Unavailable(error.to_string())
    }
}

impl From<rusqlite::Error> for StateError {
    fn from(error: rusqlite::Error) -> Self {
        StateError::Unavailable(error.to_string())
    }
}

/// The refusal of a write to `installation` under token `mine` after `newest` was recorded.
pub(crate) fn fenced(installation: &str, mine: u64, newest: u64) -> StateError {
    StateError::Fenced(format!(
        "{installation} was written under fencing token {mine}, but another runner took it over under token {newest}"
    ))
}

/// Where export runners keep their state (see the module docs for the contract).
pub trait ExportState: Send {
    /// Gives `installation` a cursor at the start of its team's events, unless it has one.
    fn register(&mut self, installation: &str, team_id: u64) -> Result<(), StateError>;

    /// Records that the runner of node `holder`, under `token`, has taken `installation` over:
    /// writes under a smaller token are refused from now on. Refused if a larger token was
    /// recorded.
    fn claim(&mut self, installation: &str, token: u64, holder: &str) -> Result<(), StateError>;

    /// The installation's cursor.
    fn cursor(&mut self, installation: &str) -> Result<Cursor, StateError>;

    /// The batch of `installation` in flight, if any.
    fn in_flight(&mut self, installation: &str) -> Result<Option<Batch>, StateError>;

    /// Records `batch` as in flight (before its first call), or its new attempt count, retry
    /// time and last error.
    fn record(&mut self, installation: &str, batch: &Batch, token: u64) -> Result<(), StateError>;

    /// Records that `batch` (with `exported` events sent) was delivered: the batch is done and
    /// the cursor moves past it.
    fn delivered(
        &mut self,
        installation: &str,
        batch: &Batch,
        exported: u64,
        token: u64,
    ) -> Result<(), StateError>;

    /// Moves `batch` to the dead letters with `error`, and the cursor past it.
    fn dead_letter(
        &mut self,
        installation: &str,
        batch: &Batch,
        error: &str,
        token: u64,
    ) -> Result<(), StateError>;

    /// Asks for the dead letters of `installation` (only `batch`, if given) to be sent again;
    /// returns how many.
    fn request_replay(
        &mut self,
        installation: &str,
        batch: Option<&str>,
    ) -> Result<usize, StateError>;

    /// Removes the dead letters of `installation` (only `batch`, if given) for good; returns how
    /// many.
    fn discard(&mut self, installation: &str, batch: Option<&str>) -> Result<usize, StateError>;

    /// A dead letter of `installation` whose replay is due at `now`, as a batch to send (its
    /// attempts are those of the replay).
    fn due_replay(&mut self, installation: &str, now: i64) -> Result<Option<Batch>, StateError>;

    /// Records the outcome of replaying the dead letter `batch`: delivered (it is removed and
    /// its events counted), retried later, or given up (it stays, with the error).
    fn replayed(
        &mut self,
        installation: &str,
        batch: &Batch,
        result: Replayed<'_>,
        token: u64,
    ) -> Result<(), StateError>;

    /// What is recorded of every registered installation, by installation (lag left at zero:
    /// [`status`] asks the event source).
    fn recorded(&mut self) -> Result<Vec<ExportStatus>, StateError>;

    /// The export dead letters (of `installation`, if given), oldest first.
    fn dead_letters(
        &mut self,
        installation: Option<&str>,
    ) -> Result<Vec<ExportDeadLetter>, StateError>;
}

/// What an operator does with export dead letters (the command and the admin route alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LetterAction {
    /// Send them again (the runner holding the installation does).
    Replay,
    /// Remove them for good.
    Discard,
}

impl LetterAction {
    /// Does it to the dead letters of `installation` (only `batch`, if given); how many there
    /// were.
    pub fn apply(
        self,
        state: &mut dyn ExportState,
        installation: &str,
        batch: Option<&str>,
    ) -> Result<usize, StateError> {
        match self {
            LetterAction::Replay => state.request_replay(installation, batch),
            LetterAction::Discard => state.discard(installation, batch),
        }
    }

    /// What became of them, as the answers say it.
    pub fn done(self) -> &'static str {
        match self {
            LetterAction::Replay => "queued",
            LetterAction::Discard => "discarded",
        }
    }
}

/// What `sluice exports` prints for one installation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExportStatus {
    /// The installation.
    pub installation: String,
    /// Its team.
    pub team_id: u64,
    /// Cursor of the last event exported (or passed over), as the event source wrote it.
    pub cursor: String,
    /// Events exported so far.
    pub exported_events: u64,
    /// Stored events not exported yet.
    pub lag_events: u64,
    /// How long the oldest of them has waited, in seconds.
    pub lag_seconds: f64,
    /// When a batch was last delivered.
    pub last_success: Option<String>,
    /// The last failure, and when.
    pub last_error: Option<String>,
    /// When the last failure happened.
    pub last_error_at: Option<String>,
    /// The batch in flight, if any.
    pub batch: Option<String>,
    /// Calls made for the batch in flight.
    pub attempts: u32,
    /// When the batch in flight is tried again, if it failed.
    pub retrying_until: Option<String>,
    /// Batches in the export dead letters.
    pub dead_letters: u64,
    /// The node whose runner took the installation over last.
    pub holder: Option<String>,
    /// The fencing token it holds it under.
    pub fencing_token: u64,
}

/// A batch in the export dead letters, as `sluice exports dead-letters` prints it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExportDeadLetter {
    /// The installation.
    pub installation: String,
    /// The batch id.
    pub batch: String,
    /// The team.
    pub team_id: u64,
    /// Cursor of the first event covered.
    pub first_cursor: String,
    /// Cursor of the last event covered.
    pub last_cursor: String,
    /// Calls made before it was dead-lettered.
    pub attempts: u32,
    /// Why.
    pub error: String,
    /// When it was dead-lettered.
    pub dead_at: String,
    /// Whether a replay is under way.
    pub replaying: bool,
}

/// Why the status of exports could not be read.
#[derive(Debug, Error)]
pub enum StatusError {
    /// The export state could not be read.
    #[error(transparent)]
    State(#[from] StateError),
    /// The event source could not tell the lag.
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// The status of every export installation `state` knows; `source` tells the lag.
pub fn status(
    state: &mut dyn ExportState,
    source: &mut dyn Source,
) -> Result<Vec<ExportStatus>, StatusError> {
    let now = now_ms();
    state
        .recorded()?
        .into_iter()
        .map(|mut status| {
            let cursor = Cursor::from_recorded(status.cursor.clone());
            let lag = source.lag(status.team_id, &cursor)?;
            status.lag_events = lag.events;
            status.lag_seconds = lag
                .oldest_stored_at_ms
                .map_or(0.0, |t| (now - t).max(0) as f64 / 1e3);
            Ok(status)
        })
        .collect()
}

/// The contract's tests, which every export state runs.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn batch(first: &str, last: &str) -> Batch {
        Batch::new(
            7,
            Cursor::from_recorded(first.into()),
            Cursor::from_recorded(last.into()),
            1_000,
        )
    }

    /// The contract every export state keeps, on `state` (fresh) and `other` (another node's
    /// handle on the same state).
    pub(crate) fn keeps_the_contract(state: &mut dyn ExportState, other: &mut dyn ExportState) {
        let id = "team-7/s3";
        state.register(id, 7).unwrap();
        state.claim(id, 3, "one").unwrap();
        assert_eq!(state.cursor(id).unwrap(), Cursor::start());
        assert_eq!(state.in_flight(id).unwrap(), None);

        // A batch in flight is seen by every node, with its attempts.
        let mut first = batch("1", "5");
        first.attempts = 1;
        state.record(id, &first, 3).unwrap();
        assert_eq!(other.in_flight(id).unwrap(), Some(first.clone()));
        first.attempts = 2;
        first.last_error = Some("slow".into());
        first.next_attempt_ms = 9_000;
        state.record(id, &first, 3).unwrap();
        assert_eq!(other.in_flight(id).unwrap(), Some(first.clone()));
        state.delivered(id, &first, 4, 3).unwrap();
        assert_eq!(other.in_flight(id).unwrap(), None);
        assert_eq!(other.cursor(id).unwrap().as_str(), "5");

        // Another node takes over: the first one's late writes change nothing.
        other.register(id, 7).unwrap();
        other.claim(id, 4, "two").unwrap();
        let late = batch("6", "9");
        assert!(matches!(
            state.record(id, &late, 3),
            Err(StateError::Fenced(_))
        ));
        assert!(matches!(
            state.delivered(id, &late, 1, 3),
            Err(StateError::Fenced(_))
        ));
        assert!(matches!(
            state.dead_letter(id, &late, "x", 3),
            Err(StateError::Fenced(_))
        ));
        assert!(matches!(
            state.claim(id, 3, "one"),
            Err(StateError::Fenced(_))
        ));
        assert_eq!(other.cursor(id).unwrap().as_str(), "5");
        assert_eq!(other.in_flight(id).unwrap(), None);

        // Dead letters, replay on request, under the new token.
        let mut dead = batch("6", "9");
        dead.attempts = 3;
        other.record(id, &dead, 4).unwrap();
        other.dead_letter(id, &dead, "refused", 4).unwrap();
        assert_eq!(state.cursor(id).unwrap().as_str(), "9");
        assert_eq!(state.in_flight(id).unwrap(), None);
        let letters = state.dead_letters(Some(id)).unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].batch, "6-9");
        assert_eq!(letters[0].attempts, 3);
        assert_eq!(letters[0].error, "refused");
        assert!(!letters[0].replaying);
        assert_eq!(state.dead_letters(Some("team-7/other")).unwrap(), []);
        assert_eq!(other.due_replay(id, now_ms()).unwrap(), None);
        assert_eq!(state.request_replay(id, Some("nope")).unwrap(), 0);
        assert_eq!(state.request_replay(id, None).unwrap(), 1);
        assert!(state.dead_letters(None).unwrap()[0].replaying);
        let mut replay = other.due_replay(id, now_ms()).unwrap().unwrap();
        assert_eq!((replay.id.as_str(), replay.attempts), ("6-9", 0));
        replay.attempts = 1;
        other
            .replayed(id, &replay, Err(("still refused", Some(i64::MAX))), 4)
            .unwrap();
        assert_eq!(other.due_replay(id, now_ms()).unwrap(), None, "not due");
        assert_eq!(state.dead_letters(None).unwrap()[0].error, "still refused");
        assert!(matches!(
            state.replayed(id, &replay, Ok(4), 3),
            Err(StateError::Fenced(_))
        ));
        other.replayed(id, &replay, Ok(4), 4).unwrap();
        assert_eq!(state.dead_letters(None).unwrap(), []);
        // Discarded for good: one, then the rest.
        for (first, last) in [("10", "11"), ("12", "13")] {
            let letter = batch(first, last);
            other.record(id, &letter, 4).unwrap();
            other.dead_letter(id, &letter, "refused", 4).unwrap();
        }
        assert_eq!(state.discard(id, Some("nope")).unwrap(), 0);
        assert_eq!(state.discard(id, Some("10-11")).unwrap(), 1);
        assert_eq!(state.dead_letters(None).unwrap()[0].batch, "12-13");
        assert_eq!(state.discard(id, None).unwrap(), 1);
        assert_eq!(state.dead_letters(None).unwrap(), []);

        let statuses = state.recorded().unwrap();
        assert_eq!(statuses.len(), 1);
        let status = &statuses[0];
        assert_eq!(
            (status.installation.as_str(), status.team_id),
            (id, 7),
            "{status:?}"
        );
        assert_eq!((status.cursor.as_str(), status.exported_events), ("13", 8));
        assert_eq!(status.last_error.as_deref(), Some("refused"));
        assert!(status.last_success.is_some());
        assert_eq!((status.batch.as_ref(), status.dead_letters), (None, 0));
        assert_eq!(
            (status.holder.as_deref(), status.fencing_token),
            (Some("two"), 4)
        );
        // Registering again keeps the cursor.
        state.register(id, 7).unwrap();
        assert_eq!(state.cursor(id).unwrap().as_str(), "13");
    }
}

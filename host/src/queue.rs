//! The embedded ingest queue: durable before capture acknowledges.
//!
//! Capture hands each request's encoded events to [`Queue::append`]; one writer thread takes
//! everything pending, inserts it in one transaction (`synchronous = FULL`), commits, and only
//! then answers each caller. Many concurrent requests therefore share one fsync (group commit).
//! Rows are read back in arrival order by the worker, which deletes them in the same transaction
//! that stores the processed events.

use crate::store;
use rusqlite::{Connection, params};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::oneshot;

/// Requests that may wait for the writer at once before capture answers `503`.
const PENDING_REQUESTS: usize = 4_096;
/// Most requests committed in one transaction.
const MAX_GROUP: usize = 1_024;

/// Why the queue did not take events.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum QueueError {
    /// The queue holds its maximum number of events; try again later.
    #[error("the ingest queue is full ({0} events waiting)")]
    Full(u64),
    /// The queue could not write durably.
    #[error("the ingest queue could not store the events: {0}")]
    Unavailable(String),
}

/// Wakes the worker when rows arrive.
#[derive(Debug, Default)]
pub struct Signal {
    generation: Mutex<u64>,
    changed: Condvar,
}

impl Signal {
    /// Marks that something changed and wakes waiters.
    pub fn notify(&self) {
        *self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
        self.changed.notify_all();
    }

    /// Waits until [`Signal::notify`] is called after `seen`, or `timeout`; returns the current
    /// generation to pass next time.
    pub fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let guard = self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |generation| *generation == seen)
            .unwrap_or_else(PoisonError::into_inner);
        *guard
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        *self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

struct Append {
    team_id: u64,
    events: u64,
    payload: Vec<u8>,
    done: oneshot::Sender<Result<(), QueueError>>,
}

/// Handle for appending to the queue. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    sender: SyncSender<Append>,
    depth: Arc<AtomicU64>,
    max_depth: u64,
}

/// Owns the writer thread; dropping every [`Queue`] handle and calling [`QueueWriter::join`]
/// finishes pending writes.
pub struct QueueWriter {
    thread: JoinHandle<()>,
}

impl QueueWriter {
    /// Waits for the writer to commit what it has and stop (after every [`Queue`] is dropped).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

impl Queue {
    /// Opens the queue in `data_dir` and starts its writer thread.
    pub fn start(
        data_dir: &Path,
        max_depth: u64,
        depth: Arc<AtomicU64>,
        signal: Arc<Signal>,
    ) -> rusqlite::Result<(Self, QueueWriter)> {
        let conn = store::open(data_dir)?;
        depth.store(store::queue_depth(&conn)?, Ordering::SeqCst);
        let (sender, receiver) = mpsc::sync_channel(PENDING_REQUESTS);
        let writer_depth = depth.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-queue".into())
            .spawn(move || write_loop(conn, receiver, &writer_depth, &signal))
            .map_err(|e| {
                rusqlite::Error::InvalidParameterName(format!("cannot start queue writer: {e}"))
            })?;
        Ok((
            Self {
                sender,
                depth,
                max_depth,
            },
            QueueWriter { thread },
        ))
    }

    /// Stores one request's events (a batch in the wire encoding) durably. Returns once they are
    /// committed; only then may capture acknowledge.
    pub async fn append(
        &self,
        team_id: u64,
        events: u64,
        payload: Vec<u8>,
    ) -> Result<(), QueueError> {
        let waiting = self.depth.load(Ordering::SeqCst);
        if waiting.saturating_add(events) > self.max_depth {
            return Err(QueueError::Full(waiting));
        }
        let (done, result) = oneshot::channel();
        let append = Append {
            team_id,
            events,
            payload,
            done,
        };
        match self.sender.try_send(append) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(QueueError::Full(waiting)),
            Err(TrySendError::Disconnected(_)) => {
                return Err(QueueError::Unavailable("the queue is shutting down".into()));
            }
        }
        result
            .await
            .unwrap_or_else(|_| Err(QueueError::Unavailable("the queue writer stopped".into())))
    }
}

fn write_loop(
    mut conn: Connection,
    receiver: Receiver<Append>,
    depth: &AtomicU64,
    signal: &Signal,
) {
    while let Ok(first) = receiver.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let result = commit(&mut conn, &group).map_err(|e| QueueError::Unavailable(e.to_string()));
        match &result {
            // Counted before the worker is woken, so the worker never subtracts events first.
            Ok(()) => {
                depth.fetch_add(group.iter().map(|a| a.events).sum(), Ordering::SeqCst);
            }
            Err(error) => {
                tracing::error!(%error, requests = group.len(), "queue write failed; answering 503");
            }
        }
        for append in group {
            let _ = append.done.send(result.clone());
        }
        signal.notify();
    }
}

fn commit(conn: &mut Connection, group: &[Append]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert =
            tx.prepare_cached("INSERT INTO queue (team_id, events, payload) VALUES (?1, ?2, ?3)")?;
        for append in group {
            insert.execute(params![
                append.team_id as i64,
                append.events as i64,
                append.payload
            ])?;
        }
    }
    tx.commit()
}

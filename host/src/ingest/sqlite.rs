//! The embedded ingest queue, in the `queue` table of the SQLite database.
//!
//! Capture hands each request's encoded events to [`Queue::append`]; one writer thread takes
//! everything pending, inserts it in one transaction (`synchronous = FULL`), commits, and only
//! then answers each caller. Many concurrent requests therefore share one fsync (group commit).
//! The worker reads rows back in arrival order through [`QueueReader`]; they are deleted when
//! acknowledged, by the SQLite sink inside the transaction that stores their results.

use super::{
    Append, AppendError, Appended, Appending, Ingest, IngestError, Ingested, Polled, Receipt,
};
use crate::signal::Signal;
use crate::store::{self, StoreError};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// Requests that may wait for the writer at once before capture answers `503`.
const PENDING_REQUESTS: usize = 4_096;
/// Most requests committed in one transaction.
const MAX_GROUP: usize = 1_024;

struct Request {
    team_id: u64,
    events: u64,
    payload: Vec<u8>,
    done: oneshot::Sender<Result<(), AppendError>>,
}

/// What the writer and the reader share.
struct Shared {
    /// Events committed and not yet acknowledged.
    depth: AtomicU64,
    /// Events of requests waiting for the writer.
    pending: AtomicU64,
    signal: Signal,
}

impl Shared {
    /// Events waiting: committed and not acknowledged, or not committed yet.
    fn waiting(&self) -> u64 {
        self.depth.load(Ordering::SeqCst) + self.pending.load(Ordering::SeqCst)
    }
}

/// Counts a request's events as pending until dropped.
struct Pending<'a>(&'a AtomicU64, u64);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::SeqCst);
    }
}

/// The capture side of the queue. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    sender: SyncSender<Request>,
    shared: Arc<Shared>,
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
    /// Opens the queue in `data_dir` and starts its writer thread; returns the capture side, the
    /// writer, and the worker side.
    /// Processed payloads are kept in the `captured` table (for `sluice replay`) if
    /// `keep_captured`.
    pub fn start(
        data_dir: &Path,
        max_depth: u64,
        keep_captured: bool,
    ) -> Result<(Self, QueueWriter, QueueReader), StoreError> {
        let conn = store::open(data_dir)?;
        let shared = Arc::new(Shared {
            depth: AtomicU64::new(depth(&conn)?),
            pending: AtomicU64::new(0),
            signal: Signal::default(),
        });
        let (sender, receiver) = mpsc::sync_channel(PENDING_REQUESTS);
        let writer_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-queue".into())
            .spawn(move || write_loop(conn, receiver, &writer_shared))
            .map_err(|e| StoreError::Thread("the queue writer", e))?;
        let reader_conn = store::open(data_dir)?;
        let reader = QueueReader {
            // As SQLite names the file, so that a sink's transaction on it is recognised.
            path: PathBuf::from(reader_conn.path().unwrap_or_default()),
            conn: reader_conn,
            keep_captured,
            seen: shared.signal.generation(),
            shared: shared.clone(),
        };
        Ok((
            Self {
                sender,
                shared,
                max_depth,
            },
            QueueWriter { thread },
            reader,
        ))
    }
}

impl Append for Queue {
    fn append(&self, appended: Appended) -> Appending<'_> {
        let Appended {
            team_id,
            events,
            payload,
            ..
        } = appended;
        Box::pin(async move {
            let waiting = self.shared.waiting();
            if waiting.saturating_add(events) > self.max_depth {
                return Err(AppendError::Full(waiting));
            }
            self.shared.pending.fetch_add(events, Ordering::SeqCst);
            let _pending = Pending(&self.shared.pending, events);
            let (done, result) = oneshot::channel();
            let request = Request {
                team_id,
                events,
                payload,
                done,
            };
            match self.sender.try_send(request) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => return Err(AppendError::Full(waiting)),
                Err(TrySendError::Disconnected(_)) => {
                    return Err(AppendError::Unavailable(
                        "the queue is shutting down".into(),
                    ));
                }
            }
            result.await.unwrap_or_else(|_| {
                Err(AppendError::Unavailable("the queue writer stopped".into()))
            })
        })
    }

    fn depth(&self) -> u64 {
        self.shared.waiting()
    }
}

fn write_loop(mut conn: Connection, receiver: Receiver<Request>, shared: &Shared) {
    while let Ok(first) = receiver.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let result = commit(&mut conn, &group).map_err(|e| AppendError::Unavailable(e.to_string()));
        match &result {
            // Counted before the reader is woken, so the reader never subtracts events first
            // (and before the requests stop counting as pending, so they are never uncounted).
            Ok(()) => {
                shared
                    .depth
                    .fetch_add(group.iter().map(|r| r.events).sum(), Ordering::SeqCst);
            }
            Err(error) => {
                tracing::error!(%error, requests = group.len(), "queue write failed; answering 503");
            }
        }
        for request in group {
            let _ = request.done.send(result.clone());
        }
        shared.signal.notify();
    }
}

fn commit(conn: &mut Connection, group: &[Request]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert =
            tx.prepare_cached("INSERT INTO queue (team_id, events, payload) VALUES (?1, ?2, ?3)")?;
        for request in group {
            insert.execute(params![
                request.team_id as i64,
                request.events as i64,
                request.payload
            ])?;
        }
    }
    tx.commit()
}

/// Number of events waiting in the queue of `conn`'s database.
pub fn depth(conn: &Connection) -> Result<u64, StoreError> {
    let depth: Option<i64> = conn
        .query_row("SELECT SUM(events) FROM queue", [], |row| row.get(0))
        .optional()?
        .flatten();
    Ok(depth.unwrap_or(0) as u64)
}

/// The worker side of the queue.
pub struct QueueReader {
    conn: Connection,
    path: PathBuf,
    keep_captured: bool,
    shared: Arc<Shared>,
    seen: u64,
}

/// Acknowledges queue rows up to and including `last_id`.
#[derive(Debug)]
pub struct QueueReceipt {
    path: PathBuf,
    keep_captured: bool,
    last_id: i64,
    events: u64,
    settled: bool,
}

impl Receipt for QueueReceipt {}

impl From<StoreError> for IngestError {
    fn from(error: StoreError) -> Self {
        IngestError::Unavailable(error.to_string())
    }
}

impl QueueReceipt {
    /// Settles the receipt inside the sink's transaction `tx`, if the queue lives in that same
    /// database; returns whether it did.
    pub fn settle_in(&mut self, tx: &rusqlite::Transaction<'_>) -> Result<bool, StoreError> {
        if tx.path().map(Path::new) != Some(self.path.as_path()) || self.path.as_os_str().is_empty()
        {
            return Ok(false);
        }
        remove(tx, self.last_id, self.keep_captured)?;
        self.settled = true;
        Ok(true)
    }
}

/// Removes the rows up to `last_id` from the queue, copied to `captured` first if `keep`.
fn remove(conn: &Connection, last_id: i64, keep: bool) -> rusqlite::Result<()> {
    if keep {
        conn.execute(
            "INSERT INTO captured (team_id, events, received_ms, payload)
             SELECT team_id, events, ?2, payload FROM queue WHERE id <= ?1 ORDER BY id",
            params![last_id, store::now_ms()],
        )?;
    }
    conn.execute("DELETE FROM queue WHERE id <= ?1", [last_id])
        .map(drop)
}

impl QueueReader {
    fn read(&self, max_events: usize) -> Result<Vec<(i64, Ingested)>, StoreError> {
        // Every row holds at least one event, so `max_events` rows always suffice.
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, team_id, events, payload FROM queue ORDER BY id LIMIT ?1",
        )?;
        let mut rows = stmt.query([max_events as i64])?;
        let mut taken = Vec::new();
        let mut events = 0;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let ingested = Ingested {
                position: id.to_string(),
                team_id: row.get::<_, i64>(1)? as u64,
                events: row.get::<_, i64>(2)? as u64,
                payload: row.get(3)?,
            };
            events += ingested.events as usize;
            taken.push((id, ingested));
            if events >= max_events {
                break;
            }
        }
        Ok(taken)
    }
}

impl Ingest for QueueReader {
    type Receipt = QueueReceipt;

    fn poll(
        &mut self,
        max_events: usize,
        wait: Duration,
    ) -> Result<Option<Polled<QueueReceipt>>, IngestError> {
        let mut rows = self.read(max_events)?;
        if rows.is_empty() {
            self.seen = self.shared.signal.wait(self.seen, wait);
            rows = self.read(max_events)?;
        }
        let Some(last_id) = rows.last().map(|(id, _)| *id) else {
            return Ok(None);
        };
        let events = rows.iter().map(|(_, row)| row.events).sum();
        Ok(Some(Polled {
            batches: rows.into_iter().map(|(_, row)| row).collect(),
            events,
            receipt: QueueReceipt {
                path: self.path.clone(),
                keep_captured: self.keep_captured,
                last_id,
                events,
                settled: false,
            },
        }))
    }

    fn ack(&mut self, receipt: QueueReceipt) -> Result<(), IngestError> {
        if !receipt.settled {
            remove(&self.conn, receipt.last_id, self.keep_captured).map_err(StoreError::from)?;
        }
        let before = self
            .shared
            .depth
            .fetch_sub(receipt.events, Ordering::SeqCst);
        metrics::gauge!("sluice_queue_depth_events")
            .set(before.saturating_sub(receipt.events) as f64);
        Ok(())
    }
}

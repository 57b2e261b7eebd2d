//! One export installation's runner: forms batches from the team's stored events after its
//! cursor, records each before calling the plugin, retries with backoff, dead-letters, and
//! replays dead letters on request. It owns one plugin instance, its event source and its own
//! handle on the export state, on its own thread, so a slow or failing export holds up nothing
//! else.
//!
//! One runner per installation runs on each exporter node, and the one holding the
//! installation's lease (`export/<installation>`) works while the others stand by, asking for
//! it every second: a node that dies is replaced within the lease's TTL, and one that shuts down
//! hands the lease back at once. The holder claims the installation's state under its lease's
//! fencing token before reading it, and writes under that token, so a holder paused past its
//! lease cannot move the cursor or record anything once another took over.
//!
//! A runner may also run a [`Backfill`]: the installation's stored events of a time range sent
//! again, as batches of their own (`backfill-<name>-...` ids, so objects do not collide with
//! the live ones), with a cursor of their own in the export state (`<installation>#<name>`),
//! beside the live cursor. It ends once it has read past the events stored before it began.
//!
//! The batch being filled ([`OpenBatch`]) is built incrementally: each wake-up reads only the
//! events stored since the last read and encodes only those, so a runner woken on every store
//! does work in proportion to the new events, not to the size of the batch. A recorded batch is
//! read again from the source only to retry it or after a restart.

use super::ExportInstallation;
use super::source::{Cursor, Source, SourceError, StoredEvent};
use super::state::{Batch, ExportState, StateError};
use crate::capabilities::log::{self, Level};
use crate::retry::backoff;
use crate::runtime::hooks::exporter::Batch as Descriptor;
use crate::runtime::{CallError, Instance};
use crate::schedule::lock::{LEASE_TTL, Lease, RunLock, heartbeat};
use crate::store::now_ms;
use sluice_abi::wire::BatchWriter;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Longest a runner sleeps before looking again, even without being woken.
const IDLE: Duration = Duration::from_secs(1);
/// How often the lag metrics are refreshed.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// What one step did.
enum Step {
    /// Something was sent or recorded; step again at once.
    Worked,
    /// A backfill has sent its whole range.
    Done,
    /// Nothing to do before this epoch-ms time (or a wake-up).
    WaitUntil(i64),
}

/// The per-installation metric handles.
struct Metrics {
    events: metrics::Counter,
    batches: metrics::Counter,
    retries: metrics::Counter,
    dead_letters: metrics::Counter,
    lag_events: metrics::Gauge,
    lag_seconds: metrics::Gauge,
}

impl Metrics {
    fn new(installation: &str) -> Self {
        let labels = [("installation", installation.to_owned())];
        Self {
            events: metrics::counter!("sluice_export_events_total", &labels),
            batches: metrics::counter!("sluice_export_batches_total", &labels),
            retries: metrics::counter!("sluice_export_retries_total", &labels),
            dead_letters: metrics::counter!("sluice_export_dead_letters_total", &labels),
            lag_events: metrics::gauge!("sluice_export_lag_events", &labels),
            lag_seconds: metrics::gauge!("sluice_export_lag_seconds", &labels),
        }
    }
}

/// Why a step failed: the export state or the event source; the runner tries again (unless
/// its lease was taken over).
#[derive(Debug, Error)]
enum StepError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// A backfill's range: events whose time is in `from_ms..to_ms` and that were stored before
/// `stored_before_ms` (later ones are the live export's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backfill {
    /// Its name, in its state key and its batches' ids.
    pub name: String,
    /// Events from this time, epoch ms (inclusive).
    pub from_ms: i64,
    /// Events before this time, epoch ms.
    pub to_ms: i64,
    /// Events stored before this, epoch ms.
    pub stored_before_ms: i64,
    /// At most this many events a second.
    pub rate: Option<u64>,
}

impl Backfill {
    /// Whether `event` is in the range.
    fn covers(&self, event: &StoredEvent) -> bool {
        event.stored_at_ms < self.stored_before_ms
            && sluice_abi::wire::parse_encoded(&event.encoded)
                .is_ok_and(|raw| (self.from_ms..self.to_ms).contains(&raw.timestamp_ms()))
    }

    /// The key of its state: the installation's, apart.
    pub fn key(&self, installation: &str) -> String {
        format!("{installation}#{}", self.name)
    }
}

/// The batch being filled: the events of the team after `base` (the installation's cursor)
/// read so far, encoded as they were read.
struct OpenBatch {
    /// The installation's cursor it builds on.
    base: Cursor,
    /// Cursor of the last event read (`base` if none).
    next: Cursor,
    /// Cursor and storage time of its first event.
    first: Option<(Cursor, i64)>,
    /// Events read, and their encoded bytes, counting ignored ones (they bound the batch).
    events: usize,
    bytes: usize,
    /// The events the installation does not ignore, encoded as one batch.
    writer: BatchWriter,
}

impl OpenBatch {
    fn new(base: Cursor) -> Self {
        Self {
            next: base.clone(),
            base,
            first: None,
            events: 0,
            bytes: 0,
            writer: BatchWriter::default(),
        }
    }

    /// Adds `event`, to be sent if `sent`.
    fn push(&mut self, event: StoredEvent, sent: bool) {
        self.events += 1;
        self.bytes += event.encoded.len();
        if sent {
            self.writer.push_encoded(&event.encoded);
        }
        self.first
            .get_or_insert_with(|| (event.cursor.clone(), event.stored_at_ms));
        self.next = event.cursor;
    }
}

/// A failed call, as the runner decides about it.
struct Failure {
    message: String,
    retryable: bool,
}

impl From<CallError> for Failure {
    fn from(error: CallError) -> Self {
        // A trap (a timeout talking to the destination, a crash) may well pass next time.
        let retryable = match &error {
            CallError::Plugin { retryable, .. } => *retryable,
            CallError::Trap { .. } => true,
        };
        Self {
            message: error.to_string(),
            retryable,
        }
    }
}

pub(super) struct Runner {
    installation: Arc<ExportInstallation>,
    /// Where its state is: the installation's id, or a backfill's key.
    key: Arc<str>,
    /// The backfill it runs, if it runs one.
    backfill: Option<Backfill>,
    state: Box<dyn ExportState>,
    lock: Arc<dyn RunLock>,
    /// The node this runner is on.
    holder: String,
    /// The fencing token of the lease held, while one is.
    token: u64,
    source: Box<dyn Source>,
    open: Option<OpenBatch>,
    instance: Option<Instance>,
    metrics: Metrics,
    lag_updated: Option<Instant>,
    /// Events sent since this runner started, and when it started (for a backfill's rate).
    paced: (u64, Instant),
}

impl Runner {
    /// The runner of `installation`, or of its `backfill`.
    pub(super) fn new(
        installation: Arc<ExportInstallation>,
        backfill: Option<Backfill>,
        mut state: Box<dyn ExportState>,
        lock: Arc<dyn RunLock>,
        source: Box<dyn Source>,
        holder: &str,
    ) -> Result<Self, StateError> {
        let key: Arc<str> = match &backfill {
            Some(backfill) => Arc::from(backfill.key(&installation.id)),
            None => installation.id.clone(),
        };
        state.register(&key, installation.team_id)?;
        Ok(Self {
            metrics: Metrics::new(&key),
            key,
            backfill,
            installation,
            state,
            lock,
            holder: holder.to_owned(),
            token: 0,
            source,
            open: None,
            instance: None,
            lag_updated: None,
            paced: (0, Instant::now()),
        })
    }

    /// Until `stop` is set (or a backfill is done: then it returns `true`): holds the
    /// installation's lease and works, or stands by while another node holds it.
    pub(super) fn run(mut self, stop: &AtomicBool) -> bool {
        let key = format!("export/{}", self.key);
        let mut finished = false;
        while !stop.load(Ordering::SeqCst) && !finished {
            match self.lock.acquire(&key, LEASE_TTL) {
                Ok(Some(lease)) => {
                    let lock = self.lock.clone();
                    finished = heartbeat(&*lock, &lease, |lost| self.hold(&lease, stop, lost));
                    lock.release(&lease);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(installation = %self.key, %error, "export runner cannot ask for its lease; retrying")
                }
            }
            if !stop.load(Ordering::SeqCst) && !finished {
                self.source.wait(IDLE);
            }
        }
        if let Some(instance) = self.instance.take() {
            instance.teardown();
        }
        finished
    }

    /// Works under `lease` until `stop` is set or the lease is `lost` (or taken over: a fenced
    /// write), sleeping on the source (woken when events are stored); whether a backfill is
    /// done.
    fn hold(&mut self, lease: &Lease, stop: &AtomicBool, lost: &AtomicBool) -> bool {
        let id = self.key.clone();
        self.token = lease.fencing_token;
        // Another node may have moved the state since this one last held the lease.
        self.open = None;
        if let Err(error) = self.state.claim(&id, self.token, &self.holder) {
            tracing::warn!(installation = %id, %error, "export runner cannot take its installation over");
            return false;
        }
        tracing::info!(installation = %id, fencing_token = self.token, "export runner holds its installation");
        while !stop.load(Ordering::SeqCst) && !lost.load(Ordering::SeqCst) {
            let wait_until = match self.step() {
                Ok(Step::Worked) => continue,
                Ok(Step::Done) => return true,
                Ok(Step::WaitUntil(at)) => at,
                Err(StepError::State(error @ StateError::Fenced(_))) => {
                    tracing::warn!(installation = %id, %error, "export runner lost its installation to another node; its write was refused");
                    return false;
                }
                Err(error) => {
                    tracing::error!(installation = %id, %error, "export runner cannot read its state or its events; retrying");
                    self.open = None;
                    now_ms() + IDLE.as_millis() as i64
                }
            };
            let wait = Duration::from_millis(
                (wait_until - now_ms()).clamp(0, IDLE.as_millis() as i64) as u64,
            );
            self.source.wait(wait);
        }
        false
    }

    fn step(&mut self) -> Result<Step, StepError> {
        let now = now_ms();
        self.update_lag()?;
        let id = self.key.clone();
        if let Some(batch) = self.state.in_flight(&id)? {
            if batch.next_attempt_ms > now {
                return Ok(Step::WaitUntil(batch.next_attempt_ms));
            }
            self.send(batch)?;
            return Ok(Step::Worked);
        }
        if let Some(letter) = self.state.due_replay(&id, now)? {
            self.replay(letter)?;
            return Ok(Step::Worked);
        }
        let cursor = self.state.cursor(&id)?;
        let mut open = match self.open.take() {
            Some(open) if open.base == cursor => open,
            _ => OpenBatch::new(cursor),
        };
        let config = &self.installation.config;
        let installation = self.installation.clone();
        let mut full = open.events >= config.max_events || open.bytes >= config.max_bytes;
        // A backfill has read all it covers: the source has no more, or its events were stored
        // after the backfill began.
        let mut read_all = false;
        if !full {
            let wanted = config.max_events - open.events;
            let read = self.source.after(
                installation.team_id,
                &open.next,
                wanted,
                config.max_bytes - open.bytes,
            )?;
            read_all = read.len() < wanted;
            for event in read {
                // Only a batch's first event may exceed `max_bytes` on its own.
                if open.events > 0 && open.bytes + event.encoded.len() > config.max_bytes {
                    full = true;
                    read_all = false;
                    break;
                }
                if let Some(backfill) = &self.backfill
                    && event.stored_at_ms >= backfill.stored_before_ms
                {
                    read_all = true;
                    break;
                }
                let sent = self.sent(&event);
                open.push(event, sent);
            }
        }
        let finishing = self.backfill.is_some() && read_all;
        let Some((first, first_stored_at)) = open.first.clone() else {
            self.open = Some(open);
            if finishing {
                return Ok(Step::Done);
            }
            return Ok(Step::WaitUntil(now + IDLE.as_millis() as i64));
        };
        full |= open.events >= config.max_events || open.bytes >= config.max_bytes;
        let due = first_stored_at + (config.max_age_seconds * 1000) as i64;
        // A backfill does not wait for more: what it covers is all stored.
        if !full && due > now && self.backfill.is_none() {
            self.open = Some(open);
            return Ok(Step::WaitUntil(due));
        }
        // The range is durable before the plugin sees it: after a crash, this same batch is
        // sent again first.
        let mut batch = Batch::new(installation.team_id, first, open.next.clone(), now);
        if let Some(backfill) = &self.backfill {
            batch.id = format!("backfill-{}-{}", backfill.name, batch.id);
        }
        self.open = Some(OpenBatch::new(open.next.clone()));
        let count = open.writer.len() as u64;
        self.attempt(&mut batch, &open.writer.finish(), count)?;
        Ok(Step::Worked)
    }

    /// Whether `event` is sent: not ignored by the installation, and in the backfill's range
    /// if this is one.
    fn sent(&self, event: &StoredEvent) -> bool {
        !self
            .installation
            .config
            .events_to_ignore
            .contains(&event.event)
            && self.backfill.as_ref().is_none_or(|b| b.covers(event))
    }

    /// The events of `batch` it sends, read again from the source and encoded as one batch,
    /// with their count.
    fn reread(&mut self, batch: &Batch) -> Result<(Vec<u8>, u64), SourceError> {
        let mut writer = BatchWriter::default();
        for event in self
            .source
            .range(batch.team_id, &batch.first, &batch.last)?
        {
            if self.sent(&event) {
                writer.push_encoded(&event.encoded);
            }
        }
        let count = writer.len() as u64;
        Ok((writer.finish(), count))
    }

    /// One call of the plugin with `batch` (attempt `batch.attempts + 1`), after counting it.
    fn call(&mut self, batch: &Batch, encoded: &[u8]) -> Result<(), Failure> {
        let started = Instant::now();
        let instance = match &mut self.instance {
            Some(instance) => instance,
            slot @ None => {
                let installation = &self.installation;
                slot.insert(Instance::start(
                    &installation.plugin,
                    &installation.settings,
                )?)
            }
        };
        let descriptor = Descriptor {
            id: batch.id.clone(),
            team_id: batch.team_id,
            attempt: batch.attempts,
            created_at_ms: batch.created_at_ms,
            positions: (
                batch.first.as_str().parse().unwrap_or(0),
                batch.last.as_str().parse().unwrap_or(0),
            ),
        };
        let result = instance.export(&descriptor, encoded);
        metrics::histogram!("sluice_export_call_duration_seconds", "installation" => self.installation.id.to_string())
            .record(started.elapsed().as_secs_f64());
        if let Err(error) = &result
            && error.poisons_instance()
        {
            self.instance = None;
        }
        result.map_err(Failure::from)
    }

    /// Sends the batch in flight again (a retry, or after a restart).
    fn send(&mut self, mut batch: Batch) -> Result<(), StepError> {
        let (encoded, count) = self.reread(&batch)?;
        self.attempt(&mut batch, &encoded, count)
    }

    /// Records the next attempt of `batch` (its `count` events in `encoded`), calls the plugin
    /// (unless every event is ignored), and records what became of it.
    fn attempt(&mut self, batch: &mut Batch, encoded: &[u8], count: u64) -> Result<(), StepError> {
        let id = self.key.clone();
        if count > 0 {
            batch.attempts += 1;
            self.state.record(&id, batch, self.token)?;
            if batch.attempts > 1 {
                self.metrics.retries.increment(1);
            }
            if let Err(failure) = self.call(batch, encoded) {
                return Ok(self.failed(batch.clone(), failure)?);
            }
        }
        self.state.delivered(&id, batch, count, self.token)?;
        self.metrics.events.increment(count);
        self.metrics.batches.increment(1);
        self.pace(count);
        Ok(())
    }

    /// Holds a backfill to its rate, after `count` more events were sent.
    fn pace(&mut self, count: u64) {
        let Some(rate) = self.backfill.as_ref().and_then(|b| b.rate) else {
            return;
        };
        self.paced.0 += count;
        let due = Duration::from_secs_f64(self.paced.0 as f64 / rate.max(1) as f64);
        if let Some(wait) = due.checked_sub(self.paced.1.elapsed()) {
            std::thread::sleep(wait);
        }
    }

    fn failed(&mut self, mut batch: Batch, failure: Failure) -> Result<(), StateError> {
        let id = self.key.clone();
        let config = &self.installation.config;
        tracing::warn!(installation = %id, batch = %batch.id, attempt = batch.attempts, retryable = failure.retryable, "export failed: {}", failure.message);
        let context = &self.installation.settings.context;
        if failure.retryable && batch.attempts < config.max_attempts {
            log::record(
                context,
                Level::Warn,
                &format!(
                    "export of batch {} failed (attempt {} of {}), retrying: {}",
                    batch.id, batch.attempts, config.max_attempts, failure.message
                ),
            );
            batch.next_attempt_ms = now_ms()
                + backoff(
                    config.retry_base_seconds,
                    config.retry_max_seconds,
                    batch.attempts,
                );
            batch.last_error = Some(failure.message);
            return self.state.record(&id, &batch, self.token);
        }
        self.metrics.dead_letters.increment(1);
        tracing::error!(installation = %id, batch = %batch.id, attempts = batch.attempts, "export batch dead-lettered: {}", failure.message);
        log::record(
            context,
            Level::Error,
            &format!(
                "export of batch {} failed for good after {} attempts, moved to the export dead letters (`sluice exports replay`): {}",
                batch.id, batch.attempts, failure.message
            ),
        );
        self.state
            .dead_letter(&id, &batch, &failure.message, self.token)
    }

    /// Sends a dead-lettered batch again, removing it once delivered.
    fn replay(&mut self, mut batch: Batch) -> Result<(), StepError> {
        let id = self.key.clone();
        let (encoded, count) = self.reread(&batch)?;
        batch.attempts += 1;
        let result = if count == 0 {
            Ok(())
        } else {
            self.call(&batch, &encoded)
        };
        let config = &self.installation.config;
        match result {
            Ok(()) => {
                self.metrics.events.increment(count);
                self.metrics.batches.increment(1);
                tracing::info!(installation = %id, batch = %batch.id, "dead-lettered export batch replayed");
                Ok(self.state.replayed(&id, &batch, Ok(count), self.token)?)
            }
            Err(failure) => {
                let retry =
                    (failure.retryable && batch.attempts < config.max_attempts).then(|| {
                        now_ms()
                            + backoff(
                                config.retry_base_seconds,
                                config.retry_max_seconds,
                                batch.attempts,
                            )
                    });
                tracing::warn!(installation = %id, batch = %batch.id, "replay failed: {}", failure.message);
                Ok(self
                    .state
                    .replayed(&id, &batch, Err((&failure.message, retry)), self.token)?)
            }
        }
    }

    fn update_lag(&mut self) -> Result<(), StepError> {
        if self.lag_updated.is_some_and(|at| at.elapsed() < LAG_EVERY) {
            return Ok(());
        }
        self.lag_updated = Some(Instant::now());
        let cursor = self.state.cursor(&self.key)?;
        let lag = self.source.lag(self.installation.team_id, &cursor)?;
        self.metrics.lag_events.set(lag.events as f64);
        let seconds = lag.oldest_stored_at_ms.map_or(0, |t| (now_ms() - t).max(0));
        self.metrics.lag_seconds.set(seconds as f64 / 1e3);
        Ok(())
    }
}

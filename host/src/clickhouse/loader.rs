//! The loader: one member of the loaders' consumer group on the stored topics, inserting what it
//! reads into ClickHouse in batches, and committing the offsets only once ClickHouse has
//! acknowledged every insert of the batch.
//!
//! - **Batches** close at `batch_rows` rows, `batch_bytes` bytes or `batch_age` after their first
//!   row, whichever comes first; one `INSERT ... FORMAT JSONEachRow` per table, gzip-compressed.
//! - **ClickHouse down** (or refusing): the batch is dropped unacknowledged, the topics are read
//!   again from where it began, after a pause that doubles up to [`MAX_PAUSE_SECS`]. The topics keep
//!   everything meanwhile, so the loader catches up when ClickHouse is back; rows inserted
//!   before a failure are inserted again and replace themselves.
//! - **Killed or rebalanced**: what was not committed is read again by the partition's next
//!   owner; again, rows loaded twice are kept once.

use super::{ClickHouse, ClickHouseSettings, LoaderSettings, Table, Topics, rows};
use crate::kafka::{GroupConsumer, Offsets, Position};
use crate::retry;
use rdkafka::error::KafkaError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a poll waits when nothing is waiting to be inserted.
const POLL_WAIT: Duration = Duration::from_millis(200);
/// The longest pause between attempts while ClickHouse fails, in seconds (the first is about
/// one second, doubling from there).
const MAX_PAUSE_SECS: u64 = 10;

/// Where the loader reads and writes.
pub struct Loader {
    /// Brokers of the stored topics.
    pub brokers: String,
    /// How long a loader may go silent before its partitions move.
    pub session_timeout: Duration,
    /// The stored topics.
    pub topics: Topics,
    /// Where rows go.
    pub clickhouse: ClickHouseSettings,
    /// How inserts are batched.
    pub settings: LoaderSettings,
}

/// A running loader.
pub struct Running {
    /// Its thread, which ends once `stop` is set and its batch is inserted.
    pub thread: JoinHandle<()>,
    /// Its consumer lag (see [`GroupConsumer::lag`]).
    pub lag: Arc<AtomicI64>,
}

impl Loader {
    /// Joins the loaders' group and starts loading until `stop` is set.
    pub fn start(self, stop: Arc<AtomicBool>) -> anyhow::Result<Running> {
        let names: Vec<&str> = Table::ALL.iter().map(|t| self.topics.of(*t)).collect();
        let consumer = GroupConsumer::join(
            &self.brokers,
            &self.settings.group,
            &names,
            self.session_timeout,
        )?;
        let lag = consumer.lag();
        let thread = std::thread::Builder::new()
            .name("sluice-loader".into())
            .spawn(move || self.run(consumer, &stop))?;
        Ok(Running { thread, lag })
    }

    fn run(self, mut consumer: GroupConsumer, stop: &AtomicBool) {
        let clickhouse = match ClickHouse::new(&self.clickhouse) {
            Ok(clickhouse) => clickhouse,
            Err(error) => {
                tracing::error!(%error, "the loader cannot start its ClickHouse client");
                return;
            }
        };
        if !until_done(stop, 0, "create its tables", || clickhouse.create_tables()) {
            return;
        }
        let mut failures = 0;
        loop {
            let mut offsets = Offsets::default();
            let batch = match self.fill(&mut consumer, &mut offsets, stop) {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(%error, "the loader cannot read its topics; trying again");
                    failures += 1;
                    rewind(&mut consumer, failures, stop);
                    continue;
                }
            };
            if batch.rows == 0 {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                continue;
            }
            if let Err(error) = insert(&clickhouse, &batch) {
                metrics::counter!("sluice_loader_insert_failures_total").increment(1);
                tracing::warn!(%error, rows = batch.rows, "the loader's insert failed; reading the batch again after a pause");
                if stop.load(Ordering::SeqCst) {
                    // Not committed: the next loader inserts it.
                    return;
                }
                failures += 1;
                rewind(&mut consumer, failures, stop);
                continue;
            }
            failures = 0;
            if let Err(error) = consumer.commit(offsets) {
                // Inserted but not committed: read again and replaced by themselves.
                tracing::warn!(%error, "the loader cannot commit what it inserted");
            }
        }
    }

    /// Reads until the batch is full or old enough, or nothing comes while stopping.
    fn fill(
        &self,
        consumer: &mut GroupConsumer,
        offsets: &mut Offsets,
        stop: &AtomicBool,
    ) -> Result<Batch, KafkaError> {
        let mut batch = Batch::default();
        let mut first: Option<Instant> = None;
        loop {
            let wait = match first {
                None => POLL_WAIT,
                Some(at) => match self.settings.batch_age.checked_sub(at.elapsed()) {
                    Some(left) => left.min(POLL_WAIT),
                    None => return Ok(batch),
                },
            };
            let room = self.settings.batch_rows - batch.rows;
            let read = consumer.poll(room, wait, offsets, |position, payload| {
                batch.add(position, payload);
            })?;
            if read.is_empty() && (first.is_none() || stop.load(Ordering::SeqCst)) {
                return Ok(batch);
            }
            first = first.or_else(|| (!read.is_empty()).then(Instant::now));
            if batch.rows >= self.settings.batch_rows || batch.bytes >= self.settings.batch_bytes {
                return Ok(batch);
            }
        }
    }
}

/// Inserts each table's rows of `batch`.
fn insert(clickhouse: &ClickHouse, batch: &Batch) -> Result<(), super::ClickHouseError> {
    let started = Instant::now();
    for (table, rows) in &batch.tables {
        clickhouse.insert(*table, &rows.json)?;
        metrics::counter!("sluice_loader_rows_total", "table" => table.name())
            .increment(rows.count as u64);
    }
    metrics::histogram!("sluice_loader_insert_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("sluice_loader_batch_rows").record(batch.rows as f64);
    metrics::histogram!("sluice_loader_batch_bytes").record(batch.bytes as f64);
    Ok(())
}

/// Waits before reading again what was not committed (after `failures` in a row), and goes
/// back to it; never reads on before it went back (that would commit past rows not inserted).
fn rewind(consumer: &mut GroupConsumer, failures: u32, stop: &AtomicBool) {
    std::thread::sleep(pause(failures));
    until_done(stop, failures, "go back to what it did not insert", || {
        consumer.rewind()
    });
}

/// Calls `attempt` until it succeeds (`true`) or `stop` is set (`false`), pausing longer after
/// each failure, counted on from `failures`.
fn until_done<E: std::fmt::Display>(
    stop: &AtomicBool,
    mut failures: u32,
    what: &str,
    mut attempt: impl FnMut() -> Result<(), E>,
) -> bool {
    while let Err(error) = attempt() {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        tracing::warn!(%error, "the loader cannot {what} yet; trying again");
        failures += 1;
        std::thread::sleep(pause(failures));
    }
    true
}

/// The pause after `failures` failed attempts in a row.
fn pause(failures: u32) -> Duration {
    Duration::from_millis(retry::backoff(1, MAX_PAUSE_SECS, failures).unsigned_abs())
}

/// The rows of one table in a batch, one JSON object per line.
#[derive(Default)]
struct TableRows {
    json: Vec<u8>,
    count: usize,
}

/// What one insert round holds.
#[derive(Default)]
struct Batch {
    tables: BTreeMap<Table, TableRows>,
    rows: usize,
    bytes: usize,
}

impl Batch {
    fn add(&mut self, position: Position, payload: &[u8]) {
        let table = Table::ALL[position.topic];
        let Some(row) = rows::with_position(payload, position.partition, position.offset) else {
            // Not a row sluice produced: someone else wrote to the topic.
            metrics::counter!("sluice_loader_unreadable_total").increment(1);
            tracing::error!(
                table = table.name(),
                partition = position.partition,
                offset = position.offset,
                "a message on a stored topic is not a JSON row; left out of ClickHouse"
            );
            return;
        };
        let rows = self.tables.entry(table).or_default();
        rows.json.extend_from_slice(&row);
        rows.json.push(b'\n');
        rows.count += 1;
        self.rows += 1;
        self.bytes += row.len() + 1;
    }
}

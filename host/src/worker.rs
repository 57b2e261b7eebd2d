//! The worker: takes events from the queue in arrival order, runs each team's chain, stores the
//! result and removes the queue rows in one transaction.
//!
//! Events are split across `workers` lanes by a hash of `(team, distinct_id)`, so all events of
//! one user go through one lane, in order, while lanes run in parallel. Each lane owns a
//! [`ChainRunner`] whose plugin instances live as long as the worker.

use crate::chain::{ChainOutput, ChainRunner, Chains};
use crate::queue::Signal;
use crate::store;
use rusqlite::Connection;
use sluice_abi::wire::{BatchReader, Field};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the worker is set up.
pub struct WorkerSettings {
    /// Folder of the database.
    pub data_dir: PathBuf,
    /// Every team's chain.
    pub chains: Arc<Chains>,
    /// Parallel lanes.
    pub lanes: usize,
    /// Most live plugin instances across lanes.
    pub max_instances: usize,
    /// Most events taken per round.
    pub batch_events: usize,
    /// Events waiting in the queue (shared with capture).
    pub depth: Arc<AtomicU64>,
    /// Wakes the worker when the queue grows.
    pub signal: Arc<Signal>,
    /// Set to stop after the current round.
    pub stop: Arc<AtomicBool>,
}

/// Starts the worker thread.
pub fn start(settings: WorkerSettings) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sluice-worker".into())
        .spawn(move || run(settings))
}

struct Row {
    id: i64,
    team_id: u64,
    events: u64,
    payload: Vec<u8>,
}

fn run(settings: WorkerSettings) {
    let mut conn = loop {
        match store::open(&settings.data_dir) {
            Ok(conn) => break conn,
            Err(error) => {
                tracing::error!(%error, "worker cannot open the database; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    let lane_count = settings.lanes.max(1);
    let per_lane = settings.max_instances.div_ceil(lane_count);
    let mut lanes: Vec<ChainRunner> = (0..lane_count)
        .map(|_| ChainRunner::new(per_lane))
        .collect();
    let mut seen = settings.signal.generation();
    loop {
        let rows = match next_rows(&conn, settings.batch_events) {
            Ok(rows) => rows,
            Err(error) => {
                tracing::error!(%error, "worker cannot read the queue; retrying");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if rows.is_empty() {
            if settings.stop.load(Ordering::SeqCst) {
                break;
            }
            seen = settings.signal.wait(seen, Duration::from_millis(200));
            continue;
        }
        let started = Instant::now();
        let last_id = rows.last().map_or(0, |r| r.id);
        let taken: u64 = rows.iter().map(|r| r.events).sum();
        let Some(output) = process(&settings.chains, &mut lanes, rows) else {
            // A lane panicked (a host bug): its events were not processed, so nothing of this
            // round is committed and the same rows are taken again, by fresh plugin instances.
            tracing::error!("a worker lane panicked; retrying the round with fresh instances");
            metrics::counter!("sluice_worker_lane_panics_total").increment(1);
            lanes = (0..lane_count)
                .map(|_| ChainRunner::new(per_lane))
                .collect();
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        match commit(&mut conn, &output, last_id) {
            Ok(stored) => {
                settings.depth.fetch_sub(taken, Ordering::SeqCst);
                metrics::counter!("sluice_worker_events_in_total").increment(taken);
                metrics::counter!("sluice_store_events_total").increment(stored as u64);
                metrics::counter!("sluice_store_dead_letters_total")
                    .increment(output.dead_letters.len() as u64);
                metrics::histogram!("sluice_worker_round_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::gauge!("sluice_queue_depth_events")
                    .set(settings.depth.load(Ordering::SeqCst) as f64);
            }
            Err(error) => {
                // Nothing was removed from the queue: the same rows are processed again.
                tracing::error!(%error, "worker cannot store processed events; retrying the round");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    for lane in lanes {
        lane.teardown();
    }
}

fn next_rows(conn: &Connection, batch_events: usize) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn
        .prepare_cached("SELECT id, team_id, events, payload FROM queue ORDER BY id LIMIT 1000")?;
    let mut rows = stmt.query([])?;
    let mut taken = Vec::new();
    let mut events = 0;
    while let Some(row) = rows.next()? {
        let row = Row {
            id: row.get(0)?,
            team_id: row.get::<_, i64>(1)? as u64,
            events: row.get::<_, i64>(2)? as u64,
            payload: row.get(3)?,
        };
        events += row.events as usize;
        taken.push(row);
        if events >= batch_events {
            break;
        }
    }
    Ok(taken)
}

/// Splits rows into lanes and runs every lane's events through their teams' chains in parallel.
/// Returns `None` if a lane panicked, in which case nothing of the round may be committed.
fn process(chains: &Chains, lanes: &mut [ChainRunner], rows: Vec<Row>) -> Option<ChainOutput> {
    let lane_count = lanes.len();
    // Per lane: events grouped by team, in arrival order. Recordings skip the chains.
    let mut work: Vec<Vec<(u64, Vec<Vec<u8>>)>> = (0..lane_count).map(|_| Vec::new()).collect();
    let mut recordings = Vec::new();
    for row in &rows {
        let reader = match BatchReader::new(&row.payload) {
            Ok(reader) => reader,
            Err(error) => {
                corrupt_row(row, &error);
                continue;
            }
        };
        for raw in reader {
            let raw = match raw {
                Ok(raw) => raw,
                Err(error) => {
                    corrupt_row(row, &error);
                    break;
                }
            };
            let mut encoded = Vec::with_capacity(raw.body().len() + 4);
            encoded.extend_from_slice(&(raw.body().len() as u32).to_le_bytes());
            encoded.extend_from_slice(raw.body());
            if raw.text(Field::Event).ok().flatten() == Some(store::SNAPSHOT_EVENT) {
                recordings.push(encoded);
                continue;
            }
            let distinct_id = raw.text(Field::DistinctId).ok().flatten().unwrap_or("");
            let lane = lane_of(row.team_id, distinct_id, lane_count);
            let groups = &mut work[lane];
            match groups.iter_mut().find(|(team, _)| *team == row.team_id) {
                Some((_, events)) => events.push(encoded),
                None => groups.push((row.team_id, vec![encoded])),
            }
        }
    }
    let outputs: Vec<ChainOutput> = std::thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .iter_mut()
            .zip(work)
            .filter(|(_, groups)| !groups.is_empty())
            .map(|(runner, groups)| {
                scope.spawn(move || {
                    let mut out = ChainOutput::default();
                    for (team, events) in groups {
                        runner.run(chains.of(team), events, &mut out);
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok())
            .collect::<Option<Vec<_>>>()
    })?;
    let mut merged = ChainOutput {
        recordings,
        ..ChainOutput::default()
    };
    for out in outputs {
        merged.events.extend(out.events);
        merged.dead_letters.extend(out.dead_letters);
    }
    Some(merged)
}

fn corrupt_row(row: &Row, error: &sluice_abi::wire::WireError) {
    // Capture wrote this row itself, so this means disk corruption; keep it visible.
    tracing::error!(queue_row = row.id, team = row.team_id, %error, "corrupt queue row; its events cannot be read");
    metrics::counter!("sluice_queue_corrupt_rows_total").increment(1);
}

fn lane_of(team_id: u64, distinct_id: &str, lanes: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    (team_id, distinct_id).hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
}

fn commit(conn: &mut Connection, output: &ChainOutput, last_id: i64) -> rusqlite::Result<usize> {
    let tx = conn.transaction()?;
    store::insert_recordings(&tx, &output.recordings)?;
    let stored = store::commit_processed(&tx, &output.events, &output.dead_letters, last_id)?;
    tx.commit()?;
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::lane_of;

    #[test]
    fn a_user_always_lands_in_the_same_lane_and_users_spread() {
        let lanes: Vec<usize> = (0..1000).map(|i| lane_of(1, &format!("u{i}"), 4)).collect();
        let again: Vec<usize> = (0..1000).map(|i| lane_of(1, &format!("u{i}"), 4)).collect();
        assert_eq!(lanes, again);
        for lane in 0..4 {
            let count = lanes.iter().filter(|l| **l == lane).count();
            assert!((150..350).contains(&count), "lane {lane} got {count}");
        }
    }
}

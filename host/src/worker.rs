//! The worker: polls the ingest in arrival order, runs each team's chain, stores the result in
//! the sink and only then acknowledges the ingest (see the contracts in [`crate::ingest`] and
//! [`crate::sink`]).
//!
//! Events are split across `lanes` by a hash of `(team, distinct_id)`, so all events of one user
//! go through one lane, in order, while lanes run in parallel. Each lane owns a [`ChainRunner`]
//! whose plugin instances live as long as the worker.

use crate::chain::{ChainRunner, Chains};
use crate::ingest::{Ingest, Ingested};
use crate::signal::Signal;
use crate::sink::{Output, Sink};
use crate::store::SNAPSHOT_EVENT;
use sluice_abi::wire::{BatchReader, Field};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a poll waits for events before the worker checks whether it should stop.
const POLL_WAIT: Duration = Duration::from_millis(200);
/// How long the worker waits before retrying after the ingest or the sink failed.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// How the worker is set up.
pub struct WorkerSettings {
    /// Every team's chain.
    pub chains: Arc<Chains>,
    /// Parallel lanes.
    pub lanes: usize,
    /// Most live plugin instances across lanes.
    pub max_instances: usize,
    /// Most events taken per round.
    pub batch_events: usize,
    /// Set to stop once the ingest has nothing more.
    pub stop: Arc<AtomicBool>,
    /// Notified each time events are stored (export runners wait on it).
    pub stored: Arc<Signal>,
}

/// Starts the worker thread on `ingest` and `sink`.
pub fn start<I, S>(settings: WorkerSettings, ingest: I, sink: S) -> std::io::Result<JoinHandle<()>>
where
    I: Ingest + 'static,
    S: Sink + 'static,
{
    std::thread::Builder::new()
        .name("sluice-worker".into())
        .spawn(move || run(settings, ingest, sink))
}

fn new_lanes(settings: &WorkerSettings) -> Vec<ChainRunner> {
    let count = settings.lanes.max(1);
    let per_lane = settings.max_instances.div_ceil(count);
    (0..count).map(|_| ChainRunner::new(per_lane)).collect()
}

fn run<I: Ingest, S: Sink>(settings: WorkerSettings, mut ingest: I, mut sink: S) {
    let mut lanes = new_lanes(&settings);
    loop {
        let polled = match ingest.poll(settings.batch_events, POLL_WAIT) {
            Ok(Some(polled)) => polled,
            Ok(None) if settings.stop.load(Ordering::SeqCst) => break,
            Ok(None) => continue,
            Err(error) => {
                tracing::error!(%error, "worker cannot read the ingest; retrying");
                std::thread::sleep(RETRY_PAUSE);
                continue;
            }
        };
        let started = Instant::now();
        let Some(output) = process(&settings.chains, &mut lanes, &polled.batches) else {
            // A lane panicked (a host bug): its events were not processed, so nothing of this
            // round is stored and the same events are polled again, by fresh plugin instances.
            tracing::error!("a worker lane panicked; retrying the round with fresh instances");
            metrics::counter!("sluice_worker_lane_panics_total").increment(1);
            lanes = new_lanes(&settings);
            std::thread::sleep(RETRY_PAUSE);
            continue;
        };
        let mut receipt = polled.receipt;
        let stored = match sink.store(&output, &mut receipt) {
            Ok(stored) => stored,
            Err(error) => {
                // Nothing was acknowledged: the same events are polled and processed again.
                tracing::error!(%error, "worker cannot store processed events; retrying the round");
                std::thread::sleep(RETRY_PAUSE);
                continue;
            }
        };
        if stored.events > 0 {
            settings.stored.notify();
        }
        if let Err(error) = ingest.ack(receipt) {
            // Stored but not acknowledged: they come again and the sink keeps one copy.
            tracing::error!(%error, "worker cannot acknowledge stored events");
        }
        metrics::counter!("sluice_worker_events_in_total").increment(polled.events);
        metrics::counter!("sluice_store_events_total").increment(stored.events as u64);
        metrics::counter!("sluice_store_dead_letters_total")
            .increment(output.dead_letters.len() as u64);
        metrics::histogram!("sluice_worker_round_duration_seconds")
            .record(started.elapsed().as_secs_f64());
    }
    for lane in lanes {
        lane.teardown();
    }
}

/// Splits events into lanes and runs every lane's events through their teams' chains in
/// parallel. Returns `None` if a lane panicked, in which case nothing of the round may be stored.
fn process(chains: &Chains, lanes: &mut [ChainRunner], batches: &[Ingested]) -> Option<Output> {
    let lane_count = lanes.len();
    // Per lane: events grouped by team, in arrival order. Recordings skip the chains.
    let mut work: Vec<Vec<(u64, Vec<Vec<u8>>)>> = (0..lane_count).map(|_| Vec::new()).collect();
    let mut recordings = Vec::new();
    for batch in batches {
        let reader = match BatchReader::new(&batch.payload) {
            Ok(reader) => reader,
            Err(error) => {
                corrupt(batch, &error);
                continue;
            }
        };
        for raw in reader {
            let raw = match raw {
                Ok(raw) => raw,
                Err(error) => {
                    corrupt(batch, &error);
                    break;
                }
            };
            let mut encoded = Vec::with_capacity(raw.body().len() + 4);
            encoded.extend_from_slice(&(raw.body().len() as u32).to_le_bytes());
            encoded.extend_from_slice(raw.body());
            if raw.text(Field::Event).ok().flatten() == Some(SNAPSHOT_EVENT) {
                recordings.push(encoded);
                continue;
            }
            let distinct_id = raw.text(Field::DistinctId).ok().flatten().unwrap_or("");
            let lane = lane_of(batch.team_id, distinct_id, lane_count);
            let groups = &mut work[lane];
            match groups.iter_mut().find(|(team, _)| *team == batch.team_id) {
                Some((_, events)) => events.push(encoded),
                None => groups.push((batch.team_id, vec![encoded])),
            }
        }
    }
    let outputs: Vec<Output> = std::thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .iter_mut()
            .zip(work)
            .filter(|(_, groups)| !groups.is_empty())
            .map(|(runner, groups)| {
                scope.spawn(move || {
                    let mut out = Output::default();
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
    let mut merged = Output {
        recordings,
        ..Output::default()
    };
    for out in outputs {
        merged.events.extend(out.events);
        merged.dead_letters.extend(out.dead_letters);
    }
    Some(merged)
}

fn corrupt(batch: &Ingested, error: &sluice_abi::wire::WireError) {
    // Capture wrote this payload itself, so this means disk corruption; keep it visible.
    tracing::error!(position = batch.position, team = batch.team_id, %error, "corrupt ingested payload; its events cannot be read");
    metrics::counter!("sluice_queue_corrupt_rows_total").increment(1);
}

fn lane_of(team_id: u64, distinct_id: &str, lanes: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    (team_id, distinct_id).hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
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

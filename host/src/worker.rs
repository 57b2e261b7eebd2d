//! The worker: polls the ingest in arrival order, runs each team's chain, stores the result in
//! the sink and only then acknowledges the ingest (see the contracts in [`crate::ingest`] and
//! [`crate::sink`]).
//!
//! Events are split across `lanes` by a hash of `(team, distinct_id)`, so all events of one user
//! go through one lane, in order, while lanes run in parallel. Each lane owns a [`ChainRunner`]
//! whose plugin instances live as long as the worker.
//!
//! **One bad round never wedges the pipeline.** A lane that panics gets a fresh runner and its
//! events run again, split until the events it panics on are found. A round the sink refuses is
//! stored again a few times, then in parts, so that only the events that cannot be stored are
//! set aside, as dead letters with the reason, and the rest flows. A payload that cannot be read
//! at all is quarantined (`sluice quarantine`). Nothing is acknowledged that was not stored,
//! dead-lettered or quarantined; plugins never run a round twice because the sink failed.

use crate::chain::{ChainRunner, Chains};
use crate::deployment::Current;
use crate::deployment::Deployment;
use crate::ingest::{Ingest, Ingested, Receipt};
use crate::shadow::Sampled;
use crate::signal::Signal;
use crate::sink::{DeadLetter, Output, Quarantined, Sink, Stored};
use crate::store::SNAPSHOT_EVENT;
use sluice_abi::wire::{BatchReader, Field};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a poll waits for events before the worker checks whether it should stop.
const POLL_WAIT: Duration = Duration::from_millis(200);
/// How long the worker waits before reading the ingest again after it failed.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Attempts to store a round whole before looking for what in it cannot be stored.
const STORE_ATTEMPTS: u32 = 3;
/// The pause after the first failed attempt to store; it doubles up to [`MAX_STORE_PAUSE`].
const STORE_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between attempts to store while the sink is unavailable.
const MAX_STORE_PAUSE: Duration = Duration::from_secs(5);
/// The installation named in dead letters the worker itself writes.
const WORKER: &str = "(worker)";
/// The installation named in dead letters of events the sink refused.
const SINK: &str = "(sink)";

/// How the worker is set up.
pub struct WorkerSettings {
    /// The deployment in force, whose chains each round runs (read once per round).
    pub deployment: Arc<Current>,
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

impl WorkerSettings {
    fn lane_count(&self) -> usize {
        self.lanes.max(1)
    }

    fn new_lane(&self) -> ChainRunner {
        ChainRunner::new(self.max_instances.div_ceil(self.lane_count()))
    }
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

fn run<I: Ingest, S: Sink>(settings: WorkerSettings, mut ingest: I, mut sink: S) {
    let mut lanes: Vec<ChainRunner> = (0..settings.lane_count())
        .map(|_| settings.new_lane())
        .collect();
    let mut last = settings.deployment.get();
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
        // The whole round runs on one deployment: each event sees one version of its chain.
        let deployment = settings.deployment.get();
        if !Arc::ptr_eq(&deployment, &last) {
            // A reload: instances of installations it removed or changed go.
            for lane in &mut lanes {
                lane.retain(&deployment.chains);
            }
            last = deployment.clone();
        }
        let output = process(&settings, &deployment, &mut lanes, &polled.batches);
        let mut receipt = polled.receipt;
        let Some(stored) = store(&mut sink, output, &mut receipt, &settings.stop) else {
            // Stopping while the sink is down: the round stays in the ingest for the next start.
            break;
        };
        if stored.events > 0 {
            settings.stored.notify();
        }
        if let Err(error) = ingest.ack(receipt) {
            // Stored but not acknowledged: they come again and the sink keeps one copy.
            tracing::error!(%error, "worker cannot acknowledge stored events");
        }
        metrics::counter!("sluice_worker_events_in_total").increment(polled.events);
        metrics::histogram!("sluice_worker_round_duration_seconds")
            .record(started.elapsed().as_secs_f64());
    }
    for lane in lanes {
        lane.teardown();
    }
}

/// What a round's events are, split for processing: per lane, events grouped by team in
/// arrival order; recordings, which skip the chains; payloads that cannot be read.
struct Work {
    lanes: Vec<Vec<(u64, Vec<Vec<u8>>)>>,
    recordings: Vec<Vec<u8>>,
    quarantined: Vec<Quarantined>,
}

/// Splits `batches` into lanes by `(team, distinct_id)`. A payload whose events cannot all be
/// framed is quarantined whole, none of its events processed.
fn split(batches: &[Ingested], lane_count: usize) -> Work {
    let mut work = Work {
        lanes: (0..lane_count).map(|_| Vec::new()).collect(),
        recordings: Vec::new(),
        quarantined: Vec::new(),
    };
    for batch in batches {
        let raws = match BatchReader::new(&batch.payload)
            .and_then(|reader| reader.collect::<Result<Vec<_>, _>>())
        {
            Ok(raws) => raws,
            Err(error) => {
                // Capture wrote this payload itself, so this means damaged storage.
                tracing::error!(position = batch.position, team = batch.team_id, %error, "an ingested payload cannot be read; quarantined (see `sluice quarantine`)");
                metrics::counter!("sluice_queue_quarantined_total").increment(1);
                work.quarantined.push(Quarantined {
                    position: batch.position.to_string(),
                    team_id: batch.team_id,
                    events: batch.events,
                    payload: batch.payload.clone(),
                    error: error.to_string(),
                });
                continue;
            }
        };
        for raw in raws {
            let encoded = framed(raw.body());
            if raw.text(Field::Event).ok().flatten() == Some(SNAPSHOT_EVENT) {
                work.recordings.push(encoded);
                continue;
            }
            let distinct_id = raw.text(Field::DistinctId).ok().flatten().unwrap_or("");
            let groups = &mut work.lanes[lane_of(batch.team_id, distinct_id, lane_count)];
            match groups.iter_mut().find(|(team, _)| *team == batch.team_id) {
                Some((_, events)) => events.push(encoded),
                None => groups.push((batch.team_id, vec![encoded])),
            }
        }
    }
    work
}

/// An event's `body` with its length prefix, as chains take events.
pub fn framed(body: &[u8]) -> Vec<u8> {
    let mut encoded = Vec::with_capacity(body.len() + 4);
    encoded.extend_from_slice(&(body.len() as u32).to_le_bytes());
    encoded.extend_from_slice(body);
    encoded
}

/// Whether `encoded` (an event in the chain's form) is a session-recording event, which skips
/// the chains.
pub fn is_recording(encoded: &[u8]) -> bool {
    sluice_abi::wire::parse_encoded(encoded)
        .is_ok_and(|raw| raw.text(Field::Event).ok().flatten() == Some(SNAPSHOT_EVENT))
}

/// Runs every lane's events through their teams' chains in parallel. A lane that panics (a host
/// bug) gets a fresh runner and its events run again on their own, split until the events it
/// panics on are found; those are dead-lettered and the rest of the round goes on.
fn process(
    settings: &WorkerSettings,
    deployment: &Deployment,
    lanes: &mut [ChainRunner],
    batches: &[Ingested],
) -> Output {
    let chains = &deployment.chains;
    let work = split(batches, lanes.len());
    let sampled: Vec<Sampled> = match &deployment.shadows {
        Some(shadows) => work.lanes.iter().flat_map(|g| shadows.sample(g)).collect(),
        None => Vec::new(),
    };
    let mut merged = Output {
        recordings: work.recordings,
        quarantined: work.quarantined,
        ..Output::default()
    };
    let results: Vec<Option<Output>> = std::thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .iter_mut()
            .zip(work.lanes)
            .map(|(runner, groups)| {
                (!groups.is_empty()).then(|| {
                    scope.spawn(move || {
                        let mut out = Output::default();
                        for (team, events) in groups {
                            runner.run(chains.of(team), events, &mut out);
                        }
                        out
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.map_or_else(|| Some(Output::default()), |h| h.join().ok()))
            .collect()
    });
    let mut again = None;
    for (lane, result) in results.into_iter().enumerate() {
        let out = result.unwrap_or_else(|| {
            tracing::error!(
                lane,
                "a worker lane panicked; running its events again on their own"
            );
            metrics::counter!("sluice_worker_lane_panics_total").increment(1);
            lanes[lane] = settings.new_lane();
            // The lane's events were moved into the thread that panicked; they are split again
            // from the round, which is still held.
            let groups = again
                .get_or_insert_with(|| split(batches, lanes.len()).lanes)
                .get_mut(lane)
                .map(std::mem::take)
                .unwrap_or_default();
            let mut out = Output::default();
            for (team, events) in groups {
                isolate(settings, chains, &mut lanes[lane], team, events, &mut out);
            }
            out
        });
        merged.events.extend(out.events);
        merged.dead_letters.extend(out.dead_letters);
    }
    if let Some(shadows) = &deployment.shadows {
        shadows.submit(sampled, &merged);
    }
    merged
}

/// Runs `events` of `team` on `runner`, catching a panic; on a panic, runs each half again on a
/// fresh runner, down to single events, which are dead-lettered with the panic's message.
fn isolate(
    settings: &WorkerSettings,
    chains: &Chains,
    runner: &mut ChainRunner,
    team: u64,
    events: Vec<Vec<u8>>,
    out: &mut Output,
) {
    let chain = chains.of(team);
    let attempt = events.clone();
    let mut part = Output::default();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runner.run(chain, attempt, &mut part)
    }));
    let Err(panic) = caught else {
        out.events.extend(part.events);
        out.dead_letters.extend(part.dead_letters);
        return;
    };
    *runner = settings.new_lane();
    if let [event] = &events[..] {
        let message = panic_message(panic.as_ref());
        out.dead_letters.push(DeadLetter {
            installation: WORKER.into(),
            encoded: event.clone(),
            error: format!("the worker panicked processing this event: {message}"),
            backtrace: None,
        });
        return;
    }
    let mut first = events;
    let second = first.split_off(first.len() / 2);
    isolate(settings, chains, runner, team, first, out);
    isolate(settings, chains, runner, team, second, out);
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// A receipt that settles nothing: for storing parts of a round before the round is settled,
/// and for what is stored without an ingest (imports).
pub(crate) struct Unsettled;

impl Receipt for Unsettled {}

/// Stores `output` and settles `receipt`. Tries the whole output [`STORE_ATTEMPTS`] times; if
/// it still fails while the sink itself works, stores it in parts, halving those that fail, and
/// dead-letters the events that cannot be stored on their own, with the sink's reason. While the
/// sink stores nothing at all, waits with backoff (plugins never run the round again). Returns
/// `None` only if `stop` is set while the sink is unavailable.
fn store<S: Sink>(
    sink: &mut S,
    output: Output,
    receipt: &mut dyn Receipt,
    stop: &AtomicBool,
) -> Option<Stored> {
    store_or_split(sink, output, receipt, stop, true)
}

/// [`store`], splitting the output at most once (`split`): what is left after a split (dead
/// letters, quarantined payloads and the receipt) is retried whole until it is stored.
fn store_or_split<S: Sink>(
    sink: &mut S,
    mut output: Output,
    receipt: &mut dyn Receipt,
    stop: &AtomicBool,
    split: bool,
) -> Option<Stored> {
    let mut pause = STORE_PAUSE;
    let mut attempts = 0;
    loop {
        match sink.store(&output, receipt) {
            Ok(stored) => {
                count(&output, stored);
                return Some(stored);
            }
            Err(error) => {
                attempts += 1;
                tracing::error!(%error, attempts, "worker cannot store processed events");
                metrics::counter!("sluice_store_failures_total").increment(1);
            }
        }
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(MAX_STORE_PAUSE);
        if split
            && attempts >= STORE_ATTEMPTS
            && sink.store(&Output::default(), &mut Unsettled).is_ok()
        {
            break;
        }
    }
    // The sink works, yet not with this output: find what in it cannot be stored.
    let mut stored = Stored::default();
    let events = std::mem::take(&mut output.events);
    stored.events = store_parts(sink, events, false, &mut output.dead_letters);
    let recordings = std::mem::take(&mut output.recordings);
    stored.recordings = store_parts(sink, recordings, true, &mut output.dead_letters);
    let settled = store_or_split(sink, output, receipt, stop, false)?;
    Some(Stored {
        events: stored.events + settled.events,
        recordings: stored.recordings + settled.recordings,
    })
}

/// Stores `items` (events, or recordings if `recordings`) without a receipt, halving what fails;
/// an item that fails alone becomes a dead letter. Returns how many were new.
fn store_parts<S: Sink>(
    sink: &mut S,
    items: Vec<Vec<u8>>,
    recordings: bool,
    dead_letters: &mut Vec<DeadLetter>,
) -> usize {
    if items.is_empty() {
        return 0;
    }
    let part = if recordings {
        Output {
            recordings: items,
            ..Output::default()
        }
    } else {
        Output {
            events: items,
            ..Output::default()
        }
    };
    let error = match sink.store(&part, &mut Unsettled) {
        Ok(stored) => return stored.events + stored.recordings,
        Err(error) => error,
    };
    let mut items = if recordings {
        part.recordings
    } else {
        part.events
    };
    if items.len() == 1 {
        tracing::error!(%error, "an event cannot be stored; dead-lettered");
        metrics::counter!("sluice_store_refused_events_total").increment(1);
        dead_letters.push(DeadLetter {
            installation: SINK.into(),
            encoded: items.remove(0),
            error: format!("cannot be stored: {error}"),
            backtrace: None,
        });
        return 0;
    }
    let second = items.split_off(items.len() / 2);
    store_parts(sink, items, recordings, dead_letters)
        + store_parts(sink, second, recordings, dead_letters)
}

fn count(output: &Output, stored: Stored) {
    metrics::counter!("sluice_store_events_total").increment(stored.events as u64);
    metrics::counter!("sluice_store_dead_letters_total")
        .increment(output.dead_letters.len() as u64);
}

fn lane_of(team_id: u64, distinct_id: &str, lanes: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    (team_id, distinct_id).hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::SinkError;

    fn event(n: u8, name: &str) -> Vec<u8> {
        crate::sink::test_event(1, n, name)
    }

    fn name(encoded: &[u8]) -> String {
        let raw = sluice_abi::wire::parse_encoded(encoded).unwrap();
        raw.text(Field::Event).unwrap().unwrap().to_owned()
    }

    /// A sink that is down for its first `down` calls, then refuses any output holding an
    /// event called `poison`, and otherwise keeps what it is given.
    #[derive(Default)]
    struct FakeSink {
        down: usize,
        calls: usize,
        stored: Vec<String>,
        dead_letters: Vec<DeadLetter>,
    }

    impl Sink for FakeSink {
        fn store(&mut self, output: &Output, _: &mut dyn Receipt) -> Result<Stored, SinkError> {
            self.calls += 1;
            let refused = || SinkError::Refused("not UTF-8".into());
            if self.calls <= self.down {
                return Err(refused());
            }
            let names: Vec<String> = output.events.iter().map(|e| name(e)).collect();
            if names.iter().any(|n| n == "poison") {
                return Err(refused());
            }
            self.stored.extend(names.iter().cloned());
            self.dead_letters
                .extend(output.dead_letters.iter().cloned());
            Ok(Stored {
                events: names.len(),
                recordings: 0,
            })
        }
    }

    fn output(names: &[&str]) -> Output {
        Output {
            events: names
                .iter()
                .enumerate()
                .map(|(i, n)| event(i as u8, n))
                .collect(),
            ..Output::default()
        }
    }

    #[test]
    fn a_round_the_sink_refuses_is_split_and_only_what_cannot_be_stored_is_set_aside() {
        let mut names = vec!["ok"; 64];
        names[37] = "poison";
        let mut sink = FakeSink::default();
        let stored = store(
            &mut sink,
            output(&names),
            &mut Unsettled,
            &AtomicBool::new(false),
        );
        assert_eq!(stored.map(|s| s.events), Some(63));
        assert_eq!(sink.stored, vec!["ok"; 63]);
        let [letter] = &sink.dead_letters[..] else {
            panic!("{:?}", sink.dead_letters)
        };
        assert_eq!(letter.installation, SINK);
        assert_eq!(name(&letter.encoded), "poison");
        assert!(
            letter.error.starts_with("cannot be stored: "),
            "{}",
            letter.error
        );
        // A few whole attempts, then about two calls per halving.
        assert!(sink.calls < 40, "{} calls", sink.calls);
    }

    #[test]
    fn while_the_sink_is_down_the_round_waits_whole_and_nothing_is_set_aside() {
        let mut sink = FakeSink {
            down: 6,
            ..FakeSink::default()
        };
        let stored = store(
            &mut sink,
            output(&["a", "b", "c"]),
            &mut Unsettled,
            &AtomicBool::new(false),
        );
        assert_eq!(stored.map(|s| s.events), Some(3));
        assert_eq!(sink.stored, ["a", "b", "c"]);
        assert!(sink.dead_letters.is_empty());
    }

    #[test]
    fn stopping_while_the_sink_is_down_leaves_the_round_in_the_ingest() {
        let mut sink = FakeSink {
            down: usize::MAX,
            ..FakeSink::default()
        };
        let stored = store(
            &mut sink,
            output(&["a"]),
            &mut Unsettled,
            &AtomicBool::new(true),
        );
        assert_eq!(stored, None);
        assert!(sink.stored.is_empty());
    }

    #[test]
    fn an_unreadable_payload_is_quarantined_whole() {
        let mut good = sluice_abi::wire::BatchWriter::with_capacity(256);
        good.push_encoded(&event(1, "fine"));
        let batches = [
            Ingested {
                position: "1".into(),
                team_id: 1,
                events: 2,
                payload: b"\x02\x00\x00\x00broken".to_vec(),
            },
            Ingested {
                position: "2".into(),
                team_id: 1,
                events: 1,
                payload: good.finish(),
            },
        ];
        let work = split(&batches, 2);
        let [quarantined] = &work.quarantined[..] else {
            panic!("{:?}", work.quarantined)
        };
        assert_eq!(
            (quarantined.position.as_str(), quarantined.events),
            ("1", 2)
        );
        let events: usize = work.lanes.iter().flatten().map(|(_, e)| e.len()).sum();
        assert_eq!(events, 1);
    }

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

//! The journal of an instance's host calls: every capability call, clock reading and random
//! draw with its answer, kept while an installation asks for failure bundles, and played back
//! to re-run a bundle deterministically (`sluice debug replay`).
//!
//! A journal that is off costs one branch per host call. Recording keeps what `setup` asked
//! apart from what the current call asked (each call starts a new list), so a failure's bundle
//! holds exactly what a fresh instance needs to fail the same way. Playing back answers each
//! call from the record, in order; a call that differs from the record (another function, other
//! arguments) is a divergence, noted, and answered by the host as it is.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Most calls recorded per call (and for `setup`); the rest are counted, not kept.
const MAX_ENTRIES: usize = 20_000;

/// Header names whose values never reach a journal.
const SECRET_HEADERS: [&str; 5] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-api-key",
    "set-cookie",
];

/// One host call and its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// `interface.function`, e.g. `storage.get`, `clock.wall`, `random`.
    pub op: String,
    /// Its arguments.
    pub args: Value,
    /// What the host answered.
    pub answer: Value,
}

/// What an instance asked the host: in `setup`, then in the call that failed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    /// The calls `setup` made.
    pub setup: Vec<Entry>,
    /// The calls of the last call.
    pub call: Vec<Entry>,
    /// Calls made beyond what was kept.
    pub dropped: u64,
    /// The seed `wasi:random/insecure-seed` answered.
    pub insecure_seed: u128,
}

#[derive(Debug)]
enum Mode {
    Record,
    Replay(VecDeque<Entry>),
}

#[derive(Debug)]
struct State {
    mode: Mode,
    recorded: Recorded,
    in_call: bool,
    divergence: Option<String>,
}

/// An instance's journal; clones share it (the WASI clocks and generators hold one).
#[derive(Debug, Clone, Default)]
pub struct Journal(Option<Arc<Mutex<State>>>);

impl Journal {
    /// A journal that records nothing.
    pub fn off() -> Self {
        Self(None)
    }

    /// A journal that records every call.
    pub fn recording() -> Self {
        Self::with(Mode::Record, rand::random())
    }

    /// A journal that answers from `recorded` (setup's calls first, then the call's).
    pub fn replaying(recorded: &Recorded) -> Self {
        let entries = recorded.setup.iter().chain(&recorded.call).cloned();
        Self::with(Mode::Replay(entries.collect()), recorded.insecure_seed)
    }

    fn with(mode: Mode, insecure_seed: u128) -> Self {
        Self(Some(Arc::new(Mutex::new(State {
            mode,
            recorded: Recorded {
                insecure_seed,
                ..Recorded::default()
            },
            in_call: false,
            divergence: None,
        }))))
    }

    fn state(&self) -> Option<MutexGuard<'_, State>> {
        self.0
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether it records or plays back.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// The seed the instance's insecure generator answers with, when on.
    pub fn insecure_seed(&self) -> Option<u128> {
        self.state().map(|s| s.recorded.insecure_seed)
    }

    /// Starts a call (after `setup`): what follows is recorded as that call's.
    pub fn begin_call(&self) {
        if let Some(mut state) = self.state() {
            state.in_call = true;
            state.recorded.call.clear();
        }
    }

    /// What was recorded so far.
    pub fn recorded(&self) -> Option<Recorded> {
        self.state().map(|s| s.recorded.clone())
    }

    /// The first call that differed from the record being played back, if any.
    pub fn divergence(&self) -> Option<String> {
        self.state().and_then(|s| s.divergence.clone())
    }

    /// Calls played back so far that the run did not ask for.
    pub fn unplayed(&self) -> usize {
        self.state().map_or(0, |s| match &s.mode {
            Mode::Replay(left) => left.len(),
            Mode::Record => 0,
        })
    }

    /// Answers host call `op` with `args`: by `host` (recorded when recording), or from the
    /// record when playing back.
    pub fn call<A: Serialize, T: Serialize + DeserializeOwned>(
        &self,
        op: &str,
        args: A,
        host: impl FnOnce() -> T,
    ) -> T {
        let Some(mut state) = self.state() else {
            return host();
        };
        let args = redacted(serde_json::to_value(args).unwrap_or(Value::Null));
        if let Mode::Replay(entries) = &mut state.mode {
            let next = entries.pop_front();
            match next {
                Some(entry) if entry.op == op && entry.args == args => {
                    if let Ok(answer) = serde_json::from_value(entry.answer) {
                        return answer;
                    }
                    note(
                        &mut state,
                        format!("the recorded answer of `{op}` cannot be read"),
                    );
                }
                Some(entry) => note(
                    &mut state,
                    format!(
                        "the run called `{op}` with {args} where the record has `{}` with {}",
                        entry.op, entry.args
                    ),
                ),
                None => note(
                    &mut state,
                    format!("the run called `{op}` with {args} after the record ended"),
                ),
            }
            drop(state);
            return host();
        }
        drop(state);
        let answer = host();
        if let Some(mut state) = self.state() {
            let value = serde_json::to_value(&answer).unwrap_or(Value::Null);
            let in_call = state.in_call;
            let recorded = &mut state.recorded;
            let list = if in_call {
                &mut recorded.call
            } else {
                &mut recorded.setup
            };
            if list.len() < MAX_ENTRIES {
                list.push(Entry {
                    op: op.to_owned(),
                    args,
                    answer: value,
                });
            } else {
                recorded.dropped += 1;
            }
        }
        answer
    }

    /// The WASI clocks and generators of an instance with this journal, when it is on.
    pub fn wasi(&self, builder: &mut wasmtime_wasi::WasiCtxBuilder) {
        let Some(seed) = self.insecure_seed() else {
            return;
        };
        builder
            .wall_clock(Wall(self.clone()))
            .monotonic_clock(Monotonic(self.clone(), std::time::Instant::now()))
            .secure_random(Random(self.clone(), "random"))
            .insecure_random(Random(self.clone(), "random.insecure"))
            .insecure_random_seed(seed);
    }
}

fn note(state: &mut State, divergence: String) {
    state.divergence.get_or_insert(divergence);
}

/// `args` with the values of secret HTTP headers replaced.
fn redacted(mut args: Value) -> Value {
    if let Some(headers) = args.get_mut("headers").and_then(Value::as_array_mut) {
        for header in headers {
            if let Some([name, value]) = header.as_array_mut().map(Vec::as_mut_slice)
                && name
                    .as_str()
                    .is_some_and(|n| SECRET_HEADERS.contains(&n.to_ascii_lowercase().as_str()))
            {
                *value = Value::from("[redacted]");
            }
        }
    }
    args
}

/// `wasi:clocks/wall-clock` through a journal.
struct Wall(Journal);

impl wasmtime_wasi::HostWallClock for Wall {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        self.0.call("clock.wall", (), || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
        })
    }
}

/// `wasi:clocks/monotonic-clock` through a journal, counted from the instance's start.
struct Monotonic(Journal, std::time::Instant);

impl wasmtime_wasi::HostMonotonicClock for Monotonic {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        let start = self.1;
        self.0.call("clock.monotonic", (), || {
            u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
        })
    }
}

/// `wasi:random` through a journal.
struct Random(Journal, &'static str);

impl rand_core::TryRng for Random {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut bytes = [0; 4];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut bytes = [0; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        let drawn: Vec<u8> = self.0.call(self.1, dst.len(), || {
            let mut bytes = vec![0; dst.len()];
            rand::fill(&mut bytes[..]);
            bytes
        });
        let n = drawn.len().min(dst.len());
        dst[..n].copy_from_slice(&drawn[..n]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_plays_back_its_answers_and_notes_where_a_run_differs() {
        let journal = Journal::recording();
        assert_eq!(journal.call("storage.get", "a", || Some(1)), Some(1));
        journal.begin_call();
        assert_eq!(journal.call("storage.get", "b", || Some(2)), Some(2));
        let recorded = journal.recorded().unwrap();
        assert_eq!((recorded.setup.len(), recorded.call.len()), (1, 1));

        let replay = Journal::replaying(&recorded);
        assert_eq!(replay.call("storage.get", "a", || Some(9)), Some(1));
        assert_eq!(replay.call("storage.get", "b", || Some(9)), Some(2));
        assert_eq!(replay.divergence(), None);
        assert_eq!(replay.call("storage.get", "c", || Some(9)), Some(9));
        assert!(
            replay
                .divergence()
                .unwrap()
                .contains("after the record ended")
        );

        let other = Journal::replaying(&recorded);
        assert_eq!(other.call("cache.get", "a", || None::<i32>), None);
        assert!(other.divergence().unwrap().contains("`storage.get`"));
        assert_eq!(Journal::off().call("x", (), || 3), 3);
    }

    #[test]
    fn secret_headers_are_redacted() {
        let journal = Journal::recording();
        let args = serde_json::json!({"url": "u", "headers": [["Authorization", "Bearer x"], ["accept", "a"]]});
        journal.call("http.fetch", &args, || 1);
        let entry = &journal.recorded().unwrap().setup[0];
        assert_eq!(
            entry.args["headers"],
            serde_json::json!([["Authorization", "[redacted]"], ["accept", "a"]])
        );
    }
}

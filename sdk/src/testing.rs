//! A native test harness: run a plugin's logic under plain `cargo test`, no wasm involved.
//!
//! The harness validates config against the manifest exactly as the host does, calls `setup`,
//! and runs events through the same batch encoding the host uses, so what passes here behaves
//! the same inside sluice.
//!
//! `sdk/README.md` shows it in use; `sdk/examples/tagger.rs` is that code, compiled and tested.

use crate::event::format_uuid;
use crate::host::Level;
use crate::{Config, EventBuf, Outcome, Plugin, PluginError, Transform, process_batch};
use serde_json::{Map, Value};
use sluice_abi::wire::{self, BatchWriter};
use std::cell::RefCell;

/// Something a plugin sent to the host while running under the harness.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// A log line.
    Log(Level, String),
    /// A counter increment.
    Counter(String, u64),
    /// A histogram observation.
    Histogram(String, f64),
}

thread_local! {
    static RECORDED: RefCell<Vec<Recorded>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn record(item: Recorded) {
    RECORDED.with_borrow_mut(|r| r.push(item));
}

/// Runs one plugin natively.
#[derive(Debug)]
pub struct Harness<T> {
    plugin: T,
}

impl<T: Plugin> Harness<T> {
    /// Validates `config` (a JSON object) against the manifest, then runs `setup`.
    pub fn new(config: Value) -> Result<Self, PluginError> {
        let manifest = T::manifest();
        let invalid = |problems: Vec<sluice_abi::manifest::Problem>| {
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            PluginError::new(text.join("; "))
        };
        manifest.validate().map_err(invalid)?;
        let Value::Object(given) = config else {
            return Err(PluginError::new("config must be a JSON object"));
        };
        let resolved = manifest.resolve_config(&given).map_err(invalid)?;
        Ok(Self {
            plugin: T::setup(&Config::new(resolved))?,
        })
    }

    /// The plugin, for inspecting its state.
    pub fn plugin(&mut self) -> &mut T {
        &mut self.plugin
    }

    /// Takes what the plugin logged and counted since the last call.
    pub fn take_recorded(&mut self) -> Vec<Recorded> {
        RECORDED.with_borrow_mut(std::mem::take)
    }
}

impl<T: Transform> Harness<T> {
    /// Runs one event through the plugin.
    pub fn transform(&mut self, event: TestEvent) -> Outcome {
        match self.transform_batch(vec![event]) {
            Ok(mut outcomes) => outcomes.remove(0),
            Err(error) => Outcome::Error(error),
        }
    }

    /// Runs a batch through the plugin's encoded path and decodes the outcomes.
    pub fn transform_batch(&mut self, events: Vec<TestEvent>) -> Result<Vec<Outcome>, PluginError> {
        let mut batch = BatchWriter::default();
        let mut encoded = Vec::new();
        for event in &events {
            encoded.clear();
            event.0.encode_into(&mut encoded)?;
            batch.push_encoded(&encoded);
        }
        let count = events.len();
        let bytes = process_batch(&mut self.plugin, &batch.finish())?;
        let outcomes =
            wire::read_outcomes(&bytes, count).map_err(|e| PluginError::new(e.to_string()))?;
        outcomes.into_iter().map(decode_outcome).collect()
    }
}

fn decode_outcome(outcome: wire::Outcome<'_>) -> Result<Outcome, PluginError> {
    Ok(match outcome {
        wire::Outcome::Keep => Outcome::Keep,
        wire::Outcome::Drop(reason) => Outcome::Drop(reason.to_owned().into()),
        wire::Outcome::Error { message, retryable } => Outcome::Error(PluginError {
            message: message.to_owned(),
            retryable,
        }),
        wire::Outcome::Replace(encoded) => {
            let raw = wire::parse_encoded(encoded).map_err(|e| PluginError::new(e.to_string()))?;
            Outcome::Replace(crate::Event::new(raw).to_buf()?)
        }
    })
}

/// An event to feed the harness, built field by field.
#[derive(Debug, Clone, PartialEq)]
pub struct TestEvent(EventBuf);

impl TestEvent {
    /// An event called `name` with distinct id `user`, team 1, empty properties.
    pub fn new(name: &str) -> Self {
        Self(EventBuf {
            uuid: [0x11; 16],
            team_id: 1,
            timestamp_ms: 1_700_000_000_000,
            event: name.to_owned(),
            distinct_id: "user".to_owned(),
            ip: None,
            properties: Map::new(),
            set: None,
            set_once: None,
        })
    }

    /// Sets the distinct id.
    pub fn distinct_id(mut self, id: &str) -> Self {
        self.0.distinct_id = id.to_owned();
        self
    }

    /// Sets the client IP.
    pub fn ip(mut self, ip: &str) -> Self {
        self.0.ip = Some(ip.to_owned());
        self
    }

    /// Sets one property.
    pub fn property(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.properties.insert(key.to_owned(), value.into());
        self
    }

    /// Sets the team id.
    pub fn team_id(mut self, team_id: u64) -> Self {
        self.0.team_id = team_id;
        self
    }

    /// The event as the plugin would return it unchanged, for comparing with a `Replace`.
    pub fn into_buf(self) -> EventBuf {
        self.0
    }

    /// The UUID as text.
    pub fn uuid(&self) -> String {
        format_uuid(self.0.uuid)
    }
}

//! The native harness enforces what the host enforces: capabilities a manifest does not
//! declare, the per-call log cap, distinct uuids; and gives tests what they need: typed JSON
//! config, the cache and storage to read and seed, per-batch hooks.

use sluice_sdk::host::{self, Level, cache, storage};
use sluice_sdk::testing::{Harness, Recorded, TestEvent};
use sluice_sdk::{
    Config, ConfigField, ConfigType, Event, Manifest, Outcome, Plugin, PluginError, Transform, json,
};
use std::collections::HashMap;

/// Converts `amount` to USD with a JSON rate table, counts conversions in the cache, and logs
/// `lines` lines per event.
#[derive(Debug)]
struct Rates {
    rates: HashMap<String, f64>,
    lines: usize,
    batches: Vec<usize>,
    ended: usize,
}

fn manifest(needs: &[&str]) -> Manifest {
    Manifest::new("rates", "0.1.0", "Converts amounts")
        .config(vec![
            ConfigField::new("rates", ConfigType::Json, "Rates to USD by currency").required(),
            ConfigField::new("lines", ConfigType::Integer, "Lines logged per event")
                .with_default(0),
        ])
        .needs(needs)
}

impl Rates {
    fn new(config: &Config) -> Result<Self, PluginError> {
        Ok(Self {
            rates: config.json("rates")?,
            lines: config.integer("lines")? as usize,
            batches: Vec::new(),
            ended: 0,
        })
    }

    fn convert(&mut self, event: &Event<'_>) -> Outcome {
        for n in 0..self.lines {
            host::log(Level::Info, &format!("line {n}"));
        }
        let Some(currency) = event.property("currency") else {
            return Outcome::Drop("no currency".into());
        };
        let rate = self.rates[currency.as_str().unwrap_or_default()];
        if let Err(error) = cache::increment("conversions", 1) {
            return Outcome::Error(error.into());
        }
        let amount = event
            .property("amount")
            .and_then(|a| a.as_f64())
            .unwrap_or(0.0);
        let mut edit = event.edit();
        edit.set("amount_usd", amount * rate);
        Outcome::Edit(edit)
    }
}

impl Plugin for Rates {
    fn manifest() -> Manifest {
        manifest(&["cache", "log", "storage"])
    }
    fn setup(config: &Config) -> Result<Self, PluginError> {
        storage::set("started", b"yes")?;
        Self::new(config)
    }
}

impl Transform for Rates {
    fn transform(&mut self, event: &Event<'_>) -> Outcome {
        self.convert(event)
    }
    fn begin_batch(&mut self, events: usize) -> Result<(), PluginError> {
        self.batches.push(events);
        Ok(())
    }
    fn end_batch(&mut self) {
        self.ended += 1;
    }
}

/// The same plugin, its manifest missing `cache`.
#[derive(Debug)]
struct Undeclared(Rates);

impl Plugin for Undeclared {
    fn manifest() -> Manifest {
        manifest(&["log", "storage"])
    }
    fn setup(config: &Config) -> Result<Self, PluginError> {
        Ok(Self(Rates::new(config)?))
    }
}

impl Transform for Undeclared {
    fn transform(&mut self, event: &Event<'_>) -> Outcome {
        self.0.convert(event)
    }
}

fn eur(amount: f64) -> TestEvent {
    TestEvent::new("purchase")
        .property("currency", "EUR")
        .property("amount", amount)
}

#[test]
fn json_config_is_read_typed_and_the_cache_and_storage_are_there_to_read() {
    let mut h = Harness::<Rates>::new(json!({"rates": {"EUR": 1.5}})).unwrap();
    assert_eq!(h.storage_get("started"), Some(b"yes".to_vec()));
    let stored = h.stored(eur(10.0)).unwrap().unwrap();
    assert_eq!(stored.properties["amount_usd"], json!(15.0));
    h.stored(eur(2.0)).unwrap();
    assert_eq!(h.cache_get("conversions"), Some(b"2".to_vec()));
    h.cache_set("conversions", b"40");
    h.stored(eur(2.0)).unwrap();
    assert_eq!(h.cache_get("conversions"), Some(b"41".to_vec()));
    assert_eq!(
        h.transform(TestEvent::new("purchase")),
        Outcome::Drop("no currency".into())
    );

    let wrong = Harness::<Rates>::new(json!({"rates": ["EUR"]})).unwrap_err();
    assert!(
        wrong.message.starts_with("config `rates` does not fit:"),
        "{}",
        wrong.message
    );
}

#[test]
#[should_panic(
    expected = "uses the `cache` capability, but its manifest does not declare it: sluice refuses to load it. Add `.needs(&[\"cache\"])`"
)]
fn a_capability_the_manifest_does_not_declare_fails_the_test_as_the_server_refuses_the_plugin() {
    let mut h = Harness::<Undeclared>::new(json!({"rates": {"EUR": 1.5}})).unwrap();
    let _ = h.stored(eur(1.0));
}

#[test]
fn a_call_logs_at_most_a_hundred_lines_and_says_how_many_it_suppressed() {
    let mut h = Harness::<Rates>::new(json!({"rates": {"EUR": 1.0}, "lines": 60})).unwrap();
    h.take_recorded();
    h.transform_batch(vec![eur(1.0), eur(2.0)]).unwrap();
    let lines = h.take_recorded();
    assert_eq!(lines.len(), 101);
    assert_eq!(
        lines[100],
        Recorded::Log(
            Level::Warn,
            "20 log lines suppressed (limit 100 per call)".into()
        )
    );
    // The cap is per call: the next one may log again.
    h.transform(eur(1.0));
    assert_eq!(h.take_recorded().len(), 60);
}

#[test]
fn each_test_event_has_a_uuid_of_its_own_and_batches_are_announced() {
    let (a, b) = (TestEvent::new("e"), TestEvent::new("e"));
    assert_ne!(a.uuid(), b.uuid());
    let fixed = TestEvent::new("e").uuid_text("0190f1a2-0000-7000-8000-00000000002a");
    assert_eq!(fixed.uuid(), "0190f1a2-0000-7000-8000-00000000002a");
    let at = TestEvent::new("e").timestamp_ms(42).into_buf();
    assert_eq!(at.timestamp_ms, 42);

    let mut h = Harness::<Rates>::new(json!({"rates": {"EUR": 1.0}})).unwrap();
    h.transform_batch(vec![eur(1.0), eur(2.0), eur(3.0)])
        .unwrap();
    h.transform(eur(4.0));
    assert_eq!(h.plugin().batches, [3, 1]);
    assert_eq!(h.plugin().ended, 2);
}

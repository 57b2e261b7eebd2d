//! A plugin that misbehaves on purpose, for the host's tests.
//!
//! It implements the raw WIT exports (not the SDK traits) so that it can also send the host
//! output the SDK would never produce. Events named like the `trigger` config (default `attack`)
//! get the misbehaviour chosen by `mode`; every other event comes back with a `seq` property, a
//! counter kept in the instance, so tests see both that the host survived and whether the
//! instance was rebuilt (the counter restarts at 1).

use serde_json::{Map, Value, json};
use sluice_abi::wire::{BatchReader, EventFields, OutcomeWriter, RawEvent};
use sluice_sdk::bindings::sluice::plugin::types::{
    ConfigField, ConfigType, FailureMode, Manifest, PluginError,
};
use std::cell::RefCell;

sluice_sdk::__private::plugin_world!(world; transform);
use world::exports::sluice::plugin::{lifecycle, transform};

/// The misbehaviours, one per `mode`.
pub const MODES: [&str; 12] = [
    "panic",
    "recurse",
    "error_batch",
    "loop",
    "alloc",
    "tamper_envelope",
    "non_object_properties",
    "oversized_properties",
    "garbage_outcomes",
    "stdout_flood",
    "error",
    "drop",
];

struct State {
    mode: String,
    trigger: String,
    seq: u64,
    hoard: Vec<Vec<u8>>,
    failed_batch: bool,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// The exported plugin.
pub struct Adversary;

fn error(message: impl Into<String>) -> PluginError {
    PluginError {
        message: message.into(),
        retryable: false,
    }
}

impl lifecycle::Guest for Adversary {
    fn describe() -> Manifest {
        let field = |key: &str, kind, default: Option<&str>, choices: &[&str]| ConfigField {
            key: key.into(),
            description: String::new(),
            kind,
            default: default.map(str::to_owned),
            required: default.is_none(),
            secret: false,
            choices: choices.iter().map(|c| c.to_string()).collect(),
        };
        Manifest {
            name: "adversary".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Misbehaves on purpose".into(),
            config: vec![
                field("mode", ConfigType::Choice, None, &MODES),
                field("trigger", ConfigType::Text, Some("\"attack\""), &[]),
                field("fail_setup", ConfigType::Boolean, Some("false"), &[]),
            ],
            capabilities: vec![],
            stateless: false,
            tasks: vec![],
            on_error: FailureMode::Skip,
        }
    }

    fn setup(config: String) -> Result<(), PluginError> {
        let config: Map<String, Value> =
            serde_json::from_str(&config).map_err(|e| error(e.to_string()))?;
        if config["fail_setup"] == json!(true) {
            return Err(error("setup refused on purpose"));
        }
        let text = |key: &str| config[key].as_str().unwrap_or_default().to_owned();
        let state = State {
            mode: text("mode"),
            trigger: text("trigger"),
            seq: 0,
            hoard: Vec::new(),
            failed_batch: false,
        };
        STATE.with_borrow_mut(|s| *s = Some(state));
        Ok(())
    }

    fn teardown() {}
}

impl transform::Guest for Adversary {
    fn process(batch: Vec<u8>) -> Result<Vec<u8>, PluginError> {
        STATE.with_borrow_mut(|state| {
            let state = state.as_mut().ok_or_else(|| error("not set up"))?;
            let reader = BatchReader::new(&batch).map_err(|e| error(e.to_string()))?;
            let mut out = OutcomeWriter::with_capacity(reader.remaining());
            for raw in reader {
                let raw = raw.map_err(|e| error(e.to_string()))?;
                if let Some(garbage) = state.handle(&raw, &mut out)? {
                    return Ok(garbage);
                }
            }
            if state.failed_batch {
                state.failed_batch = false;
                return Err(error("adversary fails the whole batch"));
            }
            Ok(out.finish())
        })
    }
}

impl State {
    /// Writes the outcome for one event; returns whole-call output that replaces the outcomes.
    fn handle(
        &mut self,
        raw: &RawEvent<'_>,
        out: &mut OutcomeWriter,
    ) -> Result<Option<Vec<u8>>, PluginError> {
        let fields = raw.fields().map_err(|e| error(e.to_string()))?;
        let replace = |out: &mut OutcomeWriter, fields: EventFields<'_>| {
            out.replace(&fields).map_err(|e| error(e.to_string()))
        };
        if fields.event != self.trigger {
            self.seq += 1;
            let mut properties: Map<String, Value> =
                serde_json::from_str(fields.properties).map_err(|e| error(e.to_string()))?;
            properties.insert("seq".into(), json!(self.seq));
            let properties = Value::Object(properties).to_string();
            replace(
                out,
                EventFields {
                    properties: &properties,
                    ..fields
                },
            )?;
            return Ok(None);
        }
        match self.mode.as_str() {
            "panic" => panic!("adversary panics on purpose"),
            "recurse" => {
                std::hint::black_box(recurse(u64::MAX));
            }
            "error_batch" => {
                self.failed_batch = true;
                out.keep();
            }
            "loop" => loop {
                self.seq = std::hint::black_box(self.seq.wrapping_add(1));
            },
            "alloc" => loop {
                self.hoard.push(vec![1; 1 << 20]);
            },
            "tamper_envelope" => {
                let properties = r#"{"tampered":true}"#;
                let tampered = EventFields {
                    uuid: [0xee; 16],
                    team_id: fields.team_id + 1000,
                    properties,
                    ..fields
                };
                replace(out, tampered)?;
            }
            "non_object_properties" => replace(
                out,
                EventFields {
                    properties: "[1,2,3]",
                    ..fields
                },
            )?,
            "oversized_properties" => {
                let huge = format!(r#"{{"huge":"{}"}}"#, "x".repeat(2 << 20));
                replace(
                    out,
                    EventFields {
                        properties: &huge,
                        ..fields
                    },
                )?;
            }
            "garbage_outcomes" => return Ok(Some(vec![0xff; 64])),
            "stdout_flood" => {
                for i in 0..100_000 {
                    println!("flood line {i}");
                }
                out.keep();
            }
            "error" => out.error("adversary fails this event", false),
            _ => out.drop_event("adversary drops this event"),
        }
        Ok(None)
    }
}

/// Recursion without end, each frame keeping a buffer on the guest's own stack (in linear
/// memory), as deep recursion in real plugins does.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if depth == 0 {
        return 0;
    }
    let mut frame = [0u8; 512];
    frame[depth as usize % 512] = depth as u8;
    std::hint::black_box(&mut frame);
    frame[0] as u64 + recurse(std::hint::black_box(depth.wrapping_sub(1)))
}

// The generated export glue is `unsafe` (it is the component's ABI).
#[cfg(target_family = "wasm")]
#[allow(unsafe_code)]
mod export {
    use super::{Adversary, world};
    world::export!(Adversary with_types_in world);
}

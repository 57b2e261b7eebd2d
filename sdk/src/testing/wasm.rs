//! The same tests against the built component, in the real host: [`Harness::wasm`] runs each
//! event through `sluice plugin run` (the sluice binary named by `SLUICE_BIN`, or `sluice` on
//! the `PATH`), so grants, limits, the sandbox and the host's own handling of outcomes are the
//! server's, not the harness's imitation of them.

use super::{Harness, TestEvent};
use crate::event::format_uuid;
use crate::{EventBuf, Plugin, PluginError};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A built component run by the real host, one `sluice plugin run` per call.
#[derive(Debug, Clone)]
pub struct WasmHarness {
    binary: PathBuf,
    component: PathBuf,
    config: Value,
    logs: Vec<String>,
}

impl<T: Plugin> Harness<T> {
    /// The component at `component` (built from this plugin for `wasm32-wasip2`), configured
    /// with `config`, run in the real host. Panics, saying what to do, when there is no sluice
    /// binary to run it with or no component at `component`.
    pub fn wasm(component: impl AsRef<Path>, config: Value) -> WasmHarness {
        let component = component.as_ref().to_owned();
        assert!(
            component.is_file(),
            "Harness::wasm: no component at {}: build it first (cargo build --release --target wasm32-wasip2)",
            component.display()
        );
        WasmHarness {
            binary: std::env::var_os("SLUICE_BIN").map_or_else(|| "sluice".into(), PathBuf::from),
            component,
            config,
            logs: Vec::new(),
        }
    }
}

impl WasmHarness {
    /// Runs the component with the sluice binary at `path` (instead of `SLUICE_BIN` or the
    /// `sluice` on the `PATH`).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = path.into();
        self
    }

    /// Runs one event through the component and returns it as the host would store it
    /// (`None` if dropped); an event the host would not store for a failure is an error.
    pub fn stored(&mut self, event: TestEvent) -> Result<Option<EventBuf>, PluginError> {
        let mut stored = self.stored_batch(vec![event])?;
        stored.remove(0)
    }

    /// Runs `events` through the component in one batch; each as [`WasmHarness::stored`].
    pub fn stored_batch(
        &mut self,
        events: Vec<TestEvent>,
    ) -> Result<Vec<Result<Option<EventBuf>, PluginError>>, PluginError> {
        let input: String = events
            .iter()
            .map(|e| capture_json(&e.0).to_string() + "\n")
            .collect();
        let report = self.run(&input)?;
        self.logs.extend(
            report["logs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l["message"].as_str().map(str::to_owned)),
        );
        let results = report["events"]
            .as_array()
            .ok_or_else(|| PluginError::new("sluice plugin run printed no events"))?;
        Ok(events
            .iter()
            .zip(results)
            .map(|(input, result)| match result["outcome"].as_str() {
                Some("stored") => stored_event(&input.0, result).map(Some),
                Some("dropped") => Ok(None),
                _ => Err(PluginError::new(
                    result["reason"].as_str().unwrap_or("not stored").to_owned(),
                )),
            })
            .collect())
    }

    /// What the plugin logged so far, in order.
    pub fn logs(&self) -> &[String] {
        &self.logs
    }

    /// Runs `sluice plugin run` on `events` (JSON lines); its report.
    fn run(&self, events: &str) -> Result<Value, PluginError> {
        let mut child = Command::new(&self.binary)
            .args(["plugin", "run"])
            .arg(&self.component)
            .args(["--events", "-", "--json", "--config"])
            .arg(self.config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "Harness::wasm runs the sluice binary, and `{}` cannot be started ({e}): \
                     set SLUICE_BIN to its path or put `sluice` on the PATH",
                    self.binary.display()
                )
            });
        // A write that fails (sluice ended early) shows in its exit status and stderr.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = std::io::Write::write_all(&mut stdin, events.as_bytes());
        }
        let output = child
            .wait_with_output()
            .map_err(|e| PluginError::new(format!("sluice did not finish: {e}")))?;
        if !output.status.success() {
            return Err(PluginError::new(format!(
                "sluice plugin run failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        serde_json::from_slice(&output.stdout)
            .map_err(|e| PluginError::new(format!("sluice plugin run printed no report: {e}")))
    }
}

/// `event` as sent to `/capture`.
fn capture_json(event: &EventBuf) -> Value {
    let mut object = Map::new();
    object.insert("uuid".into(), json!(format_uuid(event.uuid)));
    object.insert("event".into(), json!(event.event));
    object.insert("distinct_id".into(), json!(event.distinct_id));
    object.insert("timestamp".into(), json!(event.timestamp_ms));
    object.insert("properties".into(), Value::Object(event.properties.clone()));
    if let Some(ip) = &event.ip {
        object.insert("ip".into(), json!(ip));
    }
    if let Some(set) = &event.set {
        object.insert("$set".into(), Value::Object(set.clone()));
    }
    if let Some(set_once) = &event.set_once {
        object.insert("$set_once".into(), Value::Object(set_once.clone()));
    }
    Value::Object(object)
}

/// The stored event of `result` (of `input`'s team), as the native harness returns it.
fn stored_event(input: &EventBuf, result: &Value) -> Result<EventBuf, PluginError> {
    let stored = &result["stored"];
    let text = |key: &str| {
        stored[key]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| PluginError::new(format!("the stored event has no `{key}`")))
    };
    let object = |key: &str| stored.get(key).and_then(Value::as_object).cloned();
    Ok(EventBuf {
        uuid: input.uuid,
        team_id: input.team_id,
        timestamp_ms: result["timestamp_ms"]
            .as_i64()
            .ok_or_else(|| PluginError::new("the stored event has no time"))?,
        event: text("event")?,
        distinct_id: text("distinct_id")?,
        ip: stored["ip"].as_str().map(str::to_owned),
        properties: object("properties").unwrap_or_default(),
        set: object("$set"),
        set_once: object("$set_once"),
    })
}

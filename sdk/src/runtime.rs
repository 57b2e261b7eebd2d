//! The glue between the generated bindings and a plugin's trait impls.

use crate::bindings::sluice::plugin::types;
use crate::{
    Config, ConfigType, Event, ExportBatch, Exporter, FailureMode, Job, Jobs, Manifest, Outcome,
    Plugin, PluginError, Scheduled, Transform,
};
use serde_json::{Map, Value};
use sluice_abi::wire::{BatchReader, OutcomeWriter};
use std::cell::RefCell;
use std::marker::PhantomData;

/// Runs `plugin` over one encoded batch and returns the encoded outcomes.
///
/// This is exactly what the exported `transform.process` does inside wasm; the native test
/// harness and benchmarks call it directly.
pub fn process_batch<T: Transform>(plugin: &mut T, batch: &[u8]) -> Result<Vec<u8>, PluginError> {
    let reader = BatchReader::new(batch).map_err(|e| PluginError::new(e.to_string()))?;
    let mut out = OutcomeWriter::with_capacity(reader.remaining());
    plugin.begin_batch(reader.remaining())?;
    for raw in reader {
        let raw = raw.map_err(|e| PluginError::new(format!("malformed batch: {e}")))?;
        match plugin.transform(&Event::new(raw)) {
            Outcome::Keep => out.keep(),
            Outcome::Drop(reason) => out.drop_event(&reason),
            Outcome::Error(error) => out.error(&error.message, error.retryable),
            Outcome::Edit(edit) => match edit.patch() {
                Ok(patch) => out.patch(patch),
                Err(error) => out.error(&error.message, false),
            },
            Outcome::Replace(event) => {
                let mut encoded = Vec::new();
                match event.encode_into(&mut encoded) {
                    Ok(()) => out.replace_encoded(&encoded),
                    Err(error) => out.error(&error.message, false),
                }
            }
        }
    }
    plugin.end_batch();
    Ok(out.finish())
}

/// Decodes one encoded batch and hands it to `plugin`'s [`Exporter::export`].
///
/// This is exactly what the exported `exporter.export-batch` does inside wasm; the native test
/// harness calls it directly.
pub fn export_batch<T: Exporter>(
    plugin: &mut T,
    batch: &ExportBatch,
    events: &[u8],
) -> Result<(), PluginError> {
    let events = BatchReader::new(events)
        .and_then(|reader| reader.map(|raw| raw.map(Event::new)).collect())
        .map_err(|e| PluginError::new(format!("malformed batch: {e}")))?;
    let events: Vec<Event<'_>> = events;
    plugin.export(batch, &events)
}

/// What the generated hook interfaces call, for a plugin type `T`.
pub struct Adapter<T>(PhantomData<T>);

thread_local! {
    // Wasm guests are single-threaded; the instance's plugin value lives here between calls.
    static STATE: RefCell<Option<Box<dyn std::any::Any>>> = const { RefCell::new(None) };
}

fn with_plugin<T: 'static, R>(f: impl FnOnce(&mut T) -> R) -> Result<R, PluginError> {
    STATE.with_borrow_mut(|state| {
        let plugin = state
            .as_mut()
            .and_then(|s| s.downcast_mut::<T>())
            .ok_or_else(|| PluginError::new("plugin called before setup succeeded"))?;
        Ok(f(plugin))
    })
}

impl<T: Plugin> Adapter<T> {
    /// `lifecycle.describe`.
    pub fn lifecycle_describe() -> types::Manifest {
        to_wit_manifest(T::manifest())
    }

    /// `lifecycle.setup`.
    pub fn lifecycle_setup(config: String) -> Result<(), types::PluginError> {
        let values: Map<String, Value> = serde_json::from_str(&config).map_err(|e| {
            to_wit_error(PluginError::new(format!(
                "config is not a JSON object: {e}"
            )))
        })?;
        let plugin = T::setup(&Config::new(values)).map_err(to_wit_error)?;
        STATE.with_borrow_mut(|state| *state = Some(Box::new(plugin)));
        Ok(())
    }

    /// `lifecycle.teardown`.
    pub fn lifecycle_teardown() {
        let _ = with_plugin(T::teardown);
        STATE.with_borrow_mut(|state| *state = None);
    }
}

impl<T: Transform> Adapter<T> {
    /// `transform.process`.
    pub fn transform_process(batch: Vec<u8>) -> Result<Vec<u8>, types::PluginError> {
        with_plugin(|plugin: &mut T| process_batch(plugin, &batch))
            .and_then(|r| r)
            .map_err(to_wit_error)
    }
}

impl<T: Exporter> Adapter<T> {
    /// `exporter.export-batch`.
    pub fn exporter_export(batch: &ExportBatch, events: &[u8]) -> Result<(), types::PluginError> {
        with_plugin(|plugin: &mut T| export_batch(plugin, batch, events))
            .and_then(|r| r)
            .map_err(to_wit_error)
    }
}

impl<T: Scheduled> Adapter<T> {
    /// `scheduled.run`.
    pub fn scheduled_run(task: &str, scheduled_at_ms: i64) -> Result<(), types::PluginError> {
        with_plugin(|plugin: &mut T| plugin.run(task, scheduled_at_ms))
            .and_then(|r| r)
            .map_err(to_wit_error)
    }
}

impl<T: Jobs> Adapter<T> {
    /// `jobs.run-job`.
    pub fn jobs_run(job: &Job) -> Result<(), types::PluginError> {
        with_plugin(|plugin: &mut T| plugin.run_job(job))
            .and_then(|r| r)
            .map_err(to_wit_error)
    }
}

/// The WIT form of a plugin error.
pub fn to_wit_error(error: PluginError) -> types::PluginError {
    types::PluginError {
        message: error.message,
        retryable: error.retryable,
    }
}

fn to_wit_manifest(manifest: Manifest) -> types::Manifest {
    types::Manifest {
        name: manifest.name,
        version: manifest.version,
        description: manifest.description,
        config: manifest
            .config
            .into_iter()
            .map(|field| types::ConfigField {
                key: field.key,
                description: field.description,
                kind: match field.kind {
                    ConfigType::Text => types::ConfigType::Text,
                    ConfigType::Integer => types::ConfigType::Integer,
                    ConfigType::Number => types::ConfigType::Number,
                    ConfigType::Boolean => types::ConfigType::Boolean,
                    ConfigType::Choice => types::ConfigType::Choice,
                    ConfigType::Json => types::ConfigType::Json,
                },
                default: field.default.map(|v| v.to_string()),
                required: field.required,
                secret: field.secret,
                choices: field.choices,
            })
            .collect(),
        capabilities: manifest.capabilities,
        stateless: manifest.stateless,
        on_error: match manifest.on_error {
            FailureMode::Skip => types::FailureMode::Skip,
            FailureMode::Drop => types::FailureMode::Drop,
            FailureMode::DeadLetter => types::FailureMode::DeadLetter,
        },
        tasks: manifest
            .tasks
            .into_iter()
            .map(|task| types::Task {
                name: task.name,
                schedule: task.schedule,
                description: task.description,
            })
            .collect(),
    }
}

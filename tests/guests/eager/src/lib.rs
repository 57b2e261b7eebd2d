//! Calls every host capability from `setup`, where a host that runs setup on an async thread
//! would panic or deadlock (a blocking capability inside the server's runtime), and hands what
//! each call answered to the first event it sees, in the property `setup`: per capability
//! `{"ok": ...}` or `{"error": "<kind>: <message>"}`.

use sluice_sdk::host::{
    self, HostError, Level, cache, geoip, http, jobs, object_store, recordings, storage,
};
use sluice_sdk::{
    Config, ConfigField, ConfigType, Event, Job, Jobs, Manifest, Outcome, Plugin, PluginError,
    Transform, Value, json,
};

/// The eager plugin.
#[derive(Debug)]
pub struct Eager {
    answers: Value,
}

fn answer<T: Into<Value>>(result: Result<T, HostError>) -> Value {
    match result {
        Ok(value) => json!({ "ok": value.into() }),
        Err(error) => json!({ "error": format!("{:?}: {}", error.kind, error.message) }),
    }
}

impl Plugin for Eager {
    fn manifest() -> Manifest {
        Manifest::new(
            "eager",
            env!("CARGO_PKG_VERSION"),
            "Uses every capability in setup",
        )
        .needs(&[
            "log",
            "metrics",
            "storage",
            "cache",
            "geoip",
            "http",
            "object_store",
            "jobs",
            "recordings",
        ])
        .config(vec![
            ConfigField::new("store", ConfigType::Text, "Object store to write to").required(),
            ConfigField::new("url", ConfigType::Text, "URL to fetch").required(),
        ])
    }

    fn setup(config: &Config) -> Result<Self, PluginError> {
        let store = config.text("store")?;
        host::log(Level::Info, "eager setup");
        host::counter_add("eager_setups", 1);
        let answers = json!({
            "storage": answer(storage::set("k", b"v").map(|()| "set")),
            "cache": answer(cache::increment("n", 1)),
            "geoip": answer(geoip::locate("89.160.20.115").map(|l| l.is_some())),
            "http": answer(http::fetch(&http::Request::get(config.text("url")?)).map(|r| r.status)),
            "object_store": answer(
                object_store::put(store, "eager/setup.txt", b"hello")
                    .and_then(|()| object_store::get(store, "eager/setup.txt"))
                    .map(|body| body.map(|b| String::from_utf8_lossy(&b).into_owned()))
            ),
            "jobs": answer(jobs::enqueue("noop", "{}").map(|_| "queued")),
            "recordings": answer(recordings::list_sessions(0, None, 1).map(|s| s.len())),
        });
        Ok(Self { answers })
    }
}

impl Transform for Eager {
    fn transform(&mut self, event: &Event<'_>) -> Outcome {
        match event.to_buf() {
            Ok(mut buf) => {
                buf.properties.insert("setup".into(), self.answers.clone());
                Outcome::Replace(buf)
            }
            Err(error) => Outcome::Error(error),
        }
    }
}

impl Jobs for Eager {
    fn run_job(&mut self, _job: &Job) -> Result<(), PluginError> {
        Ok(())
    }
}

sluice_sdk::export_plugin!(Eager: transform, jobs);

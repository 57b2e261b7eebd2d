//! Exercises one host capability per event, chosen by the `action` config, and writes what the
//! host answered into the event's `probe` property: `{"ok": ...}` or
//! `{"error": {"kind": ..., "message": ...}}`. The host's tests use it to check that capabilities
//! work when granted and refuse what they must (oversized values, loopback and metadata
//! addresses, log floods) without harming the instance.

use sluice_sdk::host::{self, HostError, Level, cache, geoip, http, storage};
use sluice_sdk::{
    Config, ConfigField, ConfigType, Event, Manifest, Outcome, Plugin, PluginError, Transform,
    Value, json,
};

/// The actions, one per `action` value.
pub const ACTIONS: [&str; 8] = [
    "storage_count",
    "storage_oversize",
    "cache_count",
    "cache_get",
    "geoip",
    "http",
    "log_flood",
    "storage_list",
];

/// The prober.
#[derive(Debug)]
pub struct Prober {
    action: String,
    url: String,
}

impl Plugin for Prober {
    fn manifest() -> Manifest {
        Manifest::new(
            "prober",
            env!("CARGO_PKG_VERSION"),
            "Probes host capabilities",
        )
        .needs(&["log", "storage", "cache", "geoip", "http"])
        .config(vec![
            ConfigField::choice("action", "What to do per event", &ACTIONS).required(),
            ConfigField::new("url", ConfigType::Text, "URL for `http`").with_default(""),
        ])
    }

    fn setup(config: &Config) -> Result<Self, PluginError> {
        Ok(Self {
            action: config.text("action")?.to_owned(),
            url: config.text("url")?.to_owned(),
        })
    }
}

impl Prober {
    fn probe(&self, event: &Event<'_>) -> Result<Value, HostError> {
        Ok(match self.action.as_str() {
            "storage_count" => json!(storage::increment("count", 1)?),
            "storage_oversize" => {
                storage::set("big", &vec![7; 64 * 1024 + 1])?;
                json!("stored")
            }
            "storage_list" => {
                storage::set(&format!("seen/{}", event.distinct_id()), b"1")?;
                json!(storage::list_keys("seen/", None, 100)?)
            }
            "cache_count" => json!(cache::increment("count", 1)?),
            "cache_get" => json!(cache::get("count")?.map(|v| v.len())),
            "geoip" => {
                let ip = event.ip().unwrap_or_default();
                json!(geoip::locate(ip)?.and_then(|l| l.city_name))
            }
            "http" => {
                let response = http::fetch(&http::Request::get(&self.url))?;
                json!({"status": response.status, "body": String::from_utf8_lossy(&response.body)})
            }
            _ => {
                for i in 0..100_000 {
                    host::log(Level::Info, &format!("flood line {i}"));
                }
                json!("flooded")
            }
        })
    }
}

impl Transform for Prober {
    fn transform(&mut self, event: &Event<'_>) -> Outcome {
        let probe = match self.probe(event) {
            Ok(value) => json!({ "ok": value }),
            Err(error) => {
                json!({ "error": { "kind": format!("{:?}", error.kind), "message": error.message } })
            }
        };
        match event.to_buf() {
            Ok(mut buf) => {
                buf.properties.insert("probe".into(), probe);
                Outcome::Replace(buf)
            }
            Err(error) => Outcome::Error(error),
        }
    }
}

sluice_sdk::export_transform!(Prober);

//! The effective config: what a config puts in force once every default is filled in, each
//! team's chain resolved (plugin, content hash, hooks, grants, and its config with the plugin's
//! defaults), and every secret redacted: the admin API's `GET /admin/v1/config` and `sluice
//! config show`.

use crate::config::Config;
use crate::deployment::Deployment;
use crate::runtime::{InstanceSettings, Plugin};
use serde_json::{Map, Value, json};

/// What a redacted secret reads as.
const REDACTED: &str = "(redacted)";

/// The effective config of `config`, whose installations `deployment` runs.
pub fn effective(config: &Config, deployment: &Deployment) -> Value {
    let teams: Vec<Value> = config
        .teams
        .iter()
        .map(|team| {
            let installations: Vec<Value> = team
                .plugins
                .iter()
                .filter_map(|i| installation(deployment, team.id, &i.id.qualified(team.id), i))
                .collect();
            let shadows: Vec<Value> = team
                .plugins
                .iter()
                .filter_map(|i| {
                    let shadow = i.shadow.as_ref()?;
                    Some(json!({
                        "id": i.id.qualified(team.id),
                        "path": i.plugin,
                        "sample": shadow.sample,
                        "replaces": shadow.replaces.as_ref().map(|r| r.qualified(team.id)),
                    }))
                })
                .collect();
            json!({ "id": team.id, "name": team.name, "token": team.token.as_str(), "installations": installations, "shadows": shadows })
        })
        .collect();
    json!({
        "path": config.path,
        "server": config.server,
        "admin": {
            "listen": config.admin.listen,
            "token": if config.admin.token.is_some() { REDACTED } else { "(made by the server, in its data folder)" },
        },
        "capture": config.capture,
        "queue": config.queue,
        "kafka": config.kafka,
        "clickhouse": config.clickhouse,
        "redis": config.redis,
        "retention": config.retention,
        "geoip": config.capabilities.geoip.database,
        "object_stores": config.capabilities.object_stores.names().collect::<Vec<_>>(),
        "teams": teams,
    })
}

/// One installation, as the deployment runs it.
fn installation(
    deployment: &Deployment,
    team: u64,
    id: &str,
    written: &crate::config::InstallationConfig,
) -> Option<Value> {
    let transform = deployment.chains.of(team).iter().find(|i| &*i.id == id);
    let export = deployment.exports.iter().find(|e| &*e.id == id);
    let tasks = deployment.tasks.iter().find(|t| &*t.id == id);
    let (plugin, settings): (&Plugin, &InstanceSettings) = transform
        .map(|t| (&*t.plugin, &t.settings))
        .or(export.map(|e| (&*e.plugin, &e.settings)))
        .or(tasks.map(|t| (&*t.plugin, &t.settings)))?;
    Some(json!({
        "id": id,
        "plugin": plugin.manifest.name,
        "version": plugin.manifest.version,
        "path": written.plugin,
        "hash": plugin.hash,
        "contract": plugin.contract.label(),
        "config": redacted_config(plugin, &settings.config),
        "grants": settings.context.grants.names().collect::<Vec<_>>(),
        "timeout_ms": settings.context.timeout.as_millis() as u64,
        "memory_mb": settings.memory_bytes >> 20,
        "on_error": transform.map(|t| json!(t.on_error)),
        "bundles": written.bundles,
        "auto_rollback": written.auto_rollback,
        "breaker": transform.map(|t| json!(t.breaker_config)),
        "export": export.map(|e| json!(e.config)),
        "tasks": tasks.map(|t| t.tasks.iter().map(|task| json!({
            "name": task.name,
            "schedule": task.schedule.text,
            "time_zone": task.schedule.zone().to_string(),
        })).collect::<Vec<_>>()),
    }))
}

/// `config` with the values of the fields the plugin's manifest calls secret redacted.
fn redacted_config(plugin: &Plugin, config: &Value) -> Value {
    let Value::Object(fields) = config else {
        return config.clone();
    };
    let redacted: Map<String, Value> = fields
        .iter()
        .map(|(key, value)| {
            let secret = plugin
                .manifest
                .config
                .iter()
                .any(|field| &field.key == key && field.secret);
            let shown = if secret {
                json!(REDACTED)
            } else {
                value.clone()
            };
            (key.clone(), shown)
        })
        .collect();
    Value::Object(redacted)
}

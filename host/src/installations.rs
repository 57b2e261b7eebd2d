//! Loads every plugin installation of the config once at start: each plugin file compiled once,
//! each installation checked (config against the manifest, grants) and started once to prove it
//! works, every problem reported at once. What the plugin exports decides where it goes: a
//! `transform` joins its team's chain, an `exporter` gets an export runner, a plugin may do both.

use crate::capabilities::{self, Context, Grants, Services};
use crate::chain::{Chains, Installation, InstanceKey, SharingKey};
use crate::config::{Config, Problem};
use crate::export::ExportInstallation;
use crate::runtime::{Instance, InstanceSettings, Plugin, Runtime};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Every installation, where it runs.
#[derive(Default)]
pub struct Installed {
    /// Every team's chain of transforms.
    pub chains: Chains,
    /// Every export installation.
    pub exports: Vec<Arc<ExportInstallation>>,
}

/// Loads and checks every installation of `config`, whose capabilities use `services`.
pub fn load(
    runtime: &Runtime,
    config: &Config,
    services: &Arc<Services>,
) -> Result<Installed, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut plugins: HashMap<PathBuf, Option<Arc<Plugin>>> = HashMap::new();
    // Instances of stateless plugins already started once, by sharing key.
    let mut shared: HashMap<SharingKey, InstanceKey> = HashMap::new();
    let mut installed = Installed::default();
    for team in &config.teams {
        for installation in &team.plugins {
            let mut problem = |suffix: &str, reason: String| {
                problems.push(Problem {
                    key: format!("{}{suffix}", installation.key),
                    reason,
                })
            };
            let plugin = plugins
                .entry(installation.plugin.clone())
                .or_insert_with(|| {
                    runtime
                        .load(&installation.plugin)
                        .map_err(|e| problem(".plugin", e.to_string()))
                        .ok()
                })
                .clone();
            let Some(plugin) = plugin else { continue };
            let name = &plugin.manifest.name;
            if !plugin.transforms() && !plugin.exports_events() {
                let path = installation.plugin.display();
                problem(
                    ".plugin",
                    format!("{path} exports neither `transform` nor `exporter`"),
                );
                continue;
            }
            if installation.export.is_some() && !plugin.exports_events() {
                problem(
                    ".export",
                    format!("is set but plugin `{name}` does not export `exporter`"),
                );
                continue;
            }
            let given = match serde_json::to_value(&installation.config) {
                Ok(Value::Object(given)) => given,
                _ => {
                    problem(".config", "must be a table".into());
                    continue;
                }
            };
            let resolved = match plugin.manifest.resolve_config(&given) {
                Ok(resolved) => resolved,
                Err(config_problems) => {
                    for p in config_problems {
                        problem(&format!(".config.{}", p.key), p.reason);
                    }
                    continue;
                }
            };
            let id: Arc<str> = Arc::from(installation.id.qualified(team.id));
            let ungranted = ungranted(&plugin, &installation.grants, &id);
            if !ungranted.is_empty() {
                problem(".grants", ungranted.join("; "));
                continue;
            }
            let config = Value::Object(resolved);
            let settings = |timeout_ms: u64| InstanceSettings {
                context: Arc::new(Context {
                    installation: id.clone(),
                    team_id: team.id,
                    plugin: Arc::from(name.as_str()),
                    grants: installation.grants.clone(),
                    timeout: Duration::from_millis(timeout_ms),
                    services: services.clone(),
                }),
                config: config.clone(),
                memory_bytes: (installation.memory_mb as usize) << 20,
            };
            let mut started = |settings: &InstanceSettings| match Instance::start(&plugin, settings)
            {
                Ok(instance) => {
                    instance.teardown();
                    true
                }
                Err(error) => {
                    problem("", format!("plugin `{name}` failed to start: {error}"));
                    false
                }
            };
            if plugin.transforms() {
                let settings = settings(installation.transform_timeout_ms());
                let sharing = plugin
                    .manifest
                    .stateless
                    .then(|| SharingKey::of(installation, &config));
                let instance_key = match sharing.as_ref().and_then(|key| shared.get(key)) {
                    Some(key) => *key,
                    None if started(&settings) => {
                        let key = InstanceKey::unique();
                        if let Some(sharing) = sharing {
                            shared.insert(sharing, key);
                        }
                        key
                    }
                    None => continue,
                };
                installed.chains.push(
                    team.id,
                    Installation::new(
                        instance_key,
                        plugin.clone(),
                        settings,
                        installation.on_error,
                        installation.breaker.clone(),
                    ),
                );
            }
            if plugin.exports_events() {
                let settings = settings(installation.export_timeout_ms());
                if !started(&settings) {
                    continue;
                }
                installed.exports.push(Arc::new(ExportInstallation {
                    id: id.clone(),
                    team_id: team.id,
                    plugin: plugin.clone(),
                    settings,
                    config: installation.export.clone().unwrap_or_default(),
                }));
            }
        }
    }
    if problems.is_empty() {
        Ok(installed)
    } else {
        Err(problems)
    }
}

/// The capabilities `plugin` needs that `grants` lack, each named with its interface and the
/// installation `id`.
fn ungranted(plugin: &Plugin, grants: &Grants, id: &str) -> Vec<String> {
    plugin
        .needs()
        .into_iter()
        .filter(|need| !grants.allows(need))
        .map(|need| {
            let interface = capabilities::by_name(need).map_or(need, |c| c.interface);
            format!(
                "plugin `{}` needs `{interface}`, which installation {id} is not granted (add \"{need}\" to `grants`)",
                plugin.manifest.name
            )
        })
        .collect()
}

//! Builds every team's chain from the config: each plugin file compiled once, each installation
//! checked (hooks, config against the manifest, grants) and started once to prove it works,
//! every problem reported at once.

use super::{Chains, Installation, InstanceKey};
use crate::capabilities::{self, Context, Grants, Services};
use crate::config::{Config, InstallationConfig, Problem};
use crate::runtime::{Instance, InstanceSettings, Plugin, Runtime};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What makes installations of a stateless plugin interchangeable: the same plugin file, config,
/// limits and grants. Installations with equal keys share one instance per worker lane; any
/// difference (including in grants) gives them separate instances, so per-instance capability
/// state is never shared across grants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SharingKey {
    /// The plugin file.
    pub plugin: PathBuf,
    /// The resolved config, as JSON text (object keys in sorted order).
    pub config: String,
    /// Deadline of one call, in milliseconds.
    pub timeout_ms: u64,
    /// Memory cap, in MiB.
    pub memory_mb: u64,
    /// What the installation was granted.
    pub grants: Grants,
}

impl SharingKey {
    /// The key of `installation` whose resolved config is `config`.
    pub fn of(installation: &InstallationConfig, config: &Value) -> Self {
        Self {
            plugin: installation.plugin.clone(),
            config: config.to_string(),
            timeout_ms: installation.timeout_ms,
            memory_mb: installation.memory_mb,
            grants: installation.grants.clone(),
        }
    }
}

/// Loads and checks every installation of `config`, whose capabilities use `services`.
pub fn build(
    runtime: &Runtime,
    config: &Config,
    services: &Arc<Services>,
) -> Result<Chains, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut plugins: HashMap<PathBuf, Option<Arc<Plugin>>> = HashMap::new();
    // Instances of stateless plugins already started once, by sharing key.
    let mut shared: HashMap<SharingKey, InstanceKey> = HashMap::new();
    let mut chains = Chains::default();
    for team in &config.teams {
        let chain = chains.by_team.entry(team.id).or_default();
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
            if !plugin.transforms() {
                problem(
                    ".plugin",
                    format!(
                        "{} does not export `transform`",
                        installation.plugin.display()
                    ),
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
            let sharing = plugin
                .manifest
                .stateless
                .then(|| SharingKey::of(installation, &config));
            let settings = InstanceSettings {
                context: Arc::new(Context {
                    installation: id,
                    team_id: team.id,
                    plugin: Arc::from(plugin.manifest.name.as_str()),
                    grants: installation.grants.clone(),
                    timeout: Duration::from_millis(installation.timeout_ms),
                    services: services.clone(),
                }),
                config,
                memory_bytes: (installation.memory_mb as usize) << 20,
            };
            let known = sharing.as_ref().and_then(|key| shared.get(key)).copied();
            let instance_key = match known {
                Some(key) => key,
                None => {
                    if let Err(error) = Instance::start(&plugin, &settings).map(Instance::teardown)
                    {
                        problem(
                            "",
                            format!("plugin `{}` failed to start: {error}", plugin.manifest.name),
                        );
                        continue;
                    }
                    let key = InstanceKey::unique();
                    if let Some(sharing) = sharing {
                        shared.insert(sharing, key);
                    }
                    key
                }
            };
            chain.push(Arc::new(Installation::new(
                instance_key,
                plugin,
                settings,
                installation.on_error,
                installation.breaker.clone(),
            )));
        }
    }
    if problems.is_empty() {
        Ok(chains)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{InstallationId, OnError};

    fn installation(grants: &[&str]) -> InstallationConfig {
        InstallationConfig {
            key: "teams[0].plugins[0]".into(),
            id: InstallationId::parse("geoip").unwrap(),
            plugin: PathBuf::from("/plugins/geoip.wasm"),
            config: toml::Table::new(),
            timeout_ms: 1_000,
            memory_mb: 64,
            on_error: OnError::Skip,
            breaker: Default::default(),
            grants: Grants::of(grants),
        }
    }

    #[test]
    fn installations_share_only_with_equal_config_limits_and_grants() {
        let config = serde_json::json!({"a": 1});
        let base = SharingKey::of(&installation(&["geoip"]), &config);
        assert_eq!(base, SharingKey::of(&installation(&["geoip"]), &config));
        assert_ne!(
            base,
            SharingKey::of(&installation(&["geoip", "log"]), &config)
        );
        assert_ne!(
            base,
            SharingKey::of(&installation(&["geoip"]), &serde_json::json!({"a": 2}))
        );
        let mut slower = installation(&["geoip"]);
        slower.timeout_ms = 2_000;
        assert_ne!(base, SharingKey::of(&slower, &config));
    }
}

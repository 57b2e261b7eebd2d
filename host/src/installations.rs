//! Loads every plugin installation of the config once at start: each plugin file compiled once,
//! each installation checked (config against the manifest, grants) and started once to prove it
//! works, every problem reported at once. What the plugin exports decides where it goes: a
//! `transform` joins its team's chain, an `exporter` gets an export runner, `scheduled` and
//! `jobs` get a task runner; a plugin may do several.

use crate::bundle::{BundleSettings, Bundles};
use crate::capabilities::{self, Context, Grants, Services};
use crate::chain::{Chains, Installation, InstanceKey, SharingKey};
use crate::config::{Config, InstallationConfig, OnError, Problem};
use crate::export::ExportInstallation;
use crate::runtime::{Instance, InstanceSettings, Plugin, Runtime};
use crate::schedule::timing::Schedule;
use crate::schedule::{Task, TaskInstallation};
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
    /// Every installation that runs tasks or jobs.
    pub tasks: Vec<Arc<TaskInstallation>>,
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
    let config_data_dir = config.server.data_dir.clone();
    for team in &config.teams {
        // Shadows run apart, on their own services (see `crate::shadow`).
        for installation in team.plugins.iter().filter(|i| i.shadow.is_none()) {
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
            let hooks = [
                plugin.transforms(),
                plugin.exports_events(),
                plugin.runs_tasks(),
                plugin.runs_jobs(),
            ];
            if !hooks.contains(&true) {
                let path = installation.plugin.display();
                problem(
                    ".plugin",
                    format!(
                        "{path} exports no hook (`transform`, `exporter`, `scheduled` or `jobs`)"
                    ),
                );
                continue;
            }
            let mismatches = [
                (
                    installation.export.is_some() && !plugin.exports_events(),
                    ".export",
                    "is set but plugin `{name}` does not export `exporter`",
                ),
                (
                    installation.schedule.is_some() && !plugin.runs_tasks(),
                    ".schedule",
                    "is set but plugin `{name}` does not export `scheduled`",
                ),
                (
                    installation.jobs.is_some() && !plugin.runs_jobs(),
                    ".jobs",
                    "is set but plugin `{name}` does not export `jobs`",
                ),
                (
                    plugin.runs_tasks() == plugin.manifest.tasks.is_empty(),
                    ".plugin",
                    "plugin `{name}` must declare tasks exactly when it exports `scheduled`",
                ),
                (
                    plugin
                        .needs()
                        .contains(&capabilities::jobs::CAPABILITY.name)
                        && !plugin.runs_jobs(),
                    ".plugin",
                    "plugin `{name}` queues jobs (`jobs`) but does not export `jobs` to run them",
                ),
            ];
            let mut mismatched = false;
            for (wrong, suffix, reason) in mismatches {
                if wrong {
                    problem(suffix, reason.replace("{name}", name));
                    mismatched = true;
                }
            }
            if mismatched {
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
            let memory_bytes = (installation.memory_mb as usize) << 20;
            let on_error = OnError::effective(installation.on_error, plugin.manifest.on_error);
            let with_bundles = |timeout_ms: u64, bundles: Option<Arc<Bundles>>| InstanceSettings {
                context: Arc::new(Context {
                    installation: id.clone(),
                    team_id: team.id,
                    plugin: Arc::from(name.as_str()),
                    grants: installation.grants.clone(),
                    timeout: Duration::from_millis(timeout_ms),
                    services: services.clone(),
                    bundles,
                }),
                config: config.clone(),
                memory_bytes,
            };
            let settings = |timeout_ms: u64| with_bundles(timeout_ms, None);
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
                let timeout_ms = installation.transform_timeout_ms();
                let bundles =
                    (installation.bundles || on_error == OnError::DeadLetter).then(|| {
                        Arc::new(Bundles::new(BundleSettings {
                            data_dir: &config_data_dir,
                            installation: &id,
                            plugin: &plugin,
                            config: &config,
                            grants: installation.grants.names().map(str::to_owned).collect(),
                            timeout_ms,
                            memory_bytes,
                            always: installation.bundles,
                        }))
                    });
                let settings = with_bundles(timeout_ms, bundles);
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
                        on_error,
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
            if plugin.runs_tasks() || plugin.runs_jobs() {
                let tasks = match tasks(&plugin, installation) {
                    Ok(tasks) => tasks,
                    Err(task_problems) => {
                        for (suffix, reason) in task_problems {
                            problem(&suffix, reason);
                        }
                        continue;
                    }
                };
                let settings = settings(installation.task_timeout_ms());
                if !started(&settings) {
                    continue;
                }
                let schedule = installation.schedule.clone().unwrap_or_default();
                installed.tasks.push(Arc::new(TaskInstallation {
                    id: id.clone(),
                    plugin: plugin.clone(),
                    settings,
                    tasks,
                    starting_deadline: Duration::from_secs(schedule.starting_deadline_seconds),
                    jobs: plugin
                        .runs_jobs()
                        .then(|| installation.jobs.clone().unwrap_or_default()),
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

/// The tasks of `plugin` for `installation`: the manifest's, with the installation's schedules
/// where it gives them, in its time zone; or every problem as (key suffix, reason).
fn tasks(
    plugin: &Plugin,
    installation: &InstallationConfig,
) -> Result<Vec<Task>, Vec<(String, String)>> {
    let schedule = installation.schedule.clone().unwrap_or_default();
    let mut problems = Vec::new();
    for name in schedule.tasks.keys() {
        if !plugin.manifest.tasks.iter().any(|t| &t.name == name) {
            let declared: Vec<&str> = plugin
                .manifest
                .tasks
                .iter()
                .map(|t| t.name.as_str())
                .collect();
            problems.push((
                format!(".schedule.tasks.{name}"),
                format!(
                    "plugin `{}` has no task `{name}` (tasks: {})",
                    plugin.manifest.name,
                    declared.join(", ")
                ),
            ));
        }
    }
    let mut tasks = Vec::new();
    for task in &plugin.manifest.tasks {
        let (text, suffix) = match schedule.tasks.get(&task.name) {
            Some(text) => (text, format!(".schedule.tasks.{}", task.name)),
            None => (&task.schedule, ".plugin".to_owned()),
        };
        match Schedule::parse(text, &schedule.time_zone) {
            Ok(parsed) => tasks.push(Task {
                name: task.name.clone(),
                schedule: parsed,
            }),
            Err(reason) => problems.push((suffix, format!("task `{}`: {reason}", task.name))),
        }
    }
    if problems.is_empty() {
        Ok(tasks)
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

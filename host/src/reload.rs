//! Hot reload: a new config put in force while events flow, losing and doubling none.
//!
//! A reload reads the new file and checks it whole before anything changes: every problem of
//! the file, every plugin compiled, its config checked against its manifest and started once.
//! A file that fails changes nothing. Only the teams (tokens and plugin installations) change
//! in place; the other sections (`[server]`, `[kafka]`, the capability sections...) need a
//! restart, and a reload that changes them is refused naming them.
//!
//! Then it swaps the deployment ([`Current`]): capture takes the new tokens from the next
//! request, and each worker round reads the deployment once, so a round in flight finishes on
//! the old chains and each event goes through exactly one version of its team's chain. An
//! installation whose plugin file (by content), config, grants and limits are the same as
//! before is kept as it is: its live instances, its state, its breaker, its export cursor and
//! its runners go on. A changed or removed installation's runners stop after the call they are
//! in (an export's unfinished batch stays recorded, so the new runner sends it again, same id);
//! the new runners start before the old ones stop, and take the lease as it is released.

use crate::backends::Backends;
use crate::chain::Installation;
use crate::config::{Config, ConfigError, Problem, Token};
use crate::deployment::{self, Current, Deployment, RunnerHandle};
use crate::export::{self, ExportInstallation};
use crate::installations::{self, Installed};
use crate::roles::{Role, Roles};
use crate::runtime::{InstanceSettings, Plugin, Runtime};
use crate::schedule::lock::RunLock;
use crate::schedule::{self, TaskInstallation};
use crate::signal::Signal;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use thiserror::Error;

/// What starts the runners of installations on this node, for the exporter and scheduler roles.
pub struct Launcher {
    /// This node's roles.
    pub roles: Roles,
    /// The backends runners keep their state in.
    pub backends: Backends,
    /// The lock runners of every node share.
    pub lock: Arc<dyn RunLock>,
    /// Notified when this process stores events.
    pub stored: Arc<Signal>,
    /// This node's id.
    pub node: String,
}

impl Launcher {
    /// Starts the runners of `exports` and `tasks` that this node's roles run. Blocking.
    pub fn start(
        &self,
        exports: &[Arc<ExportInstallation>],
        tasks: &[Arc<TaskInstallation>],
    ) -> anyhow::Result<Vec<RunnerHandle>> {
        let mut runners = Vec::new();
        if self.roles.has(Role::Exporter) {
            runners.extend(export::start(
                exports,
                &self.backends,
                &self.lock,
                &self.stored,
                &self.node,
            )?);
        }
        if self.roles.has(Role::Scheduler) {
            let started = schedule::start(
                tasks,
                &|| self.backends.task_history(),
                &self.lock,
                &self.node,
            );
            match started {
                Ok(started) => runners.extend(started),
                Err(error) => {
                    deployment::stop(runners);
                    return Err(error.into());
                }
            }
        }
        Ok(runners)
    }
}

/// Refuses export installations at scale without a shared export state: with `[clickhouse]`
/// their cursors must be on Redis, where every exporter node sees them.
pub fn check_exports(
    config: &Config,
    roles: &Roles,
    exports: &[Arc<ExportInstallation>],
) -> Result<(), String> {
    if config.clickhouse.is_none()
        || config.redis.is_some()
        || !roles.has(Role::Exporter)
        || exports.is_empty()
    {
        return Ok(());
    }
    let names: Vec<&str> = exports.iter().map(|e| &*e.id).collect();
    Err(format!(
        "{}: export installations ({}) read stored events from ClickHouse, so their cursors must be where every exporter node sees them: add [redis]",
        config.path.display(),
        names.join(", ")
    ))
}

/// What a reload changed, by installation (`team-<id>/<installation>`), each list sorted.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Changes {
    /// Installations new in the file.
    pub added: Vec<String>,
    /// Installations gone from the file.
    pub removed: Vec<String>,
    /// Installations whose plugin file, config, grants or limits changed: started anew.
    pub changed: Vec<String>,
    /// Installations kept as they were, with their instances, state and runners.
    pub unchanged: Vec<String>,
    /// Teams in force after the reload.
    pub teams: usize,
}

/// Why a reload changed nothing.
#[derive(Debug, Error)]
pub enum ReloadError {
    /// The new file has problems (all of them).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The new file changes sections only a restart applies.
    #[error("{path}: {sections} changed; a restart applies them (a reload changes only the teams)", path = .path, sections = .sections.join(", "))]
    NeedsRestart {
        /// The file.
        path: String,
        /// The sections, as `[name]`.
        sections: Vec<String>,
    },
    /// The new runners could not start.
    #[error("cannot start the new runners: {0}")]
    Runners(String),
    /// A promotion or a rollback cannot be made as asked.
    #[error("{0}")]
    Refused(String),
}

/// A rollback that was made.
#[derive(Debug, Clone, Serialize)]
pub struct Rollback {
    /// When, epoch ms.
    pub at_ms: i64,
    /// `team-N/id`.
    pub installation: String,
    /// The version left (SHA-256).
    pub from: String,
    /// The version returned to.
    pub to: crate::versions::Version,
    /// Why: the operator's command, or the breaker.
    pub reason: String,
    /// What the reload changed.
    pub changes: Changes,
}

/// Reloads the config of a running server.
pub struct Reloader {
    runtime: Arc<Runtime>,
    current: Arc<Current>,
    launcher: Launcher,
    /// The config in force; held while a reload runs, so reloads run one at a time.
    config: Mutex<Config>,
    /// The rollbacks made since the start, newest last.
    rollbacks: Mutex<Vec<Rollback>>,
}

impl Reloader {
    /// The reloader of a server running `config` as `current`.
    pub fn new(
        runtime: Arc<Runtime>,
        current: Arc<Current>,
        launcher: Launcher,
        config: Config,
    ) -> Self {
        Self {
            runtime,
            current,
            launcher,
            config: Mutex::new(config),
            rollbacks: Mutex::default(),
        }
    }

    /// The rollbacks made since the start, newest last.
    pub fn rollbacks(&self) -> Vec<Rollback> {
        self.rollbacks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `problem` of the file `new`; when it is an installation's missing grants, with what the
    /// version in force needed and was granted beside what the new one needs and is granted.
    fn with_grants_compared(&self, new: &Config, old: &Deployment, problem: Problem) -> Problem {
        let Some(prefix) = problem.key.strip_suffix(".grants") else {
            return problem;
        };
        let Some((team, installation)) = new.teams.iter().find_map(|team| {
            let found = team.plugins.iter().find(|p| p.key == prefix)?;
            Some((team.id, found))
        }) else {
            return problem;
        };
        let Ok(plugin) = self.runtime.load(&installation.plugin) else {
            return problem;
        };
        let id = installation.id.qualified(team);
        let in_force = old
            .chains
            .all()
            .map(|i| (&i.id, &i.plugin, &i.settings))
            .chain(old.exports.iter().map(|e| (&e.id, &e.plugin, &e.settings)))
            .chain(old.tasks.iter().map(|t| (&t.id, &t.plugin, &t.settings)))
            .find(|(i, ..)| ***i == *id);
        let list = |names: Vec<&str>| match names.is_empty() {
            true => "(none)".to_owned(),
            false => names.join(", "),
        };
        let granted: Vec<&str> = installation.grants.names().collect();
        let needs = plugin.needs();
        let missing: Vec<&str> = needs
            .iter()
            .copied()
            .filter(|n| !installation.grants.allows(n))
            .collect();
        let (old_needs, old_granted, old_sha) = match in_force {
            Some((_, plugin, settings)) => (
                list(plugin.needs()),
                list(settings.context.grants.names().collect()),
                short(&plugin.hash),
            ),
            None => ("(not installed)".into(), "-".into(), "-".into()),
        };
        let in_force_title = format!("in force ({old_sha})");
        let new_title = format!("new ({})", short(&plugin.hash));
        let rows = [
            ("", in_force_title, new_title),
            ("needs", old_needs, list(needs.clone())),
            ("granted", old_granted, list(granted)),
            ("missing", String::new(), list(missing)),
        ];
        let mut reason = format!(
            "{} — {id}: the new version asks for capabilities it is not granted",
            problem.reason
        );
        for (label, before, after) in rows {
            reason.push_str(&format!("\n{label:<10} {before:<36} {after}"));
        }
        Problem {
            key: problem.key,
            reason,
        }
    }

    /// Makes shadow installation `installation` (`team-N/id`) live: edits the config file in
    /// force and reloads it (a failed reload puts the file back). Blocking.
    pub fn promote(&self, installation: &str) -> Result<(String, Changes), ReloadError> {
        let (team, id) = split_installation(installation)?;
        let path = self.config().path;
        self.edit_and_reload(&path, |path| crate::config::edit::promote(path, team, id))
    }

    /// Returns `installation` to its last good plugin version (or `to`, a SHA-256 it ran),
    /// marking the version it leaves as bad for `reason`. Blocking.
    pub fn rollback(
        &self,
        installation: &str,
        to: Option<&str>,
        reason: &str,
    ) -> Result<Rollback, ReloadError> {
        let (team, id) = split_installation(installation)?;
        let config = self.config();
        let deployment = self.current.get();
        let current = deployment
            .chains
            .all()
            .map(|i| (&i.id, &i.plugin))
            .chain(deployment.exports.iter().map(|e| (&e.id, &e.plugin)))
            .chain(deployment.tasks.iter().map(|t| (&t.id, &t.plugin)))
            .find(|(i, _)| &***i == installation)
            .map(|(_, p)| p.hash.clone())
            .ok_or_else(|| ReloadError::Refused(format!("no live installation {installation}")))?;
        let store = |e: crate::store::StoreError| ReloadError::Refused(e.to_string());
        let conn = crate::store::open(&config.server.data_dir).map_err(store)?;
        let target = match to {
            Some(sha) => crate::versions::find(&conn, installation, sha).map_err(store)?,
            None => crate::versions::previous(&conn, installation, &current).map_err(store)?,
        }
        .ok_or_else(|| {
            ReloadError::Refused(format!(
                "{installation} has no earlier good version to return to (see `sluice versions`)"
            ))
        })?;
        let (_, changes) = self.edit_and_reload(&config.path, |path| {
            crate::config::edit::set_plugin(path, team, id, &target.file)
        })?;
        crate::versions::mark_bad(&conn, installation, &current, reason).map_err(store)?;
        let rollback = Rollback {
            at_ms: crate::store::now_ms(),
            installation: installation.to_owned(),
            from: current,
            to: target,
            reason: reason.to_owned(),
            changes,
        };
        tracing::warn!(installation, from = %rollback.from, to = %rollback.to.sha256, reason, "rolled back");
        metrics::counter!("sluice_rollbacks_total", "installation" => installation.to_owned())
            .increment(1);
        self.rollbacks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(rollback.clone());
        Ok(rollback)
    }

    /// Edits the file at `path` with `edit`, then reloads it; puts the file back if the reload
    /// fails.
    fn edit_and_reload(
        &self,
        path: &Path,
        edit: impl FnOnce(&Path) -> Result<String, String>,
    ) -> Result<(String, Changes), ReloadError> {
        let before = std::fs::read(path)
            .map_err(|e| ReloadError::Refused(format!("cannot read {}: {e}", path.display())))?;
        let said = edit(path).map_err(ReloadError::Refused)?;
        match self.reload(None) {
            Ok(changes) => Ok((said, changes)),
            Err(error) => {
                if let Err(e) = std::fs::write(path, &before) {
                    tracing::error!(path = %path.display(), error = %e, "cannot put the config file back");
                }
                Err(error)
            }
        }
    }

    /// The config in force.
    pub fn config(&self) -> Config {
        self.config
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts the config at `path` (the file in force, if `None`) in force, once it is checked
    /// whole; returns what changed. Blocking: it compiles plugins and waits for runners.
    pub fn reload(&self, path: Option<&Path>) -> Result<Changes, ReloadError> {
        let mut config = self.config.lock().unwrap_or_else(PoisonError::into_inner);
        let path = path.unwrap_or(&config.path).to_owned();
        let new = Config::load(&path, &|key| std::env::var(key).ok())?;
        let sections = restart_needed(&config, &new);
        if !sections.is_empty() {
            return Err(ReloadError::NeedsRestart {
                path: path.display().to_string(),
                sections,
            });
        }
        let refused = |reason: String| ConfigError {
            path: path.clone(),
            problems: vec![Problem {
                key: "(roles)".into(),
                reason,
            }],
        };
        self.launcher.roles.check(&new).map_err(refused)?;
        let old = self.current.get();
        let installed =
            installations::load(&self.runtime, &new, &old.services).map_err(|problems| {
                ConfigError {
                    path: path.clone(),
                    problems: problems
                        .into_iter()
                        .map(|p| self.with_grants_compared(&new, &old, p))
                        .collect(),
                }
            })?;
        check_exports(&new, &self.launcher.roles, &installed.exports).map_err(refused)?;
        // The stores the new installations will write to answer (as they were checked at start).
        if let Some(stores) = &old.services.object_stores {
            let problems: Vec<Problem> = stores
                .unreachable(std::time::Duration::from_secs(10))
                .into_iter()
                .map(|(name, why)| Problem {
                    key: format!("object_stores.{name}"),
                    reason: format!("cannot be listed: {why}"),
                })
                .collect();
            if !problems.is_empty() {
                return Err(ConfigError {
                    path: path.clone(),
                    problems,
                }
                .into());
            }
        }
        let teams: HashMap<Token, u64> =
            new.teams.iter().map(|t| (t.token.clone(), t.id)).collect();
        let merged = merge(&old, installed);
        let mut deployment = Deployment::new(teams, merged.installed, old.services.clone());
        deployment.shadows = crate::shadow::Shadows::start(&new, &self.runtime, &old.services)
            .map_err(|e| ReloadError::Runners(format!("the shadows cannot start: {e:#}")))?;
        // The new runners first (they wait for the leases the old ones hold), then the old ones
        // of what changed stop, then the kept ones move over.
        let started = self
            .launcher
            .start(&merged.start_exports, &merged.start_tasks)
            .map_err(|e| ReloadError::Runners(format!("{e:#}")))?;
        deployment.adopt(started);
        for id in merged.changes.removed.iter().chain(&merged.changes.changed) {
            old.stop_runners_of(id);
        }
        for id in &merged.changes.unchanged {
            deployment.adopt(old.take_runners_of(id));
        }
        let mut changes = merged.changes;
        changes.teams = new.teams.len();
        self.current.replace(deployment);
        if let Err(error) =
            crate::versions::record_deployment(&new.server.data_dir, &self.current.get())
        {
            tracing::warn!(%error, "the plugin versions in force are not recorded");
        }
        tracing::info!(
            path = %path.display(),
            added = ?changes.added,
            removed = ?changes.removed,
            changed = ?changes.changed,
            unchanged = changes.unchanged.len(),
            "config reloaded"
        );
        metrics::counter!("sluice_reloads_total", "outcome" => "ok").increment(1);
        *config = new;
        Ok(changes)
    }
}

/// The first 12 digits of a SHA-256.
fn short(sha: &str) -> String {
    sha.chars().take(12).collect()
}

/// `team-N/id` as the team and the id.
fn split_installation(installation: &str) -> Result<(u64, &str), ReloadError> {
    installation
        .strip_prefix("team-")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(team, id)| Some((team.parse().ok()?, id)))
        .ok_or_else(|| {
            ReloadError::Refused(format!(
                "`{installation}` is not an installation (team-N/id)"
            ))
        })
}

/// How long after a version is first put in force its breaker opening rolls it back, for
/// installations with `auto_rollback = true`.
pub const AUTO_ROLLBACK_WINDOW_MS: i64 = 10 * 60 * 1000;

/// Rolls back each installation with `auto_rollback` whose breaker is open within
/// [`AUTO_ROLLBACK_WINDOW_MS`] of its version's first time in force. Blocking; run it now and
/// then.
pub fn auto_rollback(reloader: &Reloader) {
    let config = reloader.config();
    let watched: Vec<String> = config
        .teams
        .iter()
        .flat_map(|team| {
            team.plugins
                .iter()
                .filter(|p| p.auto_rollback)
                .map(move |p| p.id.qualified(team.id))
        })
        .collect();
    if watched.is_empty() {
        return;
    }
    let deployment = reloader.current.get();
    let Ok(conn) = crate::store::open(&config.server.data_dir) else {
        return;
    };
    for id in watched {
        let Some(installation) = deployment.chains.all().find(|i| *i.id == *id) else {
            continue;
        };
        let health = installation.health();
        if health.state != "breaker_open" {
            continue;
        }
        let since = crate::versions::first_in_force(&conn, &id, &installation.plugin.hash)
            .ok()
            .flatten();
        let age = since.map(|at| crate::store::now_ms() - at);
        if age.is_none_or(|age| age > AUTO_ROLLBACK_WINDOW_MS) {
            continue;
        }
        let reason = format!(
            "auto_rollback: its breaker opened {} s after this version was put in force ({})",
            age.unwrap_or(0) / 1000,
            health.reason.unwrap_or_default()
        );
        match reloader.rollback(&id, None, &reason) {
            Ok(rollback) => crate::capabilities::log::record(
                &installation.settings.context,
                crate::capabilities::log::Level::Error,
                &format!(
                    "rolled back from {} to {}: {reason}",
                    rollback.from, rollback.to.sha256
                ),
            ),
            Err(error) => {
                tracing::error!(installation = %id, %error, "auto_rollback could not roll back")
            }
        }
    }
}

/// The sections of `new` that differ from `old` other than the teams, as `[name]`.
fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    [
        ("[server]", old.server == new.server),
        ("[admin]", old.admin == new.admin),
        ("[capture]", old.capture == new.capture),
        ("[queue]", old.queue == new.queue),
        ("[kafka]", old.kafka == new.kafka),
        ("[clickhouse]", old.clickhouse == new.clickhouse),
        ("[redis]", old.redis == new.redis),
        ("[retention]", old.retention == new.retention),
        (
            "the capability sections ([geoip], [object_stores])",
            old.capabilities == new.capabilities,
        ),
    ]
    .into_iter()
    .filter(|(_, same)| !same)
    .map(|(name, _)| name.to_owned())
    .collect()
}

/// A merge of what a new file installs with what runs.
struct Merged {
    /// What the new deployment runs: kept installations as they were, the rest new.
    installed: Installed,
    /// Export installations that need runners.
    start_exports: Vec<Arc<ExportInstallation>>,
    /// Task installations that need runners.
    start_tasks: Vec<Arc<TaskInstallation>>,
    changes: Changes,
}

/// Whether two installations' instances would be the same: the same plugin file (by content),
/// config, grants and limits.
fn same_instances(a: (&Plugin, &InstanceSettings), b: (&Plugin, &InstanceSettings)) -> bool {
    let ((pa, sa), (pb, sb)) = (a, b);
    pa.hash == pb.hash
        && sa.config == sb.config
        && sa.memory_bytes == sb.memory_bytes
        && sa.context.team_id == sb.context.team_id
        && sa.context.grants == sb.context.grants
        && sa.context.timeout == sb.context.timeout
}

fn same_transform(a: &Installation, b: &Installation) -> bool {
    same_instances((&a.plugin, &a.settings), (&b.plugin, &b.settings))
        && a.on_error == b.on_error
        && a.breaker_config == b.breaker_config
}

fn same_export(a: &ExportInstallation, b: &ExportInstallation) -> bool {
    same_instances((&a.plugin, &a.settings), (&b.plugin, &b.settings)) && a.config == b.config
}

fn same_tasks(a: &TaskInstallation, b: &TaskInstallation) -> bool {
    let schedules = |t: &TaskInstallation| -> Vec<(String, String, String)> {
        t.tasks
            .iter()
            .map(|task| {
                (
                    task.name.clone(),
                    task.schedule.text.clone(),
                    task.schedule.zone().to_string(),
                )
            })
            .collect()
    };
    same_instances((&a.plugin, &a.settings), (&b.plugin, &b.settings))
        && schedules(a) == schedules(b)
        && a.starting_deadline == b.starting_deadline
        && a.jobs == b.jobs
}

/// Per installation id, the parts it has (a plugin may transform, export and run tasks).
#[derive(Default)]
struct Parts<'a> {
    transform: Option<(u64, &'a Arc<Installation>)>,
    export: Option<&'a Arc<ExportInstallation>>,
    tasks: Option<&'a Arc<TaskInstallation>>,
}

fn parts(installed: &Installed) -> HashMap<&str, Parts<'_>> {
    let mut parts: HashMap<&str, Parts<'_>> = HashMap::new();
    for (team, chain) in installed.chains.teams() {
        for installation in chain {
            parts.entry(&installation.id).or_default().transform = Some((team, installation));
        }
    }
    for export in &installed.exports {
        parts.entry(&export.id).or_default().export = Some(export);
    }
    for tasks in &installed.tasks {
        parts.entry(&tasks.id).or_default().tasks = Some(tasks);
    }
    parts
}

/// Whether every part of an installation is as it was.
fn unchanged(old: &Parts<'_>, new: &Parts<'_>) -> bool {
    let transform = match (old.transform, new.transform) {
        (None, None) => true,
        (Some((ta, a)), Some((tb, b))) => ta == tb && same_transform(a, b),
        _ => false,
    };
    let export = match (old.export, new.export) {
        (None, None) => true,
        (Some(a), Some(b)) => same_export(a, b),
        _ => false,
    };
    let tasks = match (old.tasks, new.tasks) {
        (None, None) => true,
        (Some(a), Some(b)) => same_tasks(a, b),
        _ => false,
    };
    transform && export && tasks
}

/// What `old` keeps of itself under `new` (installations unchanged in every part), and the rest
/// of `new`, in the new file's order.
fn merge(old: &Deployment, new: Installed) -> Merged {
    let old_installed = Installed {
        chains: old.chains.clone(),
        exports: old.exports.clone(),
        tasks: old.tasks.clone(),
    };
    let old_parts = parts(&old_installed);
    let new_parts = parts(&new);
    let kept: BTreeSet<&str> = new_parts
        .iter()
        .filter(|(id, new)| old_parts.get(*id).is_some_and(|old| unchanged(old, new)))
        .map(|(id, _)| *id)
        .collect();
    let mut merged = Merged {
        installed: Installed::default(),
        start_exports: Vec::new(),
        start_tasks: Vec::new(),
        changes: Changes::default(),
    };
    for (team, chain) in new.chains.teams() {
        for installation in chain {
            let chosen = match old_parts.get(&*installation.id) {
                Some(Parts {
                    transform: Some((_, old)),
                    ..
                }) if kept.contains(&*installation.id) => (*old).clone(),
                _ => installation.clone(),
            };
            merged.installed.chains.push_shared(team, chosen);
        }
    }
    for export in &new.exports {
        match old_parts.get(&*export.id).and_then(|p| p.export) {
            Some(old) if kept.contains(&*export.id) => merged.installed.exports.push(old.clone()),
            _ => {
                merged.installed.exports.push(export.clone());
                merged.start_exports.push(export.clone());
            }
        }
    }
    for tasks in &new.tasks {
        match old_parts.get(&*tasks.id).and_then(|p| p.tasks) {
            Some(old) if kept.contains(&*tasks.id) => merged.installed.tasks.push(old.clone()),
            _ => {
                merged.installed.tasks.push(tasks.clone());
                merged.start_tasks.push(tasks.clone());
            }
        }
    }
    let changes = &mut merged.changes;
    for id in new_parts.keys() {
        let list = if kept.contains(id) {
            &mut changes.unchanged
        } else if old_parts.contains_key(id) {
            &mut changes.changed
        } else {
            &mut changes.added
        };
        list.push((*id).to_owned());
    }
    changes.removed = old_parts
        .keys()
        .filter(|id| !new_parts.contains_key(*id))
        .map(|id| (*id).to_owned())
        .collect();
    for list in [
        &mut changes.added,
        &mut changes.removed,
        &mut changes.changed,
        &mut changes.unchanged,
    ] {
        list.sort();
    }
    merged
}

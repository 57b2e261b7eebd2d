//! `[[teams]]` and `[[teams.plugins]]`: teams, their tokens, and their plugin installations.

use super::{
    BreakerConfig, Collector, ExportConfig, InstallationId, JobsConfig, ScheduleConfig, Token,
};
use crate::capabilities::Grants;
use serde::Deserialize;
use sluice_abi::manifest::FailureMode;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// `[[teams]]`
#[derive(Debug, Clone)]
pub struct TeamConfig {
    /// Team id stored with every event.
    pub id: u64,
    /// Human name, for logs.
    pub name: Option<String>,
    /// Project API key producers send (`api_key` / `token`).
    pub token: Token,
    /// Plugin installations, run in this order.
    pub plugins: Vec<InstallationConfig>,
}

/// `[[teams]]` as written, before its token is checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTeam {
    /// Team id stored with every event.
    id: u64,
    /// Human name, for logs.
    #[serde(default)]
    name: Option<String>,
    /// Project API key producers send (`api_key` / `token`).
    token: String,
}

/// `[[teams.plugins]]`: one plugin installation.
#[derive(Debug, Clone)]
pub struct InstallationConfig {
    /// Where it is in the file, e.g. `teams[0].plugins[1]`, for problems found later.
    pub key: String,
    /// Id, unique within the team.
    pub id: InstallationId,
    /// Path of the plugin's `.wasm` component.
    pub plugin: PathBuf,
    /// Values for the plugin's config schema.
    pub config: toml::Table,
    /// Deadline of one call into the plugin, in milliseconds, if the operator set one (the
    /// default depends on the hook: see [`InstallationConfig::timeout_ms`]).
    pub timeout_ms: Option<u64>,
    /// Memory cap of one instance, in MiB.
    pub memory_mb: u64,
    /// What happens to an event when this plugin fails on it, if the operator said; otherwise
    /// the plugin's manifest decides (see [`OnError::effective`]).
    pub on_error: Option<OnError>,
    /// When to stop calling the plugin while it keeps failing.
    pub breaker: BreakerConfig,
    /// How its exports are batched and retried, if the operator set it.
    pub export: Option<ExportConfig>,
    /// When its tasks run, if the operator set it.
    pub schedule: Option<ScheduleConfig>,
    /// How its jobs are retried, if the operator set it.
    pub jobs: Option<JobsConfig>,
    /// Host capabilities granted to this installation, with their settings.
    pub grants: Grants,
    /// Whether every failure leaves a failure bundle (dead-lettered ones always do).
    pub bundles: bool,
    /// Set when it runs as a shadow: beside the live chain, on a sample of live events, with
    /// no effect on what is stored.
    pub shadow: Option<Shadow>,
    /// Whether a version that trips the breaker soon after a reload is rolled back by itself.
    pub auto_rollback: bool,
}

/// How a shadow installation runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    /// The share of live events it sees, in (0, 1].
    pub sample: f64,
    /// The live installation of the team it would take the place of, if any (else it would
    /// join the chain where it is written).
    pub replaces: Option<InstallationId>,
}

/// `[[teams.plugins]]` as written, without the tables capabilities own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstallation {
    /// Id, unique within the team; the installation is called `team-<id>/<this>` in logs.
    id: String,
    /// Path of the plugin's `.wasm` component.
    plugin: PathBuf,
    /// Values for the plugin's config schema.
    #[serde(default)]
    config: toml::Table,
    /// Deadline of one call into the plugin, in milliseconds.
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Memory cap of one instance, in MiB.
    #[serde(default = "default_memory_mb")]
    memory_mb: u64,
    /// What happens to an event when this plugin fails on it (the manifest's default if unset).
    #[serde(default)]
    on_error: Option<OnError>,
    /// When to stop calling the plugin while it keeps failing.
    #[serde(default)]
    breaker: BreakerConfig,
    /// How its exports are batched and retried.
    #[serde(default)]
    export: Option<ExportConfig>,
    /// When its tasks run.
    #[serde(default)]
    schedule: Option<ScheduleConfig>,
    /// How its jobs are retried.
    #[serde(default)]
    jobs: Option<JobsConfig>,
    /// Host capabilities granted to this installation (none by default).
    #[serde(default)]
    grants: Vec<String>,
    /// Whether every failure leaves a failure bundle.
    #[serde(default)]
    bundles: bool,
    /// Whether it runs as a shadow.
    #[serde(default)]
    shadow: bool,
    /// A shadow's share of live events.
    #[serde(default)]
    sample: Option<f64>,
    /// The installation a shadow would replace.
    #[serde(default)]
    replaces: Option<String>,
    /// Whether a version that trips the breaker soon after a reload is rolled back.
    #[serde(default)]
    auto_rollback: bool,
}

/// Deadline of a `transform` call when the operator sets none: events wait for it.
pub const DEFAULT_TRANSFORM_TIMEOUT_MS: u64 = 1_000;
/// Deadline of an `exporter` call when the operator sets none: it uploads a whole batch.
pub const DEFAULT_EXPORT_TIMEOUT_MS: u64 = 30_000;
/// Deadline of a task run or a job when the operator sets none.
pub const DEFAULT_TASK_TIMEOUT_MS: u64 = 60_000;

impl InstallationConfig {
    /// The deadline of a `transform` call, in milliseconds.
    pub fn transform_timeout_ms(&self) -> u64 {
        self.timeout_ms.unwrap_or(DEFAULT_TRANSFORM_TIMEOUT_MS)
    }

    /// The deadline of an `exporter` call, in milliseconds.
    pub fn export_timeout_ms(&self) -> u64 {
        self.timeout_ms.unwrap_or(DEFAULT_EXPORT_TIMEOUT_MS)
    }

    /// The deadline of a task run or a job, in milliseconds.
    pub fn task_timeout_ms(&self) -> u64 {
        self.timeout_ms.unwrap_or(DEFAULT_TASK_TIMEOUT_MS)
    }
}

fn default_memory_mb() -> u64 {
    64
}

/// What happens to an event when a plugin fails on it (error, trap, timeout, bad output, open
/// breaker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The event continues as it was before this plugin.
    #[default]
    Skip,
    /// The event is dropped.
    Drop,
    /// The event is kept in the dead-letter table with the error.
    DeadLetter,
}

impl OnError {
    /// What an installation does: the operator's choice if any, else the plugin's safe failure
    /// default from its manifest.
    pub fn effective(operator: Option<OnError>, manifest: FailureMode) -> OnError {
        operator.unwrap_or(match manifest {
            FailureMode::Skip => OnError::Skip,
            FailureMode::Drop => OnError::Drop,
            FailureMode::DeadLetter => OnError::DeadLetter,
        })
    }
}

/// Reads the `teams` array; teams whose token is unusable are reported and left out.
pub(super) fn load(c: &mut Collector, teams: Option<&toml::Value>, base: &Path) -> Vec<TeamConfig> {
    let items = match teams {
        None => return Vec::new(),
        Some(toml::Value::Array(items)) => items,
        Some(_) => {
            c.add("teams", "must be an array of tables ([[teams]])");
            return Vec::new();
        }
    };
    let mut ids = HashSet::new();
    let mut tokens = HashSet::new();
    let mut teams = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("teams[{i}]");
        let mut item = item.clone();
        let plugins = item.as_table_mut().and_then(|t| t.remove("plugins"));
        let Some(raw) = c.value::<RawTeam>(&key, item) else {
            continue;
        };
        let token = Token::parse(&raw.token).map_err(|reason| {
            c.add(
                format!("{key}.token"),
                format!("not a usable project token ({reason})"),
            );
        });
        let plugins = installations(c, &key, plugins, base);
        if !ids.insert(raw.id) {
            c.add(
                format!("{key}.id"),
                format!("team id {} is used twice", raw.id),
            );
        }
        if !tokens.insert(raw.token) {
            c.add(format!("{key}.token"), "token is used by another team");
        }
        if let Ok(token) = token {
            teams.push(TeamConfig {
                id: raw.id,
                name: raw.name,
                token,
                plugins,
            });
        }
    }
    teams
}

fn installations(
    c: &mut Collector,
    team_key: &str,
    plugins: Option<toml::Value>,
    base: &Path,
) -> Vec<InstallationConfig> {
    let items = match plugins {
        None => return Vec::new(),
        Some(toml::Value::Array(items)) => items,
        Some(_) => {
            c.add(
                format!("{team_key}.plugins"),
                "must be an array of tables ([[teams.plugins]])",
            );
            return Vec::new();
        }
    };
    let mut ids = HashSet::new();
    let mut installations = Vec::new();
    for (j, mut item) in items.into_iter().enumerate() {
        let key = format!("{team_key}.plugins[{j}]");
        let owned = item
            .as_table_mut()
            .map(Grants::take_owned_tables)
            .unwrap_or_default();
        let Some(raw) = c.value::<RawInstallation>(&key, item) else {
            continue;
        };
        let id =
            InstallationId::parse(&raw.id).map_err(|reason| c.add(format!("{key}.id"), reason));
        if let Ok(id) = &id
            && !ids.insert(id.clone())
        {
            c.add(
                format!("{key}.id"),
                format!("`{id}` is used twice in this team"),
            );
        }
        let plugin = base.join(&raw.plugin);
        if !plugin.is_file() {
            c.add(
                format!("{key}.plugin"),
                format!("{} does not exist (build plugins with `cargo build --release --target wasm32-wasip2`)", plugin.display()),
            );
        }
        if raw
            .timeout_ms
            .is_some_and(|ms| !(1..=600_000).contains(&ms))
        {
            c.add(format!("{key}.timeout_ms"), "must be between 1 and 600000");
        }
        if !(1..=4_096).contains(&raw.memory_mb) {
            c.add(format!("{key}.memory_mb"), "must be between 1 and 4096");
        }
        raw.breaker.check(c, &format!("{key}.breaker"));
        if let Some(export) = &raw.export {
            export.check(c, &format!("{key}.export"));
        }
        if let Some(schedule) = &raw.schedule {
            schedule.check(c, &format!("{key}.schedule"));
        }
        if let Some(jobs) = &raw.jobs {
            jobs.check(c, &format!("{key}.jobs"));
        }
        let grants = Grants::load(c, &key, &raw.grants, owned);
        let shadow = shadow(c, &key, &raw);
        if let Ok(id) = id {
            installations.push(InstallationConfig {
                key,
                id,
                plugin,
                config: raw.config,
                timeout_ms: raw.timeout_ms,
                memory_mb: raw.memory_mb,
                on_error: raw.on_error,
                breaker: raw.breaker,
                export: raw.export,
                schedule: raw.schedule,
                jobs: raw.jobs,
                grants,
                bundles: raw.bundles,
                shadow,
                auto_rollback: raw.auto_rollback,
            });
        }
    }
    check_replaced(c, team_key, &installations);
    installations
}

/// The shadow settings of the installation at `key`, checked.
fn shadow(c: &mut Collector, key: &str, raw: &RawInstallation) -> Option<Shadow> {
    if !raw.shadow {
        for (name, set) in [
            ("sample", raw.sample.is_some()),
            ("replaces", raw.replaces.is_some()),
        ] {
            if set {
                c.add(
                    format!("{key}.{name}"),
                    "is for shadow installations (`shadow = true`)",
                );
            }
        }
        return None;
    }
    let sample = raw.sample.unwrap_or(1.0);
    if !(sample > 0.0 && sample <= 1.0) {
        c.add(format!("{key}.sample"), "must be above 0 and at most 1");
    }
    let replaces = raw.replaces.as_deref().and_then(|r| {
        InstallationId::parse(r)
            .map_err(|reason| c.add(format!("{key}.replaces"), reason))
            .ok()
    });
    if raw.auto_rollback {
        c.add(
            format!("{key}.auto_rollback"),
            "is for live installations, not shadows",
        );
    }
    Some(Shadow { sample, replaces })
}

/// Checks that what each shadow of a team replaces is a live installation of the team, replaced
/// by one shadow only.
fn check_replaced(c: &mut Collector, team_key: &str, installations: &[InstallationConfig]) {
    let mut replaced = HashSet::new();
    for installation in installations {
        let Some(target) = installation
            .shadow
            .as_ref()
            .and_then(|s| s.replaces.as_ref())
        else {
            continue;
        };
        let key = format!("{}.replaces", installation.key);
        let live = installations
            .iter()
            .any(|i| &i.id == target && i.shadow.is_none());
        if !live {
            c.add(
                key,
                format!("`{target}` is not a live installation of this team ({team_key})"),
            );
        } else if !replaced.insert(target.clone()) {
            c.add(key, format!("`{target}` is replaced by two shadows"));
        }
    }
}

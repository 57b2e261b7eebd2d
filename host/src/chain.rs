//! Plugin chains: each team's ordered installations, and running a batch of events through them.
//!
//! [`build`] loads every installation once at start (compiling each plugin file once, checking
//! its grants and its config against its manifest, and running `setup` to prove it starts),
//! reporting every problem at once. A [`ChainRunner`] belongs to one worker and keeps long-lived
//! instances: one per installation, or, for a stateless plugin, one per distinct config shared by
//! every installation (across teams) with that config. A trap discards only that instance, which
//! is rebuilt for the next batch; beyond the worker's instance budget the least recently used
//! instance is torn down.

use crate::capabilities::{self, Context, Grants, Services};
use crate::config::{Config, InstallationConfig, OnError, Problem};
use crate::runtime::{CallError, Instance, InstanceSettings, Plugin, Runtime, TrapKind};
use crate::store::DeadLetter;
use serde_json::Value;
use sluice_abi::wire::{self, BatchWriter, Outcome};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest `properties` a plugin may return, in bytes.
pub const MAX_PROPERTIES_BYTES: usize = 1024 * 1024;

/// One plugin installed for one team.
pub struct Installation {
    /// `team-<team id>/<installation id>`.
    pub id: Arc<str>,
    /// Which live instance serves it: its own id, or for a stateless plugin a key shared by
    /// every installation with the same plugin, config and limits.
    pub instance_key: Arc<str>,
    /// The team.
    pub team_id: u64,
    /// The compiled plugin.
    pub plugin: Arc<Plugin>,
    /// Config and limits of its instances.
    pub settings: InstanceSettings,
    /// What happens to an event the plugin fails on.
    pub on_error: OnError,
}

/// Every team's chain.
#[derive(Default)]
pub struct Chains {
    by_team: HashMap<u64, Vec<Arc<Installation>>>,
}

impl Chains {
    /// The chain of `team_id` (empty for unknown teams).
    pub fn of(&self, team_id: u64) -> &[Arc<Installation>] {
        self.by_team.get(&team_id).map_or(&[], Vec::as_slice)
    }

    /// Number of installations across all teams.
    pub fn installations(&self) -> usize {
        self.by_team.values().map(Vec::len).sum()
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
    // Instance keys of stateless plugins already started once, by (plugin, config, limits).
    let mut shared: HashMap<String, Arc<str>> = HashMap::new();
    let mut chains = Chains::default();
    for (i, team) in config.teams.iter().enumerate() {
        let chain = chains.by_team.entry(team.id).or_default();
        for (j, installation) in team.plugins.iter().enumerate() {
            let key = format!("teams[{i}].plugins[{j}]");
            let mut problem = |suffix: &str, reason: String| {
                problems.push(Problem {
                    key: format!("{key}{suffix}"),
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
            let id: Arc<str> = Arc::from(format!("team-{}/{}", team.id, installation.id));
            let ungranted = ungranted(&plugin, installation, &id);
            if !ungranted.is_empty() {
                problem(".grants", ungranted.join("; "));
                continue;
            }
            let config = Value::Object(resolved);
            let settings = InstanceSettings {
                context: Arc::new(Context {
                    installation: id.clone(),
                    team_id: team.id,
                    plugin: Arc::from(plugin.manifest.name.as_str()),
                    grants: Grants {
                        names: installation.grants.iter().cloned().collect(),
                        http: installation.http.clone().unwrap_or_default(),
                    },
                    timeout: Duration::from_millis(installation.timeout_ms),
                    services: services.clone(),
                }),
                config,
                memory_bytes: (installation.memory_mb as usize) << 20,
            };
            let sharing = plugin.manifest.stateless.then(|| {
                format!(
                    "{}\0{}\0{}\0{}",
                    installation.plugin.display(),
                    settings.config,
                    installation.timeout_ms,
                    installation.memory_mb
                )
            });
            let known = sharing.as_ref().and_then(|key| shared.get(key)).cloned();
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
                    match sharing {
                        Some(sharing) => {
                            let key: Arc<str> = Arc::from(format!(
                                "shared/{}#{}",
                                plugin.manifest.name,
                                shared.len() + 1
                            ));
                            shared.insert(sharing, key.clone());
                            key
                        }
                        None => id.clone(),
                    }
                }
            };
            chain.push(Arc::new(Installation {
                id,
                instance_key,
                team_id: team.id,
                plugin,
                settings,
                on_error: installation.on_error,
            }));
        }
    }
    if problems.is_empty() {
        Ok(chains)
    } else {
        Err(problems)
    }
}

/// The capabilities `plugin` needs that `installation` was not granted, each named with its
/// interface and the installation.
fn ungranted(plugin: &Plugin, installation: &InstallationConfig, id: &str) -> Vec<String> {
    plugin
        .needs()
        .into_iter()
        .filter(|need| !installation.grants.iter().any(|g| g == need))
        .map(|need| {
            let interface = capabilities::ALL
                .iter()
                .find(|c| c.name == need)
                .map_or(need, |c| c.interface);
            format!(
                "plugin `{}` needs `{interface}`, which installation {id} is not granted (add \"{need}\" to `grants`)",
                plugin.manifest.name
            )
        })
        .collect()
}

/// What came out of running chains.
#[derive(Debug, Default)]
pub struct ChainOutput {
    /// Events to store, encoded (with length prefix), in order.
    pub events: Vec<Vec<u8>>,
    /// Events plugins failed on, under a `dead_letter` policy.
    pub dead_letters: Vec<DeadLetter>,
    /// Session-recording events, which skip chains.
    pub recordings: Vec<Vec<u8>>,
}

/// A live instance and when it was last used.
struct Live {
    instance: Instance,
    last_used: u64,
}

/// One worker's live instances, by instance key, at most `capacity` of them.
pub struct ChainRunner {
    instances: HashMap<Arc<str>, Live>,
    capacity: usize,
    clock: u64,
}

impl ChainRunner {
    /// A runner that keeps at most `capacity` instances alive.
    pub fn new(capacity: usize) -> Self {
        Self {
            instances: HashMap::new(),
            capacity: capacity.max(1),
            clock: 0,
        }
    }

    /// Number of live instances.
    pub fn live(&self) -> usize {
        self.instances.len()
    }

    /// Runs `events` (all of one team, in order) through `chain`, appending results to `out`.
    pub fn run(
        &mut self,
        chain: &[Arc<Installation>],
        mut events: Vec<Vec<u8>>,
        out: &mut ChainOutput,
    ) {
        for installation in chain {
            if events.is_empty() {
                return;
            }
            events = self.apply(installation, events, out);
        }
        out.events.extend(events);
    }

    /// Tears down every instance.
    pub fn teardown(self) {
        for (_, live) in self.instances {
            live.instance.teardown();
        }
    }

    fn apply(
        &mut self,
        installation: &Installation,
        events: Vec<Vec<u8>>,
        out: &mut ChainOutput,
    ) -> Vec<Vec<u8>> {
        let id = installation.id.to_string();
        let mut batch = BatchWriter::with_capacity(events.iter().map(Vec::len).sum());
        for event in &events {
            batch.push_encoded(event);
        }
        let started = Instant::now();
        let result = self
            .instance(installation)
            .and_then(|instance| instance.transform(&batch.finish()));
        metrics::histogram!("sluice_plugin_call_duration_seconds", "installation" => id.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("sluice_plugin_calls_total", "installation" => id.clone()).increment(1);

        let bytes = match result {
            Ok(bytes) => bytes,
            Err(error) => {
                if matches!(error, CallError::Trap { .. }) {
                    self.discard(installation, &error);
                }
                return fail_all(installation, events, &error, out);
            }
        };
        let outcomes = match wire::read_outcomes(&bytes, events.len()) {
            Ok(outcomes) => outcomes,
            Err(e) => {
                let error = CallError::Trap {
                    kind: TrapKind::Contract,
                    message: format!("undecodable outcomes: {e}"),
                };
                self.discard(installation, &error);
                return fail_all(installation, events, &error, out);
            }
        };
        let mut next = Vec::with_capacity(events.len());
        let mut dropped = 0u64;
        for (event, outcome) in events.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Keep => next.push(event),
                Outcome::Drop(reason) => {
                    tracing::trace!(installation = %installation.id, reason, "event dropped by plugin");
                    dropped += 1;
                }
                Outcome::Replace(replacement) => {
                    match checked_replacement(installation, &event, replacement) {
                        Ok(replacement) => next.push(replacement),
                        Err(message) => fail(
                            installation,
                            event,
                            &message,
                            "invalid_event",
                            &mut next,
                            out,
                        ),
                    }
                }
                Outcome::Error { message, .. } => fail(
                    installation,
                    event,
                    &format!("plugin error: {message}"),
                    "plugin_error",
                    &mut next,
                    out,
                ),
            }
        }
        if dropped > 0 {
            metrics::counter!("sluice_plugin_events_dropped_total", "installation" => id)
                .increment(dropped);
        }
        self.recycle_if_bloated(installation);
        next
    }

    fn instance(&mut self, installation: &Installation) -> Result<&mut Instance, CallError> {
        self.clock += 1;
        let key = &installation.instance_key;
        if !self.instances.contains_key(key) && self.instances.len() >= self.capacity {
            self.evict_least_recent();
        }
        let live = match self.instances.entry(key.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                metrics::counter!("sluice_plugin_instances_started_total", "installation" => installation.id.to_string())
                    .increment(1);
                entry.insert(Live {
                    instance: Instance::start(&installation.plugin, &installation.settings)?,
                    last_used: 0,
                })
            }
        };
        live.last_used = self.clock;
        live.instance.enter(&installation.settings.context);
        Ok(&mut live.instance)
    }

    fn evict_least_recent(&mut self) {
        let oldest = self
            .instances
            .iter()
            .min_by_key(|(_, live)| live.last_used)
            .map(|(key, _)| key.clone());
        if let Some(live) = oldest.and_then(|key| self.instances.remove(&key)) {
            metrics::counter!("sluice_plugin_instances_evicted_total").increment(1);
            live.instance.teardown();
        }
    }

    fn discard(&mut self, installation: &Installation, error: &CallError) {
        tracing::warn!(installation = %installation.id, %error, "plugin instance trapped; it will be rebuilt");
        self.instances.remove(&installation.instance_key);
    }

    /// Linear memory never shrinks, so an instance that grew past three quarters of its cap is
    /// replaced by a fresh one before it runs out.
    fn recycle_if_bloated(&mut self, installation: &Installation) {
        let key = &installation.instance_key;
        let bloated = self.instances.get(key).is_some_and(|live| {
            live.instance.memory_high_water() > installation.settings.memory_bytes / 4 * 3
        });
        if bloated && let Some(live) = self.instances.remove(key) {
            tracing::info!(installation = %installation.id, "recycling plugin instance after memory growth");
            live.instance.teardown();
        }
    }
}

/// Checks an event a plugin returned: valid fields, properties a JSON object within the size cap,
/// and the envelope (`uuid`, `team_id`) unchanged; a changed envelope is restored and reported.
fn checked_replacement(
    installation: &Installation,
    original: &[u8],
    replacement: &[u8],
) -> Result<Vec<u8>, String> {
    let fields = wire::parse_encoded(replacement)
        .and_then(|raw| raw.fields())
        .map_err(|e| format!("plugin returned an invalid event: {e}"))?;
    if fields.properties.len() > MAX_PROPERTIES_BYTES {
        return Err(format!(
            "plugin returned properties of {} bytes (cap {MAX_PROPERTIES_BYTES})",
            fields.properties.len()
        ));
    }
    for (name, json) in [
        ("properties", Some(fields.properties)),
        ("$set", fields.set),
        ("$set_once", fields.set_once),
    ] {
        if let Some(json) = json
            && !is_json_object(json)
        {
            return Err(format!("plugin returned {name} that are not a JSON object"));
        }
    }
    let before =
        wire::parse_encoded(original).map_err(|e| format!("host event is corrupt: {e}"))?;
    let mut replacement = replacement.to_vec();
    if fields.uuid != before.uuid() || fields.team_id != before.team_id() {
        tracing::warn!(installation = %installation.id, "plugin tried to change uuid or team_id; restored");
        metrics::counter!("sluice_plugin_failures_total", "installation" => installation.id.to_string(), "kind" => "envelope_changed")
            .increment(1);
        wire::restore_envelope(&mut replacement, before.uuid(), before.team_id());
    }
    Ok(replacement)
}

fn is_json_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

fn fail_all(
    installation: &Installation,
    events: Vec<Vec<u8>>,
    error: &CallError,
    out: &mut ChainOutput,
) -> Vec<Vec<u8>> {
    let message = error.to_string();
    let mut next = Vec::new();
    for event in events {
        fail(
            installation,
            event,
            &message,
            error.kind_label(),
            &mut next,
            out,
        );
    }
    next
}

/// Applies the installation's `on_error` policy to one event.
fn fail(
    installation: &Installation,
    event: Vec<u8>,
    message: &str,
    kind: &'static str,
    next: &mut Vec<Vec<u8>>,
    out: &mut ChainOutput,
) {
    metrics::counter!("sluice_plugin_failures_total", "installation" => installation.id.to_string(), "kind" => kind)
        .increment(1);
    match installation.on_error {
        OnError::Skip => next.push(event),
        OnError::Drop => {
            metrics::counter!("sluice_plugin_events_dropped_total", "installation" => installation.id.to_string())
                .increment(1);
        }
        OnError::DeadLetter => out.dead_letters.push(DeadLetter {
            installation: installation.id.to_string(),
            encoded: event,
            error: message.to_owned(),
        }),
    }
}

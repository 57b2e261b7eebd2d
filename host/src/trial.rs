//! One plugin run in the real host outside any server (`sluice plugin run`): on sample events
//! through the same chain code, grants, limits and failure policies as `sluice serve`, or one
//! task or job. Capabilities are the embedded ones on a scratch data folder, so nothing a run
//! does reaches a real deployment's storage, cache or jobs; those a section configures (GeoIP,
//! object stores, HTTP) come from a sluice.toml the author names (`--with`), real.
//!
//! The run reports, per event, what each installation did (the tap's records), the event as it
//! would be stored (or why not) and its difference from the input, then the plugin's log lines
//! and the time the chain took.

use crate::capture::normalize::{self, NewEvent, RequestContext};
use crate::config::Config;
use crate::deployment::Deployment;
use crate::runtime::hooks::exporter::Batch;
use crate::runtime::{CallError, Instance, InstanceSettings, Plugin, Runtime, RuntimeSettings};
use crate::sink::Output;
use crate::store::logs::LogLine;
use crate::store::read::StoredEvent;
use crate::tap;
use crate::{chain, server};
use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::{Map, Value};
use sluice_abi::wire::{self, BatchReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The team every run is for.
const TEAM: u64 = 1;

/// Most events in one call of the transform.
const BATCH: usize = 1_000;

/// What to run and with what.
#[derive(Debug, Clone, Default)]
pub struct TrialSettings {
    /// The plugin's `.wasm` component.
    pub plugin: PathBuf,
    /// Its config (a JSON object), if not the installation's of `with`.
    pub config: Option<Value>,
    /// The capabilities granted; default: the installation's, or every one no section
    /// configures (`log`, `metrics`, `storage`, `cache`, `jobs`, `recordings`; `geoip` too when
    /// `with` has `[geoip]`).
    pub grants: Option<Vec<String>>,
    /// A sluice.toml whose capability sections (`[geoip]`, `[object_stores]`) the run uses, and
    /// whose installation `installation` it runs as, if given.
    pub with: Option<PathBuf>,
    /// The installation of `with` (`team-N/id`) whose config, grants and limits to use.
    pub installation: Option<String>,
}

/// A plugin installed alone, ready to run.
pub struct Trial {
    _scratch: tempfile::TempDir,
    deployment: Option<Deployment>,
    background: Option<crate::capabilities::Background>,
}

/// What happened to one event.
#[derive(Debug, Serialize)]
pub struct EventResult {
    /// Its place in the input, from 1.
    pub index: usize,
    /// Its uuid.
    pub uuid: String,
    /// Its name.
    pub event: String,
    /// `stored`, `dropped` or `dead_lettered`.
    pub outcome: &'static str,
    /// Why it was dropped or dead-lettered.
    pub reason: Option<String>,
    /// What the installation did with it (`kept`, `patched`, `dropped`, `failed`...).
    pub steps: Vec<Step>,
    /// What changed between the input and what would be stored.
    pub changes: Vec<Change>,
    /// The event as it would be stored.
    pub stored: Option<StoredEvent>,
    /// Its time as stored, in epoch milliseconds.
    pub timestamp_ms: Option<i64>,
}

/// One installation's outcome for an event.
#[derive(Debug, Serialize)]
pub struct Step {
    /// The installation.
    pub installation: String,
    /// Its outcome.
    pub outcome: &'static str,
    /// The drop reason, the keys patched, or what failed.
    pub detail: Option<String>,
}

/// One changed field: `properties.x`, `$set.y`, `event`, `timestamp`...
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Change {
    /// Where.
    pub key: String,
    /// Its value in the input (absent: added).
    pub before: Option<Value>,
    /// Its value as stored (absent: removed).
    pub after: Option<Value>,
}

/// A run of events.
#[derive(Debug, Serialize)]
pub struct EventsReport {
    /// Each event, in input order.
    pub events: Vec<EventResult>,
    /// What the plugin logged.
    pub logs: Vec<LogLine>,
    /// How long the chain took, in milliseconds.
    pub elapsed_ms: f64,
}

/// A run of a task or a job.
#[derive(Debug, Serialize)]
pub struct CallReport {
    /// `ok` or the error.
    pub outcome: Result<(), String>,
    /// What the plugin logged.
    pub logs: Vec<LogLine>,
    /// How long the call took, in milliseconds.
    pub elapsed_ms: f64,
}

impl Trial {
    /// Loads the plugin (checking it as `sluice serve` would) installed as `settings` say, on a
    /// scratch data folder. Blocking.
    pub fn start(settings: &TrialSettings) -> anyhow::Result<Self> {
        let scratch = tempfile::tempdir().context("cannot make a scratch data folder")?;
        let plugin = std::path::absolute(&settings.plugin)
            .with_context(|| format!("cannot resolve {}", settings.plugin.display()))?;
        if !plugin.is_file() {
            bail!("{}: no such file", settings.plugin.display());
        }
        keep_compiled(scratch.path());
        let (table, base, path) = trial_config(settings, &plugin, scratch.path())?;
        let config = Config::from_table(&path, &base, &table, &|_| None)?;
        let (_, _, deployment, background, _) = server::load(config)?;
        Ok(Self {
            _scratch: scratch,
            deployment: Some(deployment),
            background: Some(background),
        })
    }

    /// The installation's plugin.
    pub fn plugin(&self) -> anyhow::Result<&Arc<Plugin>> {
        let deployment = self.deployment()?;
        deployment
            .chains
            .all()
            .map(|i| &i.plugin)
            .chain(deployment.tasks.iter().map(|t| &t.plugin))
            .chain(deployment.exports.iter().map(|e| &e.plugin))
            .next()
            .context("nothing is installed")
    }

    /// Runs `events` (objects as sent to `/capture`) through the plugin's transform, in order,
    /// in batches of up to [`BATCH`].
    pub fn events(mut self, events: Vec<Value>) -> anyhow::Result<EventsReport> {
        let chain = self.deployment()?.chains.of(TEAM).to_vec();
        if chain.is_empty() {
            bail!("the plugin does not export `transform`: run a --task or a --job");
        }
        let inputs = captured(events)?;
        let payload = normalize::encode(&inputs, TEAM)?;
        let framed: Vec<Vec<u8>> = BatchReader::new(&payload)
            .and_then(|reader| reader.collect::<Result<Vec<_>, _>>())?
            .iter()
            .map(|raw| crate::worker::framed(raw.body()))
            .collect();
        let mut tap = tap::hub().watch();
        let logs = crate::capabilities::log::live().watch();
        let mut runner = chain::ChainRunner::new(2);
        let mut out = Output::default();
        let mut records = Vec::new();
        let mut elapsed_ms = 0.0;
        // Batches of the size a worker's round holds, the tap's records taken after each, so a
        // long file never outruns the tap's buffer.
        for batch in framed.chunks(BATCH) {
            let started = Instant::now();
            runner.run(&chain, batch.to_vec(), &mut out);
            elapsed_ms += started.elapsed().as_secs_f64() * 1e3;
            records.extend(drain(&mut tap));
        }
        runner.teardown();
        // The chain holds the capability services; the log writer ends once they are gone.
        drop(chain);
        let logs = self.finish(logs);
        let stored = out
            .events
            .iter()
            .map(|encoded| {
                wire::parse_encoded(encoded)?
                    .with_patch_applied(|f| (StoredEvent::from_fields(f), f.timestamp_ms))
            })
            .collect::<Result<Vec<_>, wire::WireError>>()?;
        let results = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let uuid = input.uuid.to_string();
                let before = StoredEvent::from_fields(&input.fields(TEAM));
                let steps: Vec<Step> = records
                    .iter()
                    .filter(|r| r.uuid == uuid)
                    .map(|r| Step {
                        installation: r.installation.clone(),
                        outcome: r.outcome,
                        detail: r.detail.clone(),
                    })
                    .collect();
                let (after, timestamp_ms) =
                    stored.iter().find(|(e, _)| e.uuid == uuid).cloned().unzip();
                let letter = out.dead_letters.iter().find(|l| {
                    wire::parse_encoded(&l.encoded)
                        .is_ok_and(|e| crate::store::uuid_text(&e.uuid()) == uuid)
                });
                let (outcome, reason) = match (&after, letter) {
                    (Some(_), _) => ("stored", None),
                    (None, Some(letter)) => ("dead_lettered", Some(letter.error.clone())),
                    (None, None) => (
                        "dropped",
                        steps
                            .iter()
                            .rev()
                            .find(|s| s.outcome == "dropped")
                            .and_then(|s| s.detail.clone()),
                    ),
                };
                EventResult {
                    index: i + 1,
                    uuid,
                    event: input.event.clone(),
                    outcome,
                    reason,
                    changes: after
                        .as_ref()
                        .map_or_else(Vec::new, |a| changes(&before, a)),
                    steps,
                    stored: after,
                    timestamp_ms,
                }
            })
            .collect();
        Ok(EventsReport {
            events: results,
            logs,
            elapsed_ms,
        })
    }

    /// Runs task `task` of the plugin once, for a tick of now.
    pub fn task(self, task: &str) -> anyhow::Result<CallReport> {
        // Owned copies: only the call may hold the capability services.
        let (plugin, settings) = self
            .deployment()?
            .tasks
            .iter()
            .find(|t| t.plugin.runs_tasks())
            .map(|t| (t.plugin.clone(), t.settings.clone()))
            .context("the plugin does not export `scheduled`")?;
        let names: Vec<&str> = plugin
            .manifest
            .tasks
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        if !names.contains(&task) {
            bail!(
                "the plugin has no task `{task}` (its tasks: {})",
                names.join(", ")
            );
        }
        self.call(&plugin, settings, |instance| {
            instance.run_task(task, crate::store::now_ms())
        })
    }

    /// Runs job `name` with `payload` (JSON text) once, as its first attempt.
    pub fn job(self, name: &str, payload: &str) -> anyhow::Result<CallReport> {
        // Owned copies: only the call may hold the capability services.
        let (plugin, settings) = self
            .deployment()?
            .tasks
            .iter()
            .find(|t| t.plugin.runs_jobs())
            .map(|t| (t.plugin.clone(), t.settings.clone()))
            .context("the plugin does not export `jobs`")?;
        let job = crate::runtime::hooks::jobs::Job {
            id: uuid::Uuid::now_v7().to_string(),
            name: name.to_owned(),
            payload: payload.to_owned(),
            attempt: 1,
            run_at: crate::store::now_ms(),
        };
        self.call(&plugin, settings, |instance| instance.run_job(&job))
    }

    /// Sends `events` (objects as sent to `/capture`) to the plugin's exporter as one batch, its
    /// first attempt.
    pub fn export(self, events: Vec<Value>) -> anyhow::Result<CallReport> {
        // Owned copies: only the call may hold the capability services.
        let (plugin, settings) = self
            .deployment()?
            .exports
            .first()
            .map(|e| (e.plugin.clone(), e.settings.clone()))
            .context("the plugin does not export `exporter`")?;
        let payload = normalize::encode(&captured(events)?, TEAM)?;
        let now = crate::store::now_ms();
        let batch = Batch {
            id: format!("plugin-run-{now}"),
            team_id: TEAM,
            attempt: 1,
            created_at_ms: now,
            positions: (1, 1),
        };
        self.call(&plugin, settings, |instance| {
            instance.export(&batch, &payload)
        })
    }

    /// Calls `f` on a new instance of `plugin` with `settings`.
    fn call(
        mut self,
        plugin: &Plugin,
        settings: InstanceSettings,
        f: impl FnOnce(&mut Instance) -> Result<(), CallError>,
    ) -> anyhow::Result<CallReport> {
        let logs = crate::capabilities::log::live().watch();
        let started = Instant::now();
        let outcome = Instance::start(plugin, &settings)
            .and_then(|mut instance| {
                let called = f(&mut instance);
                instance.teardown();
                called
            })
            .map_err(|e| e.to_string());
        let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        // They hold the capability services; the log writer ends once they are gone.
        drop(settings);
        Ok(CallReport {
            outcome,
            logs: self.finish(logs),
            elapsed_ms,
        })
    }

    fn deployment(&self) -> anyhow::Result<&Deployment> {
        self.deployment.as_ref().context("the run is over")
    }

    /// Stops everything and returns the log lines stored meanwhile.
    fn finish(&mut self, mut logs: tap::Watcher<LogLine>) -> Vec<LogLine> {
        if let Some(deployment) = self.deployment.take() {
            deployment.stop_runners();
        }
        if let Some(background) = self.background.take() {
            background.join();
        }
        drain(&mut logs)
            .into_iter()
            .map(|l| (*l).clone())
            .collect::<Vec<_>>()
    }
}

/// `events` (objects as sent to `/capture`) as capture makes them.
pub fn captured(events: Vec<Value>) -> anyhow::Result<Vec<NewEvent>> {
    let context = RequestContext {
        now_ms: crate::store::now_ms(),
        ..RequestContext::default()
    };
    events
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::Object(item) = item else {
                bail!("event {}: not a JSON object", i + 1);
            };
            event_of(i, item, &context, None).map_err(anyhow::Error::msg)
        })
        .collect()
}

/// Event `i` of a file or a run (an object as sent to `/capture`, plus the client's address as
/// `ip`, which capture takes from the request) as capture makes it; or why not.
pub fn event_of(
    i: usize,
    mut item: Map<String, Value>,
    context: &RequestContext,
    sent_at: Option<i64>,
) -> Result<NewEvent, String> {
    let ip = match item.remove("ip") {
        Some(Value::String(ip)) => Some(ip),
        None | Some(Value::Null) => None,
        Some(_) => return Err(format!("event {}: `ip` must be text", i + 1)),
    };
    let mut event =
        normalize::event(i, item, context, sent_at).map_err(|e| format!("event {}: {e}", i + 1))?;
    event.ip = ip;
    Ok(event)
}

/// Where commands keep compiled components between runs: `~/.cache/sluice/compiled` (or
/// under `XDG_CACHE_HOME`), created; `None` without a home.
pub fn compiled_cache() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    let compiled = cache.join("sluice").join("compiled");
    std::fs::create_dir_all(&compiled).ok()?;
    Some(compiled)
}

/// Lets compiled components outlive the scratch folder: its `data/compiled` (where the engine
/// caches them) is [`compiled_cache`], so running the same component again skips compiling it
/// (seconds for a JS plugin). Without a home, each run compiles.
fn keep_compiled(scratch: &Path) {
    let Some(compiled) = compiled_cache() else {
        return;
    };
    let linked = std::fs::create_dir_all(scratch.join("data")).and_then(|()| {
        std::os::unix::fs::symlink(&compiled, scratch.join("data").join("compiled"))
    });
    if let Err(error) = linked {
        tracing::debug!(%error, "compiled components are not kept between runs");
    }
}

/// The component at `file`, loaded and checked as `sluice serve` loads it.
pub fn load(file: &Path) -> anyhow::Result<Arc<Plugin>> {
    let runtime = Runtime::new(&RuntimeSettings {
        max_instances: 2,
        max_memory_bytes: 1 << 30,
        cache_dir: None,
    })?;
    Ok(runtime.load(file)?)
}

/// Every record a watcher has now.
fn drain<T: Clone>(watcher: &mut tap::Watcher<T>) -> Vec<Arc<T>> {
    let mut records = Vec::new();
    loop {
        match watcher.records.try_recv() {
            Ok(record) => records.push(record),
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => return records,
        }
    }
}

/// The config of a run: the capability sections and the installation of `settings.with` (if
/// any), the plugin at `plugin`, data in `scratch`; with the directory relative paths start in
/// and the path errors name.
fn trial_config(
    settings: &TrialSettings,
    plugin: &Path,
    scratch: &Path,
) -> anyhow::Result<(toml::Table, PathBuf, PathBuf)> {
    let mut table = toml::Table::new();
    let mut installation = toml::Table::new();
    let (base, path) = match &settings.with {
        Some(with) => {
            let text = std::fs::read_to_string(with)
                .with_context(|| format!("cannot read {}", with.display()))?;
            let mut given: toml::Table = text
                .parse()
                .with_context(|| format!("{}: not a valid sluice.toml", with.display()))?;
            for section in crate::capabilities::Settings::SECTIONS {
                if let Some(value) = given.remove(*section) {
                    table.insert((*section).to_owned(), value);
                }
            }
            if let Some(key) = &settings.installation {
                installation = find_installation(&given, key)
                    .with_context(|| format!("{}: no installation `{key}`", with.display()))?;
            }
            let absolute = std::path::absolute(with)?;
            (
                absolute.parent().unwrap_or(Path::new("/")).to_owned(),
                with.clone(),
            )
        }
        None => (std::env::current_dir()?, PathBuf::from("sluice plugin run")),
    };
    let stem = plugin
        .file_stem()
        .map_or("plugin".into(), |s| s.to_string_lossy());
    installation
        .entry("id")
        .or_insert_with(|| toml::Value::String(stem.into_owned()));
    // Without `--grant`, every capability a section does not configure (and GeoIP when
    // `--with` has it): a component can only call what it imports and declares, so what it
    // needs is granted and nothing more is reachable.
    let mut grants = vec!["log", "metrics", "storage", "cache", "jobs", "recordings"];
    if table.contains_key("geoip") {
        grants.push("geoip");
    }
    installation.entry("grants").or_insert_with(|| {
        toml::Value::Array(
            grants
                .iter()
                .map(|g| toml::Value::String((*g).into()))
                .collect(),
        )
    });
    installation.insert(
        "plugin".into(),
        toml::Value::String(plugin.display().to_string()),
    );
    if let Some(config) = &settings.config {
        installation.insert("config".into(), toml_value(config)?);
    }
    if let Some(grants) = &settings.grants {
        installation.insert("grants".into(), toml::Value::try_from(grants)?);
    }
    let mut server = toml::Table::new();
    server.insert(
        "data_dir".into(),
        toml::Value::String(scratch.join("data").display().to_string()),
    );
    server.insert("workers".into(), toml::Value::Integer(1));
    table.insert("server".into(), toml::Value::Table(server));
    let mut team = toml::Table::new();
    team.insert("id".into(), toml::Value::Integer(TEAM as i64));
    team.insert("token".into(), toml::Value::String("phc_plugin_run".into()));
    team.insert(
        "plugins".into(),
        toml::Value::Array(vec![toml::Value::Table(installation)]),
    );
    table.insert(
        "teams".into(),
        toml::Value::Array(vec![toml::Value::Table(team)]),
    );
    Ok((table, base, path))
}

/// `value` in TOML, which has no null.
fn toml_value(value: &Value) -> anyhow::Result<toml::Value> {
    Ok(match value {
        Value::Null => bail!("--config: TOML has no null; leave the key out instead"),
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64().context("--config: a number out of range")?),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(items) => toml::Value::Array(
            items
                .iter()
                .map(toml_value)
                .collect::<anyhow::Result<_>>()?,
        ),
        Value::Object(map) => toml::Value::Table(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), toml_value(v)?)))
                .collect::<anyhow::Result<_>>()?,
        ),
    })
}

/// The table of installation `key` (`team-N/id`) in `config`.
fn find_installation(config: &toml::Table, key: &str) -> Option<toml::Table> {
    let (team, id) = key.strip_prefix("team-")?.split_once('/')?;
    let team: i64 = team.parse().ok()?;
    config
        .get("teams")?
        .as_array()?
        .iter()
        .filter_map(toml::Value::as_table)
        .find(|t| t.get("id").and_then(toml::Value::as_integer) == Some(team))?
        .get("plugins")?
        .as_array()?
        .iter()
        .filter_map(toml::Value::as_table)
        .find(|p| p.get("id").and_then(toml::Value::as_str) == Some(id))
        .cloned()
}

/// What differs between `before` and `after`: the envelope's fields, then each key of the
/// properties, `$set` and `$set_once`.
pub fn changes(before: &StoredEvent, after: &StoredEvent) -> Vec<Change> {
    let mut changes = Vec::new();
    let fields = |e: &StoredEvent| {
        [
            ("event", Value::from(e.event.clone())),
            ("distinct_id", Value::from(e.distinct_id.clone())),
            ("timestamp", Value::from(e.timestamp.clone())),
            ("ip", e.ip.clone().map_or(Value::Null, Value::from)),
        ]
    };
    for ((key, b), (_, a)) in fields(before).into_iter().zip(fields(after)) {
        if a != b {
            changes.push(Change {
                key: key.to_owned(),
                before: Some(b),
                after: Some(a),
            });
        }
    }
    let empty = Map::new();
    let object = |v: Option<&Value>| v.and_then(Value::as_object).cloned().unwrap_or_default();
    for (name, b, a) in [
        (
            "properties",
            before.properties.as_object().unwrap_or(&empty).clone(),
            after.properties.as_object().unwrap_or(&empty).clone(),
        ),
        (
            "$set",
            object(before.set.as_ref()),
            object(after.set.as_ref()),
        ),
        (
            "$set_once",
            object(before.set_once.as_ref()),
            object(after.set_once.as_ref()),
        ),
    ] {
        let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            if b.get(key) != a.get(key) {
                changes.push(Change {
                    key: format!("{name}.{key}"),
                    before: b.get(key).cloned(),
                    after: a.get(key).cloned(),
                });
            }
        }
    }
    changes
}

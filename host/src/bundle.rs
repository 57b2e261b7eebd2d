//! Failure bundles: what it takes to make a plugin fail again, outside the server.
//!
//! An installation with `bundles = true`, or whose failures end in the dead letters, records its
//! instances' host calls (see [`crate::capabilities::journal`]). When a `transform` call fails
//! on one event (a trap, a deadline, memory, an error: the chain isolates failing events
//! first), the runner leaves a bundle in `<data_dir>/bundles/<team-N_id>/`: the installation,
//! the plugin's hash, its config with secret fields redacted, its limits and grants, the event,
//! and every host call of the instance's `setup` and of the failed call with its answer (clocks
//! and random draws included). With `bundles = true`, a call that returns but reports an event
//! failed leaves one too, with the whole batch of the call. `sluice debug replay` runs a bundle
//! again against the same plugin, or a fix.
//!
//! Disk use is bounded: at most [`MAX_PER_INSTALLATION`] bundles per installation (the oldest
//! go), none larger than [`MAX_BUNDLE_BYTES`], and at most one per second per installation.

use crate::capabilities::journal::Recorded;
use crate::runtime::{CallError, Plugin};
use crate::store::read::StoredEvent;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_abi::wire;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The folder of the data directory bundles are kept in.
pub const DIR: &str = "bundles";
/// Most bundles kept per installation.
pub const MAX_PER_INSTALLATION: usize = 20;
/// Largest bundle written; a larger one is left out (its record is too long).
pub const MAX_BUNDLE_BYTES: usize = 8 << 20;
/// What a secret config value reads as in a bundle.
pub const REDACTED: &str = "[redacted]";

/// The bundle format this host writes.
const FORMAT: u32 = 1;
/// Least time between two bundles of one installation.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// One failure, ready to run again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bundle {
    /// Format version.
    pub format: u32,
    /// When it failed, in epoch milliseconds.
    pub created_at_ms: i64,
    /// `team-N/id`.
    pub installation: String,
    /// The plugin's name.
    pub plugin: String,
    /// SHA-256 of the plugin file, in hex.
    pub plugin_sha256: String,
    /// Where the plugin was loaded from.
    pub plugin_file: PathBuf,
    /// Its resolved config, secret fields redacted.
    pub config: Value,
    /// The config keys redacted.
    pub redacted: Vec<String>,
    /// What the installation was granted.
    pub grants: Vec<String>,
    /// Its call deadline, in milliseconds.
    pub timeout_ms: u64,
    /// Its memory cap, in bytes.
    pub memory_bytes: usize,
    /// The hook that failed (`transform`).
    pub hook: String,
    /// The events of the call, encoded (base64 of the wire form).
    pub events: Vec<String>,
    /// The same events, readable.
    pub readable: Vec<StoredEvent>,
    /// The failure's kind (`timeout`, `panic`, `memory_limit`, `plugin_error`...).
    pub kind: String,
    /// The failure, as the host reported it.
    pub failure: String,
    /// Every host call of `setup` and of the failed call, with its answer.
    pub journal: Recorded,
}

impl Bundle {
    /// The bundle at `path`.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        serde_json::from_slice(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a failure bundle: {e}", path.display()))
    }

    /// The events, in the wire form the transform takes.
    pub fn encoded_events(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        self.events
            .iter()
            .map(|e| Ok(base64::engine::general_purpose::STANDARD.decode(e)?))
            .collect()
    }
}

/// Where one installation's bundles go, and what they say about it.
#[derive(Debug)]
pub struct Bundles {
    dir: PathBuf,
    /// Whether every failure leaves one (`bundles = true`), or only those dead-lettered.
    pub always: bool,
    installation: String,
    plugin: String,
    plugin_sha256: String,
    plugin_file: PathBuf,
    config: Value,
    redacted: Vec<String>,
    grants: Vec<String>,
    timeout_ms: u64,
    memory_bytes: usize,
    last: Mutex<Option<Instant>>,
}

/// What a [`Bundles`] is made for.
pub struct BundleSettings<'a> {
    /// The data directory.
    pub data_dir: &'a Path,
    /// `team-N/id`.
    pub installation: &'a str,
    /// The plugin.
    pub plugin: &'a Plugin,
    /// Its resolved config.
    pub config: &'a Value,
    /// What it was granted.
    pub grants: Vec<String>,
    /// Its transform deadline.
    pub timeout_ms: u64,
    /// Its memory cap.
    pub memory_bytes: usize,
    /// Whether every failure leaves a bundle.
    pub always: bool,
}

impl Bundles {
    /// The bundles of one installation.
    pub fn new(settings: BundleSettings<'_>) -> Self {
        let mut config = settings.config.clone();
        let mut redacted = Vec::new();
        for field in settings.plugin.manifest.config.iter().filter(|f| f.secret) {
            if let Some(value) = config.get_mut(&field.key) {
                *value = Value::from(REDACTED);
                redacted.push(field.key.clone());
            }
        }
        Self {
            dir: folder(settings.data_dir, settings.installation),
            always: settings.always,
            installation: settings.installation.to_owned(),
            plugin: settings.plugin.manifest.name.clone(),
            plugin_sha256: settings.plugin.hash.clone(),
            plugin_file: settings.plugin.path.clone(),
            config,
            redacted,
            grants: settings.grants,
            timeout_ms: settings.timeout_ms,
            memory_bytes: settings.memory_bytes,
            last: Mutex::new(None),
        }
    }

    /// Leaves a bundle of `transform` failing with `error` on `events`, with the host calls
    /// `recorded`; returns where, or `None` when the bounds leave it out.
    pub fn write(
        &self,
        events: &[Vec<u8>],
        error: &CallError,
        recorded: Recorded,
    ) -> Option<PathBuf> {
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < MIN_INTERVAL) {
                return None;
            }
            *last = Some(Instant::now());
        }
        let readable = events
            .iter()
            .filter_map(|e| {
                wire::parse_encoded(e)
                    .ok()?
                    .with_patch_applied(StoredEvent::from_fields)
                    .ok()
            })
            .collect();
        let now = crate::store::now_ms();
        let bundle = Bundle {
            format: FORMAT,
            created_at_ms: now,
            installation: self.installation.clone(),
            plugin: self.plugin.clone(),
            plugin_sha256: self.plugin_sha256.clone(),
            plugin_file: self.plugin_file.clone(),
            config: self.config.clone(),
            redacted: self.redacted.clone(),
            grants: self.grants.clone(),
            timeout_ms: self.timeout_ms,
            memory_bytes: self.memory_bytes,
            hook: "transform".into(),
            events: events
                .iter()
                .map(|e| base64::engine::general_purpose::STANDARD.encode(e))
                .collect(),
            readable,
            kind: error.kind_label().into(),
            failure: error.to_string(),
            journal: recorded,
        };
        let written = serde_json::to_vec_pretty(&bundle)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| {
                if bytes.len() > MAX_BUNDLE_BYTES {
                    anyhow::bail!("{} bytes, more than {MAX_BUNDLE_BYTES}", bytes.len());
                }
                std::fs::create_dir_all(&self.dir)?;
                let path = self.dir.join(format!("{now}-{}.json", error.kind_label()));
                let partial = path.with_extension("partial");
                std::fs::write(&partial, bytes)?;
                std::fs::rename(&partial, &path)?;
                prune(&self.dir)?;
                Ok(path)
            });
        match written {
            Ok(path) => {
                metrics::counter!("sluice_failure_bundles_total", "installation" => self.installation.clone())
                    .increment(1);
                tracing::info!(installation = %self.installation, path = %path.display(), "failure bundle written");
                Some(path)
            }
            Err(error) => {
                tracing::warn!(installation = %self.installation, %error, "no failure bundle");
                None
            }
        }
    }
}

/// The folder of `installation`'s bundles.
pub fn folder(data_dir: &Path, installation: &str) -> PathBuf {
    data_dir.join(DIR).join(installation.replace('/', "_"))
}

/// Every bundle of `installation` (all installations' if `None`), newest first.
pub fn list(data_dir: &Path, installation: Option<&str>) -> std::io::Result<Vec<PathBuf>> {
    let root = data_dir.join(DIR);
    let folders: Vec<PathBuf> = match installation {
        Some(installation) => vec![folder(data_dir, installation)],
        None => match std::fs::read_dir(&root) {
            Ok(entries) => entries.filter_map(|e| Some(e.ok()?.path())).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        },
    };
    let mut bundles = Vec::new();
    for folder in folders {
        bundles.extend(json_files(&folder)?);
    }
    bundles.sort_by(|a, b| b.file_name().cmp(&a.file_name()));
    Ok(bundles)
}

fn json_files(folder: &Path) -> std::io::Result<Vec<PathBuf>> {
    match std::fs::read_dir(folder) {
        Ok(entries) => Ok(entries
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Removes the oldest bundles of `folder` beyond [`MAX_PER_INSTALLATION`] (names start with
/// the time they were written).
fn prune(folder: &Path) -> std::io::Result<()> {
    let mut files = json_files(folder)?;
    files.sort();
    let excess = files.len().saturating_sub(MAX_PER_INSTALLATION);
    for old in &files[..excess] {
        std::fs::remove_file(old)?;
    }
    Ok(())
}

/// What running a bundle again found.
#[derive(Debug, Serialize)]
pub struct Rerun {
    /// The plugin file run.
    pub plugin: PathBuf,
    /// Whether it is the bundle's own plugin (by hash).
    pub same_plugin: bool,
    /// `None` when the call passed; else the failure.
    pub failure: Option<String>,
    /// The failure's kind, when it failed.
    pub kind: Option<String>,
    /// Whether it failed as the bundle did (same kind).
    pub reproduced: bool,
    /// What the plugin decided for each event, when the call passed.
    pub outcomes: Vec<String>,
    /// Where the run first asked the host something the bundle does not have, if it did.
    pub divergence: Option<String>,
}

/// Runs `bundle` (read from `path`) again: its `setup` and its call, every host call answered
/// from its journal, against its own plugin (kept by hash in the data folder's versions, or at
/// its path if unchanged) or `plugin`. Blocking.
pub fn rerun(path: &Path, bundle: &Bundle, plugin: Option<&Path>) -> anyhow::Result<Rerun> {
    use crate::capabilities::{Context, Grants, Services};
    use crate::runtime::{Instance, InstanceSettings, Runtime, RuntimeSettings};
    let file = match plugin {
        Some(file) => file.to_owned(),
        None => own_plugin(path, bundle)?,
    };
    let runtime = Runtime::new(&RuntimeSettings {
        max_instances: 2,
        max_memory_bytes: bundle.memory_bytes.max(1 << 20),
        cache_dir: crate::trial::compiled_cache(),
    })?;
    let loaded = runtime.load(&file)?;
    let grants: Vec<&str> = bundle.grants.iter().map(String::as_str).collect();
    let team_id = bundle
        .installation
        .strip_prefix("team-")
        .and_then(|r| r.split_once('/'))
        .and_then(|(t, _)| t.parse().ok())
        .unwrap_or(0);
    let settings = InstanceSettings {
        context: std::sync::Arc::new(Context {
            installation: bundle.installation.as_str().into(),
            team_id,
            plugin: bundle.plugin.as_str().into(),
            grants: Grants::of(&grants),
            timeout: Duration::from_millis(bundle.timeout_ms),
            services: Services::detached(),
            bundles: None,
        }),
        config: bundle.config.clone(),
        memory_bytes: bundle.memory_bytes,
    };
    let events = bundle.encoded_events()?;
    let mut batch = wire::BatchWriter::with_capacity(events.iter().map(Vec::len).sum());
    for event in &events {
        batch.push_encoded(event);
    }
    let mut divergence = None;
    let result =
        Instance::replaying(&loaded, &settings, &bundle.journal).and_then(|mut instance| {
            let result = instance.transform(&batch.finish());
            divergence = instance.divergence();
            result
        });
    let (failure, kind, outcomes) = match result {
        Err(error) => (
            Some(error.to_string()),
            Some(error.kind_label().to_owned()),
            Vec::new(),
        ),
        Ok(answer) => match wire::read_outcomes(&answer, events.len()) {
            Err(e) => (
                Some(format!("undecodable outcomes: {e}")),
                Some("contract_violation".to_owned()),
                Vec::new(),
            ),
            Ok(outcomes) => {
                let described: Vec<String> = outcomes.iter().map(describe).collect();
                let error = outcomes.iter().find_map(|o| match o {
                    wire::Outcome::Error { message, .. } => {
                        Some(format!("plugin error: {message}"))
                    }
                    _ => None,
                });
                let kind = error.as_ref().map(|_| "plugin_error".to_owned());
                (error, kind, described)
            }
        },
    };
    Ok(Rerun {
        same_plugin: loaded.hash == bundle.plugin_sha256,
        plugin: file,
        reproduced: kind.as_deref() == Some(bundle.kind.as_str()),
        failure,
        kind,
        outcomes,
        divergence,
    })
}

fn describe(outcome: &wire::Outcome<'_>) -> String {
    match outcome {
        wire::Outcome::Keep => "kept".into(),
        wire::Outcome::Drop(reason) => format!("dropped: {reason}"),
        wire::Outcome::Patch(_) => "patched".into(),
        wire::Outcome::Replace(_) => "replaced".into(),
        wire::Outcome::Error { message, .. } => format!("failed: {message}"),
    }
}

/// The bundle's own plugin: the copy kept by hash in the versions of the data folder the
/// bundle is in, or the file it was loaded from if that still has the same hash.
fn own_plugin(path: &Path, bundle: &Bundle) -> anyhow::Result<PathBuf> {
    let data_dir = path.parent().and_then(Path::parent).and_then(Path::parent);
    if let Some(kept) = data_dir
        .map(|d| {
            d.join(crate::versions::DIR)
                .join(format!("{}.wasm", bundle.plugin_sha256))
        })
        .filter(|kept| kept.is_file())
    {
        return Ok(kept);
    }
    let hash = std::fs::read(&bundle.plugin_file)
        .map(|bytes| crate::runtime::sha256_hex(&bytes))
        .unwrap_or_default();
    anyhow::ensure!(
        hash == bundle.plugin_sha256,
        "the bundle's plugin (sha256 {}) is neither kept in the data folder's versions nor at {} any more: name it with --plugin",
        bundle.plugin_sha256,
        bundle.plugin_file.display()
    );
    Ok(bundle.plugin_file.clone())
}

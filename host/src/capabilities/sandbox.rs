//! Capabilities with no effect outside the run: what `sluice test`, `sluice replay` and shadow
//! installations give plugins. Every write is answered as if it happened and recorded as a side
//! effect, never sent:
//!
//! - `storage` and `cache` are overlays: reads see the live data (when there is any) until the
//!   run writes a key, and from then on the run's own copy;
//! - the job queue, the recordings, the object stores and plugin log lines are scratch copies
//!   in a folder of the run's own;
//! - `http` is answered by the run's fakes (or refused as not sent), `geoip` by its fakes and
//!   then the real database (which only reads).
//!
//! [`Sandbox`] keeps the fakes and counts the side effects, per installation and function.

use super::{Services, Settings, StartError, cache, log, storage};
use crate::bindings::sluice::plugin::{geoip as geoip_wit, http as http_wit};
use cache::Backend as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_abi::limits::{ErrorKind, HostError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

/// Host functions that change something outside the plugin, by `interface.function`.
const WRITES: &[&str] = &[
    "storage.set",
    "storage.delete",
    "storage.increment",
    "cache.set",
    "cache.delete",
    "cache.increment",
    "cache.expire",
    "cache.list-push",
    "cache.list-remove",
    "cache.list-pop",
    "http.fetch",
    "object-store.put",
    "object-store.delete",
    "job-queue.enqueue",
    "job-queue.enqueue-at",
    "recordings.record-archive",
    "recordings.delete-session",
];

/// Answers the run gives instead of the outside world.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fakes {
    /// What `geoip.locate` answers, by address (`{}` for "not found").
    #[serde(default)]
    pub geoip: BTreeMap<String, FakeLocation>,
    /// What `http.fetch` answers, the first whose method and URL match.
    #[serde(default)]
    pub http: Vec<FakeResponse>,
    /// What the `cache` holds at the start, by key (the installation's namespace).
    #[serde(default)]
    pub cache: BTreeMap<String, String>,
    /// What `storage` holds at the start, by key.
    #[serde(default)]
    pub storage: BTreeMap<String, String>,
}

/// A location `geoip.locate` answers (every field optional).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FakeLocation {
    /// City.
    pub city_name: Option<String>,
    /// Country.
    pub country_name: Option<String>,
    /// ISO country code.
    pub country_code: Option<String>,
    /// Continent.
    pub continent_name: Option<String>,
    /// Continent code.
    pub continent_code: Option<String>,
    /// Postal code.
    pub postal_code: Option<String>,
    /// Latitude.
    pub latitude: Option<f64>,
    /// Longitude.
    pub longitude: Option<f64>,
    /// Time zone.
    pub time_zone: Option<String>,
}

impl FakeLocation {
    /// The location, or "not found" when every field is empty.
    fn answer(&self) -> Option<geoip_wit::Location> {
        (self != &Self::default()).then(|| geoip_wit::Location {
            city_name: self.city_name.clone(),
            country_name: self.country_name.clone(),
            country_code: self.country_code.clone(),
            continent_name: self.continent_name.clone(),
            continent_code: self.continent_code.clone(),
            postal_code: self.postal_code.clone(),
            latitude: self.latitude,
            longitude: self.longitude,
            accuracy_radius: None,
            time_zone: self.time_zone.clone(),
            subdivisions: Vec::new(),
        })
    }
}

/// One canned HTTP answer.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FakeResponse {
    /// The method it answers (any if unset).
    pub method: Option<String>,
    /// The URL it answers; a trailing `*` matches any URL that starts with the rest.
    pub url: String,
    /// The status (200 if unset).
    pub status: Option<u16>,
    /// The body, as text.
    #[serde(default)]
    pub body: String,
    /// Response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl FakeResponse {
    fn matches(&self, method: &str, url: &str) -> bool {
        let method_ok = self
            .method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method));
        let url_ok = match self.url.strip_suffix('*') {
            Some(prefix) => url.starts_with(prefix),
            None => self.url == url,
        };
        method_ok && url_ok
    }
}

/// One kind of side effect a run had: how often, and the first one's arguments.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SideEffect {
    /// The installation.
    pub installation: String,
    /// `interface.function`.
    pub op: String,
    /// How many times.
    pub count: u64,
    /// The arguments of the first one (bodies cut short).
    pub example: Value,
}

/// A run's fakes and the side effects its plugins had.
#[derive(Debug, Default)]
pub struct Sandbox {
    /// What the outside world answers.
    pub fakes: Fakes,
    /// Whether the run's effects are real (`--allow-side-effects`): `http` sends, and `storage`,
    /// `cache` and the object stores are the live ones (jobs and recordings stay in the
    /// sandbox). Side effects are still counted.
    pub real: bool,
    /// Whether it runs beside live chains (its installations' metrics and tap records are
    /// labelled `<id>~shadow`).
    pub shadow: bool,
    effects: Mutex<BTreeMap<(String, String), SideEffect>>,
}

impl Sandbox {
    /// A sandbox answering with `fakes`, whose effects are `real` or not.
    pub fn new(fakes: Fakes, real: bool) -> Self {
        Self {
            fakes,
            real,
            shadow: false,
            effects: Mutex::default(),
        }
    }

    /// Counts host call `op` of `installation`, if it is a write.
    pub fn note(&self, installation: &str, op: &str, args: &impl Serialize) {
        if !WRITES.contains(&op) {
            return;
        }
        let mut effects = self.effects.lock().unwrap_or_else(PoisonError::into_inner);
        effects
            .entry((installation.to_owned(), op.to_owned()))
            .or_insert_with(|| SideEffect {
                installation: installation.to_owned(),
                op: op.to_owned(),
                count: 0,
                example: shortened(serde_json::to_value(args).unwrap_or(Value::Null)),
            })
            .count += 1;
    }

    /// The side effects so far, by installation and function.
    pub fn effects(&self) -> Vec<SideEffect> {
        let effects = self.effects.lock().unwrap_or_else(PoisonError::into_inner);
        effects.values().cloned().collect()
    }

    /// What `geoip.locate` answers for `ip`, if the fakes say.
    pub(super) fn locate(&self, ip: &str) -> Option<Option<geoip_wit::Location>> {
        self.fakes.geoip.get(ip).map(FakeLocation::answer)
    }

    /// What `http.fetch` answers for `request` instead of sending it.
    pub(super) fn fetch(
        &self,
        request: &http_wit::Request,
    ) -> Result<http_wit::Response, HostError> {
        let fake = self
            .fakes
            .http
            .iter()
            .find(|f| f.matches(&request.method, &request.url))
            .ok_or_else(|| {
                HostError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "not sent: this run has no side effects and no fake answers {} {}",
                        request.method, request.url
                    ),
                )
            })?;
        Ok(http_wit::Response {
            status: fake.status.unwrap_or(200),
            headers: fake
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            body: fake.body.clone().into_bytes(),
        })
    }
}

/// `value` with long texts and byte lists cut, for an example.
fn shortened(value: Value) -> Value {
    match value {
        Value::String(s) if s.len() > 200 => {
            let cut = (0..=200)
                .rev()
                .find(|i| s.is_char_boundary(*i))
                .unwrap_or(0);
            Value::from(format!("{}…", &s[..cut]))
        }
        Value::Array(items) if items.len() > 32 && items.iter().all(Value::is_number) => {
            Value::from(format!("({} bytes)", items.len()))
        }
        Value::Array(items) => Value::Array(items.into_iter().map(shortened).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, shortened(v))).collect())
        }
        other => other,
    }
}

/// The live data a sandbox's `storage` and `cache` read through to.
#[derive(Clone, Default)]
pub struct Live {
    /// The live `storage`.
    pub storage: Option<Arc<dyn storage::Backend>>,
    /// The live `cache`.
    pub cache: Option<Arc<dyn cache::Backend>>,
    /// The live data folder (where local object stores are), for runs whose effects are real.
    pub data_dir: Option<std::path::PathBuf>,
}

impl Services {
    /// Services whose effects stay in `scratch` and `sandbox` (see the module docs), reading
    /// through to `live`, with the GeoIP database of `settings` and its object stores' names
    /// (as local folders in `scratch`); or, if `sandbox.real`, writing to `live` and the real
    /// object stores too.
    pub fn sandboxed(
        settings: &Settings,
        scratch: &Path,
        live: Live,
        sandbox: Arc<Sandbox>,
    ) -> Result<(Arc<Self>, super::Background), StartError> {
        std::fs::create_dir_all(scratch).map_err(|source| StartError::Thread {
            what: "the sandbox folder",
            source,
        })?;
        let logs = crate::store::logs::SqliteLogs::open(scratch)?;
        let (logs, log_writer) = log::LogSink::start(Box::new(logs), log::LogLimit::default())?;
        let (storage, cache, object_stores): (
            Arc<dyn storage::Backend>,
            Arc<dyn cache::Backend>,
            _,
        ) = match (sandbox.real, live.data_dir.as_deref()) {
            (true, Some(data_dir)) => (
                live.storage
                    .unwrap_or_else(|| Arc::new(OverlayStorage::new(None))),
                live.cache
                    .unwrap_or_else(|| Arc::new(cache::MemoryBackend::default())),
                settings.object_stores.open(data_dir)?,
            ),
            _ => (
                Arc::new(OverlayStorage::new(live.storage)),
                Arc::new(OverlayCache::new(live.cache)),
                settings
                    .object_stores
                    .scratch(&scratch.join("objects"))
                    .open(scratch)?,
            ),
        };
        let services = Self {
            logs: Some(logs),
            storage: Some(storage),
            cache,
            geoip: settings.geoip.open()?,
            object_stores,
            jobs: Some(Arc::new(crate::schedule::jobs::SqliteJobs::open(scratch)?)),
            recordings: Some(Arc::new(super::recordings::SqliteRecordings::open(
                scratch,
            )?)),
            sandbox: Some(sandbox),
        };
        Ok((Arc::new(services), super::Background { log_writer }))
    }

    /// Seeds installation `installation` (of `plugin` and `team`) with the fakes' storage and
    /// cache contents.
    pub fn seed(&self, installation: &str, plugin: &str, team: u64) -> Result<(), HostError> {
        let Some(sandbox) = &self.sandbox else {
            return Ok(());
        };
        if let Some(storage) = &self.storage {
            for (key, value) in &sandbox.fakes.storage {
                storage.set(installation, key, value.as_bytes())?;
            }
        }
        let namespace = format!("{plugin}/{team}");
        for (key, value) in &sandbox.fakes.cache {
            self.cache
                .set(&namespace, key, value.as_bytes().to_vec(), None)?;
        }
        Ok(())
    }
}

/// Values a run wrote, by installation and key (`None`: deleted).
type Written = HashMap<(String, String), Option<Vec<u8>>>;

/// `storage` over a live backend: keys the run wrote are its own, the rest read through.
struct OverlayStorage {
    live: Option<Arc<dyn storage::Backend>>,
    written: Mutex<Written>,
}

impl OverlayStorage {
    fn new(live: Option<Arc<dyn storage::Backend>>) -> Self {
        Self {
            live,
            written: Mutex::default(),
        }
    }

    fn written(&self) -> std::sync::MutexGuard<'_, Written> {
        self.written.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl storage::Backend for OverlayStorage {
    fn get(&self, installation: &str, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        let written = self
            .written()
            .get(&(installation.to_owned(), key.to_owned()))
            .cloned();
        match (written, &self.live) {
            (Some(value), _) => Ok(value),
            (None, Some(live)) => live.get(installation, key),
            (None, None) => Ok(None),
        }
    }

    fn set(&self, installation: &str, key: &str, value: &[u8]) -> Result<(), HostError> {
        self.written().insert(
            (installation.to_owned(), key.to_owned()),
            Some(value.to_vec()),
        );
        Ok(())
    }

    fn delete(&self, installation: &str, key: &str) -> Result<bool, HostError> {
        let existed = self.get(installation, key)?.is_some();
        self.written()
            .insert((installation.to_owned(), key.to_owned()), None);
        Ok(existed)
    }

    fn increment(&self, installation: &str, key: &str, by: i64) -> Result<i64, HostError> {
        let current = self.get(installation, key)?;
        let value = sluice_abi::limits::add_to_integer(current.as_deref(), by)?;
        self.set(installation, key, value.to_string().as_bytes())?;
        Ok(value)
    }

    fn list_keys(
        &self,
        installation: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, HostError> {
        let written: Vec<(String, bool)> = self
            .written()
            .iter()
            .filter(|((i, k), _)| i == installation && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.is_some()))
            .collect();
        let mut keys: std::collections::BTreeSet<String> = match &self.live {
            // Enough live keys to fill the page after the run's deletions.
            Some(live) => live
                .list_keys(
                    installation,
                    prefix,
                    after,
                    limit.saturating_add(written.len() as u32),
                )?
                .into_iter()
                .collect(),
            None => Default::default(),
        };
        for (key, present) in written {
            if present {
                keys.insert(key);
            } else {
                keys.remove(&key);
            }
        }
        Ok(keys
            .into_iter()
            .filter(|k| after.is_none_or(|a| k.as_str() > a))
            .take(limit as usize)
            .collect())
    }
}

/// `cache` over a live backend: a key the run touches is copied into the run's own memory
/// first, and lives there from then on.
struct OverlayCache {
    live: Option<Arc<dyn cache::Backend>>,
    own: cache::MemoryBackend,
    copied: Mutex<HashSet<(String, String)>>,
}

impl OverlayCache {
    fn new(live: Option<Arc<dyn cache::Backend>>) -> Self {
        Self {
            live,
            own: cache::MemoryBackend::default(),
            copied: Mutex::default(),
        }
    }

    /// The run's own copy of `key`, made on first use.
    fn own(&self, ns: &str, key: &str) -> Result<&cache::MemoryBackend, HostError> {
        let first = self
            .copied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((ns.to_owned(), key.to_owned()));
        if let (true, Some(live)) = (first, &self.live) {
            match live.get(ns, key) {
                Ok(Some(value)) => self.own.set(ns, key, value, None)?,
                Ok(None) => {}
                // Not a plain value: a list, copied head first.
                Err(_) => {
                    let mut items = live.list_range(ns, key, 0, -1)?;
                    items.reverse();
                    if !items.is_empty() {
                        self.own.list_push(ns, key, items)?;
                    }
                }
            }
        }
        Ok(&self.own)
    }
}

impl cache::Backend for OverlayCache {
    fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.own(ns, key)?.get(ns, key)
    }
    fn set(&self, ns: &str, key: &str, value: Vec<u8>, ttl: Option<u32>) -> Result<(), HostError> {
        self.own(ns, key)?.set(ns, key, value, ttl)
    }
    fn delete(&self, ns: &str, key: &str) -> Result<bool, HostError> {
        self.own(ns, key)?.delete(ns, key)
    }
    fn increment(&self, ns: &str, key: &str, by: i64) -> Result<i64, HostError> {
        self.own(ns, key)?.increment(ns, key, by)
    }
    fn expire(&self, ns: &str, key: &str, ttl: u32) -> Result<bool, HostError> {
        self.own(ns, key)?.expire(ns, key, ttl)
    }
    fn list_push(&self, ns: &str, key: &str, values: Vec<Vec<u8>>) -> Result<u32, HostError> {
        self.own(ns, key)?.list_push(ns, key, values)
    }
    fn list_range(
        &self,
        ns: &str,
        key: &str,
        start: i64,
        stop: i64,
    ) -> Result<Vec<Vec<u8>>, HostError> {
        self.own(ns, key)?.list_range(ns, key, start, stop)
    }
    fn list_length(&self, ns: &str, key: &str) -> Result<u32, HostError> {
        self.own(ns, key)?.list_length(ns, key)
    }
    fn list_remove(&self, ns: &str, key: &str, count: i64, value: &[u8]) -> Result<u32, HostError> {
        self.own(ns, key)?.list_remove(ns, key, count, value)
    }
    fn list_pop(&self, ns: &str, key: &str, count: u32) -> Result<Vec<Vec<u8>>, HostError> {
        self.own(ns, key)?.list_pop(ns, key, count)
    }
}

/// Whether `http` must be answered by the sandbox rather than sent.
pub(super) fn intercepts_http(services: &Services) -> Option<&Sandbox> {
    services.sandbox.as_deref().filter(|s| !s.real)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::storage::Backend as _;

    #[test]
    fn overlays_read_live_data_and_keep_writes_to_themselves() {
        let live_cache: Arc<dyn cache::Backend> = Arc::new(cache::MemoryBackend::default());
        live_cache.set("p/1", "seen", b"3".to_vec(), None).unwrap();
        live_cache
            .list_push("p/1", "recent", vec![b"b".to_vec(), b"a".to_vec()])
            .unwrap();
        let overlay = OverlayCache::new(Some(live_cache.clone()));
        assert_eq!(overlay.increment("p/1", "seen", 2).unwrap(), 5);
        assert_eq!(
            overlay.list_range("p/1", "recent", 0, -1).unwrap(),
            live_cache.list_range("p/1", "recent", 0, -1).unwrap()
        );
        assert_eq!(live_cache.get("p/1", "seen").unwrap().unwrap(), b"3");

        let dir = tempfile::tempdir().unwrap();
        let live: Arc<dyn storage::Backend> =
            Arc::new(storage::SqliteStorage::open(dir.path()).unwrap());
        live.set("team-1/a", "k1", b"live").unwrap();
        live.set("team-1/a", "k2", b"live").unwrap();
        let overlay = OverlayStorage::new(Some(live.clone()));
        assert!(overlay.delete("team-1/a", "k1").unwrap());
        overlay.set("team-1/a", "k3", b"run").unwrap();
        assert_eq!(overlay.get("team-1/a", "k2").unwrap().unwrap(), b"live");
        assert_eq!(
            overlay.list_keys("team-1/a", "k", None, 10).unwrap(),
            ["k2", "k3"]
        );
        assert_eq!(live.get("team-1/a", "k1").unwrap().unwrap(), b"live");
        assert_eq!(live.get("team-1/a", "k3").unwrap(), None);
    }

    #[test]
    fn writes_are_counted_and_http_is_answered_by_fakes_only() {
        let sandbox = Sandbox::new(
            Fakes {
                http: vec![FakeResponse {
                    url: "https://api.example.com/*".into(),
                    body: "{}".into(),
                    ..FakeResponse::default()
                }],
                ..Fakes::default()
            },
            false,
        );
        sandbox.note("team-1/a", "storage.get", &"k");
        sandbox.note("team-1/a", "storage.set", &"k");
        sandbox.note("team-1/a", "storage.set", &"j");
        let effects = sandbox.effects();
        assert_eq!(effects.len(), 1);
        assert_eq!(
            (effects[0].count, &effects[0].example),
            (2, &Value::from("k"))
        );
        let request = |url: &str| http_wit::Request {
            method: "GET".into(),
            url: url.into(),
            headers: vec![],
            body: vec![],
            timeout_ms: None,
        };
        assert_eq!(
            sandbox
                .fetch(&request("https://api.example.com/x"))
                .unwrap()
                .status,
            200
        );
        let refused = sandbox
            .fetch(&request("https://other.example.com/"))
            .unwrap_err();
        assert!(refused.message.contains("not sent"));
    }
}

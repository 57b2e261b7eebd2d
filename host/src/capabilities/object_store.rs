//! `object_store`: put / get / head / list / delete in the stores the operator configured
//! (`[object_stores.NAME]`) and granted to the installation (`object_store = { stores, prefix }`).
//!
//! A store is a local folder (the default: zero setup) or S3 or any S3-compatible server, both
//! behind the `object_store` crate's `ObjectStore` trait (which signs S3 requests with SigV4);
//! credentials come from the config or the standard AWS environment variables and never reach
//! plugins. Keys are checked ([`sluice_abi::limits::check_object_key`]); the grant's prefix is
//! added to every key and removed from listed keys, so a plugin cannot reach outside it. Plugin
//! calls are synchronous: they block on a small runtime owned by the stores, each bounded by the
//! installation's call deadline.

use super::{Capability, HasCapabilities, HasView, StartError, View, grant_table, to_wit};
use crate::bindings::sluice::plugin::object_store::{self as wit, Host, ObjectInfo, ObjectPage};
use crate::bindings::types;
use crate::config::Collector;
use ::object_store::path::Path as StorePath;
use ::object_store::{
    Attribute, Attributes, ObjectMeta, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
};
use futures::TryStreamExt;
use serde::Deserialize;
use sluice_abi::limits::{self, DEFAULT_MAX_OBJECT_BYTES, ErrorKind, HostError, MAX_LIST_OBJECTS};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Linker;

/// The `object_store` capability.
pub const CAPABILITY: Capability = Capability {
    name: "object_store",
    interface: "sluice:plugin/object-store",
};

/// A value that is never printed (credentials).
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<secret>\"")
    }
}

/// What kind of store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A folder on this machine.
    #[default]
    Local,
    /// S3, or any S3-compatible server.
    S3,
}

/// `[object_stores.NAME]`: one store.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// `local` (a folder, the default) or `s3`.
    #[serde(default)]
    pub kind: Kind,
    /// `local`: the folder, relative to the config file; default `<data_dir>/objects/<NAME>`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `s3`: the bucket.
    #[serde(default)]
    pub bucket: Option<String>,
    /// `s3`: the region (default `us-east-1`, or `AWS_DEFAULT_REGION` / `AWS_REGION`).
    #[serde(default)]
    pub region: Option<String>,
    /// `s3`: the endpoint of an S3-compatible server, e.g. `http://127.0.0.1:9000`
    /// (default: AWS, or `AWS_ENDPOINT_URL`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `s3`: address buckets as `endpoint/bucket` (most S3-compatible servers) instead of
    /// `bucket.endpoint`.
    #[serde(default)]
    pub path_style: bool,
    /// `s3`: the access key id (default `AWS_ACCESS_KEY_ID`).
    #[serde(default)]
    pub access_key_id: Option<Secret>,
    /// `s3`: the secret access key (default `AWS_SECRET_ACCESS_KEY`).
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// `s3`: a session token for temporary credentials (default `AWS_SESSION_TOKEN`).
    #[serde(default)]
    pub session_token: Option<Secret>,
    /// Largest object put or got, in bytes.
    #[serde(default = "default_max_object_bytes")]
    pub max_object_bytes: usize,
}

fn default_max_object_bytes() -> usize {
    DEFAULT_MAX_OBJECT_BYTES
}

/// `[object_stores]`: every store, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    stores: BTreeMap<String, StoreSettings>,
}

impl Settings {
    /// The names of the configured stores.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.stores.keys().map(String::as_str)
    }
}

impl Settings {
    /// Reads `[object_stores.*]`; folders are relative to `base`, credentials missing from the
    /// file are looked up with `env` (`AWS_*`).
    pub(super) fn load(
        c: &mut Collector,
        table: &toml::Table,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Self {
        let Some(section) = table.get("object_stores") else {
            return Self::default();
        };
        let Some(section) = section.as_table() else {
            c.add(
                "object_stores",
                "must be a table of stores ([object_stores.NAME])",
            );
            return Self::default();
        };
        let mut stores = BTreeMap::new();
        for (name, value) in section {
            let key = format!("object_stores.{name}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_".contains(ch))
            {
                c.add(&key, "a store name uses only letters, digits, `-` and `_`");
                continue;
            }
            let Some(mut store) = c.value::<StoreSettings>(&key, value.clone()) else {
                continue;
            };
            store.path = store.path.map(|path| base.join(path));
            let secret = |given: Option<Secret>, var: &str| given.or_else(|| env(var).map(Secret));
            match store.kind {
                Kind::Local => {
                    for (field, set) in [
                        ("bucket", store.bucket.is_some()),
                        ("endpoint", store.endpoint.is_some()),
                        ("access_key_id", store.access_key_id.is_some()),
                        ("secret_access_key", store.secret_access_key.is_some()),
                    ] {
                        if set {
                            c.add(format!("{key}.{field}"), "is for `kind = \"s3\"` stores");
                        }
                    }
                }
                Kind::S3 => {
                    if store.bucket.is_none() {
                        c.add(format!("{key}.bucket"), "is required for `kind = \"s3\"`");
                    }
                    if store.path.is_some() {
                        c.add(format!("{key}.path"), "is for `kind = \"local\"` stores");
                    }
                    store.region = store
                        .region
                        .or_else(|| env("AWS_DEFAULT_REGION"))
                        .or_else(|| env("AWS_REGION"));
                    store.endpoint = store.endpoint.or_else(|| env("AWS_ENDPOINT_URL"));
                    store.access_key_id = secret(store.access_key_id, "AWS_ACCESS_KEY_ID");
                    store.secret_access_key =
                        secret(store.secret_access_key, "AWS_SECRET_ACCESS_KEY");
                    store.session_token = secret(store.session_token, "AWS_SESSION_TOKEN");
                    if store.access_key_id.is_some() != store.secret_access_key.is_some() {
                        c.add(
                            &key,
                            "give both `access_key_id` and `secret_access_key` (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or neither",
                        );
                    }
                }
            }
            if !(1..=5 << 30).contains(&store.max_object_bytes) {
                c.add(
                    format!("{key}.max_object_bytes"),
                    "must be between 1 and 5368709120",
                );
            }
            stores.insert(name.clone(), store);
        }
        Self { stores }
    }

    /// Refuses an `object_store` grant at `key` that names stores not configured.
    pub(super) fn check_grant(&self, c: &mut Collector, key: &str, grant: &Grant) {
        for (i, store) in grant.stores.iter().enumerate() {
            if !self.stores.contains_key(store) {
                let known: Vec<&str> = self.stores.keys().map(String::as_str).collect();
                c.add(
                    format!("{key}.object_store.stores[{i}]"),
                    format!(
                        "no `[object_stores.{store}]` is configured (configured: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
        }
    }

    /// The same stores, each a local folder `dir/<name>` (for runs that must not write to the
    /// real ones).
    pub fn scratch(&self, dir: &Path) -> Self {
        let stores = self
            .stores
            .iter()
            .map(|(name, settings)| {
                let local = StoreSettings {
                    kind: Kind::Local,
                    path: Some(dir.join(name)),
                    bucket: None,
                    region: None,
                    endpoint: None,
                    path_style: false,
                    access_key_id: None,
                    secret_access_key: None,
                    session_token: None,
                    max_object_bytes: settings.max_object_bytes,
                };
                (name.clone(), local)
            })
            .collect();
        Self { stores }
    }

    /// Opens every store; local folders default to `data_dir/objects/<name>`.
    pub fn open(&self, data_dir: &Path) -> Result<Option<Arc<Stores>>, StartError> {
        if self.stores.is_empty() {
            return Ok(None);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice-object-store")
            .enable_all()
            .build()
            .map_err(|source| StartError::Thread {
                what: "the object store runtime",
                source,
            })?;
        let mut stores = BTreeMap::new();
        for (name, settings) in &self.stores {
            let fail = |reason: String| StartError::Config {
                key: format!("object_stores.{name}"),
                reason,
            };
            let inner: Arc<dyn ObjectStore> = match settings.kind {
                Kind::Local => {
                    let folder = settings
                        .path
                        .clone()
                        .unwrap_or_else(|| data_dir.join("objects").join(name));
                    std::fs::create_dir_all(&folder)
                        .map_err(|e| fail(format!("cannot create {}: {e}", folder.display())))?;
                    Arc::new(
                        ::object_store::local::LocalFileSystem::new_with_prefix(&folder)
                            .map_err(|e| fail(e.to_string()))?,
                    )
                }
                Kind::S3 => Arc::new(s3(settings).map_err(|e| fail(e.to_string()))?),
            };
            stores.insert(
                name.clone(),
                Store {
                    inner,
                    sorted_listing: settings.kind == Kind::S3,
                    typed: settings.kind == Kind::S3,
                    max_object_bytes: settings.max_object_bytes,
                },
            );
        }
        let stores = Stores {
            runtime: Some(runtime),
            stores,
        };
        for (name, settings) in &self.stores {
            if let Err(error) = stores.reachable(name, REACHABLE_WITHIN) {
                let what = match settings.kind {
                    Kind::S3 => format!(
                        "bucket `{}` cannot be listed (does it exist, and may these credentials read it?)",
                        settings.bucket.as_deref().unwrap_or_default()
                    ),
                    Kind::Local => "the folder cannot be listed".to_owned(),
                };
                return Err(StartError::Config {
                    key: format!("object_stores.{name}"),
                    reason: format!("{what}: {}", error.message),
                });
            }
        }
        Ok(Some(Arc::new(stores)))
    }
}

/// Stores that did not answer, each with the reason.
pub type Unreachable = Vec<(String, String)>;

/// How long the check of a store at start may take.
const REACHABLE_WITHIN: Duration = Duration::from_secs(10);

fn s3(settings: &StoreSettings) -> ::object_store::Result<::object_store::aws::AmazonS3> {
    let mut builder = ::object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(settings.bucket.clone().unwrap_or_default())
        .with_region(
            settings
                .region
                .clone()
                .unwrap_or_else(|| "us-east-1".into()),
        )
        .with_virtual_hosted_style_request(!settings.path_style);
    if let Some(endpoint) = &settings.endpoint {
        builder = builder
            .with_allow_http(endpoint.starts_with("http://"))
            .with_endpoint(endpoint);
    }
    if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
        builder = builder
            .with_access_key_id(&id.0)
            .with_secret_access_key(&secret.0);
    }
    if let Some(token) = &settings.session_token {
        builder = builder.with_token(&token.0);
    }
    builder.build()
}

/// What an installation may reach: `object_store = { stores = [...], prefix = "..." }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grant {
    /// Names of the stores (`[object_stores.NAME]`) the installation may use.
    pub stores: Vec<String>,
    /// Added to every key the plugin uses (and removed from listed keys); empty for none.
    pub prefix: String,
}

impl Grant {
    /// Reads the installation's `object_store` table at `key`; it must be there exactly when
    /// `object_store` is `granted`.
    pub(super) fn load(
        c: &mut Collector,
        key: &str,
        table: Option<&toml::Value>,
        granted: bool,
    ) -> Self {
        // An explicit `stores = []` is allowed: a plugin that uses stores only when configured
        // to (a delete-only retention) is granted none.
        let needs = "`object_store.stores` must list the stores it may use (`[]` for none)";
        let Some(grant) = grant_table::<Self>(c, key, table, granted, &CAPABILITY, needs) else {
            return Self::default();
        };
        let problem = match limits::check_object_key(&grant.prefix, true) {
            Err(error) => Some(error.message),
            Ok(()) if !grant.prefix.is_empty() && !grant.prefix.ends_with('/') => {
                Some("must end with `/`".to_owned())
            }
            Ok(()) => None,
        };
        if let Some(problem) = problem {
            c.add(format!("{key}.prefix"), problem);
        }
        grant
    }
}

/// One opened store.
struct Store {
    inner: Arc<dyn ObjectStore>,
    /// Whether the backend lists in key order by itself (S3 does, a folder does not).
    sorted_listing: bool,
    /// Whether objects carry a content type and encoding (S3 does, a folder does not).
    typed: bool,
    max_object_bytes: usize,
}

/// The content type and encoding an object's key says it has: `.gz` is gzip, then `.jsonl`
/// JSON lines, `.json` JSON, `.parquet` Parquet, `.csv` CSV, `.txt` text.
fn content_attributes(key: &str) -> Attributes {
    let mut attributes = Attributes::new();
    let key = match key.strip_suffix(".gz") {
        Some(inner) => {
            attributes.insert(Attribute::ContentEncoding, "gzip".into());
            inner
        }
        None => key,
    };
    let content_type = match key.rsplit_once('.').map(|(_, ext)| ext) {
        Some("jsonl" | "ndjson") => Some("application/x-ndjson"),
        Some("json") => Some("application/json"),
        Some("parquet") => Some("application/vnd.apache.parquet"),
        Some("csv") => Some("text/csv"),
        Some("txt") => Some("text/plain; charset=utf-8"),
        _ => None,
    };
    if let Some(content_type) = content_type {
        attributes.insert(Attribute::ContentType, content_type.into());
    }
    attributes
}

/// Every opened store and the runtime their requests run on.
pub struct Stores {
    runtime: Option<tokio::runtime::Runtime>,
    stores: BTreeMap<String, Store>,
}

impl Drop for Stores {
    fn drop(&mut self) {
        // May run inside an async context (e.g. `serve` refusing a config): never block there.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn unavailable(error: impl fmt::Display) -> HostError {
    HostError::new(ErrorKind::Unavailable, format!("object store: {error}"))
}

fn not_found(error: &::object_store::Error) -> bool {
    matches!(error, ::object_store::Error::NotFound { .. })
}

impl Stores {
    /// Runs `future` on the stores' runtime, giving up after `deadline`.
    fn block_on<T: Send>(
        &self,
        deadline: Duration,
        future: impl Future<Output = Result<T, HostError>> + Send,
    ) -> Result<T, HostError> {
        let Some(runtime) = &self.runtime else {
            return Err(unavailable("shutting down"));
        };
        super::blocking(|| {
            runtime.block_on(async {
                tokio::time::timeout(deadline, future)
                    .await
                    .unwrap_or_else(|_| {
                        Err(HostError::new(
                            ErrorKind::Timeout,
                            format!(
                                "object store did not answer within {} ms",
                                deadline.as_millis()
                            ),
                        ))
                    })
            })
        })
    }

    /// The stores that do not answer a listing now, each with the reason (as `/ready` and a
    /// reload check them).
    pub fn unreachable(&self, within: Duration) -> Unreachable {
        self.stores
            .keys()
            .filter_map(|name| {
                self.reachable(name, within)
                    .err()
                    .map(|error| (name.clone(), error.message))
            })
            .collect()
    }

    /// Whether store `name` answers a listing (its bucket exists and the credentials may read
    /// it), as checked at start.
    fn reachable(&self, name: &str, within: Duration) -> Result<(), HostError> {
        let store = self
            .stores
            .get(name)
            .ok_or_else(|| unavailable(format!("no store {name}")))?;
        self.block_on(within, async {
            store
                .inner
                .list(None)
                .try_next()
                .await
                .map(drop)
                .map_err(unavailable)
        })
    }

    /// The store `name`, if the grant allows it.
    fn store(&self, grant: &Grant, name: &str) -> Result<&Store, HostError> {
        if !grant.stores.iter().any(|store| store == name) {
            return Err(HostError::new(
                ErrorKind::Refused,
                format!(
                    "store `{name}` is not granted to this installation (granted: {})",
                    if grant.stores.is_empty() {
                        "none".to_owned()
                    } else {
                        grant.stores.join(", ")
                    }
                ),
            ));
        }
        self.stores.get(name).ok_or_else(|| {
            HostError::new(
                ErrorKind::Unavailable,
                format!("no store `{name}` is configured"),
            )
        })
    }

    /// The full path of the plugin's `key` under the grant's prefix.
    fn path(grant: &Grant, key: &str) -> Result<StorePath, HostError> {
        limits::check_object_key(key, false)?;
        StorePath::parse(format!("{}{key}", grant.prefix))
            .map_err(|e| HostError::new(ErrorKind::Invalid, e.to_string()))
    }

    fn info(grant: &Grant, meta: ObjectMeta) -> ObjectInfo {
        let key = meta.location.as_ref();
        ObjectInfo {
            key: key.strip_prefix(&grant.prefix).unwrap_or(key).to_owned(),
            size: meta.size,
            last_modified: meta.last_modified.timestamp_millis(),
            e_tag: meta.e_tag,
        }
    }

    /// `put`.
    pub fn put(
        &self,
        grant: &Grant,
        deadline: Duration,
        name: &str,
        key: &str,
        body: Vec<u8>,
    ) -> Result<(), HostError> {
        let store = self.store(grant, name)?;
        let path = Self::path(grant, key)?;
        limits::check_value(&body, store.max_object_bytes)?;
        let options = PutOptions {
            attributes: if store.typed {
                content_attributes(key)
            } else {
                Attributes::new()
            },
            ..PutOptions::default()
        };
        self.block_on(deadline, async {
            store
                .inner
                .put_opts(&path, PutPayload::from(body), options)
                .await
                .map(drop)
                .map_err(unavailable)
        })
    }

    /// `get`.
    pub fn get(
        &self,
        grant: &Grant,
        deadline: Duration,
        name: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, HostError> {
        let store = self.store(grant, name)?;
        self.fetch(store, Self::path(grant, key)?, deadline)
    }

    /// The object under the full `key` in store `name`, for the host itself (no grant applies).
    pub fn read(
        &self,
        name: &str,
        key: &str,
        deadline: Duration,
    ) -> Result<Option<Vec<u8>>, HostError> {
        let store = self.stores.get(name).ok_or_else(|| {
            HostError::new(
                ErrorKind::Unavailable,
                format!("no store `{name}` is configured"),
            )
        })?;
        let path =
            StorePath::parse(key).map_err(|e| HostError::new(ErrorKind::Invalid, e.to_string()))?;
        self.fetch(store, path, deadline)
    }

    fn fetch(
        &self,
        store: &Store,
        path: StorePath,
        deadline: Duration,
    ) -> Result<Option<Vec<u8>>, HostError> {
        self.block_on(deadline, async {
            let found = match store.inner.get(&path).await {
                Ok(found) => found,
                Err(error) if not_found(&error) => return Ok(None),
                Err(error) => return Err(unavailable(error)),
            };
            if found.meta.size > store.max_object_bytes as u64 {
                return Err(HostError::new(
                    ErrorKind::TooLarge,
                    format!(
                        "object of {} bytes (cap {})",
                        found.meta.size, store.max_object_bytes
                    ),
                ));
            }
            found
                .bytes()
                .await
                .map(|bytes| Some(bytes.to_vec()))
                .map_err(unavailable)
        })
    }

    /// `head`.
    pub fn head(
        &self,
        grant: &Grant,
        deadline: Duration,
        name: &str,
        key: &str,
    ) -> Result<Option<ObjectInfo>, HostError> {
        let store = self.store(grant, name)?;
        let path = Self::path(grant, key)?;
        self.block_on(deadline, async {
            match store.inner.head(&path).await {
                Ok(meta) => Ok(Some(Self::info(grant, meta))),
                Err(error) if not_found(&error) => Ok(None),
                Err(error) => Err(unavailable(error)),
            }
        })
    }

    /// `list`: keys starting with `prefix` (a string prefix, not only whole segments), in key
    /// order, after `after`, at most `limit`.
    pub fn list(
        &self,
        grant: &Grant,
        deadline: Duration,
        name: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<ObjectPage, HostError> {
        let store = self.store(grant, name)?;
        limits::check_object_key(prefix, true)?;
        let full_prefix = format!("{}{prefix}", grant.prefix);
        // Backends list whole segments: list the folder the prefix is in, then filter.
        let folder = full_prefix
            .rsplit_once('/')
            .map(|(folder, _)| StorePath::from(folder));
        let limit = limit.clamp(1, MAX_LIST_OBJECTS) as usize;
        let after = after.map(|a| format!("{}{a}", grant.prefix));
        self.block_on(deadline, async {
            let mut listing = match &after {
                Some(after) => store
                    .inner
                    .list_with_offset(folder.as_ref(), &StorePath::from(after.as_str())),
                None => store.inner.list(folder.as_ref()),
            };
            let mut found: Vec<ObjectMeta> = Vec::new();
            while let Some(meta) = listing.try_next().await.map_err(unavailable)? {
                let key = meta.location.as_ref();
                if !key.starts_with(&full_prefix) || after.as_deref().is_some_and(|a| key <= a) {
                    continue;
                }
                found.push(meta);
                if store.sorted_listing && found.len() > limit {
                    break;
                }
            }
            found.sort_by(|a, b| a.location.cmp(&b.location));
            let more = found.len() > limit;
            found.truncate(limit);
            let objects: Vec<ObjectInfo> = found
                .into_iter()
                .map(|meta| Self::info(grant, meta))
                .collect();
            let next = more
                .then(|| objects.last().map(|o| o.key.clone()))
                .flatten();
            Ok(ObjectPage { objects, next })
        })
    }

    /// `delete`.
    pub fn delete(
        &self,
        grant: &Grant,
        deadline: Duration,
        name: &str,
        key: &str,
    ) -> Result<bool, HostError> {
        let store = self.store(grant, name)?;
        let path = Self::path(grant, key)?;
        self.block_on(deadline, async {
            match store.inner.head(&path).await {
                Ok(_) => {}
                Err(error) if not_found(&error) => return Ok(false),
                Err(error) => return Err(unavailable(error)),
            }
            match store.inner.delete(&path).await {
                Ok(()) => Ok(true),
                Err(error) if not_found(&error) => Ok(false),
                Err(error) => Err(unavailable(error)),
            }
        })
    }
}

impl View<'_, ()> {
    /// The stores and this installation's grant, if `object_store` is granted.
    fn stores(&self) -> Result<(&Stores, &Grant, Duration), HostError> {
        self.ctx.check(&CAPABILITY)?;
        let stores = self.ctx.services.object_stores.as_deref().ok_or_else(|| {
            HostError::new(ErrorKind::Unavailable, "no object store is configured")
        })?;
        Ok((stores, &self.ctx.grants.object_store, self.ctx.timeout))
    }
}

impl Host for View<'_, ()> {
    fn put(&mut self, store: String, key: String, body: Vec<u8>) -> Result<(), types::HostError> {
        self.journaled("object-store.put", (&store, &key, body.len()), || {
            self.stores()
                .and_then(|(s, grant, deadline)| s.put(grant, deadline, &store, &key, body))
                .map_err(to_wit)
        })
    }

    fn get(&mut self, store: String, key: String) -> Result<Option<Vec<u8>>, types::HostError> {
        self.journaled("object-store.get", (&store, &key), || {
            self.stores()
                .and_then(|(s, grant, deadline)| s.get(grant, deadline, &store, &key))
                .map_err(to_wit)
        })
    }

    fn head(&mut self, store: String, key: String) -> Result<Option<ObjectInfo>, types::HostError> {
        self.journaled("object-store.head", (&store, &key), || {
            self.stores()
                .and_then(|(s, grant, deadline)| s.head(grant, deadline, &store, &key))
                .map_err(to_wit)
        })
    }

    fn list(
        &mut self,
        store: String,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<ObjectPage, types::HostError> {
        self.journaled(
            "object-store.list",
            (&store, &prefix, &after, limit),
            || {
                self.stores()
                    .and_then(|(s, grant, deadline)| {
                        s.list(grant, deadline, &store, &prefix, after.as_deref(), limit)
                    })
                    .map_err(to_wit)
            },
        )
    }

    fn delete(&mut self, store: String, key: String) -> Result<bool, types::HostError> {
        self.journaled("object-store.delete", (&store, &key), || {
            self.stores()
                .and_then(|(s, grant, deadline)| s.delete(grant, deadline, &store, &key))
                .map_err(to_wit)
        })
    }
}

/// Adds `object_store` to `linker`.
pub(super) fn add_to_linker<T: HasCapabilities>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasView<()>>(linker, |data| data.capabilities().serving())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stores(dir: &Path) -> Arc<Stores> {
        let mut c = Collector::default();
        let table: toml::Table =
            toml::from_str("[object_stores.exports]\nmax_object_bytes = 10\n").unwrap();
        let settings = Settings::load(&mut c, &table, dir, &|_| None);
        c.finish(Path::new("sluice.toml")).unwrap();
        settings.open(dir).unwrap().unwrap()
    }

    fn grant(prefix: &str) -> Grant {
        Grant {
            stores: vec!["exports".to_owned()],
            prefix: prefix.to_owned(),
        }
    }

    #[test]
    fn a_local_store_puts_gets_lists_and_deletes_under_the_grant_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let s = stores(dir.path());
        let g = grant("team-1/");
        let t = Duration::from_secs(5);
        for key in ["b/2", "a/1", "a/3", "ab"] {
            s.put(&g, t, "exports", key, b"x".to_vec()).unwrap();
        }
        assert!(dir.path().join("objects/exports/team-1/a/3").is_file());
        assert_eq!(s.get(&g, t, "exports", "a/1").unwrap(), Some(b"x".to_vec()));
        assert_eq!(s.get(&g, t, "exports", "nope").unwrap(), None);
        assert_eq!(s.head(&g, t, "exports", "ab").unwrap().unwrap().size, 1);
        let page = s.list(&g, t, "exports", "a", None, 2).unwrap();
        let keys: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["a/1", "a/3"]);
        assert_eq!(page.next.as_deref(), Some("a/3"));
        let rest = s
            .list(&g, t, "exports", "a", page.next.as_deref(), 2)
            .unwrap();
        let keys: Vec<&str> = rest.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!((keys, rest.next), (vec!["ab"], None));
        assert!(s.delete(&g, t, "exports", "ab").unwrap());
        assert!(!s.delete(&g, t, "exports", "ab").unwrap());
    }

    #[test]
    fn objects_in_s3_say_what_they_hold_by_their_key() {
        let attributes = |key: &str| {
            let a = content_attributes(key);
            (
                a.get(&Attribute::ContentType).map(|v| v.to_string()),
                a.get(&Attribute::ContentEncoding).map(|v| v.to_string()),
            )
        };
        assert_eq!(
            attributes("events/2024/x.jsonl.gz"),
            (Some("application/x-ndjson".into()), Some("gzip".into()))
        );
        assert_eq!(
            attributes("x.parquet"),
            (Some("application/vnd.apache.parquet".into()), None)
        );
        assert_eq!(
            attributes("x.json"),
            (Some("application/json".into()), None)
        );
        assert_eq!(attributes("x.bin"), (None, None));
    }

    #[test]
    fn keys_stores_and_sizes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let s = stores(dir.path());
        let g = grant("");
        let t = Duration::from_secs(5);
        let kind = |r: Result<(), HostError>| r.unwrap_err().kind;
        assert_eq!(
            kind(s.put(&g, t, "exports", "../escape", vec![])),
            ErrorKind::Invalid
        );
        assert_eq!(
            kind(s.put(&g, t, "exports", "/abs", vec![])),
            ErrorKind::Invalid
        );
        assert_eq!(kind(s.put(&g, t, "other", "k", vec![])), ErrorKind::Refused);
        assert_eq!(
            kind(s.put(&g, t, "exports", "k", vec![0; 11])),
            ErrorKind::TooLarge
        );
    }

    #[test]
    fn settings_are_checked_with_their_keys() {
        let mut c = Collector::default();
        let table: toml::Table = toml::from_str(
            "[object_stores.a]\nkind = \"s3\"\naccess_key_id = \"x\"\n[object_stores.b]\nbucket = \"x\"\n",
        )
        .unwrap();
        let settings = Settings::load(&mut c, &table, Path::new("/"), &|_| None);
        let problems = c.finish(Path::new("f")).unwrap_err().problems;
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "object_stores.a.bucket",
                "object_stores.a",
                "object_stores.b.bucket"
            ]
        );
        let mut c = Collector::default();
        settings.check_grant(&mut c, "teams[0].plugins[0]", &grant(""));
        let problems = c.finish(Path::new("f")).unwrap_err().problems;
        assert_eq!(
            problems[0].key,
            "teams[0].plugins[0].object_store.stores[0]"
        );
        assert!(format!("{:?}", settings).contains("<secret>"));
    }
}

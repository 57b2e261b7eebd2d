//! Host capabilities: what plugins can ask the host to do, one self-contained module each.
//!
//! A capability module owns everything about its capability: its config section or
//! per-installation table (type, defaults, validation), its shared backend (behind a trait where
//! a second backend exists), its per-instance state, and its host functions, which it links
//! through a [`View`] of the store's data (via [`HasCapabilities`]), never through the runtime's
//! store type. This file composes them: [`ALL`] and [`add_to_linker`] list them, [`Settings`],
//! [`Grants`], [`Services`] and [`InstanceState`] hold one field per capability that has such a
//! part.
//!
//! Nothing is granted by default. An installation's [`Grants`] come from the operator's config;
//! loading refuses a plugin that imports or declares a capability its installation was not
//! granted, and every host function checks the grant of the installation it is serving again
//! (one shared instance can serve several installations, see [`Context`]).

pub mod cache;
pub mod geoip;
pub mod http;
pub mod jobs;
pub mod journal;
pub mod log;
pub mod metrics;
pub mod object_store;
pub mod recordings;
pub mod sandbox;
pub mod storage;
mod v0_5;

use crate::bindings::types;
use crate::config::Collector;
use serde::de::DeserializeOwned;
use sluice_abi::limits::{ErrorKind, HostError};
use sluice_abi::manifest::CAPABILITIES;
use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use thiserror::Error;
use wasmtime::component::{HasData, Linker};

/// One host capability: the name operators grant and the WIT interface it implements.
#[derive(Debug)]
pub struct Capability {
    /// Short name operators grant, e.g. `storage`.
    pub name: &'static str,
    /// The WIT interface it implements, without version, e.g. `sluice:plugin/storage`.
    pub interface: &'static str,
}

/// Every capability the host provides, in the order manifests name them.
pub const ALL: &[Capability] = &[
    log::CAPABILITY,
    metrics::CAPABILITY,
    storage::CAPABILITY,
    cache::CAPABILITY,
    geoip::CAPABILITY,
    http::CAPABILITY,
    object_store::CAPABILITY,
    jobs::CAPABILITY,
    recordings::CAPABILITY,
];

/// Adds every capability's host functions to `linker`, for the current contract and 0.5.0.
pub fn add_to_linker<T: HasCapabilities>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    log::add_to_linker(linker)?;
    metrics::add_to_linker(linker)?;
    storage::add_to_linker(linker)?;
    cache::add_to_linker(linker)?;
    geoip::add_to_linker(linker)?;
    http::add_to_linker(linker)?;
    object_store::add_to_linker(linker)?;
    jobs::add_to_linker(linker)?;
    recordings::add_to_linker(linker)?;
    v0_5::add_to_linker(linker)
}

/// The capability implementing `interface` (given with or without `@version`).
pub fn for_interface(interface: &str) -> Option<&'static Capability> {
    let unversioned = interface.split('@').next().unwrap_or(interface);
    ALL.iter().find(|c| c.interface == unversioned)
}

/// The capability called `name`.
pub fn by_name(name: &str) -> Option<&'static Capability> {
    ALL.iter().find(|c| c.name == name)
}

/// What a store's data gives the capabilities: their per-instance state, which includes the
/// installation being served. The runtime implements it for its store data.
pub trait HasCapabilities: Send + 'static {
    /// The capabilities' part of the store data.
    fn capabilities(&mut self) -> &mut InstanceState;
}

/// Per-instance state of every capability, and the installation the instance is serving.
pub struct InstanceState {
    /// The installation the instance is serving in the current call.
    pub ctx: Arc<Context>,
    /// `log`: the current call's line budget.
    pub log: log::LogState,
    /// `metrics`: handles of the metrics used so far.
    pub metrics: metrics::MetricsState,
    /// `http`: the client, built for the policy it enforces.
    pub http: http::HttpState,
    /// `recordings` of 0.5.0 plugins: what the plugin listed or read, which bounds what it may
    /// delete.
    pub recordings: recordings::RecordingsState,
    /// The journal of host calls (off unless failure bundles are asked for).
    pub journal: journal::Journal,
}

impl InstanceState {
    /// Fresh state for an instance serving `ctx`.
    pub fn new(ctx: Arc<Context>, journal: journal::Journal) -> Self {
        Self {
            ctx,
            log: log::LogState::default(),
            metrics: metrics::MetricsState::default(),
            http: http::HttpState::default(),
            recordings: recordings::RecordingsState::default(),
            journal,
        }
    }

    /// The view of a capability without per-instance state.
    fn serving(&self) -> View<'_, ()> {
        View {
            ctx: &self.ctx,
            state: (),
            journal: &self.journal,
        }
    }

    /// The view of `log`.
    fn log_view(&mut self) -> View<'_, &mut log::LogState> {
        View {
            ctx: &self.ctx,
            state: &mut self.log,
            journal: &self.journal,
        }
    }

    /// The view of `metrics`.
    fn metrics_view(&mut self) -> View<'_, &mut metrics::MetricsState> {
        View {
            ctx: &self.ctx,
            state: &mut self.metrics,
            journal: &self.journal,
        }
    }

    /// The view of `http`.
    fn http_view(&mut self) -> View<'_, &mut http::HttpState> {
        View {
            ctx: &self.ctx,
            state: &mut self.http,
            journal: &self.journal,
        }
    }

    /// The view of `recordings` for 0.5.0 plugins.
    fn recordings_view(&mut self) -> View<'_, &mut recordings::RecordingsState> {
        View {
            ctx: &self.ctx,
            state: &mut self.recordings,
            journal: &self.journal,
        }
    }
}

/// What one capability's host functions see during a call: the installation being served and the
/// capability's own per-instance state (`()` for capabilities without any).
pub struct View<'a, S> {
    /// The installation being served.
    pub ctx: &'a Context,
    /// The capability's per-instance state.
    pub state: S,
    /// The instance's journal of host calls.
    pub journal: &'a journal::Journal,
}

impl<S> View<'_, S> {
    /// Answers host call `op` with `args` through the instance's journal, counting it as a
    /// side effect when it writes in a sandbox.
    fn journaled<A: serde::Serialize, T: serde::Serialize + DeserializeOwned>(
        &self,
        op: &str,
        args: A,
        host: impl FnOnce() -> T,
    ) -> T {
        note(self.ctx, op, &args);
        self.journal.call(op, args, host)
    }
}

/// Counts host call `op` of `ctx`'s installation as a side effect, in a sandbox.
fn note(ctx: &Context, op: &str, args: &impl serde::Serialize) {
    if let Some(sandbox) = &ctx.services.sandbox {
        sandbox.note(&ctx.installation, op, args);
    }
}

/// The [`HasData`] that hands host functions a [`View`] with state `S`.
struct HasView<S>(PhantomData<S>);

impl<S: Send + 'static> HasData for HasView<&'static mut S> {
    type Data<'a> = View<'a, &'a mut S>;
}

impl HasData for HasView<()> {
    type Data<'a> = View<'a, ()>;
}

/// The config sections capabilities own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    /// `[geoip]`
    pub geoip: geoip::Settings,
    /// `[object_stores.*]`
    pub object_stores: object_store::Settings,
}

impl Settings {
    /// Names of the top-level sections read here.
    pub const SECTIONS: &'static [&'static str] = &["geoip", "object_stores"];

    /// Reads every capability section of `table`; relative paths are against `base`, and `env`
    /// supplies what the file leaves to the environment (credentials).
    pub fn load(
        c: &mut Collector,
        table: &toml::Table,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Self {
        Self {
            geoip: geoip::Settings::load(c, table, base),
            object_stores: object_store::Settings::load(c, table, base, env),
        }
    }

    /// Checks that what the installation at `key` was granted can be served with these settings.
    pub fn check_grants(&self, c: &mut Collector, key: &str, grants: &Grants) {
        self.geoip
            .check_grant(c, key, grants.allows(geoip::CAPABILITY.name));
        self.object_stores.check_grant(c, key, &grants.object_store);
    }
}

/// What the operator granted one installation: capability names, and the per-installation
/// settings of the capabilities that have them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Grants {
    names: BTreeSet<String>,
    /// Where `http` may go (meaningful only if `http` is granted).
    pub http: http::Policy,
    /// Which object stores it may use, under which prefix.
    pub object_store: object_store::Grant,
}

impl Grants {
    /// Keys of an installation's table that capabilities own.
    const INSTALLATION_KEYS: [&'static str; 2] = ["http", "object_store"];

    /// Grants of `names` and nothing else, with default settings.
    pub fn of(names: &[&str]) -> Self {
        Self {
            names: names.iter().map(|n| n.to_string()).collect(),
            ..Self::default()
        }
    }

    /// Removes the keys capabilities own from an installation's table and returns them.
    pub fn take_owned_tables(installation: &mut toml::Table) -> toml::Table {
        Self::INSTALLATION_KEYS
            .into_iter()
            .filter_map(|key| Some((key.to_owned(), installation.remove(key)?)))
            .collect()
    }

    /// Reads the `grants` of the installation at `key` and the tables capabilities own.
    pub fn load(c: &mut Collector, key: &str, names: &[String], owned: toml::Table) -> Self {
        let mut granted = BTreeSet::new();
        for (k, name) in names.iter().enumerate() {
            if by_name(name).is_none() {
                c.add(
                    format!("{key}.grants[{k}]"),
                    format!(
                        "`{name}` is not a capability (known: {})",
                        CAPABILITIES.join(", ")
                    ),
                );
            } else if !granted.insert(name.clone()) {
                c.add(
                    format!("{key}.grants[{k}]"),
                    format!("`{name}` is granted twice"),
                );
            }
        }
        let http = http::Policy::load(
            c,
            &format!("{key}.http"),
            owned.get("http"),
            granted.contains(http::CAPABILITY.name),
        );
        let object_store = object_store::Grant::load(
            c,
            &format!("{key}.object_store"),
            owned.get("object_store"),
            granted.contains(object_store::CAPABILITY.name),
        );
        Self {
            names: granted,
            http,
            object_store,
        }
    }

    /// Whether `name` is granted.
    pub fn allows(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// The capabilities granted, by name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }
}

/// Reads an installation's table that `capability` owns (such as `http = {...}`), which must be
/// there exactly when the capability is `granted`; `needs` says what the table must give. The
/// table, if it is there, readable and granted; else a problem is recorded.
fn grant_table<T: DeserializeOwned>(
    c: &mut Collector,
    key: &str,
    table: Option<&toml::Value>,
    granted: bool,
    capability: &Capability,
    needs: &str,
) -> Option<T> {
    let name = capability.name;
    match table {
        None => {
            if granted {
                c.add(key, format!("`{name}` is granted, so {needs}"));
            }
            None
        }
        Some(table) => {
            let value = c.value::<T>(key, table.clone())?;
            if !granted {
                c.add(key, format!("is set but `{name}` is not in `grants`"));
                return None;
            }
            Some(value)
        }
    }
}

/// Process-wide backends of the capabilities, shared by every instance.
pub struct Services {
    /// Where plugin log lines are stored, if anywhere.
    pub logs: Option<log::LogSink>,
    /// The durable key-value store, if there is a data directory.
    pub storage: Option<Arc<dyn storage::Backend>>,
    /// The cache backend.
    pub cache: Arc<dyn cache::Backend>,
    /// The GeoIP database, if the operator configured one.
    pub geoip: Option<Arc<geoip::Database>>,
    /// The object stores, if the operator configured any.
    pub object_stores: Option<Arc<object_store::Stores>>,
    /// The job queue, if there is a data directory.
    pub jobs: Option<Arc<dyn crate::schedule::jobs::JobQueue>>,
    /// The session recordings, if there is a data directory.
    pub recordings: Option<Arc<dyn recordings::RecordingStore>>,
    /// Set when nothing may leave the run: its fakes and the side effects counted.
    pub sandbox: Option<Arc<sandbox::Sandbox>>,
}

/// Why a capability backend could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// A configured resource cannot be used; `key` is the config key that names it.
    #[error("{key}: {reason}")]
    Config {
        /// The config key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A backend failed to open its storage.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A background thread could not be started.
    #[error("cannot start {what}: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// Where the capabilities keep what outlives a call: in this process and its data folder, or
/// where every node sees it (Redis, the stored topics).
pub struct Shared {
    /// Where plugin log lines are written.
    pub logs: Box<dyn crate::store::logs::LogStore>,
    /// The `cache` backend.
    pub cache: Arc<dyn cache::Backend>,
    /// The `storage` backend.
    pub storage: Arc<dyn storage::Backend>,
    /// The job queue.
    pub jobs: Arc<dyn crate::schedule::jobs::JobQueue>,
    /// Where session recordings are stored.
    pub recordings: Arc<dyn recordings::RecordingStore>,
}

/// Background work of the services, to wait for at shutdown.
pub struct Background {
    log_writer: JoinHandle<()>,
}

impl Background {
    /// Waits until the log writer has stored every line (after every [`Services`] is dropped).
    pub fn join(self) {
        let _ = self.log_writer.join();
    }
}

impl Services {
    /// Starts every backend for `settings`, with their data in `data_dir` and the state that
    /// may be shared by nodes in `shared`.
    pub fn start(
        settings: &Settings,
        data_dir: &Path,
        shared: Shared,
    ) -> Result<(Arc<Self>, Background), StartError> {
        let (logs, log_writer) = log::LogSink::start(shared.logs, log::LogLimit::default())?;
        let services = Self {
            logs: Some(logs),
            storage: Some(shared.storage),
            cache: shared.cache,
            geoip: settings.geoip.open()?,
            object_stores: settings.object_stores.open(data_dir)?,
            jobs: Some(shared.jobs),
            recordings: Some(shared.recordings),
            sandbox: None,
        };
        Ok((Arc::new(services), Background { log_writer }))
    }

    /// Services with nothing behind them but an in-memory cache: log lines go to the process
    /// log only, and `storage` and `geoip` answer `unavailable`.
    pub fn detached() -> Arc<Self> {
        Arc::new(Self {
            logs: None,
            storage: None,
            cache: Arc::new(cache::MemoryBackend::default()),
            geoip: None,
            object_stores: None,
            jobs: None,
            recordings: None,
            sandbox: None,
        })
    }
}

/// The installation an instance is serving during a call: who it is, what it may do, and the
/// services behind its capabilities. A shared (stateless) instance is handed the context of
/// each call's installation.
pub struct Context {
    /// `team-<team id>/<installation id>`.
    pub installation: Arc<str>,
    /// The team.
    pub team_id: u64,
    /// The plugin's name (the `cache` namespace is per plugin and team).
    pub plugin: Arc<str>,
    /// What the operator granted.
    pub grants: Grants,
    /// The deadline of one call; blocking capabilities (`http`) wait at most this long.
    pub timeout: Duration,
    /// The capability backends.
    pub services: Arc<Services>,
    /// Where failure bundles go, when the installation leaves them (its instances then record
    /// their host calls).
    pub bundles: Option<Arc<crate::bundle::Bundles>>,
}

impl Context {
    /// A context for an installation granted nothing, e.g. to read a plugin's manifest.
    pub fn ungranted(installation: &str, services: Arc<Services>) -> Arc<Self> {
        Arc::new(Self {
            installation: Arc::from(installation),
            team_id: 0,
            plugin: Arc::from(""),
            grants: Grants::default(),
            timeout: Duration::from_secs(10),
            services,
            bundles: None,
        })
    }

    /// Refuses the call unless `capability` is granted to the installation.
    pub fn check(&self, capability: &Capability) -> Result<(), HostError> {
        if self.grants.allows(capability.name) {
            Ok(())
        } else {
            Err(HostError::new(
                ErrorKind::Refused,
                format!(
                    "`{}` is not granted to installation {}",
                    capability.name, self.installation
                ),
            ))
        }
    }
}

/// Runs `f`, which blocks, outside any async runtime: directly, unless the calling thread
/// belongs to one (blocking there stalls it, and a nested runtime panics), then on a scoped
/// thread of its own. Capabilities that block call it, so a plugin may use them wherever the
/// host calls it.
pub(crate) fn blocking<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|scope| scope.spawn(f).join())
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The WIT form of a capability error.
pub fn to_wit(error: HostError) -> types::HostError {
    let kind = match error.kind {
        ErrorKind::Invalid => types::HostErrorKind::Invalid,
        ErrorKind::TooLarge => types::HostErrorKind::TooLarge,
        ErrorKind::Refused => types::HostErrorKind::Refused,
        ErrorKind::Unavailable => types::HostErrorKind::Unavailable,
        ErrorKind::Timeout => types::HostErrorKind::Timeout,
    };
    types::HostError {
        kind,
        message: error.message,
    }
}

#[cfg(test)]
mod tests {
    use super::ALL;
    use sluice_abi::manifest::CAPABILITIES;

    #[test]
    fn the_host_provides_exactly_the_capabilities_manifests_may_declare() {
        let names: Vec<&str> = ALL.iter().map(|c| c.name).collect();
        assert_eq!(names, CAPABILITIES);
    }
}

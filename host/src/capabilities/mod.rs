//! Host capabilities: what plugins can ask the host to do, one module each.
//!
//! Each capability knows its WIT interface and how to add itself to the linker, and keeps its
//! per-instance state in its own field of [`crate::runtime::HostState`]. The list is data: adding
//! a capability adds one entry to [`ALL`].
//!
//! Nothing is granted by default. An installation's [`Grants`] come from the operator's config;
//! loading refuses a plugin that imports or declares a capability its installation was not
//! granted, and every host function checks the grant of the installation it is serving again
//! (one shared instance can serve several installations, see [`Context`]).

pub mod cache;
pub mod geoip;
pub mod http;
pub mod log;
pub mod metrics;
pub mod storage;

use crate::runtime::HostState;
use crate::runtime::bindings::types;
use sluice_abi::limits::{ErrorKind, HostError};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Linker;

/// One host capability.
#[derive(Debug)]
pub struct Capability {
    /// Short name operators grant, e.g. `storage`.
    pub name: &'static str,
    /// The WIT interface it implements, without version, e.g. `sluice:plugin/storage`.
    pub interface: &'static str,
    /// Adds the capability's host functions to a linker.
    pub link: fn(&mut Linker<HostState>) -> wasmtime::Result<()>,
}

/// Every capability the host provides.
pub const ALL: &[Capability] = &[
    log::CAPABILITY,
    metrics::CAPABILITY,
    storage::CAPABILITY,
    cache::CAPABILITY,
    geoip::CAPABILITY,
    http::CAPABILITY,
];

/// Adds every capability to `linker`.
pub fn link_all(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    ALL.iter()
        .try_for_each(|capability| (capability.link)(linker))
}

/// The capability implementing `interface` (given with or without `@version`).
pub fn for_interface(interface: &str) -> Option<&'static Capability> {
    let unversioned = interface.split('@').next().unwrap_or(interface);
    ALL.iter().find(|c| c.interface == unversioned)
}

/// What the operator granted one installation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Grants {
    /// Names of the granted capabilities.
    pub names: BTreeSet<String>,
    /// Where `http` may go (meaningful only if `http` is granted).
    pub http: http::Policy,
}

impl Grants {
    /// Whether `name` is granted.
    pub fn allows(&self, name: &str) -> bool {
        self.names.contains(name)
    }
}

/// Process-wide backends of the capabilities, shared by every instance.
pub struct Services {
    /// Where plugin log lines are stored, if anywhere.
    pub logs: Option<log::LogSink>,
    /// The durable key-value store, if there is a data directory.
    pub storage: Option<Arc<storage::Storage>>,
    /// The cache backend.
    pub cache: Arc<dyn cache::Backend>,
    /// The GeoIP database, if the operator configured one.
    pub geoip: Option<Arc<geoip::Database>>,
}

impl Services {
    /// Services with nothing behind them but an in-memory cache: log lines go to the process
    /// log only, and `storage` and `geoip` answer `unavailable`.
    pub fn detached() -> Arc<Self> {
        Arc::new(Self {
            logs: None,
            storage: None,
            cache: Arc::new(cache::MemoryBackend::default()),
            geoip: None,
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
        })
    }

    /// Refuses the call unless `capability` is granted to the installation.
    pub fn check(&self, capability: &str) -> Result<(), HostError> {
        if self.grants.allows(capability) {
            Ok(())
        } else {
            Err(HostError::new(
                ErrorKind::Refused,
                format!(
                    "`{capability}` is not granted to installation {}",
                    self.installation
                ),
            ))
        }
    }
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

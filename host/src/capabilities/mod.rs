//! Host capabilities: what plugins can ask the host to do, one module each.
//!
//! Each capability knows its WIT interface, how to add itself to the linker, and owns its
//! per-instance state inside [`crate::runtime::HostState`]. The list is data: adding a capability
//! adds one entry to [`ALL`].

pub mod log;
pub mod metrics;

use crate::runtime::HostState;
use wasmtime::component::Linker;

/// One host capability.
#[derive(Debug)]
pub struct Capability {
    /// Short name operators use, e.g. `log`.
    pub name: &'static str,
    /// The WIT interface it implements, without version, e.g. `sluice:plugin/log`.
    pub interface: &'static str,
    /// Adds the capability's host functions to a linker.
    pub link: fn(&mut Linker<HostState>) -> wasmtime::Result<()>,
}

/// Every capability the host provides.
pub const ALL: &[Capability] = &[log::CAPABILITY, metrics::CAPABILITY];

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

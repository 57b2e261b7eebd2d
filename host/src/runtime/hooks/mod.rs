//! Hooks: the interfaces a plugin may export, one module each (`lifecycle`, `transform`,
//! `exporter`, `scheduled`, `jobs`). A hook is bound to the contract its component was built
//! against ([`Contract`]: the bindings of 1.x or of 0.5.0, [`Versioned`]), found among the
//! component's exports ([`Hook`]), and called under the instance's limits (a method on
//! [`crate::runtime::Instance`], the one place that knows how each contract's call differs).
//! What a plugin can do is derived from which hooks its component exports.

pub mod exporter;
pub mod jobs;
pub mod lifecycle;
pub mod scheduled;
pub mod transform;

use super::state::HostState;
use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

/// The contract a component was built against, read from the version of its `lifecycle`
/// export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `sluice:plugin@1.x`, the current contract.
    V1,
    /// `sluice:plugin@0.5.0`, run through [`crate::bindings::v0_5`].
    V0_5,
}

impl Contract {
    /// The contract of a component exporting `lifecycle` at `version`, if the host runs it.
    pub(crate) fn of_version(version: &str) -> Option<Self> {
        match version {
            "0.5.0" => Some(Contract::V0_5),
            v if v.starts_with("1.") => Some(Contract::V1),
            _ => None,
        }
    }

    /// The version the contract is known by.
    pub fn label(self) -> &'static str {
        match self {
            Contract::V1 => "1.0.0",
            Contract::V0_5 => "0.5.0",
        }
    }
}

/// A hook of one contract: one exported interface, bound to the bindings generated for it.
pub(crate) trait Hook: Sized {
    /// Where the hook's functions are in a component, found once per plugin.
    type Indices: Send + Sync;

    /// Finds the hook's functions in a pre-instantiated component.
    fn indices(pre: &InstancePre<HostState>) -> wasmtime::Result<Self::Indices>;

    /// The hook's functions in a live instance.
    fn load(
        indices: &Self::Indices,
        store: &mut Store<HostState>,
        instance: &Instance,
    ) -> wasmtime::Result<Self>;
}

/// Implements [`Hook`] for the generated guest type `Guest` of each bindings module given.
macro_rules! hook {
    ($($($module:ident)::+),+) => {$(
        impl $crate::runtime::hooks::Hook for $($module)::+::Guest {
            type Indices = $($module)::+::GuestIndices;

            fn indices(
                pre: &::wasmtime::component::InstancePre<$crate::runtime::state::HostState>,
            ) -> ::wasmtime::Result<Self::Indices> {
                $($module)::+::GuestIndices::new(pre)
            }

            fn load(
                indices: &Self::Indices,
                store: &mut ::wasmtime::Store<$crate::runtime::state::HostState>,
                instance: &::wasmtime::component::Instance,
            ) -> ::wasmtime::Result<Self> {
                indices.load(store, instance)
            }
        }
    )+};
}
use hook;

/// A hook bound to the contract its component was built against: `C` of the current contract,
/// `L` of 0.5.0.
pub(crate) enum Versioned<C, L> {
    /// Built against 1.x.
    Current(C),
    /// Built against 0.5.0.
    V0_5(L),
}

/// Where a hook's functions are in a component, for the contract it was built against.
pub(crate) type Found<C, L> = Versioned<<C as Hook>::Indices, <L as Hook>::Indices>;

/// The indices of the hook `interface` (bound to `C` or `L` by `contract`) if the component
/// exports it (`exported` lists its export names).
fn find<C: Hook, L: Hook>(
    pre: &InstancePre<HostState>,
    exported: &[String],
    interface: &str,
    contract: Contract,
) -> Result<Option<Found<C, L>>, String> {
    if !exported
        .iter()
        .any(|name| name.split('@').next() == Some(interface))
    {
        return Ok(None);
    }
    let found = match contract {
        Contract::V1 => C::indices(pre).map(Versioned::Current),
        Contract::V0_5 => L::indices(pre).map(Versioned::V0_5),
    };
    found.map(Some).map_err(|e| format!("{e:#}"))
}

/// The guest of a hook found in a component, from a live instance.
fn load<C: Hook, L: Hook>(
    found: &Found<C, L>,
    store: &mut Store<HostState>,
    instance: &Instance,
) -> wasmtime::Result<Versioned<C, L>> {
    Ok(match found {
        Versioned::Current(indices) => Versioned::Current(C::load(indices, store, instance)?),
        Versioned::V0_5(indices) => Versioned::V0_5(L::load(indices, store, instance)?),
    })
}

/// The guest of one optional hook, loaded if the plugin exports it.
fn load_optional<C: Hook, L: Hook>(
    found: Option<&Found<C, L>>,
    store: &mut Store<HostState>,
    instance: &Instance,
) -> wasmtime::Result<Option<Versioned<C, L>>> {
    found.map(|f| load(f, store, instance)).transpose()
}

/// The hooks a plugin exports, found once when it is loaded.
pub(crate) struct Exports {
    lifecycle: Found<lifecycle::Current, lifecycle::Legacy>,
    transform: Option<Found<transform::Current, transform::Legacy>>,
    exporter: Option<Found<exporter::Current, exporter::Legacy>>,
    scheduled: Option<Found<scheduled::Current, scheduled::Legacy>>,
    jobs: Option<Found<jobs::Current, jobs::Legacy>>,
}

impl Exports {
    /// Finds the hooks among `exported`, bound to `contract`; every plugin must export
    /// `lifecycle`.
    pub(crate) fn find(
        pre: &InstancePre<HostState>,
        exported: &[String],
        contract: Contract,
    ) -> Result<Self, String> {
        let lifecycle = find::<lifecycle::Current, lifecycle::Legacy>(
            pre,
            exported,
            lifecycle::INTERFACE,
            contract,
        )?
        .ok_or_else(|| format!("it does not export `{}`", lifecycle::INTERFACE))?;
        Ok(Self {
            lifecycle,
            transform: find::<transform::Current, transform::Legacy>(
                pre,
                exported,
                transform::INTERFACE,
                contract,
            )?,
            exporter: find::<exporter::Current, exporter::Legacy>(
                pre,
                exported,
                exporter::INTERFACE,
                contract,
            )?,
            scheduled: find::<scheduled::Current, scheduled::Legacy>(
                pre,
                exported,
                scheduled::INTERFACE,
                contract,
            )?,
            jobs: find::<jobs::Current, jobs::Legacy>(pre, exported, jobs::INTERFACE, contract)?,
        })
    }

    /// Whether the plugin exports `transform`.
    pub(crate) fn transforms(&self) -> bool {
        self.transform.is_some()
    }

    /// Whether the plugin exports `exporter`.
    pub(crate) fn exports_events(&self) -> bool {
        self.exporter.is_some()
    }

    /// Whether the plugin exports `scheduled`.
    pub(crate) fn runs_tasks(&self) -> bool {
        self.scheduled.is_some()
    }

    /// Whether the plugin exports `jobs`.
    pub(crate) fn runs_jobs(&self) -> bool {
        self.jobs.is_some()
    }
}

/// The hooks of one live instance.
pub(crate) struct Guests {
    lifecycle: lifecycle::Lifecycle,
    transform: Option<transform::Transform>,
    exporter: Option<exporter::Exporter>,
    scheduled: Option<scheduled::Scheduled>,
    jobs: Option<jobs::Jobs>,
}

impl Guests {
    /// Loads every hook `exports` found from `instance`.
    pub(crate) fn load(
        exports: &Exports,
        store: &mut Store<HostState>,
        instance: &Instance,
    ) -> wasmtime::Result<Self> {
        Ok(Self {
            lifecycle: load(&exports.lifecycle, store, instance)?,
            transform: load_optional(exports.transform.as_ref(), store, instance)?,
            exporter: load_optional(exports.exporter.as_ref(), store, instance)?,
            scheduled: load_optional(exports.scheduled.as_ref(), store, instance)?,
            jobs: load_optional(exports.jobs.as_ref(), store, instance)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Contract;

    #[test]
    fn a_component_runs_on_its_contract_or_is_refused() {
        assert_eq!(Contract::of_version("0.5.0"), Some(Contract::V0_5));
        assert_eq!(Contract::of_version("1.0.0"), Some(Contract::V1));
        // A later 1.x only adds: its components run on this host's 1.0 bindings as far as
        // they go, and wasmtime refuses, naming it, an import this host does not have.
        assert_eq!(Contract::of_version("1.3.0"), Some(Contract::V1));
        for refused in ["0.4.0", "0.5.1", "2.0.0", ""] {
            assert_eq!(Contract::of_version(refused), None, "{refused}");
        }
    }
}

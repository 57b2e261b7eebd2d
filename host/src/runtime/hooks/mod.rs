//! Hooks: the interfaces a plugin may export, one module each (`lifecycle`, `transform`,
//! `exporter`, `scheduled`, `jobs`). A hook module finds its
//! interface among a component's exports ([`Hook`]), and calls it under the instance's limits
//! (a method on [`crate::runtime::Instance`]). What a plugin can do is derived from which hooks
//! its component exports.

pub mod exporter;
pub mod jobs;
pub mod lifecycle;
pub mod scheduled;
pub mod transform;

use super::state::HostState;
use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

/// A hook: one exported interface, bound to the bindings generated for it.
pub(crate) trait Hook: Sized {
    /// The interface, without version, e.g. `sluice:plugin/transform`.
    const INTERFACE: &'static str;
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

/// Implements [`Hook`] for the generated guest type `$guest` of the bindings module `$module`,
/// exported as `$interface`.
macro_rules! hook {
    ($guest:ident, $module:ident, $interface:literal) => {
        impl $crate::runtime::hooks::Hook for $guest {
            const INTERFACE: &'static str = $interface;
            type Indices = $module::GuestIndices;

            fn indices(
                pre: &::wasmtime::component::InstancePre<$crate::runtime::state::HostState>,
            ) -> ::wasmtime::Result<Self::Indices> {
                $module::GuestIndices::new(pre)
            }

            fn load(
                indices: &Self::Indices,
                store: &mut ::wasmtime::Store<$crate::runtime::state::HostState>,
                instance: &::wasmtime::component::Instance,
            ) -> ::wasmtime::Result<Self> {
                indices.load(store, instance)
            }
        }
    };
}
use hook;

/// The indices of `H` if the component exports it (`exported` lists its export names).
fn find<H: Hook>(
    pre: &InstancePre<HostState>,
    exported: &[String],
) -> Result<Option<H::Indices>, String> {
    exported
        .iter()
        .any(|name| name.split('@').next() == Some(H::INTERFACE))
        .then(|| H::indices(pre))
        .transpose()
        .map_err(|e| format!("{e:#}"))
}

/// The hooks a plugin exports, found once when it is loaded.
pub(crate) struct Exports {
    lifecycle: <lifecycle::Lifecycle as Hook>::Indices,
    transform: Option<<transform::Transform as Hook>::Indices>,
    exporter: Option<<exporter::Exporter as Hook>::Indices>,
    scheduled: Option<<scheduled::Scheduled as Hook>::Indices>,
    jobs: Option<<jobs::Jobs as Hook>::Indices>,
}

impl Exports {
    /// Finds the hooks among `exported`; every plugin must export `lifecycle`.
    pub(crate) fn find(pre: &InstancePre<HostState>, exported: &[String]) -> Result<Self, String> {
        let lifecycle = find::<lifecycle::Lifecycle>(pre, exported)?.ok_or_else(|| {
            format!(
                "it does not export `{}`",
                <lifecycle::Lifecycle as Hook>::INTERFACE
            )
        })?;
        Ok(Self {
            lifecycle,
            transform: find::<transform::Transform>(pre, exported)?,
            exporter: find::<exporter::Exporter>(pre, exported)?,
            scheduled: find::<scheduled::Scheduled>(pre, exported)?,
            jobs: find::<jobs::Jobs>(pre, exported)?,
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

/// The guest of one optional hook, loaded if the plugin exports it.
fn load<H: Hook>(
    indices: Option<&H::Indices>,
    store: &mut Store<HostState>,
    instance: &Instance,
) -> wasmtime::Result<Option<H>> {
    indices
        .map(|indices| H::load(indices, store, instance))
        .transpose()
}

impl Guests {
    /// Loads every hook `exports` found from `instance`.
    pub(crate) fn load(
        exports: &Exports,
        store: &mut Store<HostState>,
        instance: &Instance,
    ) -> wasmtime::Result<Self> {
        Ok(Self {
            lifecycle: Hook::load(&exports.lifecycle, store, instance)?,
            transform: load(exports.transform.as_ref(), store, instance)?,
            exporter: load(exports.exporter.as_ref(), store, instance)?,
            scheduled: load(exports.scheduled.as_ref(), store, instance)?,
            jobs: load(exports.jobs.as_ref(), store, instance)?,
        })
    }
}

//! One compiled, pre-linked plugin: what it imports (capabilities), what it exports (hooks), and
//! its manifest.

use super::hooks::{Contract, Exports};
use super::instance::Instance;
use super::state::HostState;
use crate::capabilities::{self, Capability, Context, Services};
use sha2::{Digest, Sha256};
use sluice_abi::manifest::Manifest;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;
use wasmtime::Engine;
use wasmtime::component::{Component, InstancePre, Linker};

/// The contract's interface of shared types; it has no functions, so importing it grants nothing.
const TYPES_INTERFACE: &str = "sluice:plugin/types";
/// The interface every plugin exports; its version is the contract the plugin was built against.
const LIFECYCLE_INTERFACE: &str = "sluice:plugin/lifecycle";

/// The SHA-256 of `bytes`, in lowercase hex (how plugins are named by content).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// `bytes` in lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a plugin could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file could not be read or compiled as a component.
    #[error("cannot compile {path}: {reason}")]
    Compile {
        /// The plugin file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The component imports something the host does not provide.
    #[error("{path} imports `{interface}`, which sluice does not provide")]
    UnknownImport {
        /// The plugin file.
        path: PathBuf,
        /// The interface.
        interface: String,
    },
    /// The component does not fit the contract (missing lifecycle, wrong signatures...).
    #[error("{path} does not implement the sluice plugin contract: {reason}")]
    Contract {
        /// The plugin file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// The component was built against a contract this host does not run.
    #[error(
        "{path} was built against the plugin contract {version}; this host runs 1.x and 0.5.0: rebuild it against the current SDK"
    )]
    Version {
        /// The plugin file.
        path: PathBuf,
        /// The contract version it exports `lifecycle` at.
        version: String,
    },
    /// `describe` failed or returned an incoherent manifest.
    #[error("{path} has an invalid manifest: {reason}")]
    Manifest {
        /// The plugin file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One compiled, pre-linked plugin.
pub struct Plugin {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// SHA-256 of the file, in hex: a changed file is a changed plugin.
    pub hash: String,
    /// What it declared about itself.
    pub manifest: Manifest,
    /// The contract it was built against.
    pub contract: Contract,
    /// The capabilities its component imports.
    pub imports: Vec<&'static Capability>,
    pub(super) pre: InstancePre<HostState>,
    pub(super) exports: Exports,
}

impl Plugin {
    /// Whether the plugin exports the `transform` hook.
    pub fn transforms(&self) -> bool {
        self.exports.transforms()
    }

    /// Whether the plugin exports the `exporter` hook.
    pub fn exports_events(&self) -> bool {
        self.exports.exports_events()
    }

    /// Whether the plugin exports the `scheduled` hook.
    pub fn runs_tasks(&self) -> bool {
        self.exports.runs_tasks()
    }

    /// Whether the plugin exports the `jobs` hook.
    pub fn runs_jobs(&self) -> bool {
        self.exports.runs_jobs()
    }

    /// The hooks it exports, by name (`transform`, `exporter`, `scheduled`, `jobs`).
    pub fn hooks(&self) -> Vec<&'static str> {
        [
            (self.transforms(), "transform"),
            (self.exports_events(), "exporter"),
            (self.runs_tasks(), "scheduled"),
            (self.runs_jobs(), "jobs"),
        ]
        .into_iter()
        .filter(|(has, _)| *has)
        .map(|(_, hook)| hook)
        .collect()
    }

    /// Every capability the plugin needs: those it declares and those it imports.
    pub fn needs(&self) -> Vec<&str> {
        let mut needs: Vec<&str> = self
            .manifest
            .capabilities
            .iter()
            .map(String::as_str)
            .collect();
        needs.extend(self.imports.iter().map(|c| c.name));
        needs.sort_unstable();
        needs.dedup();
        needs
    }
}

/// Compiles and checks the plugin at `path` (see [`super::Runtime::load`]).
pub(super) fn load(
    engine: &Engine,
    linker: &Linker<HostState>,
    path: &Path,
) -> Result<Arc<Plugin>, LoadError> {
    let compile_error = |reason: String| LoadError::Compile {
        path: path.to_owned(),
        reason,
    };
    let contract = |reason: String| LoadError::Contract {
        path: path.to_owned(),
        reason,
    };
    let manifest_error = |reason: String| LoadError::Manifest {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| compile_error(e.to_string()))?;
    let hash = sha256_hex(&bytes);
    let component = Component::new(engine, &bytes).map_err(|e| compile_error(format!("{e:#}")))?;
    let ty = component.component_type();
    let exported: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
    let version = exported
        .iter()
        .find_map(|name| name.strip_prefix(LIFECYCLE_INTERFACE)?.strip_prefix('@'))
        .ok_or_else(|| contract(format!("it does not export `{LIFECYCLE_INTERFACE}`")))?;
    let version_contract = Contract::of_version(version).ok_or_else(|| LoadError::Version {
        path: path.to_owned(),
        version: version.to_owned(),
    })?;
    let mut imports = Vec::new();
    for (name, _) in ty.imports(engine) {
        if name.starts_with("wasi:") || name.split('@').next() == Some(TYPES_INTERFACE) {
            continue;
        }
        match capabilities::for_interface(name) {
            Some(capability) => imports.push(capability),
            None => {
                return Err(LoadError::UnknownImport {
                    path: path.to_owned(),
                    interface: name.to_owned(),
                });
            }
        }
    }
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| contract(format!("{e:#}")))?;
    let exports = Exports::find(&pre, &exported, version_contract).map_err(contract)?;
    let mut plugin = Plugin {
        path: path.to_owned(),
        hash,
        manifest: Manifest::new("", "", ""),
        contract: version_contract,
        imports,
        pre,
        exports,
    };
    let loading = Context::ungranted("loading", Services::detached());
    let mut instance = Instance::instantiate(&plugin, loading, 1 << 30)
        .map_err(|e| manifest_error(e.to_string()))?;
    plugin.manifest = instance
        .describe()
        .map_err(|e| manifest_error(format!("describe trapped: {e}")))?
        .map_err(manifest_error)?;
    plugin.manifest.validate().map_err(|problems| {
        manifest_error(
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    if let Some(undeclared) = plugin
        .imports
        .iter()
        .find(|c| !plugin.manifest.capabilities.iter().any(|d| d == c.name))
    {
        return Err(contract(format!(
            "it imports `{}` but its manifest does not declare the `{}` capability",
            undeclared.interface, undeclared.name
        )));
    }
    if plugin.contract != Contract::V1 {
        tracing::warn!(
            plugin = %plugin.manifest.name,
            path = %path.display(),
            contract = plugin.contract.label(),
            "plugin built against an earlier contract: it runs as it did (its failure default is `skip`; \
             recordings `delete-session` deletes what the instance listed or read); rebuild it against the current SDK"
        );
    }
    Ok(Arc::new(plugin))
}

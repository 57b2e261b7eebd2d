//! Chains loaded on sandboxed services ([`crate::capabilities::sandbox`]): what `sluice test`
//! and `sluice replay` run, and what shadow installations run beside the live chains. They are
//! loaded by the server's own code ([`installations::load`]) and run by its chain runner, so
//! they behave as they would live, but nothing they do leaves the run.

use crate::capabilities::sandbox::{Live, Sandbox, SideEffect};
use crate::capabilities::{Background, Services, StartError};
use crate::chain::{Chains, Stats};
use crate::config::{Config, ConfigError, Problem};
use crate::installations;
use crate::runtime::Runtime;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;

/// Chains on sandboxed services.
pub struct DryRun {
    /// Every team's chain.
    pub chains: Chains,
    /// The services behind them.
    pub services: Arc<Services>,
    /// Their fakes and side effects.
    pub sandbox: Arc<Sandbox>,
    background: Option<Background>,
}

/// What one installation did in a run.
#[derive(Debug, Clone, Serialize)]
pub struct InstallationReport {
    /// `team-N/id`.
    pub installation: String,
    /// Events that reached it.
    pub events: u64,
    /// Events it passed on unchanged.
    pub kept: u64,
    /// Events it dropped.
    pub dropped: u64,
    /// Events it changed.
    pub changed: u64,
    /// Events it failed on.
    pub failed: u64,
    /// Call latency, median, in ms.
    pub p50_ms: Option<f64>,
    /// Call latency, 99th percentile, in ms.
    pub p99_ms: Option<f64>,
    /// The largest memory an instance reached, in MiB.
    pub memory_peak_mib: f64,
}

impl InstallationReport {
    /// The report of `installation` with `stats`.
    pub fn of(installation: &str, stats: &Stats) -> Self {
        Self {
            installation: installation.to_owned(),
            events: stats.events,
            kept: stats.events.saturating_sub(
                stats.dropped - stats.dropped_on_error + stats.changed + stats.failed,
            ),
            dropped: stats.dropped,
            changed: stats.changed,
            failed: stats.failed,
            p50_ms: stats.p50_ms,
            p99_ms: stats.p99_ms,
            memory_peak_mib: stats.memory_peak_bytes as f64 / f64::from(1 << 20),
        }
    }
}

impl DryRun {
    /// Loads `config`'s installations on `runtime`, with services sandboxed in `scratch` that
    /// read through to `live`. Blocking: plugins' `setup` runs.
    pub fn load(
        config: &Config,
        runtime: &Runtime,
        scratch: &Path,
        live: Live,
        sandbox: Sandbox,
    ) -> anyhow::Result<Self> {
        let sandbox = Arc::new(sandbox);
        // Nothing of the run goes to the real data folder (failure bundles included).
        let mut config = config.clone();
        config.server.data_dir = scratch.to_owned();
        let (services, background) =
            Services::sandboxed(&config.capabilities, scratch, live, sandbox.clone()).map_err(
                |error| match error {
                    StartError::Config { key, reason } => anyhow::Error::from(ConfigError {
                        path: config.path.clone(),
                        problems: vec![Problem { key, reason }],
                    }),
                    other => other.into(),
                },
            )?;
        let installed =
            installations::load(runtime, &config, &services).map_err(|problems| ConfigError {
                path: config.path.clone(),
                problems,
            })?;
        for installation in installed.chains.all() {
            services
                .seed(
                    &installation.id,
                    &installation.settings.context.plugin,
                    installation.team_id,
                )
                .map_err(|e| anyhow::anyhow!("cannot seed the fakes: {}", e.message))?;
        }
        Ok(Self {
            chains: installed.chains,
            services,
            sandbox,
            background: Some(background),
        })
    }

    /// What each installation of `team`'s chain did so far, in chain order.
    pub fn report(&self, team: u64) -> Vec<InstallationReport> {
        self.chains
            .of(team)
            .iter()
            .map(|i| InstallationReport::of(&i.id, &i.stats()))
            .collect()
    }

    /// The side effects its plugins had so far.
    pub fn effects(&self) -> Vec<SideEffect> {
        self.sandbox.effects()
    }

    /// Ends the run: waits for its log writer once the chains are dropped.
    pub fn finish(mut self) {
        let background = self.background.take();
        drop(self);
        if let Some(background) = background {
            background.join();
        }
    }
}

/// The runtime of dry runs in a command: sized for `config`, compiled plugins cached in the
/// user's cache folder (or none).
pub fn runtime(config: &Config) -> anyhow::Result<Runtime> {
    Runtime::new(&crate::runtime::RuntimeSettings {
        max_instances: u32::try_from(config.server.max_instances.saturating_mul(2) + 4)
            .unwrap_or(u32::MAX),
        max_memory_bytes: (config.server.max_instance_memory_mb as usize) << 20,
        cache_dir: crate::trial::compiled_cache(),
    })
}

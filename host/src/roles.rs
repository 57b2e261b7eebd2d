//! What one `sluice serve` process runs: its roles. One process runs them all by default; at
//! scale, nodes split them (`--role capture`, `--role worker,exporter`...), sharing the backends
//! their config names.

use crate::config::Config;
use std::collections::BTreeSet;
use std::fmt;

/// One part of sluice a node can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Role {
    /// The capture API: takes events and appends them to the ingest.
    Capture,
    /// The worker: takes events from the ingest, runs the chains, stores the results.
    Worker,
    /// The loader: inserts what workers stored on the topics into ClickHouse (with
    /// `[clickhouse]` only).
    Loader,
    /// The export runners.
    Exporter,
    /// The task and job runners.
    Scheduler,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Capture => "capture",
            Role::Worker => "worker",
            Role::Loader => "loader",
            Role::Exporter => "exporter",
            Role::Scheduler => "scheduler",
        })
    }
}

/// The roles of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles(BTreeSet<Role>);

impl Roles {
    /// Every role `config`'s backends allow: one process runs everything.
    pub fn all(config: &Config) -> Self {
        let mut roles: BTreeSet<Role> =
            [Role::Capture, Role::Worker, Role::Exporter, Role::Scheduler].into();
        if config.clickhouse.is_some() {
            roles.insert(Role::Loader);
        }
        Self(roles)
    }

    /// The roles named; none named means all that `config` allows.
    pub fn of(named: &[Role], config: &Config) -> Self {
        if named.is_empty() {
            Self::all(config)
        } else {
            Self(named.iter().copied().collect())
        }
    }

    /// Whether the node runs `role`.
    pub fn has(&self, role: Role) -> bool {
        self.0.contains(&role)
    }

    /// Why the node cannot run these roles on `config`'s backends, if it cannot: the embedded
    /// queue lives in one process, so capture and worker split across nodes need `[kafka]`; a
    /// loader needs `[clickhouse]` to load into.
    pub fn check(&self, config: &Config) -> Result<(), String> {
        if self.has(Role::Loader) && config.clickhouse.is_none() {
            return Err(format!(
                "--role loader inserts stored events into ClickHouse: add a [clickhouse] section to {}",
                config.path.display()
            ));
        }
        let split = self.has(Role::Capture) != self.has(Role::Worker);
        if split && config.kafka.is_none() {
            return Err(format!(
                "--role {self} runs capture and worker apart, which needs a shared ingest: add a [kafka] section to {} (the embedded queue lives in one process)",
                config.path.display()
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(Role::to_string).collect();
        f.write_str(&names.join(","))
    }
}

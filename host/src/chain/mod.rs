//! Plugin chains: each team's ordered installations, and running a batch of events through them.
//!
//! - [`build`] ([`builder`]) loads every installation once at start, reporting every problem at
//!   once, and decides which installations share instances.
//! - A [`ChainRunner`] belongs to one worker lane; its [`pool`] keeps the lane's long-lived
//!   instances (one per installation, or one per [`SharingKey`] for stateless plugins), rebuilds
//!   one after a trap, and tears down the least recently used beyond its budget.
//! - [`outcome`] applies what a plugin decided for each event, and the installation's `on_error`
//!   policy to the events it failed on.

mod builder;
mod metrics;
mod outcome;
mod pool;

pub use builder::{SharingKey, build};
pub use pool::InstanceKey;

use crate::config::OnError;
use crate::runtime::{InstanceSettings, Plugin};
use crate::sink::Output;
use metrics::InstallationMetrics;
use pool::InstancePool;
use sluice_abi::wire::BatchWriter;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// One plugin installed for one team.
pub struct Installation {
    /// `team-<team id>/<installation id>`.
    pub id: Arc<str>,
    /// Which live instance serves it: its own, or one shared by every installation of a
    /// stateless plugin with the same [`SharingKey`].
    pub instance_key: InstanceKey,
    /// The team.
    pub team_id: u64,
    /// The compiled plugin.
    pub plugin: Arc<Plugin>,
    /// Config and limits of its instances.
    pub settings: InstanceSettings,
    /// What happens to an event the plugin fails on.
    pub on_error: OnError,
    metrics: InstallationMetrics,
}

impl Installation {
    /// An installation of `plugin` with `settings`, served by the instance `instance_key`.
    pub fn new(
        instance_key: InstanceKey,
        plugin: Arc<Plugin>,
        settings: InstanceSettings,
        on_error: OnError,
    ) -> Self {
        let id = settings.context.installation.clone();
        Self {
            metrics: InstallationMetrics::new(&id),
            id,
            instance_key,
            team_id: settings.context.team_id,
            plugin,
            settings,
            on_error,
        }
    }
}

/// Every team's chain.
#[derive(Default)]
pub struct Chains {
    by_team: HashMap<u64, Vec<Arc<Installation>>>,
}

impl Chains {
    /// The chain of `team_id` (empty for unknown teams).
    pub fn of(&self, team_id: u64) -> &[Arc<Installation>] {
        self.by_team.get(&team_id).map_or(&[], Vec::as_slice)
    }

    /// Number of installations across all teams.
    pub fn installations(&self) -> usize {
        self.by_team.values().map(Vec::len).sum()
    }
}

/// Runs chains for one worker lane, with the lane's live instances.
pub struct ChainRunner {
    pool: InstancePool,
}

impl ChainRunner {
    /// A runner that keeps at most `capacity` instances alive.
    pub fn new(capacity: usize) -> Self {
        Self {
            pool: InstancePool::new(capacity),
        }
    }

    /// Number of live instances.
    pub fn live(&self) -> usize {
        self.pool.live()
    }

    /// Runs `events` (all of one team, in order) through `chain`, appending results to `out`.
    pub fn run(&mut self, chain: &[Arc<Installation>], mut events: Vec<Vec<u8>>, out: &mut Output) {
        for installation in chain {
            if events.is_empty() {
                return;
            }
            events = self.apply(installation, events, out);
        }
        out.events.extend(events);
    }

    /// Tears down every instance.
    pub fn teardown(self) {
        self.pool.teardown();
    }

    fn apply(
        &mut self,
        installation: &Installation,
        events: Vec<Vec<u8>>,
        out: &mut Output,
    ) -> Vec<Vec<u8>> {
        let mut batch = BatchWriter::with_capacity(events.iter().map(Vec::len).sum());
        for event in &events {
            batch.push_encoded(event);
        }
        let started = Instant::now();
        let result = self
            .pool
            .instance(installation)
            .and_then(|instance| instance.transform(&batch.finish()));
        installation.metrics.call(started.elapsed());
        let next = match result {
            Ok(bytes) => outcome::apply(installation, events, &bytes, out),
            Err(error) => Err((events, error)),
        };
        match next {
            Ok(next) => {
                self.pool.recycle_if_bloated(installation);
                next
            }
            Err((events, error)) => {
                if error.poisons_instance() {
                    self.pool.discard(installation, &error);
                }
                outcome::fail_all(installation, events, &error, out)
            }
        }
    }
}

//! Plugin chains: each team's ordered installations, and running a batch of events through them.
//!
//! - [`crate::installations`] loads every installation once at start and decides which share
//!   instances.
//! - A [`ChainRunner`] belongs to one worker lane; its [`pool`] keeps the lane's long-lived
//!   instances (one per installation, or one per [`SharingKey`] for stateless plugins), rebuilds
//!   one after a trap, and tears down the least recently used beyond its budget.
//! - [`outcome`] applies what a plugin decided for each event, and the installation's `on_error`
//!   policy to the events it failed on.
//! - Batching never widens a failure: when a call fails as a whole, the runner bisects the batch
//!   on fresh instances until it finds the events that fail on their own; only those take
//!   `on_error`. Each installation's [`breaker`] stops calling a plugin that keeps failing.

mod breaker;
mod metrics;
mod outcome;
mod pool;

pub use pool::{InstanceKey, SharingKey};

use crate::config::{BreakerConfig, OnError};
use crate::runtime::{CallError, InstanceSettings, Plugin};
use crate::sink::Output;
pub use breaker::Health;
use breaker::{Admission, Breaker};
use metrics::InstallationMetrics;
pub use metrics::Stats;
use outcome::Failure;
use pool::InstancePool;
use sluice_abi::wire::BatchWriter;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// One plugin installed for one team.
pub struct Installation {
    /// `team-<team id>/<installation id>`.
    pub id: Arc<str>,
    /// What metrics and the tap call it: its id, or `<id>~shadow` for a shadow run's copy.
    pub label: Arc<str>,
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
    /// The breaker config it was installed with.
    pub breaker_config: BreakerConfig,
    metrics: InstallationMetrics,
    breaker: Breaker,
}

impl Installation {
    /// An installation of `plugin` with `settings`, served by the instance `instance_key`.
    pub fn new(
        instance_key: InstanceKey,
        plugin: Arc<Plugin>,
        settings: InstanceSettings,
        on_error: OnError,
        breaker: BreakerConfig,
    ) -> Self {
        let id = settings.context.installation.clone();
        let label: Arc<str> = match &settings.context.services.sandbox {
            Some(sandbox) if sandbox.shadow => Arc::from(format!("{id}~shadow")),
            _ => id.clone(),
        };
        Self {
            metrics: InstallationMetrics::new(&label),
            label,
            breaker: Breaker::new(breaker.clone(), settings.context.clone()),
            breaker_config: breaker,
            id,
            instance_key,
            team_id: settings.context.team_id,
            plugin,
            settings,
            on_error,
        }
    }
}

impl Installation {
    /// What it did since it was installed: counts, latency, last errors.
    pub fn stats(&self) -> Stats {
        self.metrics.stats()
    }

    /// Its health now: budget, breaker and the operator's override.
    pub fn health(&self) -> Health {
        self.breaker.health(Instant::now())
    }

    /// Disables it (events pass it by, untouched) or enables it again (closed, with its whole
    /// budget): the operator's override.
    pub fn set_disabled(&self, disabled: bool) {
        self.breaker.set_disabled(disabled, Instant::now());
    }
}

/// Every team's chain (clones share the installations).
#[derive(Default, Clone)]
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

    /// Appends `installation` to the chain of `team_id`.
    pub fn push(&mut self, team_id: u64, installation: Installation) {
        self.push_shared(team_id, Arc::new(installation));
    }

    /// Appends `installation`, which another deployment may run too, to the chain of `team_id`.
    pub fn push_shared(&mut self, team_id: u64, installation: Arc<Installation>) {
        self.by_team.entry(team_id).or_default().push(installation);
    }

    /// Every installation of every chain, with its team.
    pub fn teams(&self) -> impl Iterator<Item = (u64, &[Arc<Installation>])> {
        self.by_team
            .iter()
            .map(|(team, chain)| (*team, chain.as_slice()))
    }

    /// Every installation of every chain.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Installation>> {
        self.by_team.values().flatten()
    }
}

/// Runs chains for one worker lane, with the lane's live instances.
pub struct ChainRunner {
    pool: InstancePool,
    checked: outcome::CheckedPatches,
    /// The host calls of the last call that failed, for its failure bundle.
    recorded: Option<crate::capabilities::journal::Recorded>,
}

impl ChainRunner {
    /// A runner that keeps at most `capacity` instances alive.
    pub fn new(capacity: usize) -> Self {
        Self {
            pool: InstancePool::new(capacity),
            checked: outcome::CheckedPatches::default(),
            recorded: None,
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

    /// Applies `outcomes`, a transform's encoded answer for `events`, as the runner does after
    /// a call of `installation`, and returns the events that continue. For running the same
    /// plugin code natively with the host's work on its answers (benchmarks).
    pub fn continue_with(
        &mut self,
        installation: &Installation,
        events: Vec<Vec<u8>>,
        outcomes: &[u8],
        out: &mut Output,
    ) -> Result<Vec<Vec<u8>>, CallError> {
        let mut next = Vec::with_capacity(events.len());
        outcome::apply(
            installation,
            events,
            outcomes,
            &mut self.checked,
            &mut next,
            out,
        )
        .map_err(|(_, error)| error)?;
        Ok(next)
    }

    /// Tears down the instances that no installation of `chains` uses any more.
    pub fn retain(&mut self, chains: &Chains) {
        self.pool.retain(chains);
    }

    /// Tears down every instance.
    pub fn teardown(self) {
        self.pool.teardown();
    }

    /// Runs `events` through one installation and returns those that continue.
    fn apply(
        &mut self,
        installation: &Installation,
        mut events: Vec<Vec<u8>>,
        out: &mut Output,
    ) -> Vec<Vec<u8>> {
        let mut next = Vec::with_capacity(events.len());
        installation.metrics.events(events.len());
        match installation.breaker.admit(Instant::now()) {
            Admission::Call => self.resolve(installation, events, &mut next, out),
            Admission::Trial => {
                // One event decides; the rest follow only if it closed the breaker.
                let rest = events.split_off(1);
                self.resolve(installation, events, &mut next, out);
                self.resolve(installation, rest, &mut next, out);
            }
            Admission::Refuse(reason) => outcome::fail_all(
                installation,
                events,
                &Failure::circuit_open(reason),
                &mut next,
                out,
            ),
            Admission::Skip => return events,
        }
        next
    }

    /// Runs `events` in one call. If the call fails as a whole, the events responsible are found
    /// by bisecting on fresh instances: each half is called on its own, down to single events,
    /// and only an event that fails by itself takes `on_error`. Halves are run in order, so the
    /// order of events is kept; a deterministic failure costs about two calls per halving, a
    /// failure that does not repeat simply succeeds on the retry.
    fn resolve(
        &mut self,
        installation: &Installation,
        mut events: Vec<Vec<u8>>,
        next: &mut Vec<Vec<u8>>,
        out: &mut Output,
    ) {
        if events.is_empty() {
            return;
        }
        if let Some(reason) = installation.breaker.open_reason() {
            let failure = Failure::circuit_open(reason);
            return outcome::fail_all(installation, events, &failure, next, out);
        }
        // A copy for the failure bundle of an event the plugin reports failing on in a call
        // that returns (`bundles = true` only: the copy costs on every call).
        let bundled = bundles(installation)
            .filter(|b| b.always)
            .map(|_| events.clone());
        let error = match self.call(installation, &events) {
            Ok(outcomes) => match outcome::apply(
                installation,
                events,
                &outcomes,
                &mut self.checked,
                next,
                out,
            ) {
                Ok(applied) => {
                    if let (Some(bundles), Some(batch), Some(message)) =
                        (bundles(installation), bundled, applied.first_error)
                        && let Some(recorded) = self.pool.recorded(installation)
                    {
                        let error = CallError::Plugin {
                            message,
                            retryable: false,
                        };
                        bundles.write(&batch, &error, recorded);
                    }
                    self.pool.recycle_if_bloated(installation);
                    if applied.all_failed {
                        installation
                            .breaker
                            .failure("the plugin failed every event of a call", Instant::now());
                    } else {
                        installation.breaker.success();
                    }
                    return;
                }
                Err((returned, error)) => {
                    events = returned;
                    error
                }
            },
            Err(error) => error,
        };
        if error.poisons_instance() {
            self.pool.discard(installation, &error);
        }
        if events.len() == 1 {
            installation
                .breaker
                .failure(&error.to_string(), Instant::now());
            if let (Some(bundles), Some(recorded)) = (bundles(installation), self.recorded.take()) {
                bundles.write(&events, &error, recorded);
            }
            return outcome::fail_all(installation, events, &Failure::of(&error), next, out);
        }
        tracing::debug!(installation = %installation.id, events = events.len(), %error, "a batch call failed; isolating the events responsible");
        installation.metrics.isolation();
        let second = events.split_off(events.len() / 2);
        self.resolve(installation, events, next, out);
        self.resolve(installation, second, next, out);
    }

    /// One `transform` call with `events`, timed and counted.
    fn call(
        &mut self,
        installation: &Installation,
        events: &[Vec<u8>],
    ) -> Result<Vec<u8>, CallError> {
        let mut batch = BatchWriter::with_capacity(events.iter().map(Vec::len).sum());
        for event in events {
            batch.push_encoded(event);
        }
        let started = Instant::now();
        let result = self.pool.instance(installation).and_then(|instance| {
            let result = instance.transform(&batch.finish());
            installation.metrics.memory(instance.memory_high_water());
            if result.is_err() {
                // Taken now: a trap discards the instance.
                self.recorded = instance.recorded();
            }
            result
        });
        let elapsed = started.elapsed();
        installation.metrics.call(elapsed);
        installation.breaker.spend(elapsed, 0, started + elapsed);
        result
    }
}

/// Where `installation` leaves failure bundles, if it leaves one for its failures: always with
/// `bundles = true`, else when they end in the dead letters (see [`crate::bundle`]).
fn bundles(installation: &Installation) -> Option<&crate::bundle::Bundles> {
    installation
        .settings
        .context
        .bundles
        .as_deref()
        .filter(|b| b.always || installation.on_error == crate::config::OnError::DeadLetter)
}

//! Shadow installations: candidates that run beside the live chains, on a sample of live
//! events, and change nothing.
//!
//! An installation with `shadow = true` is left out of its team's live chain. The team's
//! *candidate chain* is the live chain with each shadow in place: where the installation it
//! `replaces` is, or where it is written. A share (`sample`) of the team's live events, chosen
//! by uuid, also goes through the candidate chain, on a thread of its own, after the worker's
//! round: the round never waits for it (a full queue skips the sample, counted). The candidate
//! chain's installations are copies of their own, on sandboxed services that read the live
//! `storage` and `cache` and keep every write to themselves ([`crate::dry_run`]); they have
//! their own breakers, metrics and tap records (labelled `<id>~shadow`), so a shadow that fails
//! never trips a live breaker. What the candidate chain made of each event is compared with what
//! the live chain stored ([`Diff`]), per team, for `sluice shadow report` and the admin page.
//! Promoting a shadow edits the config file and reloads it ([`crate::config::edit`]).

use crate::capabilities::Services;
use crate::capabilities::sandbox::{Fakes, Live, Sandbox, SideEffect};
use crate::chain::{ChainRunner, Chains};
use crate::config::{Config, InstallationConfig};
use crate::diff::{self, Diff, Fate};
use crate::dry_run::{DryRun, InstallationReport};
use crate::runtime::Runtime;
use crate::sink::Output;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};

/// Rounds waiting for the shadow thread before samples are skipped.
const QUEUE: usize = 16;

/// Sampled events of one team.
pub struct Sampled {
    team: u64,
    events: Vec<Vec<u8>>,
}

/// Sampled events of one team, with their uuids and names.
struct Compared {
    team: u64,
    events: Vec<Vec<u8>>,
    inputs: Vec<(String, String)>,
}

/// What the shadow thread compares: sampled events, and what the live chain made of them.
struct Work {
    samples: Vec<Compared>,
    live: HashMap<String, Fate>,
}

/// The shadows of a deployment, running.
pub struct Shadows {
    samples: HashMap<u64, f64>,
    shadows: Vec<String>,
    chains: Chains,
    sandbox: Arc<Sandbox>,
    diffs: Arc<Mutex<BTreeMap<u64, Diff>>>,
    skipped: AtomicU64,
    sender: SyncSender<Work>,
}

/// What the shadows found so far.
#[derive(Debug, Serialize)]
pub struct ShadowReport {
    /// The shadow installations.
    pub shadows: Vec<String>,
    /// Per team with shadows.
    pub teams: Vec<TeamReport>,
    /// Sampled rounds skipped because the shadow thread was behind.
    pub skipped_rounds: u64,
    /// What the candidate chains would have done outside (not sent).
    pub side_effects: Vec<SideEffect>,
}

/// A [`ShadowReport`] as a command reads it back.
#[derive(Debug, serde::Deserialize)]
pub struct ShadowReportView {
    /// The shadow installations.
    pub shadows: Vec<String>,
    /// Per team with shadows.
    pub teams: Vec<TeamView>,
    /// Sampled rounds skipped.
    pub skipped_rounds: u64,
}

/// A [`TeamReport`] as a command reads it back.
#[derive(Debug, serde::Deserialize)]
pub struct TeamView {
    /// The team.
    pub team: u64,
    /// The share sampled.
    pub sample: f64,
    /// Live first, candidate second.
    pub diff: Diff,
}

/// One team's shadow comparison.
#[derive(Debug, Serialize)]
pub struct TeamReport {
    /// The team.
    pub team: u64,
    /// The share of its events sampled.
    pub sample: f64,
    /// The candidate chain's installations.
    pub candidate: Vec<InstallationReport>,
    /// Event by event: live first, candidate second.
    pub diff: Diff,
}

impl Shadows {
    /// Starts the shadows of `config`, if it has any, on `runtime`: sandboxed in
    /// `<data_dir>/shadow`, reading through to `services`' storage and cache. Blocking.
    pub fn start(
        config: &Config,
        runtime: &Runtime,
        services: &Services,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        let Some((candidate, samples, shadows)) = candidate(config) else {
            return Ok(None);
        };
        let scratch = config.server.data_dir.join("shadow");
        // What an earlier run left there is not this run's.
        let _ = std::fs::remove_dir_all(&scratch);
        let live = Live {
            storage: services.storage.clone(),
            cache: Some(services.cache.clone()),
            data_dir: None,
        };
        let mut sandbox = Sandbox::new(Fakes::default(), false);
        sandbox.shadow = true;
        let run = DryRun::load(&candidate, runtime, &scratch, live, sandbox)?;
        let diffs: Arc<Mutex<BTreeMap<u64, Diff>>> = Arc::default();
        let (sender, receiver) = mpsc::sync_channel::<Work>(QUEUE);
        let shadows = Arc::new(Self {
            samples,
            shadows,
            chains: run.chains.clone(),
            sandbox: run.sandbox.clone(),
            diffs: diffs.clone(),
            skipped: AtomicU64::new(0),
            sender,
        });
        let capacity = config.server.max_instances.max(4);
        std::thread::Builder::new()
            .name("sluice-shadow".into())
            .spawn(move || {
                let mut runner = ChainRunner::new(capacity);
                while let Ok(work) = receiver.recv() {
                    for sampled in work.samples {
                        let mut out = Output::default();
                        runner.run(run.chains.of(sampled.team), sampled.events, &mut out);
                        let candidate = diff::fates(&out);
                        diffs
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .entry(sampled.team)
                            .or_default()
                            .add_all(&sampled.inputs, &work.live, &candidate);
                    }
                }
                runner.teardown();
                run.finish();
            })?;
        Ok(Some(shadows))
    }

    /// The events of `groups` (a lane's, by team) that the shadows sample, copied.
    pub fn sample(&self, groups: &[(u64, Vec<Vec<u8>>)]) -> Vec<Sampled> {
        groups
            .iter()
            .filter_map(|(team, events)| {
                let p = *self.samples.get(team)?;
                let events: Vec<Vec<u8>> = events
                    .iter()
                    .filter(|e| p >= 1.0 || crate::replay::sampled(e, p))
                    .cloned()
                    .collect();
                (!events.is_empty()).then_some(Sampled {
                    team: *team,
                    events,
                })
            })
            .collect()
    }

    /// Hands `samples` and the live round's output `out` to the shadow thread, unless it is
    /// behind (then the samples are skipped and counted).
    pub fn submit(&self, samples: Vec<Sampled>, out: &Output) {
        if samples.is_empty() {
            return;
        }
        let samples: Vec<Compared> = samples
            .into_iter()
            .map(|s| Compared {
                inputs: s.events.iter().map(|e| diff::identity(e)).collect(),
                team: s.team,
                events: s.events,
            })
            .collect();
        let uuids: HashSet<&str> = samples
            .iter()
            .flat_map(|s| s.inputs.iter().map(|(uuid, _)| uuid.as_str()))
            .collect();
        let live = diff::fates_of(out, &uuids);
        match self.sender.try_send(Work { samples, live }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("sluice_shadow_rounds_skipped_total").increment(1);
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!("the shadow thread has stopped; samples are not compared")
            }
        }
    }

    /// What the shadows found so far.
    pub fn report(&self) -> ShadowReport {
        let diffs = self.diffs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut teams: Vec<u64> = self.samples.keys().copied().collect();
        teams.sort();
        ShadowReport {
            shadows: self.shadows.clone(),
            teams: teams
                .into_iter()
                .map(|team| TeamReport {
                    team,
                    sample: self.samples[&team],
                    candidate: self
                        .chains
                        .of(team)
                        .iter()
                        .map(|i| InstallationReport::of(&i.label, &i.stats()))
                        .collect(),
                    diff: diffs.get(&team).cloned().unwrap_or_default(),
                })
                .collect(),
            skipped_rounds: self.skipped.load(Ordering::Relaxed),
            side_effects: self.sandbox.effects(),
        }
    }
}

/// The candidate config of `config`'s shadows: each team with shadows, its chain with the
/// shadows in place; with each such team's sample and the shadows' ids. `None` without shadows.
pub fn candidate(config: &Config) -> Option<(Config, HashMap<u64, f64>, Vec<String>)> {
    let mut candidate = config.clone();
    let mut samples = HashMap::new();
    let mut shadows = Vec::new();
    candidate.teams.retain_mut(|team| {
        let plugins = std::mem::take(&mut team.plugins);
        let promoted = |shadow: &InstallationConfig| InstallationConfig {
            shadow: None,
            ..shadow.clone()
        };
        let mut chain = Vec::new();
        let mut sample: f64 = 0.0;
        for installation in &plugins {
            match &installation.shadow {
                None => match plugins.iter().find(|s| {
                    s.shadow
                        .as_ref()
                        .and_then(|s| s.replaces.as_ref())
                        .is_some_and(|r| *r == installation.id)
                }) {
                    Some(shadow) => chain.push(promoted(shadow)),
                    None => chain.push(installation.clone()),
                },
                Some(settings) => {
                    sample = sample.max(settings.sample);
                    shadows.push(installation.id.qualified(team.id));
                    if settings.replaces.is_none() {
                        chain.push(promoted(installation));
                    }
                }
            }
        }
        team.plugins = chain;
        if sample > 0.0 {
            samples.insert(team.id, sample);
        }
        sample > 0.0
    });
    (!samples.is_empty()).then_some((candidate, samples, shadows))
}

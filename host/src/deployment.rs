//! What a config deploys, in one object: the tokens capture accepts, every team's chain, the
//! export and task installations, the capability services behind them all, and the runner
//! threads of exports and tasks ([`Deployment`]).
//!
//! The server keeps the deployment in force in a [`Current`] slot. Capture reads it per request
//! and the worker per round, each taking the `Arc` in force at that moment, so a deployment
//! built from a later config can be put in place between rounds while the old one finishes
//! what it started. Each runner has a switch of its own ([`RunnerHandle`]), so one
//! installation's export or tasks can be stopped without the others.

use crate::capabilities::Services;
use crate::chain::Chains;
use crate::config::Token;
use crate::export::ExportInstallation;
use crate::installations::Installed;
use crate::schedule::TaskInstallation;
use crate::signal::Signal;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

/// A runner thread (an export's or an installation's tasks) with its own stop switch.
pub struct RunnerHandle {
    /// The installation it runs for.
    pub installation: Arc<str>,
    stop: Arc<AtomicBool>,
    wake: Option<Arc<Signal>>,
    thread: JoinHandle<()>,
}

impl RunnerHandle {
    /// Starts `run` on a thread named `name` for `installation`; `run` ends once the flag it is
    /// given is set, and `wake` (if any) is notified to cut its sleep short.
    pub fn spawn(
        name: String,
        installation: Arc<str>,
        wake: Option<Arc<Signal>>,
        run: impl FnOnce(&AtomicBool) + Send + 'static,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(name)
                .spawn(move || run(&stop))?
        };
        Ok(Self {
            installation,
            stop,
            wake,
            thread,
        })
    }

    /// Asks the runner to stop after the call it is in, without waiting.
    fn signal(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(wake) = &self.wake {
            wake.notify();
        }
    }

    /// Waits for the runner to end.
    fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!(installation = %self.installation, "a runner panicked");
        }
    }
}

/// Everything one config deploys.
pub struct Deployment {
    /// Project tokens capture accepts, and their teams.
    pub teams: HashMap<Token, u64>,
    /// Every team's chain of transforms.
    pub chains: Chains,
    /// Every export installation.
    pub exports: Vec<Arc<ExportInstallation>>,
    /// Every installation that runs tasks or jobs.
    pub tasks: Vec<Arc<TaskInstallation>>,
    /// The capability services its installations use.
    pub services: Arc<Services>,
    /// Its shadow installations, running, if it has any.
    pub shadows: Option<Arc<crate::shadow::Shadows>>,
    runners: Mutex<Vec<RunnerHandle>>,
}

impl Deployment {
    /// The deployment of `teams` (tokens) and `installed`, on `services`; no runner yet.
    pub fn new(teams: HashMap<Token, u64>, installed: Installed, services: Arc<Services>) -> Self {
        Self {
            teams,
            chains: installed.chains,
            exports: installed.exports,
            tasks: installed.tasks,
            services,
            shadows: None,
            runners: Mutex::default(),
        }
    }

    /// Adds running `runners` to the deployment.
    pub fn adopt(&self, runners: impl IntoIterator<Item = RunnerHandle>) {
        self.lock_runners().extend(runners);
    }

    /// Stops the runners of `installation` (after the call they are in) and waits for them;
    /// returns how many there were.
    pub fn stop_runners_of(&self, installation: &str) -> usize {
        let stopping = self.take_runners_of(installation);
        let count = stopping.len();
        stop(stopping);
        count
    }

    /// Takes the runners of `installation` out of this deployment, running (for another
    /// deployment to adopt).
    pub fn take_runners_of(&self, installation: &str) -> Vec<RunnerHandle> {
        let mut runners = self.lock_runners();
        let (taken, kept) = std::mem::take(&mut *runners)
            .into_iter()
            .partition(|r| &*r.installation == installation);
        *runners = kept;
        taken
    }

    /// Stops every runner (after the call it is in) and waits for them all.
    pub fn stop_runners(&self) {
        let runners = std::mem::take(&mut *self.lock_runners());
        stop(runners);
    }

    /// The installations whose runners run now.
    pub fn running(&self) -> Vec<Arc<str>> {
        self.lock_runners()
            .iter()
            .map(|r| r.installation.clone())
            .collect()
    }

    fn lock_runners(&self) -> std::sync::MutexGuard<'_, Vec<RunnerHandle>> {
        self.runners.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Signals every runner first, so they stop together, then waits for each.
pub fn stop(runners: Vec<RunnerHandle>) {
    for runner in &runners {
        runner.signal();
    }
    for runner in runners {
        runner.join();
    }
}

/// The deployment in force: read per request and per round, replaced whole.
pub struct Current(RwLock<Arc<Deployment>>);

impl Current {
    /// `deployment` in force.
    pub fn new(deployment: Deployment) -> Self {
        Self(RwLock::new(Arc::new(deployment)))
    }

    /// The deployment in force now.
    pub fn get(&self) -> Arc<Deployment> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `deployment` in force; returns the one it replaces, which stays alive for whoever
    /// still holds it.
    pub fn replace(&self, deployment: Deployment) -> Arc<Deployment> {
        let mut current = self.0.write().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *current, Arc::new(deployment))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A runner for `installation` that spins until stopped.
    fn runner(installation: &str) -> RunnerHandle {
        RunnerHandle::spawn("test".into(), Arc::from(installation), None, |stop| {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .unwrap()
    }

    fn deployment(token: &str, team: u64) -> Deployment {
        let teams = HashMap::from([(Token::parse(token).unwrap(), team)]);
        Deployment::new(teams, Installed::default(), Services::detached())
    }

    #[test]
    fn one_installation_s_runners_stop_alone_and_a_replaced_deployment_lives_on_for_its_holders() {
        let first = deployment("phc_one", 1);
        first.adopt([runner("team-1/a"), runner("team-1/b"), runner("team-1/a")]);
        assert_eq!(first.stop_runners_of("team-1/a"), 2);
        assert_eq!(first.running(), [Arc::from("team-1/b")]);

        let current = Current::new(first);
        let in_round = current.get();
        let old = current.replace(deployment("phc_two", 2));
        assert!(Arc::ptr_eq(&old, &in_round));
        // The round that began with the old deployment finishes with it; the next reads the new.
        assert_eq!(in_round.teams.values().collect::<Vec<_>>(), [&1]);
        assert_eq!(current.get().teams.values().collect::<Vec<_>>(), [&2]);
        in_round.stop_runners();
        assert!(in_round.running().is_empty());
    }
}

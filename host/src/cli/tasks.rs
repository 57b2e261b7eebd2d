//! `sluice tasks`: the runs of scheduled tasks, and running one now.

use super::{Scope, backends, check_installation, load, print_lines};
use crate::config::Config;
use crate::schedule::history::{TaskHistory, TaskRun};
use crate::stored::Stored;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a running `sluice serve` has to take a request before the command gives up waiting.
const TAKE_WITHIN: Duration = Duration::from_secs(15);

/// `sluice tasks`: which runs to print.
#[derive(Args)]
pub(super) struct List {
    #[command(flatten)]
    scope: Scope,
    /// How many of the newest runs to print.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

/// What `sluice tasks` can do besides listing runs.
#[derive(Subcommand)]
pub(super) enum Action {
    /// Prints each task's schedule, time zone, last tick and next tick, as the server last
    /// started it.
    Schedules {
        #[command(flatten)]
        scope: Scope,
    },
    /// Runs a task now, through the running `sluice serve` (never while the same task runs),
    /// waits for it and prints the run.
    Run {
        /// The sluice.toml of the running server.
        #[arg(long, short)]
        config: PathBuf,
        /// The installation, e.g. `team-1/retention`.
        #[arg(long)]
        installation: String,
        /// The task, as the plugin's manifest names it.
        #[arg(long)]
        task: String,
        /// Seconds to wait for the run to end.
        #[arg(long, default_value_t = 600)]
        wait: u64,
    },
}

pub(super) fn run(action: Option<Action>, list: List) -> anyhow::Result<()> {
    let (config, installation, task, wait) = match action {
        None => {
            let (history, installation) = open(&list.scope)?;
            let runs = history.runs(installation, None, list.limit)?;
            if !runs.is_empty() {
                return print_lines(runs);
            }
            // Nothing ran yet: what is scheduled, and when.
            let schedules = history.schedules(installation)?;
            if schedules.is_empty() {
                eprintln!(
                    "no task runs, and no scheduled tasks known{} (a server records its tasks when it starts)",
                    installation
                        .map(|i| format!(" for {i}"))
                        .unwrap_or_default()
                );
            } else {
                eprintln!("no task runs yet; the scheduled tasks and their next ticks:");
            }
            return print_lines(schedules);
        }
        Some(Action::Schedules { scope }) => {
            let (history, installation) = open(&scope)?;
            return print_lines(history.schedules(installation)?);
        }
        Some(Action::Run {
            config,
            installation,
            task,
            wait,
        }) => (config, installation, task, wait),
    };
    let config = load(&config)?;
    check_installation(&config, &installation)?;
    let history = history_of(&config)?;
    let known = history.schedules(Some(&installation))?;
    if !known.is_empty() && !known.iter().any(|s| s.task == task) {
        let names: Vec<&str> = known.iter().map(|s| s.task.as_str()).collect();
        anyhow::bail!(
            "{installation} has no task `{task}` (its tasks: {})",
            names.join(", ")
        );
    }
    let request = history.request_run(&installation, &task)?;
    let started = Instant::now();
    while !history.request_taken(request)? {
        anyhow::ensure!(
            started.elapsed() < TAKE_WITHIN,
            "no running `sluice serve --config {}` took the request within {} s; it stays queued and runs when the server starts",
            config.path.display(),
            TAKE_WITHIN.as_secs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(wait);
    loop {
        let run = history.runs(Some(&installation), Some(request), 1)?.pop();
        if let Some(run) = run.filter(|run| run.outcome != "running") {
            let outcome = run.outcome.clone();
            let error = run.error.clone().unwrap_or_default();
            report(&config, &installation, &run)?;
            print_lines(vec![run])?;
            anyhow::ensure!(outcome == "ok", "task `{task}` {outcome}: {error}");
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "task `{task}` is still running after {wait} s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Prints on stderr what the installation logged while `run` ran: what the task reported.
fn report(config: &Config, installation: &str, run: &TaskRun) -> anyhow::Result<()> {
    let (Some(started), Some(ended)) = (&run.started_at, &run.ended_at) else {
        return Ok(());
    };
    let lines = Stored::of(config)?.logs(None, Some(installation), 1_000)?;
    for line in lines
        .iter()
        .filter(|l| &l.time >= started && &l.time <= ended)
    {
        eprintln!("{} {:5} {}", line.time, line.level, line.message);
    }
    Ok(())
}

/// The task history of the scope's config, and the installation to list.
fn open(scope: &Scope) -> anyhow::Result<(Box<dyn TaskHistory>, Option<&str>)> {
    let (config, installation) = scope.config()?;
    Ok((history_of(&config)?, installation))
}

/// The task history `config` names.
fn history_of(config: &Config) -> anyhow::Result<Box<dyn TaskHistory>> {
    Ok(backends(config)?.task_history()?)
}

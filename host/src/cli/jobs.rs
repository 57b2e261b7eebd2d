//! `sluice jobs`: the job queue, queueing a job by hand, and queueing failed jobs again.

use super::{Scope, backends, check_installation, load, print_lines};
use crate::capabilities;
use crate::store::{now_ms, rfc3339};
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;
use sluice_abi::time::parse_delay;
use std::path::{Path, PathBuf};

/// `sluice jobs`: which jobs to print.
#[derive(Args)]
pub(super) struct List {
    #[command(flatten)]
    scope: Scope,
}

/// What `sluice jobs` can do besides listing.
#[derive(Subcommand)]
pub(super) enum Action {
    /// Queues a job for an installation's `jobs` hook; prints its id.
    Enqueue {
        /// The sluice.toml whose data folder to use.
        #[arg(long, short)]
        config: PathBuf,
        /// The installation, e.g. `team-1/retention`.
        #[arg(long)]
        installation: String,
        /// The job's name.
        #[arg(long)]
        name: String,
        /// Its payload (JSON).
        #[arg(long, default_value = "{}")]
        payload: String,
        /// When to run it (RFC 3339, e.g. `2026-01-02T03:04:05Z`).
        #[arg(long, conflicts_with = "delay")]
        at: Option<String>,
        /// How long from now to run it (`90 seconds`, `10m`, `2 hours`, `1 month`...).
        #[arg(long = "in", id = "delay")]
        delay: Option<String>,
    },
    /// Queues failed jobs again, due now, with their attempts reset; prints how many.
    Retry {
        /// The sluice.toml whose data folder to use.
        #[arg(long, short)]
        config: PathBuf,
        /// The installation, e.g. `team-1/retention`.
        #[arg(long)]
        installation: String,
        /// Only this job (default: every failed job of the installation).
        #[arg(long)]
        id: Option<String>,
    },
}

pub(super) fn run(action: Option<Action>, list: List) -> anyhow::Result<()> {
    match action {
        None => {
            let (config, installation) = list.scope.config()?;
            let queue = backends(&config)?.job_queue()?;
            print_lines(queue.list(installation)?)
        }
        Some(Action::Enqueue {
            config,
            installation,
            name,
            payload,
            at,
            delay,
        }) => enqueue(&config, &installation, &name, &payload, at, delay),
        Some(Action::Retry {
            config,
            installation,
            id,
        }) => {
            let config = load(&config)?;
            check_installation(&config, &installation)?;
            let queue = backends(&config)?.job_queue()?;
            let retried = queue.retry_failed(&installation, id.as_deref())?;
            if let Some(id) = &id {
                anyhow::ensure!(
                    retried == 1,
                    "installation {installation} has no failed job {id}"
                );
            }
            print_lines(vec![
                json!({"installation": installation, "retried": retried}),
            ])
        }
    }
}

/// Queues one job, at `at` (RFC 3339), after `delay`, or now.
fn enqueue(
    config: &Path,
    installation: &str,
    name: &str,
    payload: &str,
    at: Option<String>,
    delay: Option<String>,
) -> anyhow::Result<()> {
    let config = load(config)?;
    check_installation(&config, installation)?;
    let queue = backends(&config)?.job_queue()?;
    let run_at = match (at, delay) {
        (Some(at), _) => chrono::DateTime::parse_from_rfc3339(&at)
            .with_context(|| format!("--at {at:?} is not an RFC 3339 time"))?
            .timestamp_millis(),
        (None, Some(delay)) => {
            let delay = parse_delay(&delay).map_err(|e| anyhow::anyhow!("--in: {e}"))?;
            now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX))
        }
        (None, None) => now_ms(),
    };
    let id = capabilities::jobs::enqueue(&*queue, installation, name, payload, run_at)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    print_lines(vec![json!({
        "id": id,
        "installation": installation,
        "name": name,
        "run_at": rfc3339(run_at),
    })])
}

//! `sluice exports`: status, dead letters, replay.

use super::{backends, load, print_lines};
use crate::export::state;
use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;

/// What `sluice exports` can do besides printing status.
#[derive(Subcommand)]
pub(super) enum Action {
    /// Print batches that failed for good (after a permanent error or the last attempt).
    DeadLetters {
        /// The sluice.toml whose data folder to read.
        #[arg(long, short)]
        config: PathBuf,
        /// Only this installation, e.g. `team-1/s3`.
        #[arg(long)]
        installation: Option<String>,
    },
    /// Send dead-lettered batches again through the export runner (the running server, or the
    /// next to start); each is removed once delivered.
    Replay {
        /// The sluice.toml whose data folder to use.
        #[arg(long, short)]
        config: PathBuf,
        /// The installation, e.g. `team-1/s3`.
        #[arg(long)]
        installation: String,
        /// Only this batch (its id, as `sluice exports dead-letters` prints it).
        #[arg(long)]
        batch: Option<String>,
    },
}

pub(super) fn run(action: Option<Action>, config: Option<PathBuf>) -> anyhow::Result<()> {
    match action {
        None => {
            let config = load(&config.context("--config is required")?)?;
            let backends = backends(&config)?;
            let mut source = backends.export_source(Default::default())?;
            print_lines(state::status(&mut *backends.export_state()?, &mut *source)?)
        }
        Some(Action::DeadLetters {
            config,
            installation,
        }) => print_lines(
            backends(&load(&config)?)?
                .export_state()?
                .dead_letters(installation.as_deref())?,
        ),
        Some(Action::Replay {
            config,
            installation,
            batch,
        }) => {
            let queued = backends(&load(&config)?)?
                .export_state()?
                .request_replay(&installation, batch.as_deref())?;
            anyhow::ensure!(
                queued > 0,
                "no dead-lettered batch of {installation}{} (see `sluice exports dead-letters`)",
                batch.map(|b| format!(" with id {b}")).unwrap_or_default()
            );
            println!("{queued} batch(es) of {installation} queued for replay");
            Ok(())
        }
    }
}

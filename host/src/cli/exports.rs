//! `sluice exports`: status, dead letters, replay.

use super::{load, open_existing, print_lines};
use crate::export::source::SqliteSource;
use crate::export::state;
use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;
use std::sync::Arc;

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
            let conn = open_existing(&config)?;
            let mut source = SqliteSource::open(&config.server.data_dir, Arc::default())?;
            print_lines(state::status(&conn, &mut source)?)
        }
        Some(Action::DeadLetters {
            config,
            installation,
        }) => print_lines(state::dead_letters(
            &open_existing(&load(&config)?)?,
            installation.as_deref(),
        )?),
        Some(Action::Replay {
            config,
            installation,
            batch,
        }) => {
            let conn = open_existing(&load(&config)?)?;
            let queued = state::request_replay(&conn, &installation, batch.as_deref())?;
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

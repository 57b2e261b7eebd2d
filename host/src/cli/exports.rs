//! `sluice exports`: status, dead letters, replay and discard.

use super::{backends, load, print_lines};
use crate::export::state::{self, LetterAction};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Which export dead letters a replay or discard applies to.
#[derive(Args)]
pub(super) struct Letters {
    /// The sluice.toml whose data folder to use.
    #[arg(long, short)]
    config: PathBuf,
    /// The installation, e.g. `team-1/s3`.
    #[arg(long)]
    installation: String,
    /// Only this batch (its id, as `sluice exports dead-letters` prints it).
    #[arg(long)]
    batch: Option<String>,
}

/// What `sluice exports` can do besides printing status.
#[derive(Subcommand)]
pub(super) enum Action {
    /// Remove dead-lettered batches for good (their events are not sent).
    Discard(Letters),
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
    Replay(Letters),
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
        Some(Action::Discard(which)) => letters(which, LetterAction::Discard),
        Some(Action::Replay(which)) => letters(which, LetterAction::Replay),
    }
}

/// `action` on the dead letters `which` names: what the admin route does.
fn letters(which: Letters, action: LetterAction) -> anyhow::Result<()> {
    let Letters {
        config,
        installation,
        batch,
    } = which;
    let count = action.apply(
        &mut *backends(&load(&config)?)?.export_state()?,
        &installation,
        batch.as_deref(),
    )?;
    anyhow::ensure!(
        count > 0,
        "no dead-lettered batch of {installation}{} (see `sluice exports dead-letters`)",
        batch.map(|b| format!(" with id {b}")).unwrap_or_default()
    );
    let done = match action {
        LetterAction::Replay => "queued for replay",
        LetterAction::Discard => "discarded",
    };
    println!("{count} batch(es) of {installation} {done}");
    Ok(())
}

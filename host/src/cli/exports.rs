//! `sluice exports`: status, dead letters, replay and discard.

use super::{backends, load, print_lines};
use crate::export::backfill;
use crate::export::state::{self, LetterAction};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::io::IsTerminal;
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
    /// Send the stored events of a time range through an export installation again, as batches
    /// of their own (named `backfill-...`), beside the live cursor, from this process, with
    /// progress; started again, it goes on where it stopped. `backfill cancel` stops one.
    #[command(args_conflicts_with_subcommands = true)]
    Backfill {
        #[command(subcommand)]
        action: Option<BackfillAction>,
        #[command(flatten)]
        range: Option<Range>,
    },
    /// Print the backfills of the data folder and their progress, as JSON lines, newest first.
    Backfills {
        /// The sluice.toml whose data folder to read.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// What `sluice exports backfill` sends.
#[derive(Args)]
pub(super) struct Range {
    /// The sluice.toml of the store and the installation.
    #[arg(long, short)]
    config: PathBuf,
    /// The export installation, e.g. `team-1/s3`.
    #[arg(long)]
    installation: String,
    /// Events from this time (RFC 3339, or a date: `2026-11-01`).
    #[arg(long)]
    from: String,
    /// Events before this time (default: now).
    #[arg(long)]
    to: Option<String>,
    /// At most this many events a second.
    #[arg(long)]
    rate: Option<u64>,
}

/// `sluice exports backfill cancel`.
#[derive(Subcommand)]
pub(super) enum BackfillAction {
    /// Stop the running backfills of an installation (after the batch in hand).
    Cancel {
        /// The sluice.toml whose data folder to use.
        #[arg(long, short)]
        config: PathBuf,
        /// The export installation, e.g. `team-1/s3`.
        #[arg(long)]
        installation: String,
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
        Some(Action::Discard(which)) => letters(which, LetterAction::Discard),
        Some(Action::Replay(which)) => letters(which, LetterAction::Replay),
        Some(Action::Backfill {
            action:
                Some(BackfillAction::Cancel {
                    config,
                    installation,
                }),
            ..
        }) => {
            let count = backfill::cancel(&load(&config)?, &installation)?;
            anyhow::ensure!(count > 0, "no running backfill of {installation}");
            println!("{count} backfill(s) of {installation} cancelled");
            Ok(())
        }
        Some(Action::Backfill {
            action: None,
            range,
        }) => run_backfill(&range.context("--config, --installation and --from are required")?),
        Some(Action::Backfills { config }) => print_lines(backfill::list(
            &crate::stored::open_existing(&load(&config)?)?,
        )?),
    }
}

/// Runs a backfill with a progress bar (plain lines when stderr is not a terminal).
fn run_backfill(range: &Range) -> anyhow::Result<()> {
    let config = load(&range.config)?;
    let from_ms = time_ms(&range.from, "--from")?;
    let to_ms = range
        .to
        .as_deref()
        .map(|t| time_ms(t, "--to"))
        .transpose()?
        .unwrap_or_else(crate::store::now_ms);
    let terminal = std::io::stderr().is_terminal();
    let bar = if terminal {
        indicatif::ProgressBar::new(0)
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    let mut last_line = std::time::Instant::now();
    let mut report = |p: &backfill::BackfillProgress| {
        bar.set_length(p.total.unwrap_or(p.exported));
        bar.set_position(p.exported);
        if !terminal && last_line.elapsed() >= std::time::Duration::from_secs(5) {
            last_line = std::time::Instant::now();
            eprintln!("{}", line(p));
        }
    };
    let progress = backfill::run(
        &config,
        &range.installation,
        (from_ms, to_ms),
        range.rate,
        &mut report,
    )?;
    bar.finish_and_clear();
    println!("{}", line(&progress));
    anyhow::ensure!(
        progress.status != "failed",
        "the backfill stopped before its end"
    );
    Ok(())
}

fn line(p: &backfill::BackfillProgress) -> String {
    format!(
        "backfill {} {}: {} of {} events sent",
        p.key,
        p.status,
        p.exported,
        p.total.map_or("?".to_owned(), |t| t.to_string())
    )
}

/// `text` (RFC 3339 or `YYYY-MM-DD`, UTC) in epoch ms; `flag` names it in errors.
fn time_ms(text: &str, flag: &str) -> anyhow::Result<i64> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
        .with_context(|| {
            format!("{flag} {text}: not a time (2026-11-01T00:00:00Z) or a date (2026-11-01)")
        })
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

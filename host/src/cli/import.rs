//! `sluice import` and `sluice imports`: history into a team's store, with progress.

use crate::import::{self, ImportSettings, Progress};
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often plain progress lines are printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// `sluice import`.
#[derive(Args)]
pub struct Import {
    /// The sluice.toml of the store (and of the team's chain).
    #[arg(long, short)]
    config: PathBuf,
    /// The team the events are for.
    #[arg(long)]
    team: u64,
    /// Files of events: JSON lines (plain, gzip, zstd), PostHog `/batch` bodies one per line,
    /// or Parquet (as the S3 export writes it).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Store the events as they are, without the team's chain.
    #[arg(long)]
    skip_chain: bool,
    /// At most this many events a second (so live traffic is not starved).
    #[arg(long)]
    rate: Option<u64>,
    /// Stop at the first line that is not an event (default: count it, write it to the
    /// rejects file, go on).
    #[arg(long)]
    strict: bool,
    /// Where rejected lines are written (default: `<data_dir>/imports/<import>.rejects.jsonl`).
    #[arg(long)]
    rejects: Option<PathBuf>,
}

/// Runs `sluice import`: a progress bar on a terminal, plain lines every 5 s otherwise, and a
/// summary.
pub fn run(args: &Import) -> anyhow::Result<()> {
    let settings = ImportSettings {
        config: args.config.clone(),
        team: args.team,
        files: args.files.clone(),
        skip_chain: args.skip_chain,
        rate: args.rate,
        strict: args.strict,
        rejects: args.rejects.clone(),
    };
    let terminal = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::hidden();
    if terminal {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta} left) {msg}",
        ) {
            bar.set_style(style);
        }
    }
    let mut last_line = Instant::now();
    let mut report = |progress: &Progress| {
        if terminal {
            bar.set_length(progress.total_bytes);
            bar.set_position(progress.bytes);
            bar.set_message(counts(progress));
        } else if last_line.elapsed() >= PLAIN_EVERY {
            last_line = Instant::now();
            eprintln!("{}", line(progress));
        }
    };
    let result = import::run(&settings, &mut report);
    bar.finish_and_clear();
    let progress = result?;
    println!("{}", line(&progress));
    if progress.rejected > 0 {
        println!(
            "rejected lines, with their file and line: {}",
            progress.rejects
        );
    }
    Ok(())
}

/// `sluice imports`: every import recorded in the data folder, as JSON lines, newest first.
pub fn list(config: &std::path::Path) -> anyhow::Result<()> {
    let config = super::load(config)?;
    let conn = crate::stored::open_existing(&config)?;
    super::print_lines(import::list(&conn)?)
}

fn counts(progress: &Progress) -> String {
    format!(
        "{:.0} events/s · {} stored, {} already stored, {} dropped, {} dead-lettered, {} rejected",
        progress.events_per_second,
        progress.stored,
        progress.already_stored,
        progress.dropped,
        progress.dead_lettered,
        progress.rejected
    )
}

fn line(progress: &Progress) -> String {
    let percent = if progress.total_bytes > 0 {
        progress.bytes as f64 / progress.total_bytes as f64 * 100.0
    } else {
        100.0
    };
    format!(
        "import {} {}: {} events read, {:.0}% of {} bytes · {}",
        progress.id,
        progress.status,
        progress.read,
        percent,
        progress.total_bytes,
        counts(progress)
    )
}

//! `sluice replay`: recorded traffic through the current chain and a candidate, compared.

use crate::replay::{self, ReplaySettings};
use clap::{Args, ValueEnum};
use std::io::IsTerminal;
use std::path::PathBuf;

/// How the report is printed.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// Tables for a terminal.
    Table,
    /// One JSON object.
    Json,
}

/// `sluice replay`.
#[derive(Args)]
pub struct Replay {
    /// The config in force (its data folder holds the captured events).
    #[arg(long, short)]
    config: PathBuf,
    /// The candidate config.
    #[arg(long)]
    candidate: PathBuf,
    /// Only this team.
    #[arg(long)]
    team: Option<u64>,
    /// Only events captured since: a time (`2026-11-30T10:00:00Z`) or an age (`90m`, `6h`,
    /// `2d`).
    #[arg(long)]
    since: Option<String>,
    /// At most this many events.
    #[arg(long, conflicts_with = "sample")]
    limit: Option<u64>,
    /// Only this share of events, e.g. 0.1 (the same events each time).
    #[arg(long)]
    sample: Option<f64>,
    /// `stored` (the events captured, before the chain) or a file of events as sent to
    /// `/capture`, one JSON object per line.
    #[arg(long, default_value = "stored")]
    from: String,
    /// Let the runs' effects happen: `http` sends, and `storage`, `cache` and the object stores
    /// are the real ones (job enqueues and recordings stay in the sandbox). Side effects are
    /// still reported.
    #[arg(long)]
    allow_side_effects: bool,
    /// How to print the report.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

/// Runs `sluice replay`.
pub fn run(args: &Replay) -> anyhow::Result<()> {
    let settings = ReplaySettings {
        current: args.config.clone(),
        candidate: args.candidate.clone(),
        team: args.team,
        since_ms: args.since.as_deref().map(since_ms).transpose()?,
        limit: args.limit,
        sample: args.sample,
        from: replay::source(&args.from),
        allow_side_effects: args.allow_side_effects,
        progress: matches!(args.format, Format::Table) && std::io::stderr().is_terminal(),
    };
    let report = replay::run(&settings)?;
    match args.format {
        Format::Table => print!("{}", replay::render(&report)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}

/// `--since` in epoch milliseconds.
fn since_ms(text: &str) -> anyhow::Result<i64> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.timestamp_millis());
    }
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let unit_ms = match unit {
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => 0,
    };
    match number.parse::<i64>() {
        Ok(n) if unit_ms > 0 && n >= 0 => Ok(crate::store::now_ms() - n * unit_ms),
        _ => anyhow::bail!(
            "--since {text}: not a time (2026-11-30T10:00:00Z) or an age (90m, 6h, 2d)"
        ),
    }
}

//! The `sluice` command line: one file per command family; this file parses and dispatches.

mod change;
mod exports;
mod import;
mod jobs;
mod logs;
mod plugin;
mod recordings;
mod reload;
mod replay;
mod scaffold;
mod tap;
mod tasks;

use crate::backends::Backends;
use crate::config::Config;
use crate::roles::{Role, Roles};
use crate::stored::{Stored, existing_data_dir, open_existing};
use crate::{clickhouse, server, store, telemetry};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// sluice: capture analytics events (PostHog-compatible), run them through sandboxed WebAssembly
/// plugins, store them, and export them.
#[derive(Parser)]
#[command(name = "sluice", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the capture API, the plugin chains, storage, exports and scheduled tasks until Ctrl-C
    /// (or SIGTERM).
    ///
    /// Prints `listening on http://ADDR` on stdout once requests are accepted. The listen address
    /// and data folder can be overridden with SLUICE_LISTEN and SLUICE_DATA_DIR.
    Serve {
        /// The sluice.toml to use.
        #[arg(long, short)]
        config: PathBuf,
        /// What this process runs (comma-separated or repeated); default: everything. Capture
        /// and worker on different nodes need a `[kafka]` ingest.
        #[arg(long, value_delimiter = ',')]
        role: Vec<Role>,
    },
    /// Ask the running server (through its admin API) to put the config F in force without a
    /// restart: F is checked whole first (a bad file changes nothing and says why); prints
    /// which installations were added, removed, changed or kept. Only the teams may change.
    Reload {
        /// The sluice.toml to put in force (the server's data folder is found from it).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config as `sluice serve` would start it, without serving: every problem of the
    /// file, every plugin compiled, configured and started once, Redis and the object stores
    /// reachable, the listen addresses free. Exit code 0 when `serve` would start.
    #[command(subcommand)]
    Config(ConfigAction),
    /// Work with plugins: start a new one, check a built component, run it on sample events.
    #[command(subcommand)]
    Plugin(plugin::Action),
    /// Watch what each installation of the running server does with each event (kept,
    /// dropped and why, patched and which keys, replaced, failed), as JSON lines, until
    /// interrupted; it goes on across reloads.
    Tap(#[command(flatten)] tap::Tap),
    /// Run recorded traffic (the events captured, before the chain, or a file) through the
    /// current chains and a candidate config side by side, with no side effects, and report
    /// what would change: per installation kept / dropped / changed / failed, latency and
    /// memory; which property keys the candidate adds, removes or changes, with samples; the
    /// side effects each chain would have had.
    Replay(#[command(flatten)] replay::Replay),
    /// Run the tests written in the config (`[[tests]]`) and in scenario files: input events
    /// through a team's chain (or one installation), host capabilities faked, assertions on
    /// what is stored. Prints one line per test and what failed; exit code 1 if any failed.
    Test {
        /// The sluice.toml whose chains to test (and whose `[[tests]]` to run).
        #[arg(long, short)]
        config: PathBuf,
        /// Scenario files (TOML with `[[tests]]`).
        scenarios: Vec<PathBuf>,
    },
    /// Work with shadow installations (`shadow = true`): see what they would change on live
    /// traffic; make one live.
    #[command(subcommand)]
    Shadow(change::Shadow),
    /// Return an installation to its last good plugin version (or `--to` a version it ran):
    /// the config file is edited and reloaded, without loss; the version left is marked bad.
    Rollback {
        /// The sluice.toml of the running server (the file that is edited).
        #[arg(long, short)]
        config: PathBuf,
        /// The installation, e.g. `team-1/geoip`.
        #[arg(long)]
        installation: String,
        /// A version it ran (SHA-256, see `sluice versions`).
        #[arg(long)]
        to: Option<String>,
    },
    /// Print the plugin versions an installation ran (kept by content in the data folder),
    /// newest first, with those rolled back from marked bad.
    Versions {
        /// The sluice.toml whose data folder to read.
        #[arg(long, short)]
        config: PathBuf,
        /// The installation, e.g. `team-1/geoip`.
        #[arg(long)]
        installation: String,
    },
    /// Failure bundles: list them, run one again.
    #[command(subcommand)]
    Debug(change::Debug),
    /// Bring history in: events from files (JSON lines plain, gzip or zstd; PostHog `/batch`
    /// bodies; Parquet as the S3 export writes it) through the team's chain into its store,
    /// idempotent on uuid, resumable where it stopped, with progress.
    Import(#[command(flatten)] import::Import),
    /// Print the imports of the data folder and their progress, as JSON lines, newest first.
    Imports {
        /// The sluice.toml whose data folder to read.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print stored events as JSON lines, oldest first.
    Events(#[command(flatten)] Read),
    /// Print stored session-recording events (`$snapshot`), oldest first; with `--session`,
    /// also the events of that session that were archived to an object store.
    Recordings {
        #[command(flatten)]
        read: Read,
        /// Only this `$session_id`.
        #[arg(long)]
        session: Option<String>,
    },
    /// Print what plugins logged (their `log` calls, stdout and stderr, and their failures),
    /// oldest first.
    Logs {
        #[command(flatten)]
        read: Read,
        /// Only this installation, e.g. `team-1/downsample`.
        #[arg(long)]
        installation: Option<String>,
        /// Keep printing new lines as they are stored, until interrupted.
        #[arg(long)]
        follow: bool,
    },
    /// Print events that plugins failed on (installations with `on_error = "dead_letter"`),
    /// and events the worker or the sink could not handle (installation `(worker)` or `(sink)`).
    DeadLetters(#[command(flatten)] Read),
    /// Print ingested payloads that could not be read as events (damaged storage), set aside
    /// whole instead of being processed.
    Quarantine(#[command(flatten)] Read),
    /// Print the status of every export installation: cursor, lag, last success, last error,
    /// and the batch being retried; or work with export dead letters.
    #[command(args_conflicts_with_subcommands = true)]
    Exports {
        #[command(subcommand)]
        action: Option<exports::Action>,
        /// The sluice.toml whose data folder to read.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the runs of scheduled tasks (task, installation, tick, start, end, outcome, error);
    /// or run a task now.
    #[command(args_conflicts_with_subcommands = true)]
    Tasks {
        #[command(subcommand)]
        action: Option<tasks::Action>,
        #[command(flatten)]
        list: tasks::List,
    },
    /// Print the jobs queued, running or failed; queue one; or queue failed ones again.
    #[command(args_conflicts_with_subcommands = true)]
    Jobs {
        #[command(subcommand)]
        action: Option<jobs::Action>,
        #[command(flatten)]
        list: jobs::List,
    },
}

/// `sluice config ...`.
#[derive(Subcommand)]
enum ConfigAction {
    /// Check the config (see `sluice config --help`).
    Check {
        /// The sluice.toml to check.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the effective config as JSON: every default filled in, each team's chain resolved
    /// (plugin, content hash, hooks, grants, its config with the plugin's defaults), every
    /// secret redacted.
    Show {
        /// The sluice.toml to show.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// What every command that reads storage takes.
#[derive(Args)]
struct Read {
    /// The sluice.toml whose data folder to read.
    #[arg(long, short)]
    config: PathBuf,
    /// Only this team id.
    #[arg(long)]
    team: Option<u64>,
    /// How many of the newest to print.
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

/// Which installations a listing covers.
#[derive(Args)]
struct Scope {
    /// The sluice.toml whose data folder to read.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Only this installation, e.g. `team-1/retention`.
    #[arg(long)]
    installation: Option<String>,
}

impl Scope {
    /// The config, and the installation to list.
    fn config(&self) -> anyhow::Result<(Config, Option<&str>)> {
        let config = self.config.as_deref().context("--config is required")?;
        Ok((load(config)?, self.installation.as_deref()))
    }
}

impl Read {
    fn stored(&self) -> anyhow::Result<Stored> {
        Stored::of(&load(&self.config)?)
    }

    fn data_dir(&self) -> anyhow::Result<PathBuf> {
        existing_data_dir(&load(&self.config)?)
    }
}

/// Runs the command line; errors are printed, with exit code 2.
pub fn main() -> ExitCode {
    telemetry::init_logging();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// The config at `path`, with the process environment's overrides.
fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path, &|key| std::env::var(key).ok())?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, role } => {
            let config = load(&config)?;
            let runtime = tokio::runtime::Runtime::new()?;
            let roles = Roles::of(&role, &config);
            runtime.block_on(server::serve(config, roles, shutdown_signal(), |addr| {
                println!("listening on http://{addr}");
                let _ = std::io::stdout().flush();
            }))
        }
        Command::Reload { config } => reload::run(&config),
        Command::Plugin(action) => plugin::run(action),
        Command::Config(ConfigAction::Show { config }) => {
            let shown = server::show(load(&config)?)?;
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(())
        }
        Command::Config(ConfigAction::Check { config }) => {
            let checked = server::check(load(&config)?)?;
            println!(
                "{}: ok ({} teams; {} transforms, {} exports, {} installations with tasks or jobs)",
                config.display(),
                checked.teams,
                checked.transforms,
                checked.exports,
                checked.tasks
            );
            Ok(())
        }
        Command::Tap(watch) => tap::run(&watch),
        Command::Replay(args) => replay::run(&args),
        Command::Import(args) => import::run(&args),
        Command::Imports { config } => import::list(&config),
        Command::Shadow(action) => change::shadow(action),
        Command::Rollback {
            config,
            installation,
            to,
        } => change::rollback(&config, &installation, to.as_deref()),
        Command::Versions {
            config,
            installation,
        } => change::versions(&config, &installation),
        Command::Debug(action) => {
            if !change::debug(action)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Test { config, scenarios } => {
            let passed = crate::scenario::run(&config, &scenarios, &mut std::io::stdout())?;
            if !passed {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Events(read) => print_lines(read.stored()?.events(read.team, read.limit)?),
        Command::Recordings { read, session } => recordings::print(&read, session.as_deref()),
        Command::Logs {
            read,
            installation,
            follow,
        } => logs::print(&read, installation.as_deref(), follow),
        Command::DeadLetters(read) => {
            print_lines(read.stored()?.dead_letters(read.team, read.limit)?)
        }
        Command::Quarantine(read) => {
            let config = load(&read.config)?;
            anyhow::ensure!(
                config.clickhouse.is_none(),
                "with [clickhouse], ingest messages that cannot be read are dead letters of installation {}: see `sluice dead-letters --config {}`",
                clickhouse::rows::INGEST,
                read.config.display()
            );
            print_lines(store::read::recent_quarantined(
                &open_existing(&config)?,
                read.team,
                read.limit,
            )?)
        }
        Command::Exports { action, config } => exports::run(action, config),
        Command::Tasks { action, list } => tasks::run(action, list),
        Command::Jobs { action, list } => jobs::run(action, list),
    }
}

/// The backends of `config` for a command: on Redis where the config names it, else in the
/// database a server has made.
fn backends(config: &Config) -> anyhow::Result<Backends> {
    if config.redis.is_none() {
        existing_data_dir(config)?;
    }
    Ok(Backends::connect(config)?)
}

/// Fails unless `installation` (`team-<id>/<installation id>`) is in `config`.
fn check_installation(config: &Config, installation: &str) -> anyhow::Result<()> {
    let known: Vec<String> = config
        .teams
        .iter()
        .flat_map(|team| team.plugins.iter().map(|p| p.id.qualified(team.id)))
        .collect();
    anyhow::ensure!(
        known.iter().any(|id| id == installation),
        "{} has no installation {installation} (installations: {})",
        config.path.display(),
        known.join(", ")
    );
    Ok(())
}

/// Prints `items` as JSON lines.
fn print_lines<T: serde::Serialize>(items: Vec<T>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for item in items {
        serde_json::to_writer(&mut out, &item)?;
        writeln!(out)?;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

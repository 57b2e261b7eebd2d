//! The `sluice` command.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sluice::config::Config;
use sluice::export::state as exports;
use sluice::{server, store, telemetry};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// sluice: capture analytics events (PostHog-compatible), run them through sandboxed WebAssembly
/// plugins, and store them.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the capture API, the plugin chains and storage until Ctrl-C (or SIGTERM).
    ///
    /// Prints `listening on http://ADDR` on stdout once requests are accepted. The listen address
    /// and data folder can be overridden with SLUICE_LISTEN and SLUICE_DATA_DIR.
    Serve {
        /// The sluice.toml to use.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print stored events as JSON lines, oldest first.
    Events(#[command(flatten)] Read),
    /// Print stored session-recording events (`$snapshot`), oldest first.
    Recordings {
        #[command(flatten)]
        read: Read,
        /// Only this `$session_id`.
        #[arg(long)]
        session: Option<String>,
    },
    /// Print what plugins logged (their `log` calls, stdout and stderr), oldest first.
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
    /// Print events that plugins failed on (installations with `on_error = "dead_letter"`).
    DeadLetters(#[command(flatten)] Read),
    /// Print the status of every export installation: cursor, lag, last success, last error,
    /// and the batch being retried; or work with export dead letters.
    #[command(args_conflicts_with_subcommands = true)]
    Exports {
        #[command(subcommand)]
        action: Option<ExportsAction>,
        /// The sluice.toml whose data folder to read.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// What `sluice exports` can do besides printing status.
#[derive(Subcommand)]
enum ExportsAction {
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

impl Read {
    fn open(&self) -> anyhow::Result<rusqlite::Connection> {
        open_existing(&load(&self.config)?)
    }
}

fn main() -> ExitCode {
    telemetry::init_logging();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path, &|key| std::env::var(key).ok())?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let config = load(&config)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(server::serve(config, shutdown_signal(), |addr| {
                println!("listening on http://{addr}");
                let _ = std::io::stdout().flush();
            }))
        }
        Command::Events(read) => print_lines(store::read::recent_events(
            &read.open()?,
            read.team,
            read.limit,
        )?),
        Command::Recordings { read, session } => print_lines(store::read::recent_recordings(
            &read.open()?,
            read.team,
            session.as_deref(),
            read.limit,
        )?),
        Command::Logs {
            read,
            installation,
            follow,
        } => print_logs(&read, installation.as_deref(), follow),
        Command::DeadLetters(read) => print_lines(store::read::recent_dead_letters(
            &read.open()?,
            read.team,
            read.limit,
        )?),
        Command::Exports { action, config } => match action {
            None => {
                let config = config.context("--config is required")?;
                print_lines(exports::status(&open_existing(&load(&config)?)?)?)
            }
            Some(ExportsAction::DeadLetters {
                config,
                installation,
            }) => print_lines(exports::dead_letters(
                &open_existing(&load(&config)?)?,
                installation.as_deref(),
            )?),
            Some(ExportsAction::Replay {
                config,
                installation,
                batch,
            }) => {
                let conn = open_existing(&load(&config)?)?;
                let queued = exports::request_replay(&conn, &installation, batch.as_deref())?;
                anyhow::ensure!(
                    queued > 0,
                    "no dead-lettered batch of {installation}{} (see `sluice exports dead-letters`)",
                    batch.map(|b| format!(" with id {b}")).unwrap_or_default()
                );
                println!("{queued} batch(es) of {installation} queued for replay");
                Ok(())
            }
        },
    }
}

fn print_logs(read: &Read, installation: Option<&str>, follow: bool) -> anyhow::Result<()> {
    let conn = read.open()?;
    // Following starts after the newest line stored now, whatever `--limit` printed.
    let mut last = store::logs::last_id(&conn)?;
    let mut lines = store::logs::read(&conn, read.team, installation, None, read.limit)?;
    loop {
        last = lines.last().map_or(last, |line| line.id.max(last));
        print_lines(lines)?;
        if !follow {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        lines = store::logs::read(&conn, read.team, installation, Some(last), 10_000)?;
    }
}

fn open_existing(config: &Config) -> anyhow::Result<rusqlite::Connection> {
    let db = config.server.data_dir.join(store::DB_FILE);
    anyhow::ensure!(
        db.is_file(),
        "no database at {} (has `sluice serve --config {}` run yet?)",
        db.display(),
        config.path.display()
    );
    store::open(&config.server.data_dir).with_context(|| format!("cannot open {}", db.display()))
}

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

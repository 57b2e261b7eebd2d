//! `sluice replay`: recorded traffic through the current chain and a candidate side by side,
//! with no side effects, and what would change.
//!
//! The traffic is the embedded store's captured events (kept before the chain for
//! `[retention] captured_hours`), or a file of events as sent to `/capture` (JSON lines). Both
//! configs' chains are loaded by the server's own code on sandboxed services
//! ([`crate::dry_run`]) reading through to the live `storage` (and Redis's `cache`), and run on
//! two threads, batch by batch. The report has, per installation, what it kept, dropped,
//! changed and failed, its latency and peak memory; the event-by-event [`Diff`]; and the side
//! effects each chain would have had.

use crate::backends::Backends;
use crate::capabilities::sandbox::{Fakes, Sandbox, SideEffect};
use crate::chain::ChainRunner;
use crate::config::Config;
use crate::diff::{self, Diff};
use crate::dry_run::{self, DryRun, InstallationReport};
use crate::sink::Output;
use anyhow::{Context as _, bail};
use rusqlite::params;
use serde::Serialize;
use sluice_abi::wire::{self, BatchReader};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Events per batch through both chains.
const BATCH: usize = 1_000;
/// Captured payloads read per query.
const PAGE: i64 = 256;

/// Where the replayed events come from.
#[derive(Debug, Clone)]
pub enum From {
    /// The embedded store's captured events.
    Stored,
    /// A file of events: JSON lines as sent to `/capture` (plain, gzip or zstd), or Parquet as
    /// the S3 export writes it ([`crate::event_file`]).
    File(PathBuf),
}

/// What to replay and how.
#[derive(Debug, Clone)]
pub struct ReplaySettings {
    /// The config in force.
    pub current: PathBuf,
    /// The candidate config.
    pub candidate: PathBuf,
    /// Only this team's events (needed with a file when the config has several teams).
    pub team: Option<u64>,
    /// Only events captured since, epoch ms.
    pub since_ms: Option<i64>,
    /// At most this many events.
    pub limit: Option<u64>,
    /// Only this share of events (by uuid, so the same events each time).
    pub sample: Option<f64>,
    /// The source.
    pub from: From,
    /// Whether the runs' effects are real (see [`Sandbox::real`]).
    pub allow_side_effects: bool,
    /// Whether to draw a progress bar.
    pub progress: bool,
}

/// The side effects of both chains.
#[derive(Debug, Serialize)]
pub struct Effects {
    /// Of the current chain.
    pub current: Vec<SideEffect>,
    /// Of the candidate.
    pub candidate: Vec<SideEffect>,
}

/// What a replay found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Events replayed.
    pub events: u64,
    /// Seconds it took.
    pub elapsed_seconds: f64,
    /// Events per second, both chains.
    pub events_per_second: f64,
    /// Each installation of the current chains.
    pub current: Vec<InstallationReport>,
    /// Each installation of the candidate chains.
    pub candidate: Vec<InstallationReport>,
    /// Event by event: current first, candidate second.
    pub diff: Diff,
    /// What each would have done outside.
    pub side_effects: Effects,
}

/// Runs a replay.
pub fn run(settings: &ReplaySettings) -> anyhow::Result<Report> {
    let env = |key: &str| std::env::var(key).ok();
    let current = Config::load(&settings.current, &env)?;
    let candidate = Config::load(&settings.candidate, &env)?;
    if let Some(sample) = settings.sample
        && !(sample > 0.0 && sample <= 1.0)
    {
        bail!("--sample must be above 0 and at most 1");
    }
    let team = match (settings.team, &settings.from) {
        (Some(team), _) => Some(team),
        (None, From::File(_)) if current.teams.len() == 1 => Some(current.teams[0].id),
        (None, From::File(path)) => bail!(
            "{}: the config has {} teams: say which with --team",
            path.display(),
            current.teams.len()
        ),
        (None, From::Stored) => None,
    };
    for (config, which) in [(&current, "current"), (&candidate, "candidate")] {
        if let Some(team) = team
            && !config.teams.iter().any(|t| t.id == team)
        {
            bail!(
                "{}: the {which} config has no team {team}",
                config.path.display()
            );
        }
    }
    let live = Backends::connect(&current)?.live()?;
    let runtime = dry_run::runtime(&current)?;
    let scratch = tempfile::tempdir().context("cannot make a scratch folder")?;
    let sandbox = || Sandbox::new(Fakes::default(), settings.allow_side_effects);
    let first = DryRun::load(
        &current,
        &runtime,
        &scratch.path().join("current"),
        live.clone(),
        sandbox(),
    )?;
    let second = DryRun::load(
        &candidate,
        &runtime,
        &scratch.path().join("candidate"),
        live,
        sandbox(),
    )?;
    let mut source = Source::open(settings, &current, team)?;
    let bar = progress(settings.progress, source.total);
    let capacity = current.server.max_instances.max(8);
    let (mut runner_a, mut runner_b) = (ChainRunner::new(capacity), ChainRunner::new(capacity));
    let mut diff = Diff::default();
    let started = Instant::now();
    while let Some((team, events)) = source.next_batch()? {
        let inputs: Vec<(String, String)> = events.iter().map(|e| diff::identity(e)).collect();
        let copy = events.clone();
        let (out_a, out_b) = std::thread::scope(|scope| {
            let a = scope.spawn(|| run_chain(&mut runner_a, &first, team, copy));
            let out_b = run_chain(&mut runner_b, &second, team, events);
            (a.join(), out_b)
        });
        let out_a = out_a.map_err(|_| anyhow::anyhow!("the current chain panicked"))?;
        diff.add_all(&inputs, &diff::fates(&out_a), &diff::fates(&out_b));
        bar.inc(inputs.len() as u64);
    }
    bar.finish_and_clear();
    runner_a.teardown();
    runner_b.teardown();
    let elapsed = started.elapsed().as_secs_f64();
    let installations = |run: &DryRun| -> Vec<InstallationReport> {
        let mut teams: Vec<u64> = run.chains.teams().map(|(t, _)| t).collect();
        teams.sort();
        teams
            .into_iter()
            .flat_map(|t| run.report(t))
            .filter(|r| r.events > 0 || team.is_none())
            .collect()
    };
    let report = Report {
        events: diff.events,
        elapsed_seconds: elapsed,
        events_per_second: diff.events as f64 / elapsed.max(1e-9),
        current: installations(&first),
        candidate: installations(&second),
        side_effects: Effects {
            current: first.effects(),
            candidate: second.effects(),
        },
        diff,
    };
    first.finish();
    second.finish();
    Ok(report)
}

fn run_chain(runner: &mut ChainRunner, run: &DryRun, team: u64, events: Vec<Vec<u8>>) -> Output {
    let mut out = Output::default();
    runner.run(run.chains.of(team), events, &mut out);
    out
}

fn progress(shown: bool, total: Option<u64>) -> indicatif::ProgressBar {
    if !shown {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => indicatif::ProgressBar::new(total),
        None => indicatif::ProgressBar::new_spinner(),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Batches of one team's events in the chain's form.
struct Source {
    kind: SourceKind,
    team: Option<u64>,
    since_ms: i64,
    left: u64,
    sample: Option<f64>,
    /// Events to replay, when known.
    total: Option<u64>,
    pending: Vec<(u64, Vec<u8>)>,
}

enum SourceKind {
    Stored {
        conn: rusqlite::Connection,
        after: i64,
        done: bool,
    },
    File {
        file: crate::event_file::EventFile,
        done: bool,
    },
}

impl Source {
    fn open(settings: &ReplaySettings, config: &Config, team: Option<u64>) -> anyhow::Result<Self> {
        let left = settings.limit.unwrap_or(u64::MAX);
        let since_ms = settings.since_ms.unwrap_or(i64::MIN);
        let (kind, total) = match &settings.from {
            From::Stored => {
                if config.kafka.is_some() {
                    bail!(
                        "{}: with [kafka] the captured events are in the events topic, not the embedded store: replay a file (--from FILE)",
                        config.path.display()
                    );
                }
                let conn = crate::stored::open_existing(config)?;
                let total: i64 = conn.query_row(
                    "SELECT COALESCE(SUM(events), 0) FROM captured
                     WHERE (?1 IS NULL OR team_id = ?1) AND received_ms >= ?2",
                    params![team.map(|t| t as i64), since_ms],
                    |row| row.get(0),
                )?;
                if total == 0 {
                    bail!(
                        "{}: no captured events to replay{} (events are kept before the chain for [retention] captured_hours)",
                        config.server.data_dir.display(),
                        team.map_or(String::new(), |t| format!(" for team {t}"))
                    );
                }
                let total = (total as u64).min(left);
                let total = settings
                    .sample
                    .map_or(total, |p| (total as f64 * p).round() as u64);
                let kind = SourceKind::Stored {
                    conn,
                    after: 0,
                    done: false,
                };
                (kind, Some(total))
            }
            From::File(path) => {
                let kind = SourceKind::File {
                    file: crate::event_file::EventFile::open(path)?,
                    done: false,
                };
                (kind, None)
            }
        };
        Ok(Self {
            kind,
            team,
            since_ms,
            left,
            sample: settings.sample,
            total,
            pending: Vec::new(),
        })
    }

    /// The next batch of one team's events, up to [`BATCH`].
    fn next_batch(&mut self) -> anyhow::Result<Option<(u64, Vec<Vec<u8>>)>> {
        while self.pending.len() < BATCH && self.left > 0 && self.fill()? {}
        let Some(&(team, _)) = self.pending.first() else {
            return Ok(None);
        };
        let same = self
            .pending
            .iter()
            .take(BATCH)
            .take_while(|(t, _)| *t == team)
            .count();
        let batch = self.pending.drain(..same).map(|(_, e)| e).collect();
        Ok(Some((team, batch)))
    }

    /// Reads more events into `pending`; whether there may be more.
    fn fill(&mut self) -> anyhow::Result<bool> {
        let read = match &mut self.kind {
            SourceKind::Stored { done: true, .. } | SourceKind::File { done: true, .. } => {
                return Ok(false);
            }
            SourceKind::Stored { conn, after, done } => {
                let mut stmt = conn.prepare_cached(
                    "SELECT id, team_id, payload FROM captured
                     WHERE id > ?1 AND (?2 IS NULL OR team_id = ?2) AND received_ms >= ?3
                     ORDER BY id LIMIT ?4",
                )?;
                let rows: Vec<(i64, u64, Vec<u8>)> = stmt
                    .query_map(
                        params![*after, self.team.map(|t| t as i64), self.since_ms, PAGE],
                        |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64, row.get(2)?)),
                    )?
                    .collect::<Result<_, _>>()?;
                *done = rows.len() < PAGE as usize;
                let mut events = Vec::new();
                for (id, team, payload) in rows {
                    *after = id;
                    for raw in BatchReader::new(&payload)? {
                        events.push((team, crate::worker::framed(raw?.body())));
                    }
                }
                events
            }
            SourceKind::File { file, done } => {
                let team = self.team.context("a file replay needs a team")?;
                let mut events = Vec::new();
                let path = file.path().to_owned();
                let path = path.display();
                for item in file.by_ref() {
                    let (line, object) =
                        item.map_err(|(line, reason)| anyhow::anyhow!("{path}:{line}: {reason}"))?;
                    let captured = crate::trial::captured(vec![object])
                        .with_context(|| format!("{path}:{line}"))?;
                    let payload = crate::capture::normalize::encode(&captured, team)?;
                    for raw in BatchReader::new(&payload)? {
                        events.push((team, crate::worker::framed(raw?.body())));
                    }
                    if events.len() == BATCH {
                        break;
                    }
                }
                *done = events.len() < BATCH;
                events
            }
        };
        for (team, event) in read {
            if self.left == 0 {
                break;
            }
            if self.sample.is_some_and(|p| !sampled(&event, p)) {
                continue;
            }
            self.left -= 1;
            self.pending.push((team, event));
        }
        Ok(true)
    }
}

/// Whether `event` is among the share `p` of events, by its uuid.
pub fn sampled(event: &[u8], p: f64) -> bool {
    let Ok(raw) = wire::parse_encoded(event) else {
        return false;
    };
    let uuid = raw.uuid();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&uuid[8..16]);
    (u64::from_le_bytes(bytes) as f64 / u64::MAX as f64) < p
}

/// The report as terminal tables.
pub fn render(report: &Report) -> String {
    let mut out = format!(
        "replayed {} events in {:.1} s ({:.0} events/s)\n\n",
        report.events, report.elapsed_seconds, report.events_per_second
    );
    for (title, installations) in [
        ("current", &report.current),
        ("candidate", &report.candidate),
    ] {
        out.push_str(&format!(
            "{title:<32} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}\n",
            "events", "kept", "dropped", "changed", "failed", "p50 ms", "p99 ms", "MiB"
        ));
        for i in installations.iter() {
            let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
            out.push_str(&format!(
                "  {:<30} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8.1}\n",
                i.installation,
                i.events,
                i.kept,
                i.dropped,
                i.changed,
                i.failed,
                ms(i.p50_ms),
                ms(i.p99_ms),
                i.memory_peak_mib
            ));
        }
        out.push('\n');
    }
    out.push_str(&report.diff.render("current", "candidate"));
    for (title, effects) in [
        ("current", &report.side_effects.current),
        ("candidate", &report.side_effects.candidate),
    ] {
        if effects.is_empty() {
            out.push_str(&format!("\nside effects of the {title} chain: none\n"));
            continue;
        }
        out.push_str(&format!(
            "\nside effects of the {title} chain (not sent):\n"
        ));
        for effect in effects {
            out.push_str(&format!(
                "  {:<30} {:<24} {:>8}  e.g. {}\n",
                effect.installation, effect.op, effect.count, effect.example
            ));
        }
    }
    out
}

/// Whether `path` names the stored events rather than a file.
pub fn source(from: &str) -> From {
    match from {
        "stored" => From::Stored,
        file => From::File(Path::new(file).to_owned()),
    }
}

//! `sluice plugin ...`: what plugin authors use on a built component: its reference page, what
//! it is and needs (`check`), a run on sample events, a task or a job (`run`), and a new plugin
//! crate (`new`).

use crate::reference;
use crate::runtime::Plugin;
use crate::trial::{CallReport, EventsReport, Trial, TrialSettings, load};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

/// `sluice plugin ...`.
#[derive(Subcommand)]
pub enum Action {
    /// Print a plugin's reference page (Markdown) from its manifest: hooks, the grants it needs,
    /// its config with types, defaults and choices, its tasks, its failure default.
    Reference {
        /// The plugin's `.wasm` component.
        file: PathBuf,
    },
    /// Load a component as `sluice serve` would and say what it is: contract, hooks, manifest
    /// (config, tasks), the capabilities it imports, its size and what an operator must grant;
    /// or why it cannot load (exit code 1).
    Check {
        /// The plugin's `.wasm` component.
        file: PathBuf,
    },
    /// Run a plugin in the real host on sample events (through its transform, or its exporter
    /// as one batch), or one task, or one job, and print, per event, what it did and the event
    /// as it would be stored (its changes from the input), then what it logged and how long it
    /// took.
    Run(Run),
    /// Write a new plugin crate (outside this repository) that builds and tests at once.
    New(crate::cli::scaffold::New),
}

/// `sluice plugin run`.
#[derive(Args)]
pub struct Run {
    /// The plugin's `.wasm` component.
    file: PathBuf,
    /// Its config, a JSON object (default: the manifest's defaults, or the installation's).
    #[arg(long)]
    config: Option<String>,
    /// Events as sent to `/capture` (JSON lines, or one JSON array), from a file or `-` for
    /// standard input.
    #[arg(long, conflicts_with_all = ["task", "job"])]
    events: Option<PathBuf>,
    /// Send the events to the plugin's exporter as one batch (instead of its transform).
    #[arg(long, requires = "events")]
    export: bool,
    /// Run this task of the plugin once, instead of events.
    #[arg(long, conflicts_with = "job")]
    task: Option<String>,
    /// Run one job of this name, instead of events.
    #[arg(long)]
    job: Option<String>,
    /// The job's payload (JSON text).
    #[arg(long, default_value = "{}", requires = "job")]
    payload: String,
    /// Grant these capabilities (comma-separated or repeated); default: every one no section
    /// configures (and `geoip` when `--with` has it). They run on a scratch data folder, so
    /// nothing real is touched.
    #[arg(long, value_delimiter = ',')]
    grant: Option<Vec<String>>,
    /// A sluice.toml whose `[geoip]` and `[object_stores]` the run uses (real), and whose
    /// installation `--installation` it runs as.
    #[arg(long)]
    with: Option<PathBuf>,
    /// The installation of `--with` (`team-N/id`) whose config, grants and limits to use.
    #[arg(long, requires = "with")]
    installation: Option<String>,
    /// Print JSON (one object) instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `action`.
pub fn run(action: Action) -> anyhow::Result<()> {
    match action {
        Action::Reference { file } => {
            let plugin = load(&file)?;
            print!("{}", reference::markdown(&plugin));
            Ok(())
        }
        Action::Check { file } => {
            let plugin = load(&file)?;
            print!("{}", checked(&plugin, std::fs::metadata(&file)?.len()));
            Ok(())
        }
        Action::Run(run) => run_plugin(run),
        Action::New(new) => crate::cli::scaffold::run(&new),
    }
}

/// What `sluice plugin check` prints of `plugin`, whose file has `size` bytes.
fn checked(plugin: &Plugin, size: u64) -> String {
    let manifest = &plugin.manifest;
    let mut lines = vec![
        format!("{}: loads", plugin.path.display()),
        format!(
            "  plugin     {} {}: {}",
            manifest.name, manifest.version, manifest.description
        ),
        format!("  contract   {}", plugin.contract.label()),
        format!("  hooks      {}", plugin.hooks().join(", ")),
        format!("  size       {size} bytes, sha256 {}", plugin.hash),
    ];
    let mut imports: Vec<String> = plugin
        .imports
        .iter()
        .map(|c| format!("{} ({})", c.name, c.interface))
        .collect();
    imports.sort();
    lines.push(format!("  imports    {}", or_none(&imports)));
    lines.push(format!(
        "  grants     {}",
        if plugin.needs().is_empty() {
            "none needed".to_owned()
        } else {
            format!(
                "an operator must grant: grants = [{}]",
                plugin
                    .needs()
                    .iter()
                    .map(|n| format!("\"{n}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ));
    let config: Vec<String> = manifest
        .config
        .iter()
        .map(|f| {
            let default = match (&f.default, f.required) {
                (Some(value), _) => format!("default {value}"),
                (None, true) => "required".to_owned(),
                (None, false) => "optional".to_owned(),
            };
            let secret = if f.secret { ", secret" } else { "" };
            format!("{} ({}, {default}{secret})", f.key, reference::kind(f))
        })
        .collect();
    lines.push(format!("  config     {}", or_none(&config)));
    let tasks: Vec<String> = manifest
        .tasks
        .iter()
        .map(|t| format!("{} (`{}`)", t.name, t.schedule))
        .collect();
    lines.push(format!("  tasks      {}", or_none(&tasks)));
    lines.join("\n") + "\n"
}

fn or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

fn run_plugin(run: Run) -> anyhow::Result<()> {
    let config = run
        .config
        .as_deref()
        .map(|text| match serde_json::from_str::<Value>(text) {
            Ok(value @ Value::Object(_)) => Ok(value),
            Ok(_) => bail!("--config: must be a JSON object"),
            Err(e) => bail!("--config: not JSON: {e}"),
        })
        .transpose()?;
    let trial = Trial::start(&TrialSettings {
        plugin: run.file.clone(),
        config,
        grants: run.grant.clone(),
        with: run.with.clone(),
        installation: run.installation.clone(),
    })?;
    if let Some(task) = &run.task {
        return print_call(&trial.task(task)?, run.json);
    }
    if let Some(job) = &run.job {
        return print_call(&trial.job(job, &run.payload)?, run.json);
    }
    let Some(source) = &run.events else {
        bail!(
            "say what to run: --events FILE (or - for standard input), --task NAME or --job NAME"
        );
    };
    let events = read_events(source)?;
    let exporter_only = trial.plugin()?.exports_events() && !trial.plugin()?.transforms();
    if run.export || exporter_only {
        return print_call(&trial.export(events)?, run.json);
    }
    let report = trial.events(events)?;
    if run.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", events_text(&report));
    }
    Ok(())
}

/// The events of `source` (a file, or `-`): JSON lines, or one JSON array.
fn read_events(source: &Path) -> anyhow::Result<Vec<Value>> {
    let text = if source == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        text
    } else {
        std::fs::read_to_string(source)
            .with_context(|| format!("cannot read {}", source.display()))?
    };
    if text.trim_start().starts_with('[') {
        return match serde_json::from_str(&text) {
            Ok(Value::Array(events)) => Ok(events),
            _ => bail!("{}: not a JSON array of events", source.display()),
        };
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a JSON event", source.display(), n + 1))
        })
        .collect()
}

/// A report of events as text.
fn events_text(report: &EventsReport) -> String {
    let mut out = String::new();
    for event in &report.events {
        let reason = event
            .reason
            .as_ref()
            .map_or_else(String::new, |r| format!(": {r}"));
        out += &format!(
            "event {} `{}` {}: {}{reason}\n",
            event.index, event.event, event.uuid, event.outcome
        );
        for step in &event.steps {
            let detail = step
                .detail
                .as_ref()
                .map_or_else(String::new, |d| format!(" ({d})"));
            out += &format!("  {}: {}{detail}\n", step.installation, step.outcome);
        }
        for change in &event.changes {
            let shown = |v: &Option<Value>| v.as_ref().map_or("-".to_owned(), Value::to_string);
            let mark = match (&change.before, &change.after) {
                (None, _) => "+",
                (_, None) => "-",
                _ => "~",
            };
            out += &format!(
                "  {mark} {}: {} -> {}\n",
                change.key,
                shown(&change.before),
                shown(&change.after)
            );
        }
    }
    out += &logs_text(&report.logs);
    let stored = report
        .events
        .iter()
        .filter(|e| e.outcome == "stored")
        .count();
    out += &format!(
        "{} events: {stored} stored, {} not; the chain took {:.2} ms\n",
        report.events.len(),
        report.events.len() - stored,
        report.elapsed_ms
    );
    out
}

fn logs_text(logs: &[crate::store::logs::LogLine]) -> String {
    logs.iter()
        .map(|l| format!("log {} {}: {}\n", l.level, l.installation, l.message))
        .collect()
}

fn print_call(report: &CallReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", logs_text(&report.logs));
        match &report.outcome {
            Ok(()) => println!("ok in {:.2} ms", report.elapsed_ms),
            Err(error) => println!("failed in {:.2} ms: {error}", report.elapsed_ms),
        }
    }
    match &report.outcome {
        Ok(()) => Ok(()),
        Err(error) => bail!("the plugin failed: {error}"),
    }
}

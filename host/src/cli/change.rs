//! Changing a chain safely: `sluice shadow`, `sluice rollback`, `sluice versions` and
//! `sluice debug` (failure bundles). The first three ask the running server through its admin
//! API; `debug` works on files.

use super::load;
use crate::admin;
use crate::bundle::{self, Bundle};
use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest a promotion or rollback may take (it reloads).
const DEADLINE: Duration = Duration::from_secs(600);

/// `sluice shadow ...`.
#[derive(Subcommand)]
pub enum Shadow {
    /// Print what the shadow installations did beside the live chains: per team, what each
    /// chain stored, dropped and dead-lettered, the keys the candidate changed, samples, and
    /// the side effects it would have had.
    Report {
        /// The sluice.toml of the running server.
        #[arg(long, short)]
        config: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a shadow installation live (in place of the one it replaces): the config file is
    /// edited and reloaded, without loss.
    Promote {
        /// The sluice.toml of the running server (the file that is edited).
        #[arg(long, short)]
        config: PathBuf,
        /// The shadow, e.g. `team-1/filter-v2`.
        #[arg(long)]
        installation: String,
    },
}

/// `sluice debug ...`.
#[derive(Subcommand)]
pub enum Debug {
    /// List the failure bundles in the data folder, newest first.
    Bundles {
        /// The sluice.toml whose data folder to read.
        #[arg(long, short)]
        config: PathBuf,
        /// Only this installation, e.g. `team-1/geoip`.
        #[arg(long)]
        installation: Option<String>,
    },
    /// Run a failure bundle again, every host call answered from its record, against its own
    /// plugin or a fix (`--plugin`); says whether it still fails. Exit code 1 if it does.
    Replay {
        /// The bundle (a `.json` file under `<data_dir>/bundles`).
        bundle: PathBuf,
        /// Another build of the plugin to run it against.
        #[arg(long)]
        plugin: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `sluice shadow`.
pub fn shadow(action: Shadow) -> anyhow::Result<()> {
    match action {
        Shadow::Report { config, json } => {
            let report = call(&config, "GET", "/admin/v1/shadow", None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", render_shadow(&report)?);
            }
            Ok(())
        }
        Shadow::Promote {
            config,
            installation,
        } => {
            let answer = call(
                &config,
                "POST",
                "/admin/v1/shadow/promote",
                Some(json!({ "installation": installation })),
            )?;
            println!("{}", answer["detail"].as_str().unwrap_or("promoted"));
            println!("{}", answer["changes"]);
            Ok(())
        }
    }
}

/// Runs `sluice rollback`.
pub fn rollback(config: &Path, installation: &str, to: Option<&str>) -> anyhow::Result<()> {
    let answer = call(
        config,
        "POST",
        "/admin/v1/rollback",
        Some(json!({ "installation": installation, "to": to })),
    )?;
    let rollback = &answer["rollback"];
    println!(
        "{installation}: rolled back from {} to {} ({})",
        rollback["from"].as_str().unwrap_or("?"),
        rollback["to"]["sha256"].as_str().unwrap_or("?"),
        rollback["to"]["file"].as_str().unwrap_or("?")
    );
    println!("{}", rollback["changes"]);
    Ok(())
}

/// Runs `sluice versions`.
pub fn versions(config: &Path, installation: &str) -> anyhow::Result<()> {
    let config = load(config)?;
    let conn = crate::stored::open_existing(&config)?;
    for version in crate::versions::list(&conn, installation)? {
        println!("{}", serde_json::to_string(&version)?);
    }
    Ok(())
}

/// Runs `sluice debug`; whether the command succeeded (a replayed bundle that still fails
/// does not).
pub fn debug(action: Debug) -> anyhow::Result<bool> {
    match action {
        Debug::Bundles {
            config,
            installation,
        } => {
            let config = load(&config)?;
            for path in bundle::list(&config.server.data_dir, installation.as_deref())? {
                let bundle = Bundle::read(&path)?;
                println!(
                    "{}",
                    json!({
                        "path": path,
                        "installation": bundle.installation,
                        "created_at_ms": bundle.created_at_ms,
                        "kind": bundle.kind,
                        "failure": bundle.failure,
                        "events": bundle.events.len(),
                        "host_calls": bundle.journal.setup.len() + bundle.journal.call.len(),
                    })
                );
            }
            Ok(true)
        }
        Debug::Replay {
            bundle: path,
            plugin,
            json,
        } => {
            let bundle = Bundle::read(&path)?;
            let rerun = bundle::rerun(&path, &bundle, plugin.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rerun)?);
            } else {
                println!(
                    "bundle: {} failed with {} ({}), {} events, {} host calls recorded",
                    bundle.installation,
                    bundle.kind,
                    bundle.failure,
                    bundle.events.len(),
                    bundle.journal.setup.len() + bundle.journal.call.len()
                );
                let which = if rerun.same_plugin {
                    "the same plugin"
                } else {
                    "another plugin"
                };
                println!("ran against {which}: {}", rerun.plugin.display());
                match &rerun.failure {
                    Some(failure) if rerun.reproduced => {
                        println!("still fails, the same way: {failure}")
                    }
                    Some(failure) => println!("still fails, differently: {failure}"),
                    None => println!("passes: {}", rerun.outcomes.join(", ")),
                }
                if let Some(divergence) = &rerun.divergence {
                    println!("note: the run left the record: {divergence}");
                }
            }
            Ok(rerun.failure.is_none())
        }
    }
}

/// A shadow report as terminal tables.
fn render_shadow(report: &Value) -> anyhow::Result<String> {
    let report: crate::shadow::ShadowReportView = serde_json::from_value(report.clone())
        .context("the server answered a report this command cannot read")?;
    let mut out = format!(
        "shadows: {} ({} sampled rounds skipped)\n",
        report.shadows.join(", "),
        report.skipped_rounds
    );
    for team in &report.teams {
        out.push_str(&format!(
            "\nteam {} (sample {}):\n{}",
            team.team,
            team.sample,
            team.diff.render("live", "shadow")
        ));
    }
    Ok(out)
}

/// Calls the admin API of the server of `config`; its JSON answer, or its error.
fn call(config: &Path, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let config = load(config)?;
    let (url, token) = admin::client_settings(&config)?;
    let client = reqwest::blocking::Client::builder()
        .timeout(DEADLINE)
        .build()?;
    let request = match method {
        "POST" => client
            .post(format!("{url}{path}"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.unwrap_or(json!({})).to_string()),
        _ => client.get(format!("{url}{path}")),
    };
    let response = request.bearer_auth(token).send().with_context(|| {
        format!("no sluice server answers at {url} (is `sluice serve` running?)")
    })?;
    let status = response.status();
    let body: Value = serde_json::from_slice(&response.bytes()?)
        .with_context(|| format!("the server at {url} answered {status} without JSON"))?;
    anyhow::ensure!(
        status.is_success(),
        "{} ({status}, {})",
        body["detail"].as_str().unwrap_or("refused"),
        body["code"].as_str().unwrap_or("error")
    );
    Ok(body)
}

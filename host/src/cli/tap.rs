//! `sluice tap`: what each installation of the running server does with each event, live.

use super::load;
use crate::admin;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

/// What to watch.
#[derive(clap::Args)]
pub(super) struct Tap {
    /// The sluice.toml of the running server (its data folder holds the admin address).
    #[arg(long, short)]
    config: std::path::PathBuf,
    /// Only this team.
    #[arg(long)]
    team: Option<u64>,
    /// Only this installation, e.g. `team-1/geoip`.
    #[arg(long)]
    installation: Option<String>,
    /// One event in N (all of its records across the chain).
    #[arg(long)]
    sample: Option<u64>,
}

/// Prints a JSON line per record until interrupted; reconnects when the server goes away (a
/// restart), and a reload never interrupts it.
pub(super) fn run(tap: &Tap) -> anyhow::Result<()> {
    let config = load(&tap.config)?;
    let mut query = Vec::new();
    if let Some(team) = tap.team {
        query.push(("team", team.to_string()));
    }
    if let Some(installation) = &tap.installation {
        query.push(("installation", installation.clone()));
    }
    if let Some(sample) = tap.sample {
        query.push(("sample", sample.to_string()));
    }
    let client = reqwest::blocking::Client::builder().timeout(None).build()?;
    loop {
        // The address and token are read again: a restarted server may have new ones.
        let (url, token) = admin::client_settings(&config)?;
        match watch(&client, &url, &token, &query, &tap.config) {
            Ok(()) => eprintln!("sluice tap: the server at {url} closed the stream; reconnecting"),
            Err(error) => eprintln!("sluice tap: {error:#}; reconnecting"),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Prints the records of one connection until it ends.
fn watch(
    client: &reqwest::blocking::Client,
    url: &str,
    token: &str,
    query: &[(&str, String)],
    config: &Path,
) -> anyhow::Result<()> {
    let response = client
        .get(format!("{url}/admin/v1/tap"))
        .query(query)
        .bearer_auth(token)
        .send()
        .map_err(|e| anyhow::anyhow!("no server answers at {url} for {}: {e}", config.display()))?;
    anyhow::ensure!(
        response.status().is_success(),
        "the server at {url} refused the tap: {}",
        response.status()
    );
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(response).lines() {
        if let Some(record) = line?.strip_prefix("data: ") {
            writeln!(out, "{record}")?;
            out.flush()?;
        }
    }
    Ok(())
}

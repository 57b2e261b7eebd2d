//! Tests in config (`sluice test`): `[[tests]]` tables, in the sluice.toml or in scenario
//! files, each naming a team's chain (or one installation of it), input events, fakes for the
//! host capabilities, and what must be stored.
//!
//! ```toml
//! [[tests]]
//! name = "the browser is removed"
//! team = 1                      # default: the config's only team
//! installation = "filter"       # default: the whole chain
//! events = [{ event = "$pageview", distinct_id = "u1", properties = { "$browser" = "Chrome" } }]
//! # events_file = "events.jsonl" (relative to the file; gzip, zstd or an export's Parquet too)
//! fakes.geoip."1.2.3.4" = { country_code = "NZ" }
//! fakes.http = [{ url = "https://api.example.com/*", body = "{}" }]
//! fakes.cache = { seen = "3" }
//! [[tests.expect]]
//! event = 1                     # default: every event
//! outcome = "stored"            # or "dropped" / "dead_lettered"
//! reason = "sampled"            # part of the drop or dead-letter reason
//! absent = ["properties.$browser"]
//! present = ["properties.n"]
//! equal = { event = "$pageview", "properties.n" = 1 }
//! ```
//!
//! Each test runs on its own sandboxed services ([`crate::dry_run`]), so tests never see each
//! other's state and nothing leaves them.

use crate::capabilities::sandbox::{Fakes, Live, Sandbox};
use crate::chain::ChainRunner;
use crate::config::{Config, TESTS};
use crate::diff::{self, Fate};
use crate::dry_run::DryRun;
use crate::runtime::Runtime;
use crate::sink::Output;
use crate::tap;
use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::Value;
use sluice_abi::wire::BatchReader;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One `[[tests]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Test {
    name: String,
    #[serde(default)]
    team: Option<u64>,
    #[serde(default)]
    installation: Option<String>,
    #[serde(default)]
    events: Vec<Value>,
    #[serde(default)]
    events_file: Option<PathBuf>,
    #[serde(default)]
    fakes: Fakes,
    #[serde(default)]
    expect: Vec<Expect>,
}

/// One `[[tests.expect]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    #[serde(default)]
    event: Option<usize>,
    #[serde(default)]
    outcome: Option<Outcome>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    present: Vec<String>,
    #[serde(default)]
    absent: Vec<String>,
    #[serde(default)]
    equal: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Stored,
    Dropped,
    DeadLettered,
}

/// A test and where it was written.
struct Found {
    test: Test,
    file: PathBuf,
}

/// What one test found.
pub struct TestResult {
    /// Its name.
    pub name: String,
    /// Where it is written.
    pub file: PathBuf,
    /// What did not hold, one line each; empty when it passed.
    pub failures: Vec<String>,
}

/// Runs the tests of `config` and of `scenarios` (files with `[[tests]]`), printing each
/// result as it comes, like `cargo test`; returns whether all passed.
pub fn run(
    config_path: &Path,
    scenarios: &[PathBuf],
    out: &mut dyn std::io::Write,
) -> anyhow::Result<bool> {
    let config = Config::load(config_path, &|key| std::env::var(key).ok())?;
    let mut found = tests_in(config_path)?;
    for file in scenarios {
        found.extend(tests_in(file)?);
    }
    if found.is_empty() {
        bail!(
            "no tests: add [[tests]] to {} or name scenario files",
            config_path.display()
        );
    }
    let runtime = crate::dry_run::runtime(&config)?;
    let started = Instant::now();
    writeln!(out, "\nrunning {} tests", found.len())?;
    let mut results = Vec::new();
    for Found { test, file } in found {
        let failures = match run_one(&config, &runtime, &test, &file) {
            Ok(failures) => failures,
            Err(error) => vec![format!("could not run: {error:#}")],
        };
        let status = if failures.is_empty() { "ok" } else { "FAILED" };
        writeln!(out, "test {} ... {status}", test.name)?;
        results.push(TestResult {
            name: test.name,
            file,
            failures,
        });
    }
    let failed: Vec<&TestResult> = results.iter().filter(|r| !r.failures.is_empty()).collect();
    if !failed.is_empty() {
        writeln!(out, "\nfailures:")?;
        for result in &failed {
            writeln!(
                out,
                "\n---- {} ({}) ----",
                result.name,
                result.file.display()
            )?;
            for line in &result.failures {
                writeln!(out, "{line}")?;
            }
        }
        writeln!(out, "\nfailures:")?;
        for result in &failed {
            writeln!(out, "    {}", result.name)?;
        }
    }
    writeln!(
        out,
        "\ntest result: {}. {} passed; {} failed; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        results.len() - failed.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    )?;
    Ok(failed.is_empty())
}

/// The tests written in `file`.
fn tests_in(file: &Path) -> anyhow::Result<Vec<Found>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{}: not valid TOML", file.display()))?;
    let Some(tests) = table.get(TESTS) else {
        return Ok(Vec::new());
    };
    let tests: Vec<Test> = serde_path_to_error::deserialize(tests.clone())
        .map_err(|e| anyhow::anyhow!("{}: tests.{}: {}", file.display(), e.path(), e.inner()))?;
    Ok(tests
        .into_iter()
        .map(|test| Found {
            test,
            file: file.to_owned(),
        })
        .collect())
}

/// Runs `test`; what did not hold.
fn run_one(
    config: &Config,
    runtime: &Runtime,
    test: &Test,
    file: &Path,
) -> anyhow::Result<Vec<String>> {
    let team = match test.team {
        Some(team) => team,
        None if config.teams.len() == 1 => config.teams[0].id,
        None => bail!("the config has several teams: say which with `team`"),
    };
    let mut config = config.clone();
    let chain = config
        .teams
        .iter_mut()
        .find(|t| t.id == team)
        .with_context(|| format!("the config has no team {team}"))?;
    if let Some(id) = &test.installation {
        chain.plugins.retain(|p| p.id.to_string() == *id);
        if chain.plugins.is_empty() {
            bail!("team {team} has no installation `{id}`");
        }
    }
    let mut events = test.events.clone();
    if let Some(path) = &test.events_file {
        let path = file.parent().unwrap_or(Path::new(".")).join(path);
        for item in crate::event_file::EventFile::open(&path)? {
            let (_, event) = item
                .map_err(|(line, reason)| anyhow::anyhow!("{}:{line}: {reason}", path.display()))?;
            events.push(event);
        }
    }
    if events.is_empty() {
        bail!("no events: give `events` or `events_file`");
    }
    let inputs = crate::trial::captured(events)?;
    let payload = crate::capture::normalize::encode(&inputs, team)?;
    let framed: Vec<Vec<u8>> = BatchReader::new(&payload)?
        .map(|raw| Ok(crate::worker::framed(raw?.body())))
        .collect::<Result<_, sluice_abi::wire::WireError>>()?;
    let scratch = tempfile::tempdir()?;
    let run = DryRun::load(
        &config,
        runtime,
        scratch.path(),
        Live::default(),
        Sandbox::new(test.fakes.clone(), false),
    )?;
    let mut tap = tap::hub().watch();
    let mut runner = ChainRunner::new(16);
    let mut out = Output::default();
    runner.run(run.chains.of(team), framed, &mut out);
    runner.teardown();
    let mut reasons: BTreeMap<String, String> = BTreeMap::new();
    while let Ok(record) = tap.records.try_recv() {
        if record.outcome == "dropped"
            && let Some(detail) = &record.detail
        {
            reasons.insert(record.uuid.clone(), detail.clone());
        }
    }
    run.finish();
    let fates = diff::fates(&out);
    let mut failures = Vec::new();
    for expect in &test.expect {
        let chosen: Vec<usize> = match expect.event {
            Some(n) if n >= 1 && n <= inputs.len() => vec![n - 1],
            Some(n) => {
                failures.push(format!(
                    "expect.event = {n}: there are {} events",
                    inputs.len()
                ));
                continue;
            }
            None => (0..inputs.len()).collect(),
        };
        for i in chosen {
            let uuid = inputs[i].uuid.to_string();
            let fate = fates.get(&uuid).cloned().unwrap_or(Fate::Dropped);
            let reason = match &fate {
                Fate::DeadLettered(why) => Some(why.clone()),
                Fate::Dropped => reasons.get(&uuid).cloned(),
                Fate::Stored(_) => None,
            };
            check(expect, i + 1, &fate, reason.as_deref(), &mut failures);
        }
    }
    Ok(failures)
}

/// Adds to `failures` what of `expect` does not hold for event `n`, which met `fate` (for
/// `reason`).
fn check(expect: &Expect, n: usize, fate: &Fate, reason: Option<&str>, failures: &mut Vec<String>) {
    let (actual, stored) = match fate {
        Fate::Stored(event) => (Outcome::Stored, serde_json::to_value(event).ok()),
        Fate::Dropped => (Outcome::Dropped, None),
        Fate::DeadLettered(_) => (Outcome::DeadLettered, None),
    };
    let name = |o: Outcome| match o {
        Outcome::Stored => "stored",
        Outcome::Dropped => "dropped",
        Outcome::DeadLettered => "dead_lettered",
    };
    let wanted = expect.outcome.unwrap_or(Outcome::Stored);
    let why = reason.map_or(String::new(), |r| format!(" ({r})"));
    if wanted != actual {
        failures.push(format!(
            "event {n}: outcome\n  - expected: {}\n  + actual:   {}{why}",
            name(wanted),
            name(actual)
        ));
        return;
    }
    if let Some(part) = &expect.reason
        && !reason.is_some_and(|r| r.contains(part.as_str()))
    {
        failures.push(format!(
            "event {n}: reason\n  - expected: …{part}…\n  + actual:   {}",
            reason.unwrap_or("(none)")
        ));
    }
    let Some(stored) = stored else {
        return;
    };
    let before = failures.len();
    for key in &expect.present {
        if lookup(&stored, key).is_none() {
            failures.push(format!(
                "event {n}: {key}\n  - expected: present\n  + actual:   absent"
            ));
        }
    }
    for key in &expect.absent {
        if let Some(value) = lookup(&stored, key) {
            failures.push(format!(
                "event {n}: {key}\n  - expected: absent\n  + actual:   {value}"
            ));
        }
    }
    for (key, want) in &expect.equal {
        let got = lookup(&stored, key);
        if got != Some(want) {
            failures.push(format!(
                "event {n}: {key}\n  - expected: {want}\n  + actual:   {}",
                got.map_or("(absent)".to_owned(), Value::to_string)
            ));
        }
    }
    if failures.len() > before {
        failures.push(format!("  stored: {stored}"));
    }
}

/// The value at `key` of a stored event: `event`, `ip`, `properties.x` (`x` as a whole key,
/// else a dotted path), `$set.x`...
fn lookup<'a>(stored: &'a Value, key: &str) -> Option<&'a Value> {
    let (top, rest) = key.split_once('.').unwrap_or((key, ""));
    let value = stored.get(top).filter(|v| !v.is_null())?;
    if rest.is_empty() {
        return Some(value);
    }
    value
        .get(rest)
        .or_else(|| rest.split('.').try_fold(value, |v, part| v.get(part)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_found_whole_then_by_path() {
        let stored = json!({"event": "e", "ip": null, "properties": {"a.b": 1, "c": {"d": 2}}});
        assert_eq!(lookup(&stored, "event"), Some(&json!("e")));
        assert_eq!(lookup(&stored, "ip"), None);
        assert_eq!(lookup(&stored, "properties.a.b"), Some(&json!(1)));
        assert_eq!(lookup(&stored, "properties.c.d"), Some(&json!(2)));
        assert_eq!(lookup(&stored, "properties.x"), None);
    }
}

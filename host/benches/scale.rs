//! Memory and start-up with many installations: `cargo bench -p sluice --bench scale`
//! (plugins built first: `plugins/build.sh target/plugins`).
//!
//! For each size, a fresh process serves N teams whose chain is [downsample, geoip] (2N
//! installations), with downsampling percentages from a few shared values (typical) or all
//! different (worst case: no two downsample installations can share an instance). It reports the
//! time from start to listening, the resident memory (RSS) once listening, and the RSS after one
//! batch of 10 events to every team, which brings instances to life up to `max_instances`.

#![allow(clippy::unwrap_used)]

use serde_json::json;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

const SIZES: [usize; 3] = [500, 5_000, 10_000];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--teams") {
        let teams = args[i + 1].parse().unwrap();
        let distinct = args.iter().any(|a| a == "--distinct");
        run(teams, distinct);
        return;
    }
    println!(
        "sluice scale benchmark: N teams x [downsample, geoip], 2 workers, max_instances 1000\n"
    );
    for distinct in [false, true] {
        for teams in SIZES {
            let status = Command::new(std::env::current_exe().unwrap())
                .args(["--teams", &teams.to_string()])
                .args(distinct.then_some("--distinct"))
                .status()
                .unwrap();
            assert!(status.success());
        }
    }
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

fn plugin(name: &str) -> PathBuf {
    let dir = std::env::var_os("SLUICE_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run plugins/build.sh",
        path.display()
    );
    path
}

fn run(teams: usize, distinct: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("city.mmdb");
    sluice_demo_geoip::write(&db, "Linköping").unwrap();
    let mut text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nworkers = 2\nmax_instances = 1000\n\
         [geoip]\ndatabase = \"{}\"\n",
        db.display()
    );
    for team in 1..=teams {
        let percentage = if distinct {
            10.0 + team as f64 / 1000.0
        } else {
            [10.0, 25.0, 50.0, 75.0][team % 4]
        };
        write!(
            text,
            "[[teams]]\nid = {team}\ntoken = \"phc_team{team}\"\n\
             [[teams.plugins]]\nid = \"downsample\"\nplugin = \"{}\"\nconfig = {{ percentage = {percentage} }}\n\
             [[teams.plugins]]\nid = \"geoip\"\nplugin = \"{}\"\ngrants = [\"geoip\"]\n",
            plugin("downsample").display(),
            plugin("geoip").display()
        )
        .unwrap();
    }
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    let config = sluice::config::Config::load(&path, &|_| None).unwrap();
    let before = rss_mib();

    let started = Instant::now();
    let served = common::Served::start(config);
    let addr = served.addr;
    let startup = started.elapsed();
    let listening = rss_mib();

    let client = reqwest::blocking::Client::new();
    let sent = Instant::now();
    for team in 1..=teams {
        let batch: Vec<_> = (0..10)
            .map(|i| json!({"event": "$pageview", "distinct_id": format!("u{i}"), "properties": {"$ip": "89.160.20.115"}}))
            .collect();
        let response = client
            .post(format!("http://{addr}/batch"))
            .header("content-type", "application/json")
            .body(json!({"api_key": format!("phc_team{team}"), "batch": batch}).to_string())
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    loop {
        let body = client
            .get(format!("http://{addr}/ready"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
        if ready["queue_depth"] == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let processed = sent.elapsed();
    let after = rss_mib();
    println!(
        "  {:>6} installations ({} downsample configs): start {:>6.2} s | RSS listening {:>6.0} MiB, after traffic to every team {:>6.0} MiB (process before start {:.0} MiB; traffic took {:.1} s)",
        teams * 2,
        if distinct { "all distinct" } else { "4 shared" },
        startup.as_secs_f64(),
        listening,
        after,
        before,
        processed.as_secs_f64()
    );
    served.stop();
}

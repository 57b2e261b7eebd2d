//! Export benchmarks, against a real S3-compatible server (`s3s-fs`, built by `tests/run.sh`):
//!
//! Run: `plugins/build.sh target/plugins && SLUICE_S3S_FS=~/.cache/sluice/tools/s3s-fs-0.14.1/bin/s3s-fs cargo bench -p sluice --bench exports`
//!
//! (1) Throughput: 200,000 events are stored first; then the S3 export is started and the time
//!     until it has exported them all gives events/s, for JSON lines + gzip and for Parquet.
//! (2) Lag: capture runs at a steady 20,000 events/s for 20 s with the S3 export (JSON lines +
//!     gzip, batches of up to 10,000 events or 1 s) running; the export lag is sampled every
//!     second, and the CPU time the export runner's thread used meanwhile is read from
//!     `/proc/self/task/*/schedstat` (exact nanoseconds on CPU).
//!
//! `cargo bench -p sluice --bench exports -- lag` runs only section (2) (`throughput`: only (1)).

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use sluice::config::Config;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;
#[path = "common/events.rs"]
mod events;
#[path = "common/load.rs"]
mod load;
use events::properties;
// The e2e tests' S3 server, of which the bench needs only part.
#[allow(dead_code)]
#[path = "../../tests/e2e/process.rs"]
mod process;
#[allow(dead_code)]
#[path = "../../tests/e2e/s3.rs"]
mod s3;

const STORED: usize = 200_000;

fn main() {
    sluice::telemetry::init_logging();
    sluice::telemetry::prometheus();
    let plugins = load::plugin_dir(&["s3-export.wasm"]);
    println!(
        "sluice export benchmark ({} cores), S3 export plugin -> s3s-fs on loopback\n",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let runs = |section: &str| chosen.is_empty() || chosen.iter().any(|c| c == section);
    if runs("throughput") {
        println!(
            "(1) export throughput: {STORED} stored events, batches of up to 10000 events / 4 MiB"
        );
        for format in ["jsonl", "parquet"] {
            throughput(&plugins, format);
        }
    }
    if runs("lag") {
        println!("\n(2) export lag while capture runs at a steady 20000 events/s for 20 s");
        lag(&plugins);
    }
}

/// CPU time used so far by this process's threads whose name starts with `prefix`, in seconds.
fn thread_cpu_seconds(prefix: &str) -> f64 {
    let mut nanos = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let schedstat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        nanos += schedstat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    nanos as f64 / 1e9
}

/// A config of one team, with the S3 export writing `format` if `export` is set.
fn config(dir: &Path, s3: &s3::S3Server, plugins: &Path, format: Option<&str>) -> Config {
    let mut text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nworkers = 2\n{}\
         [[teams]]\nid = 1\ntoken = \"phc_bench\"\n",
        s3.store_config("lake")
    );
    if let Some(format) = format {
        text += &format!(
            "[[teams.plugins]]\nid = \"s3\"\nplugin = \"{}\"\nconfig = {{ store = \"lake\", format = \"{format}\" }}\n\
             grants = [\"object_store\"]\nobject_store = {{ stores = [\"lake\"] }}\nmemory_mb = 512\n\
             export = {{ max_events = 10000, max_bytes = 4194304, max_age_seconds = 1 }}\n",
            plugins.join("s3-export.wasm").display()
        );
    }
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path, &|_| None).unwrap()
}

/// Gzip bodies of 100 events each, numbered from `start`.
fn bodies(start: usize, requests: usize) -> Vec<Vec<u8>> {
    (0..requests)
        .map(|r| {
            let batch: Vec<Value> = (0..100)
                .map(|i| {
                    let n = start + r * 100 + i;
                    json!({"event": "$pageview", "distinct_id": format!("user-{}", n % 10_000), "properties": properties(n)})
                })
                .collect();
            events::gzip_batch(batch)
        })
        .collect()
}

fn status(data_dir: &Path) -> Value {
    let mut state = sluice::export::state::sqlite::SqliteExportState::open(data_dir).unwrap();
    let mut source =
        sluice::export::source::SqliteSource::open(data_dir, Default::default()).unwrap();
    let statuses = sluice::export::state::status(&mut state, &mut source).unwrap();
    serde_json::to_value(&statuses[0]).unwrap()
}

fn throughput(plugins: &Path, format: &str) {
    let s3 = s3::S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    // Store the events first, without the export.
    let served = common::Served::start(config(dir.path(), &s3, plugins, None));
    load::send(&served, bodies(0, STORED / 100), 16, None);
    let data_dir = dir.path().join("data");
    let conn = sluice::store::open(&data_dir).unwrap();
    while sluice::ingest::sqlite::depth(&conn).unwrap() > 0 {
        std::thread::sleep(Duration::from_millis(20));
    }
    served.stop();
    // Then export them all.
    let started = Instant::now();
    let served = common::Served::start(config(dir.path(), &s3, plugins, Some(format)));
    loop {
        let status = status(&data_dir);
        if status["exported_events"] == STORED {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let seconds = started.elapsed().as_secs_f64();
    served.stop();
    let objects = s3.objects();
    let bytes: usize = objects.values().map(Vec::len).sum();
    println!(
        "  {format:<8} {:>9.0} events/s  ({STORED} events in {seconds:.2} s, {} objects, {:.1} MB written, {:.0} bytes/event)",
        STORED as f64 / seconds,
        objects.len(),
        bytes as f64 / 1e6,
        bytes as f64 / STORED as f64
    );
}

fn lag(plugins: &Path) {
    let s3 = s3::S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let served = common::Served::start(config(dir.path(), &s3, plugins, Some("jsonl")));
    let data_dir = dir.path().join("data");
    const SECONDS: usize = 20;
    const RATE: usize = 200; // requests of 100 events per second
    let sampler = {
        let data_dir = data_dir.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            for _ in 0..SECONDS {
                std::thread::sleep(Duration::from_secs(1));
                let status = status(&data_dir);
                samples.push((
                    status["lag_events"].as_u64().unwrap(),
                    status["lag_seconds"].as_f64().unwrap(),
                ));
            }
            samples
        })
    };
    let bodies = bodies(0, SECONDS * RATE);
    let (export_cpu, process_cpu) = (thread_cpu_seconds("sluice-export"), thread_cpu_seconds(""));
    let started = Instant::now();
    load::send(&served, bodies, 32, Some(RATE));
    let sent_in = started.elapsed().as_secs_f64();
    let export_cpu = thread_cpu_seconds("sluice-export") - export_cpu;
    let process_cpu = thread_cpu_seconds("") - process_cpu;
    let samples = sampler.join().unwrap();
    let mut seconds: Vec<f64> = samples.iter().map(|s| s.1).collect();
    seconds.sort_by(f64::total_cmp);
    let max_events = samples.iter().map(|s| s.0).max().unwrap_or(0);
    let caught_up = Instant::now();
    loop {
        let status = status(&data_dir);
        if status["lag_events"] == 0 && status["exported_events"] == SECONDS * RATE * 100 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "  capture {:.0} events/s for {sent_in:.1} s; export lag sampled each second: median {:.2} s, max {:.2} s, at most {max_events} events behind",
        (SECONDS * RATE * 100) as f64 / sent_in,
        seconds[seconds.len() / 2],
        seconds[seconds.len() - 1],
    );
    println!(
        "  after capture stopped, the export caught up in {:.2} s",
        caught_up.elapsed().as_secs_f64()
    );
    println!(
        "  export runner CPU while capture ran: {export_cpu:.2} s in {sent_in:.1} s ({:.0}% of one core; the whole process, load generator included: {process_cpu:.1} s)",
        100.0 * export_cpu / sent_in
    );
    served.stop();
}

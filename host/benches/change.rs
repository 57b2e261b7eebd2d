//! What changing a chain safely and moving history cost, printed as a table.
//!
//! Run: `plugins/build.sh target/plugins && cargo bench -p sluice --bench change [-- s r d i]`.
//!
//! (s) Shadow overhead on the live path: HTTP `/batch` of 100 gzip events → durable queue →
//!     chain [downsample 50%, property filter] → SQLite, end to end in this process, without a
//!     shadow, then with a shadow filter that replaces the live one on every event, then on a
//!     10% sample; events/s processed and stored, same run.
//! (r) `sluice replay` of 1,000,000 captured events (kept before the chain) of the peer's
//!     `$pageview`s through that chain and a candidate that also removes `$browser`: events/s,
//!     seconds, and the peak memory of the process.
//! (d) Reading files of events alone: 1,000,000 `$pageview`s (`SLUICE_BENCH_IMPORT_EVENTS`) as
//!     gzip JSON lines and as Parquet in the S3 export's shape, events/s and MB/s.
//! (i) `sluice import` of the gzip file through the chain of (s) into SQLite, beside the
//!     end-to-end capture rate of (s) without a shadow, same run; and the time 10,000,000
//!     events take at that rate.

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

/// Events replayed in (r).
const REPLAYED: usize = 1_000_000;

fn main() {
    sluice::telemetry::init_logging();
    sluice::telemetry::prometheus();
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let runs = |section: &str| chosen.is_empty() || chosen.iter().any(|c| c == section);
    let plugins = load::plugin_dir(&["downsample.wasm", "property-filter.wasm"]);
    println!(
        "sluice change benchmark ({} cores)",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    if runs("s") {
        println!("\n(s) shadow overhead on the live path, end to end");
        let without = end_to_end(&plugins, None);
        for sample in [1.0, 0.1] {
            let with = end_to_end(&plugins, Some(sample));
            println!(
                "  shadow on {:>3.0}% of events: {:.1}% of the events/s without",
                sample * 100.0,
                with / without * 100.0
            );
        }
    }
    if runs("r") {
        println!("\n(r) replay of {REPLAYED} captured events through the chain and a candidate");
        replay(&plugins);
    }
    if runs("d") || runs("i") {
        let count: usize = std::env::var("SLUICE_BENCH_IMPORT_EVENTS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1_000_000);
        let dir = tempfile::tempdir().unwrap();
        let (gzip, parquet) = history_files(dir.path(), count);
        if runs("d") {
            println!("\n(d) reading {count} events from files alone");
            decode("gzip JSON lines", &gzip, count);
            decode("Parquet (the export's shape)", &parquet, count);
        }
        if runs("i") {
            println!("\n(i) sluice import of {count} events, and capture end to end, same chain");
            let capture = end_to_end(&plugins, None);
            let import = import(&plugins, &gzip, count);
            println!(
                "  import: {:.0}% of the capture rate; 10,000,000 events take {:.0} s at its rate",
                import / capture * 100.0,
                10_000_000.0 / import
            );
        }
    }
}

/// `count` `$pageview`s in `dir` as a gzip JSON lines file and as Parquet in the S3 export's
/// shape.
fn history_files(dir: &Path, count: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    let event = |n: usize| {
        json!({"uuid": format!("01900000-0000-7000-8000-{n:012}"), "event": "$pageview",
               "distinct_id": format!("user-{}", n % 10_000), "timestamp": "2026-01-01T00:00:00.000Z",
               "properties": properties(n)})
    };
    let gzip = dir.join("history.jsonl.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&gzip).unwrap(),
        flate2::Compression::fast(),
    );
    for n in 0..count {
        std::io::Write::write_all(&mut gz, format!("{}\n", event(n)).as_bytes()).unwrap();
    }
    gz.finish().unwrap();
    let parquet = dir.join("history.parquet");
    let schema = std::sync::Arc::new(
        parquet::schema::parser::parse_message_type(
            "message event { REQUIRED BYTE_ARRAY uuid (STRING); REQUIRED BYTE_ARRAY event (STRING);
             REQUIRED BYTE_ARRAY properties (JSON); REQUIRED BYTE_ARRAY distinct_id (STRING);
             REQUIRED INT64 timestamp (TIMESTAMP(MILLIS, true)); }",
        )
        .unwrap(),
    );
    let mut writer = parquet::file::writer::SerializedFileWriter::new(
        std::fs::File::create(&parquet).unwrap(),
        schema,
        Default::default(),
    )
    .unwrap();
    for start in (0..count).step_by(100_000) {
        let rows: Vec<usize> = (start..(start + 100_000).min(count)).collect();
        let text = |f: &dyn Fn(usize) -> String| -> Vec<ByteArray> {
            rows.iter()
                .map(|n| ByteArray::from(f(*n).into_bytes()))
                .collect()
        };
        let columns = [
            text(&|n| event(n)["uuid"].as_str().unwrap().to_owned()),
            text(&|_| "$pageview".to_owned()),
            text(&|n| properties(n).to_string()),
            text(&|n| format!("user-{}", n % 10_000)),
        ];
        let mut group = writer.next_row_group().unwrap();
        let mut column = 0;
        while let Some(mut out) = group.next_column().unwrap() {
            if column < 4 {
                out.typed::<ByteArrayType>()
                    .write_batch(&columns[column], None, None)
                    .unwrap();
            } else {
                let times = vec![1_767_225_600_000i64; rows.len()];
                out.typed::<Int64Type>()
                    .write_batch(&times, None, None)
                    .unwrap();
            }
            out.close().unwrap();
            column += 1;
        }
        group.close().unwrap();
    }
    writer.close().unwrap();
    (gzip, parquet)
}

/// Reads `file` through `sluice import`'s reader alone.
fn decode(label: &str, file: &Path, count: usize) {
    let started = Instant::now();
    let read = sluice::event_file::EventFile::open(file)
        .unwrap()
        .filter(Result::is_ok)
        .count();
    assert_eq!(read, count);
    let seconds = started.elapsed().as_secs_f64();
    let mb = std::fs::metadata(file).unwrap().len() as f64 / 1e6;
    println!(
        "  {label:<30} {:>10.0} events/s  {:>7.1} MB/s of file ({mb:.0} MB)",
        count as f64 / seconds,
        mb / seconds
    );
}

/// `sluice import` of `file` (its own code) through the chain of (s); events/s.
fn import(plugins: &Path, file: &Path, count: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!("[server]\ndata_dir = \"data\"\n{}", chain(plugins)),
    )
    .unwrap();
    let started = Instant::now();
    let progress = sluice::import::run(
        &sluice::import::ImportSettings {
            config,
            team: 1,
            files: vec![file.to_owned()],
            skip_chain: false,
            rate: None,
            strict: false,
            rejects: None,
        },
        &mut |_| {},
    )
    .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(progress.read, count as u64);
    let rate = count as f64 / seconds;
    println!(
        "  import, through the chain:   {rate:>10.0} events/s  ({seconds:.1} s, {} stored)",
        progress.stored
    );
    rate
}

/// The chain of both sections: downsampling, then a filter of `secret`.
fn chain(plugins: &Path) -> String {
    format!(
        "[[teams]]\nid = 1\ntoken = \"phc_bench\"\n\
         [[teams.plugins]]\nid = \"downsample\"\nplugin = \"{}\"\nconfig = {{ percentage = 50 }}\n\
         [[teams.plugins]]\nid = \"filter\"\nplugin = \"{}\"\nconfig = {{ properties = \"secret\" }}\n",
        plugins.join("downsample.wasm").display(),
        plugins.join("property-filter.wasm").display()
    )
}

/// The end-to-end run, with a shadow of the filter on `shadow` of the events if set; events/s
/// processed and stored.
fn end_to_end(plugins: &Path, shadow: Option<f64>) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nworkers = 2\n{}",
        chain(plugins)
    );
    if let Some(sample) = shadow {
        text.push_str(&format!(
            "[[teams.plugins]]\nid = \"filter-v2\"\nplugin = \"{}\"\nconfig = {{ properties = \"secret,$browser\" }}\n\
             shadow = true\nsample = {sample}\nreplaces = \"filter\"\n",
            plugins.join("property-filter.wasm").display()
        ));
    }
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path, &|_| None).unwrap();
    let data_dir = config.server.data_dir.clone();
    let served = common::Served::start(config);
    const REQUESTS: usize = 2_000;
    let bodies: Vec<Vec<u8>> = (0..REQUESTS).map(|r| body(r % 20)).collect();
    let started = Instant::now();
    load::send(&served, bodies, 32, None);
    let conn = sluice::store::open(&data_dir).unwrap();
    while sluice::ingest::sqlite::depth(&conn).unwrap() > 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = (REQUESTS * 100) as f64 / elapsed;
    let label = shadow.map_or("no shadow".to_owned(), |s| {
        format!("shadow filter, sample {s}")
    });
    println!("  {label:<28} {rate:>10.0} events/s processed and stored ({elapsed:.2} s)");
    served.stop();
    rate
}

/// Request body `b` of the end-to-end run: 100 `$pageview`s, gzip.
fn body(b: usize) -> Vec<u8> {
    let batch: Vec<Value> = (0..100)
        .map(|i| json!({"event": "$pageview", "distinct_id": format!("user-{b}-{i}"), "properties": properties(i)}))
        .collect();
    events::gzip_batch(batch)
}

/// (r): captured events written straight into a data folder, then `sluice replay`'s own code.
fn replay(plugins: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let current = dir.path().join("sluice.toml");
    std::fs::write(
        &current,
        format!("[server]\ndata_dir = \"data\"\n{}", chain(plugins)),
    )
    .unwrap();
    let candidate = dir.path().join("candidate.toml");
    std::fs::write(
        &candidate,
        format!(
            "[server]\ndata_dir = \"data\"\n{}",
            chain(plugins).replace(
                "properties = \"secret\"",
                "properties = \"secret,$browser\""
            )
        ),
    )
    .unwrap();
    let written = Instant::now();
    let mut conn = sluice::store::open(&dir.path().join("data")).unwrap();
    let tx = conn.transaction().unwrap();
    for b in 0..REPLAYED / 100 {
        let events: Vec<Value> = (0..100)
            .map(|i| json!({"event": "$pageview", "distinct_id": format!("user-{}", (b * 100 + i) % 10_000), "properties": properties(i)}))
            .collect();
        let captured = sluice::trial::captured(events).unwrap();
        let payload = sluice::capture::normalize::encode(&captured, 1).unwrap();
        tx.execute(
            "INSERT INTO captured (team_id, events, received_ms, payload) VALUES (1, 100, ?1, ?2)",
            rusqlite::params![sluice::store::now_ms(), payload],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    println!(
        "  {REPLAYED} captured events written in {:.1} s",
        written.elapsed().as_secs_f64()
    );
    let report = sluice::replay::run(&sluice::replay::ReplaySettings {
        current,
        candidate,
        team: None,
        since_ms: None,
        limit: None,
        sample: None,
        from: sluice::replay::From::Stored,
        allow_side_effects: false,
        progress: false,
    })
    .unwrap();
    assert_eq!(report.events, REPLAYED as u64);
    let removed = report.diff.keys["properties.$browser"].removed;
    println!(
        "  replayed {} events in {:.1} s: {:.0} events/s through both chains ($browser removed from {removed})",
        report.events, report.elapsed_seconds, report.events_per_second
    );
    println!("  peak memory of the process: {} MiB", peak_rss_mib());
}

/// The process's peak resident memory, in MiB (Linux).
fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

//! Shared state on Redis, printed as a table.
//!
//! Run: `plugins/build.sh target/plugins && cargo bench -p sluice --bench shared` (needs
//! Debian's `redis-server`, or `SLUICE_REDIS_SERVER`; `SLUICE_PLUGIN_DIR` points at the built
//! plugins).
//!
//! (a) `cache.get` and `cache.increment` called by a plugin (the prober test plugin, one call
//!     per event through the wasm boundary), on the memory backend and on Redis on loopback,
//!     without persistence (a cache's Redis) and with an append-only file fsynced on every write
//!     (what `storage` needs): calls/s and latency percentiles per call.
//! (b) Dispatch across two scheduler nodes (real `sluice serve` processes sharing one Redis):
//!     how late after its tick a 1-second task starts, and how long after it is queued a job
//!     starts, on whichever node runs it.

#![allow(clippy::unwrap_used)]

#[path = "../../tests/e2e/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;
use serde_json::{Value, json};
use sluice::capabilities::cache::{Backend, MemoryBackend};
use sluice::capabilities::{Context, Grants, Services};
use sluice::redis::cache::RedisCache;
use sluice::redis::{Redis, RedisSettings};
use sluice::runtime::{Instance, InstanceSettings, Runtime, RuntimeSettings};
use sluice_abi::wire::{BatchWriter, EventFields};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CALLS: usize = 20_000;

fn main() {
    let plugins = PathBuf::from(
        std::env::var("SLUICE_PLUGIN_DIR").unwrap_or_else(|_| "../target/plugins".into()),
    );
    let redis = RedisServer::start();
    println!("sluice shared-state benchmark ({} cores)", cores());
    println!("\n(a) cache calls from a plugin, {CALLS} calls each, one per event");
    let volatile = RedisServer::start_volatile();
    let connect = |server: &RedisServer| {
        Redis::connect(&RedisSettings {
            url: server.url.clone(),
            prefix: "bench".into(),
            pool_size: 4,
        })
        .unwrap()
    };
    for (backend, cache) in [
        (
            "memory",
            Arc::new(MemoryBackend::default()) as Arc<dyn Backend>,
        ),
        ("redis", Arc::new(RedisCache::new(connect(&volatile)))),
        ("redis+fsync", Arc::new(RedisCache::new(connect(&redis)))),
    ] {
        for action in ["cache_count", "cache_get"] {
            cache_calls(&plugins, backend, cache.clone(), action);
        }
    }
    println!("\n(b) dispatch across 2 scheduler nodes on one Redis");
    dispatch(&plugins, &redis);
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Times `CALLS` transforms of the prober doing `action` with `cache` behind it.
fn cache_calls(plugins: &std::path::Path, backend: &str, cache: Arc<dyn Backend>, action: &str) {
    let runtime = Runtime::new(&RuntimeSettings {
        max_instances: 2,
        max_memory_bytes: 64 << 20,
        cache_dir: None,
    })
    .unwrap();
    let plugin = runtime.load(&plugins.join("prober.wasm")).unwrap();
    let config = json!({"action": action});
    let resolved = plugin
        .manifest
        .resolve_config(config.as_object().unwrap())
        .unwrap();
    let services = Arc::new(Services {
        logs: None,
        storage: None,
        cache,
        geoip: None,
        object_stores: None,
        jobs: None,
        recordings: None,
        sandbox: None,
    });
    let settings = InstanceSettings {
        context: Arc::new(Context {
            installation: Arc::from("bench/prober"),
            team_id: 1,
            plugin: Arc::from("prober"),
            grants: Grants::of(&plugin.needs()),
            timeout: Duration::from_secs(10),
            services,
            bundles: None,
        }),
        config: Value::Object(resolved),
        memory_bytes: 64 << 20,
    };
    let mut instance = Instance::start(&plugin, &settings).unwrap();
    let mut batch = BatchWriter::default();
    batch
        .push(&EventFields {
            uuid: [1; 16],
            team_id: 1,
            timestamp_ms: 0,
            event: "probe",
            distinct_id: "u",
            ip: None,
            properties: "{}",
            set: None,
            set_once: None,
        })
        .unwrap();
    let batch = batch.finish();
    let mut latencies = Vec::with_capacity(CALLS);
    let started = Instant::now();
    for _ in 0..CALLS {
        let call = Instant::now();
        instance.transform(&batch).unwrap();
        latencies.push(call.elapsed());
    }
    let total = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "  {backend:<12} {action:<12} {:>9.0} calls/s   p50 {:>7.1} µs   p99 {:>7.1} µs",
        CALLS as f64 / total.as_secs_f64(),
        at(0.5),
        at(0.99)
    );
    instance.teardown();
}

/// A `sluice serve` node on `redis` with the ticker, killed when dropped.
struct Node {
    child: Child,
    dir: tempfile::TempDir,
}

impl Node {
    fn start(plugins: &std::path::Path, redis: &RedisServer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nworkers = 1\n\
             [redis]\nurl = \"{}\"\n[[teams]]\nid = 1\ntoken = \"phc_one\"\n[[teams.plugins]]\n\
             id = \"p\"\nplugin = \"{}\"\ngrants = [\"log\", \"jobs\"]\n\
             schedule = {{ tasks = {{ tick = \"* * * * * *\" }} }}\n",
            redis.url,
            plugins.join("ticker.wasm").display()
        );
        std::fs::write(dir.path().join("sluice.toml"), config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--config"])
            .arg(dir.path().join("sluice.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, dir }
    }

    /// Runs a `sluice` command on this node's config; its output lines as JSON.
    fn cli(&self, args: &[&str]) -> Vec<Value> {
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .arg("--config")
            .arg(self.dir.path().join("sluice.toml"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ms(value: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

/// Prints percentiles of `values` (ms).
fn report(what: &str, mut values: Vec<i64>) {
    values.sort();
    let at = |q: f64| values[((values.len() - 1) as f64 * q) as usize];
    println!(
        "  {what:<34} n={:<4} p50 {:>5} ms   p99 {:>5} ms   max {:>5} ms",
        values.len(),
        at(0.5),
        at(0.99),
        values[values.len() - 1]
    );
}

fn dispatch(plugins: &std::path::Path, redis: &RedisServer) {
    let nodes = [Node::start(plugins, redis), Node::start(plugins, redis)];
    // Ticks: how late each run started after its tick, over 30 ticks.
    let deadline = Instant::now() + Duration::from_secs(120);
    let runs = loop {
        let runs: Vec<Value> = nodes[0]
            .cli(&["tasks", "--installation", "team-1/p", "--limit", "1000"])
            .into_iter()
            .filter(|run| run["outcome"] == "ok")
            .collect();
        if runs.len() >= 30 {
            break runs;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes ran {} ticks",
            runs.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    report(
        "task start after its tick",
        runs.iter()
            .map(|run| ms(&run["started_at"]) - ms(&run["scheduled_at"]))
            .collect(),
    );
    // Jobs: queued through one node, due now; how long until one of the nodes starts each.
    let mut queued = Vec::new();
    for n in 0..30 {
        let job = nodes[n % 2].cli(&[
            "jobs",
            "enqueue",
            "--installation",
            "team-1/p",
            "--name",
            "echo",
            "--payload",
            "{}",
        ]);
        let job = &job[0];
        queued.push((job["id"].as_str().unwrap().to_owned(), ms(&job["run_at"])));
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let started = loop {
        let lines: Vec<(String, i64)> = nodes
            .iter()
            .flat_map(|node| node.cli(&["logs", "--installation", "team-1/p", "--limit", "10000"]))
            .filter_map(|line| {
                let message = line["message"].as_str()?.to_owned();
                message
                    .starts_with("echo ")
                    .then(|| (message, ms(&line["time"])))
            })
            .collect();
        if lines.len() >= queued.len() {
            break lines;
        }
        assert!(Instant::now() < deadline, "{} of 30 jobs ran", lines.len());
        std::thread::sleep(Duration::from_millis(500));
    };
    report(
        "job start after it was queued",
        queued
            .iter()
            .filter_map(|(id, due)| {
                started
                    .iter()
                    .find(|(message, _)| message.starts_with(&format!("echo {id} ")))
                    .map(|(_, at)| at - due)
            })
            .collect(),
    );
}

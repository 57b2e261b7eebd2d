//! sluice benchmarks, printed as a table.
//!
//! Run: `plugins/build.sh target/plugins && cargo bench -p sluice --bench pipeline [-- a b d]`
//! (only the sections named, if any; `SLUICE_PLUGIN_DIR` points elsewhere if the plugins were
//! built into another folder; `SLUICE_PERF_MAP=1` lets `perf` name the plugins' functions).
//!
//! (a) Events through a transform: the same plugin code natively (the SDK's batch path, no
//!     boundary) and as wasm in the host, for a plugin that only keeps (the boundary alone) and
//!     for downsampling; plus the full chain runner with an empty chain and the downsampling chain.
//! (b) End to end: HTTP `/batch` of 100 gzip events → durable queue → downsampling chain → SQLite,
//!     with the load generator in the same process on the same cores.
//! (d) The chain [downsample, geoip]: wasm in the chain runner vs the same plugin logic natively
//!     (the same MaxMind reader answering both), and what one GeoIP lookup costs at each layer.
//! (c) The capture decoder alone: plain, gzip and base64 (form beacon) batches of 100 events
//!     through decoding and normalization, in MB/s of request body and events/s.
//! (e) Failure isolation: the time to finish a batch of 1,000 events with one poison event
//!     (a panic, a stack overflow) against the same batch without it.
//! (g) (b') on the embedded queue, on a Kafka ingest (librdkafka's mock cluster in this
//!     process) into SQLite, and on Kafka into ClickHouse (capture -> broker -> worker -> stored
//!     topic -> loader -> Debian's clickhouse-server), in the same run, and their ratios; plus
//!     the worker's own cost per event of consuming the ingest topic and committing.
//! (j) Plugins written in JavaScript/TypeScript with `sdk/js` (built into `SLUICE_JS_PLUGIN_DIR`
//!     by tests/run.sh) against the same logic in Rust, one instance each: time per event and the
//!     instance's memory; and the peer's chain `downsample50+filter` with the filter in Rust,
//!     then in TypeScript, beside the peer's figure.
//! (f) The chains of the peer model of PostHog's plugin server (`../shared/peers/posthog-vm`),
//!     on the same events, beside the peer's own figures from the same run: sluice's wasm chain
//!     runner plus what the sink does before storing, against node `vm` contexts with JSON in
//!     and out. Set `SLUICE_PEER_BENCH` to the peer's `bench.js` (default: the one in
//!     `../shared`) and `NODE_PATH` to where `npm install maxmind@4` put it.

#![allow(clippy::unwrap_used)]

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use sluice::capabilities::geoip::Database;
use sluice::capabilities::{Context, Grants, Services};
use sluice::chain::{ChainRunner, Installation, InstanceKey};
use sluice::config::{BreakerConfig, Config, OnError};
use sluice::runtime::{Instance, InstanceSettings, Runtime, RuntimeSettings};
use sluice::sink::Output;
use sluice_abi::wire::{BatchWriter, EventFields};
use sluice_guest_passthrough::Passthrough;
use sluice_plugin_downsample::{Downsample, hash_fraction};
use sluice_plugin_geoip::GeoIp;
use sluice_sdk::testing::Harness;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../../tests/e2e/clickhouse_server.rs"]
mod clickhouse_server;

const EVENTS: usize = 100_000;
const BATCH: usize = 1_000;
/// Distinct users in the main event set: ten events per user, a modest session.
const USERS: usize = 10_000;

fn main() {
    sluice::telemetry::init_logging();
    sluice::telemetry::prometheus();
    // `cargo bench -p sluice --bench pipeline -- d f` runs only those sections.
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let runs = |section: &str| chosen.is_empty() || chosen.iter().any(|c| c == section);
    let plugins = load::plugin_dir(&["downsample.wasm", "passthrough.wasm"]);
    println!(
        "sluice pipeline benchmark ({} cores)",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    let events = encoded_events(EVENTS, USERS);
    let runtime = Runtime::new(&RuntimeSettings {
        max_instances: 8,
        max_memory_bytes: 256 << 20,
        cache_dir: None,
    })
    .unwrap();
    if runs("a") {
        let avg = events.iter().map(Vec::len).sum::<usize>() / events.len();
        println!(
            "\n(a) transform throughput, {EVENTS} events of ~{avg} bytes from {USERS} users, in batches of {BATCH}"
        );
        transforms(&runtime, &plugins, &events);
        println!(
            "\n(a') worst case for downsampling: every event from a different user (nothing to remember)"
        );
        worst_case(&runtime, &plugins, &encoded_events(EVENTS, EVENTS));
    }
    if runs("b") {
        println!(
            "\n(b) end to end: HTTP /batch of 100 gzip events -> queue -> downsample 50% -> SQLite"
        );
        end_to_end(&plugins, false, &Backend::Embedded);
        println!(
            "\n(b') end to end: HTTP /batch of 100 gzip events with $ip -> queue -> [downsample 50%, geoip] -> SQLite"
        );
        end_to_end(&plugins, true, &Backend::Embedded);
    }
    if runs("g") {
        kafka_beside_embedded(&plugins);
    }
    if runs("d") {
        println!(
            "\n(d) chain [downsample 50%, geoip], every event with a known IP (89.160.20.112/28 test database)"
        );
        geoip_chain(&runtime, &plugins, &events);
    }
    if runs("t") {
        println!(
            "\n(t) the live tap: chain [downsample 50%, geoip] with nobody tapping, then with one watcher reading every record"
        );
        tap_cost(&runtime, &plugins, &events);
    }
    if runs("c") {
        println!("\n(c) capture decoder: batches of 100 events, decode + normalize + encode");
        decoder();
    }
    if runs("e") {
        println!(
            "\n(e) failure isolation: a batch of {BATCH} events through the adversary plugin, with and without one poison event"
        );
        isolation(&runtime, &plugins);
    }
    if runs("f") {
        println!(
            "\n(f) the peer's chains on the peer's events ({EVENTS} events, {USERS} users, 2 IPs in the test network), events/s in"
        );
        peer_chains(&runtime, &plugins);
    }
    if runs("j") {
        println!(
            "\n(j) JavaScript/TypeScript plugins (sdk/js, componentize-js) against the same logic in Rust and the peer, on the peer's events ({EVENTS}, batches of {BATCH})"
        );
        js_plugins(&runtime, &plugins);
    }
}

fn isolation(runtime: &Runtime, plugins: &std::path::Path) {
    let batch = |poison: Option<usize>| -> Vec<Vec<u8>> {
        (0..BATCH)
            .map(|i| {
                let name = if poison == Some(i) {
                    "attack"
                } else {
                    "normal"
                };
                bench_event(i, name, &format!("user-{i}"), None)
            })
            .collect()
    };
    let clean = batch(None);
    for (mode, at) in [("panic", 500), ("panic", 0), ("recurse", 500)] {
        let poisoned = batch(Some(at));
        let (plugin, settings) = instance(
            runtime,
            plugins,
            "adversary",
            json!({"mode": mode}),
            &Services::detached(),
        );
        let chain = [Arc::new(Installation::new(
            InstanceKey::unique(),
            plugin,
            settings,
            OnError::Skip,
            BreakerConfig::default(),
        ))];
        let mut runner = ChainRunner::new(4);
        let mut time = |events: &Vec<Vec<u8>>| {
            let mut best = f64::INFINITY;
            for _ in 0..20 {
                let started = Instant::now();
                let mut out = Output::default();
                runner.run(&chain, events.clone(), &mut out);
                best = best.min(started.elapsed().as_secs_f64() * 1e3);
                assert_eq!(out.events.len(), BATCH);
            }
            best
        };
        let clean_ms = time(&clean);
        let poisoned_ms = time(&poisoned);
        println!(
            "  {mode:<8} at event {at:<4} clean {clean_ms:>7.2} ms  with one poison {poisoned_ms:>7.2} ms  ({:.1}x)",
            poisoned_ms / clean_ms
        );
        runner.teardown();
    }
}

mod common;
#[path = "common/events.rs"]
mod events;
#[path = "common/load.rs"]
mod load;
use events::properties;

/// The host's location record as the SDK's, to answer the native plugin from the same reader.
fn sdk_location(
    l: sluice::bindings::sluice::plugin::geoip::Location,
) -> sluice_sdk::host::geoip::Location {
    sluice_sdk::host::geoip::Location {
        city_name: l.city_name,
        country_name: l.country_name,
        country_code: l.country_code,
        continent_name: l.continent_name,
        continent_code: l.continent_code,
        postal_code: l.postal_code,
        latitude: l.latitude,
        longitude: l.longitude,
        accuracy_radius: l.accuracy_radius,
        time_zone: l.time_zone,
        subdivisions: l
            .subdivisions
            .into_iter()
            .map(|s| sluice_sdk::host::geoip::Subdivision {
                code: s.code,
                name: s.name,
            })
            .collect(),
    }
}

/// Writes the test GeoIP database to `path`; returns it and services that answer from it.
fn geoip_services(path: &std::path::Path) -> (Arc<Database>, Arc<Services>) {
    sluice_demo_geoip::write(path, "Linköping").unwrap();
    let database = Database::open(path).unwrap();
    let services = Arc::new(Services {
        logs: None,
        storage: None,
        cache: Arc::new(sluice::capabilities::cache::MemoryBackend::default()),
        geoip: Some(database.clone()),
        object_stores: None,
        jobs: None,
        recordings: None,
        sandbox: None,
    });
    (database, services)
}

fn geoip_chain(runtime: &Runtime, plugins: &std::path::Path, events: &[Vec<u8>]) {
    let dir = tempfile::tempdir().unwrap();
    let (database, services) = geoip_services(&dir.path().join("city.mmdb"));
    let all = batches(events);

    let lookup_ns = measure(|| {
        for i in 0..EVENTS {
            let ip = ["89.160.20.115", "89.160.20.120"][i % 2];
            std::hint::black_box(database.locate(ip).unwrap());
        }
    });
    report("host lookup alone (maxminddb City decode)", lookup_ns);

    // Native: downsample, then geoip on the kept events, through the SDK batch path.
    let mut down = Harness::<Downsample>::new(json!({"percentage": 50})).unwrap();
    let kept: Vec<Vec<u8>> = events
        .iter()
        .filter(|e| {
            let raw = sluice_abi::wire::parse_encoded(e).unwrap();
            hash_fraction(raw.fields().unwrap().distinct_id) <= 0.5
        })
        .cloned()
        .collect();
    let kept_batches = batches(&kept);
    let share = kept.len() as f64 / EVENTS as f64;
    let native_down_ns = measure_native(down.plugin(), &all);
    let located = database.clone();
    let mut geo = Harness::<GeoIp>::new(json!({}))
        .unwrap()
        .with_geoip(move |ip| located.locate(ip).ok().flatten().map(sdk_location));
    let native_geo_ns = measure_native(geo.plugin(), &kept_batches) / share;
    report("native geoip (SDK batch path + same reader)", native_geo_ns);

    let wasm_geoip = |config: Value| {
        let (plugin, settings) = instance(runtime, plugins, "geoip", config, &services);
        let mut wasm_geo = Instance::start(&plugin, &settings).unwrap();
        let ns = measure(|| {
            for batch in &kept_batches {
                wasm_geo.transform(batch).unwrap();
            }
        }) / share;
        wasm_geo.teardown();
        ns
    };
    let wasm_geo_ns = wasm_geoip(json!({}));
    report("wasm geoip (one call per batch)", wasm_geo_ns);
    report(
        "wasm geoip, cache_size = 0 (every event looked up)",
        wasm_geoip(json!({"cache_size": 0})),
    );

    let chain = downsample_geoip(runtime, plugins, &services);
    let mut runner = ChainRunner::new(16);
    let mut stored = 0;
    let chain_ns = measure(|| {
        stored = 0;
        for chunk in events.chunks(BATCH) {
            let mut out = Output::default();
            runner.run(&chain, chunk.to_vec(), &mut out);
            stored += out.events.len();
        }
    });
    assert_eq!(stored, kept.len(), "the chain kept what downsampling keeps");
    report("chain runner, [downsample, geoip] in wasm", chain_ns);
    let native_chain_ns = native_down_ns + native_geo_ns * share;
    report(
        "native logic, downsample + geoip on the kept half",
        native_chain_ns,
    );
    let mut native_runner = ChainRunner::new(1);
    let native_host_ns = measure(|| {
        for chunk in events.chunks(BATCH) {
            let kept = native_step(down.plugin(), &mut native_runner, &chain[0], chunk.to_vec());
            std::hint::black_box(native_step(
                geo.plugin(),
                &mut native_runner,
                &chain[1],
                kept,
            ));
        }
    });
    report(
        "the same natively, with the chain's host work",
        native_host_ns,
    );
    println!();
    println!(
        "  wasm chain / native logic with the host's work: {:.2}x ({:.0} vs {:.0} events/s in); / plugin logic alone: {:.2}x",
        native_host_ns / chain_ns,
        1e9 / chain_ns,
        1e9 / native_host_ns,
        native_chain_ns / chain_ns,
    );
    println!(
        "  one GeoIP lookup: {lookup_ns:.0} ns in the host; through the boundary (wasm - native geoip plugin): {:.0} ns",
        wasm_geo_ns - native_geo_ns
    );
    runner.teardown();
}

fn tap_cost(runtime: &Runtime, plugins: &std::path::Path, events: &[Vec<u8>]) {
    let dir = tempfile::tempdir().unwrap();
    let (_, services) = geoip_services(&dir.path().join("city.mmdb"));
    let chain = downsample_geoip(runtime, plugins, &services);
    let mut runner = ChainRunner::new(16);
    let mut run_chain = || {
        measure(|| {
            for chunk in events.chunks(BATCH) {
                let mut out = Output::default();
                runner.run(&chain, chunk.to_vec(), &mut out);
                std::hint::black_box(out);
            }
        })
    };
    let untapped_ns = run_chain();
    report("nobody tapping", untapped_ns);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (tapped_ns, (records, missed)) = std::thread::scope(|scope| {
        let mut watcher = sluice::tap::hub().watch();
        let stop = &stop;
        let reader = scope.spawn(move || {
            use tokio::sync::broadcast::error::TryRecvError;
            let (mut records, mut missed) = (0u64, 0u64);
            loop {
                match watcher.records.try_recv() {
                    Ok(_) => records += 1,
                    Err(TryRecvError::Lagged(n)) => missed += n,
                    Err(_) if stop.load(std::sync::atomic::Ordering::SeqCst) => break,
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
            (records, missed)
        });
        let ns = run_chain();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (ns, reader.join().unwrap())
    });
    report("one watcher reading every record", tapped_ns);
    println!(
        "  tap cost: {:+.1}% per event ({:.0} ns); the watcher read {records} records and missed {missed} (a watcher that falls behind misses records; the chain never waits)",
        (tapped_ns / untapped_ns - 1.0) * 100.0,
        tapped_ns - untapped_ns
    );
    runner.teardown();
}

fn decoder() {
    use base64::Engine;
    use sluice::capture::{Input, RequestContext, decode, encode, normalize};
    let batch: Vec<Value> = (0..100)
        .map(|i| json!({"event": "$pageview", "distinct_id": format!("user-{i}"), "properties": properties(i)}))
        .collect();
    let plain = json!({"api_key": "phc_bench", "batch": batch})
        .to_string()
        .into_bytes();
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&plain);
    let form = serde_urlencoded::to_string([("data", b64.as_str())])
        .unwrap()
        .into_bytes();
    let ctx = RequestContext {
        now_ms: 1_700_000_000_000,
        ..RequestContext::default()
    };
    let form_type = Some("application/x-www-form-urlencoded");
    let cases = [
        (
            "plain JSON",
            Input {
                body: &plain,
                ..Input::default()
            },
        ),
        (
            "gzip",
            Input {
                body: &gz,
                query_compression: Some("gzip"),
                ..Input::default()
            },
        ),
        (
            "base64 form (beacon)",
            Input {
                body: &form,
                query_compression: Some("base64"),
                content_type: form_type,
                ..Input::default()
            },
        ),
    ];
    const ROUNDS: usize = 2_000;
    for (name, input) in cases {
        let seconds = (0..3)
            .map(|_| {
                let started = Instant::now();
                for _ in 0..ROUNDS {
                    let decoded = decode(&input, 20 << 20).unwrap();
                    let events = normalize(decoded.payload, &ctx).unwrap().events;
                    std::hint::black_box(encode(&events, 1).unwrap());
                }
                started.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        let rate = |bytes: usize| (bytes * ROUNDS) as f64 / seconds / 1e6;
        println!(
            "  {name:<22} {:>6} B/request {:>7.1} MB/s of body {:>7.1} MB/s of JSON {:>9.0} events/s",
            input.body.len(),
            rate(input.body.len()),
            rate(plain.len()),
            (100 * ROUNDS) as f64 / seconds
        );
    }
}

fn encoded_events(count: usize, users: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            bench_event(
                i,
                "$pageview",
                &format!("user-{}", i % users),
                Some("89.160.20.115"),
            )
        })
        .collect()
}

/// Event `i` of a set: `name` by `distinct_id` from `ip`, with [`properties`]`(i)`.
fn bench_event(i: usize, name: &str, distinct_id: &str, ip: Option<&str>) -> Vec<u8> {
    let properties = properties(i).to_string();
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&(i as u64).to_le_bytes());
    EventFields {
        uuid,
        team_id: 1,
        timestamp_ms: 1_700_000_000_000 + i as i64,
        event: name,
        distinct_id,
        ip,
        properties: &properties,
        set: None,
        set_once: None,
    }
    .encode()
    .unwrap()
}

fn batches(events: &[Vec<u8>]) -> Vec<Vec<u8>> {
    events
        .chunks(BATCH)
        .map(|chunk| {
            let mut batch = BatchWriter::default();
            chunk.iter().for_each(|e| batch.push_encoded(e));
            batch.finish()
        })
        .collect()
}

/// `events` through a plugin natively (the SDK batch path), then through what the chain runner
/// does with its outcomes for `installation`; returns the events that continue.
fn native_step<T: sluice_sdk::Transform>(
    plugin: &mut T,
    runner: &mut ChainRunner,
    installation: &Installation,
    events: Vec<Vec<u8>>,
) -> Vec<Vec<u8>> {
    let mut batch = BatchWriter::with_capacity(events.iter().map(Vec::len).sum());
    events.iter().for_each(|e| batch.push_encoded(e));
    let outcomes = sluice_sdk::process_batch(plugin, &batch.finish()).unwrap();
    runner
        .continue_with(installation, events, &outcomes, &mut Output::default())
        .unwrap()
}

/// [`measure`] of a plugin's logic natively over `batches`, through the SDK batch path.
fn measure_native<T: sluice_sdk::Transform>(plugin: &mut T, batches: &[Vec<u8>]) -> f64 {
    measure(|| {
        for batch in batches {
            sluice_sdk::process_batch(plugin, batch).unwrap();
        }
    })
}

/// Best of three runs of `f` over all events; returns nanoseconds per event.
fn measure(mut f: impl FnMut()) -> f64 {
    f(); // warm-up: first calls, lazy instances, caches
    (0..3)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_nanos() as f64 / EVENTS as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn report(name: &str, ns: f64) {
    println!(
        "  {name:<52} {:>10.0} events/s {ns:>9.1} ns/event",
        1e9 / ns
    );
}

fn instance(
    runtime: &Runtime,
    plugins: &std::path::Path,
    name: &str,
    config: Value,
    services: &Arc<Services>,
) -> (Arc<sluice::runtime::Plugin>, InstanceSettings) {
    let plugin = runtime.load(&plugins.join(format!("{name}.wasm"))).unwrap();
    let resolved = plugin
        .manifest
        .resolve_config(config.as_object().unwrap())
        .unwrap();
    let settings = InstanceSettings {
        context: Arc::new(Context {
            installation: Arc::from(format!("bench/{name}")),
            team_id: 1,
            plugin: Arc::from(name),
            grants: Grants::of(&plugin.needs()),
            timeout: Duration::from_secs(10),
            services: services.clone(),
            bundles: None,
        }),
        config: Value::Object(resolved),
        memory_bytes: 256 << 20,
    };
    (plugin, settings)
}

fn transforms(runtime: &Runtime, plugins: &std::path::Path, events: &[Vec<u8>]) {
    let batches = batches(events);

    let mut native_pass = Harness::<Passthrough>::new(json!({})).unwrap();
    let native_pass_ns = measure_native(native_pass.plugin(), &batches);
    report("native keep-all (SDK batch decode/encode)", native_pass_ns);

    let (plugin, settings) = instance(
        runtime,
        plugins,
        "passthrough",
        json!({}),
        &Services::detached(),
    );
    let mut wasm_pass = Instance::start(&plugin, &settings).unwrap();
    let wasm_pass_ns = measure(|| {
        for batch in &batches {
            wasm_pass.transform(batch).unwrap();
        }
    });
    report("wasm keep-all (one call per batch)", wasm_pass_ns);

    let ids: Vec<String> = (0..EVENTS).map(|i| format!("user-{}", i % USERS)).collect();
    let hash_ns = measure(|| {
        for id in &ids {
            std::hint::black_box(hash_fraction(id) <= 0.5);
        }
    });
    report("native sha256 decision alone (nothing remembered)", hash_ns);

    let (native_down_ns, wasm_down_ns, plugin, settings) =
        downsample_pair(runtime, plugins, &batches);

    let mut runner = ChainRunner::new(16);
    let empty_ns = measure(|| {
        for chunk in events.chunks(BATCH) {
            let mut out = Output::default();
            runner.run(&[], chunk.to_vec(), &mut out);
        }
    });
    report("chain runner, empty chain", empty_ns);

    let installation = Arc::new(Installation::new(
        InstanceKey::unique(),
        plugin,
        settings,
        OnError::Skip,
        BreakerConfig::default(),
    ));
    let chain = [installation];
    let chain_ns = measure(|| {
        for chunk in events.chunks(BATCH) {
            let mut out = Output::default();
            runner.run(&chain, chunk.to_vec(), &mut out);
        }
    });
    report("chain runner, [downsample] in wasm", chain_ns);

    println!();
    println!(
        "  boundary overhead per event (wasm keep-all - native keep-all): {:.1} ns (target <= 150)",
        wasm_pass_ns - native_pass_ns
    );
    println!(
        "  wasm downsample / native downsample speed: {:.2}x (target >= 0.6)",
        native_down_ns / wasm_down_ns
    );
    println!(
        "  wasm chain / native logic speed (incl. host bookkeeping): {:.2}x",
        (native_down_ns + empty_ns) / chain_ns
    );
    wasm_pass.teardown();
}

fn worst_case(runtime: &Runtime, plugins: &std::path::Path, events: &[Vec<u8>]) {
    let (native_ns, wasm_ns, _, _) = downsample_pair(runtime, plugins, &batches(events));
    println!(
        "  wasm downsample / native downsample speed: {:.2}x",
        native_ns / wasm_ns
    );
}

/// Downsampling at 50% over `batches`, natively through the SDK batch path and as wasm with one
/// call per batch; reports both and returns their ns/event, with the wasm plugin and settings.
fn downsample_pair(
    runtime: &Runtime,
    plugins: &std::path::Path,
    batches: &[Vec<u8>],
) -> (f64, f64, Arc<sluice::runtime::Plugin>, InstanceSettings) {
    let config = json!({"percentage": 50});
    let mut native = Harness::<Downsample>::new(config.clone()).unwrap();
    let native_ns = measure_native(native.plugin(), batches);
    report("native downsample (SDK batch path)", native_ns);
    let (plugin, settings) = instance(
        runtime,
        plugins,
        "downsample",
        config,
        &Services::detached(),
    );
    let mut wasm = Instance::start(&plugin, &settings).unwrap();
    let wasm_ns = measure(|| {
        for batch in batches {
            wasm.transform(batch).unwrap();
        }
    });
    report("wasm downsample (one call per batch)", wasm_ns);
    wasm.teardown();
    (native_ns, wasm_ns, plugin, settings)
}

/// Where an end-to-end run stores.
enum Backend<'a> {
    /// The embedded queue and SQLite.
    Embedded,
    /// A Kafka ingest at `brokers` into SQLite; done once `expect` events are stored.
    Kafka { brokers: &'a str, expect: i64 },
    /// A Kafka ingest at `brokers` into `server`; done once `expect` events are loaded.
    ClickHouse {
        brokers: &'a str,
        expect: i64,
        server: &'a clickhouse_server::ClickHouseServer,
    },
}

/// Capture to storage through the real server, with the downsampling chain, or with
/// `geoip` the [downsample, geoip] chain on events that carry a `$ip` of the test network.
/// The end-to-end run of (b), (b') and (g), on `backend`. Returns the events stored and the
/// events/s processed and stored.
fn end_to_end(plugins: &std::path::Path, geoip: bool, backend: &Backend) -> (i64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let kafka_section = match backend {
        Backend::Embedded => String::new(),
        Backend::Kafka { brokers, .. } => {
            format!("[kafka]\nbrokers = \"{brokers}\"\nsession_timeout_ms = 6000\n")
        }
        Backend::ClickHouse {
            brokers, server, ..
        } => format!(
            "[kafka]\nbrokers = \"{brokers}\"\nsession_timeout_ms = 6000\n{}",
            server.section()
        ),
    };
    let mut text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nworkers = 2\n{kafka_section}\
         [[teams]]\nid = 1\ntoken = \"phc_bench\"\n\
         [[teams.plugins]]\nid = \"downsample\"\nplugin = \"{}\"\nconfig = {{ percentage = 50 }}\n",
        plugins.join("downsample.wasm").display()
    );
    if geoip {
        let db = dir.path().join("city.mmdb");
        sluice_demo_geoip::write(&db, "Linköping").unwrap();
        text = format!(
            "[geoip]\ndatabase = \"{}\"\n{text}[[teams.plugins]]\nid = \"geoip\"\nplugin = \"{}\"\ngrants = [\"geoip\"]\n",
            db.display(),
            plugins.join("geoip.wasm").display()
        );
    }
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path, &|_| None).unwrap();
    let data_dir = config.server.data_dir.clone();

    let served = common::Served::start(config);
    const REQUESTS: usize = 2_000;
    const CONCURRENCY: usize = 32;
    let bodies: Vec<Vec<u8>> =
        (0..20)
            .map(|b| {
                let batch: Vec<Value> = (0..100)
                    .map(|i| {
                        let mut properties = properties(i);
                        if geoip {
                            properties["$ip"] = json!(["89.160.20.115", "89.160.20.120"][i % 2]);
                        }
                        json!({"event": "$pageview", "distinct_id": format!("user-{b}-{i}"), "properties": properties})
                    })
                    .collect();
                events::gzip_batch(batch)
            })
            .collect();
    let started = Instant::now();
    load::send(
        &served,
        (0..REQUESTS)
            .map(|r| bodies[r % bodies.len()].clone())
            .collect(),
        CONCURRENCY,
        None,
    );
    let accepted = started.elapsed();
    let conn = sluice::store::open(&data_dir).unwrap();
    let count = |located: bool| -> i64 {
        let filter = if located {
            " WHERE properties LIKE '%Linköping%'"
        } else {
            ""
        };
        match backend {
            Backend::ClickHouse { server, .. } => server
                .query(&format!("SELECT count() FROM sluice.events FINAL{filter}"))
                .trim()
                .parse()
                .unwrap(),
            _ => conn
                .query_row(&format!("SELECT COUNT(*) FROM events{filter}"), [], |r| {
                    r.get(0)
                })
                .unwrap(),
        }
    };
    match backend {
        Backend::Embedded => {
            while sluice::ingest::sqlite::depth(&conn).unwrap() > 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Backend::Kafka { expect, .. } | Backend::ClickHouse { expect, .. } => {
            // Counting is not free (ClickHouse shares the cores): a few times a second.
            while count(false) < *expect {
                assert!(
                    started.elapsed() < Duration::from_secs(600),
                    "the worker stalled"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let stored_in = started.elapsed();
    let events = (REQUESTS * 100) as f64;
    let stored = count(false);
    if geoip {
        assert_eq!(count(true), stored, "every stored event was located");
    }
    println!(
        "  {REQUESTS} requests x 100 events, {CONCURRENCY} concurrent clients in the same process"
    );
    println!(
        "  accepted (durable, 200 sent):  {:>10.0} events/s  ({:.2} s)",
        events / accepted.as_secs_f64(),
        accepted.as_secs_f64()
    );
    println!(
        "  processed and stored:          {:>10.0} events/s  ({:.2} s, {stored} kept of {events})",
        events / stored_in.as_secs_f64(),
        stored_in.as_secs_f64()
    );
    served.stop();
    (stored, events / stored_in.as_secs_f64())
}

/// (g): the end-to-end run of (b') on the embedded queue, on a Kafka-protocol broker into
/// SQLite and on the broker into ClickHouse (librdkafka's mock cluster in this process, 4
/// partitions per topic), in the same run; then the worker's cost of consuming and committing.
fn kafka_beside_embedded(plugins: &std::path::Path) {
    println!(
        "\n(g) end to end, [downsample 50%, geoip]: the embedded queue -> SQLite; capture -> Kafka -> worker -> SQLite; capture -> Kafka -> worker -> Kafka -> loader -> ClickHouse"
    );
    println!("  embedded queue:");
    let (stored, embedded) = end_to_end(plugins, true, &Backend::Embedded);
    let cluster = mock_cluster();
    let brokers = cluster.bootstrap_servers();
    println!(
        "  Kafka ingest into SQLite (mock cluster on loopback, acks=all, one message per event):"
    );
    let (_, kafka) = end_to_end(
        plugins,
        true,
        &Backend::Kafka {
            brokers: &brokers,
            expect: stored,
        },
    );
    // Another ingest topic for this run: the one above holds the first run's events.
    let second = mock_cluster();
    let server = clickhouse_server::ClickHouseServer::start();
    println!(
        "  Kafka ingest, stored topics, loader into ClickHouse {}:",
        server.query("SELECT version()").trim()
    );
    let (_, clickhouse) = end_to_end(
        plugins,
        true,
        &Backend::ClickHouse {
            brokers: &second.bootstrap_servers(),
            expect: stored,
            server: &server,
        },
    );
    println!(
        "  Kafka -> SQLite / embedded:     {:.2} ({kafka:.0} vs {embedded:.0} events/s)",
        kafka / embedded
    );
    println!(
        "  Kafka -> ClickHouse / embedded: {:.2} ({clickhouse:.0} vs {embedded:.0} events/s)",
        clickhouse / embedded
    );
    consume_and_commit(&second.bootstrap_servers());
}

/// librdkafka's mock cluster in this process, with sluice's topics of 4 partitions each.
fn mock_cluster()
-> rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    for topic in [
        "sluice_ingest",
        "sluice_events",
        "sluice_recordings",
        "sluice_dead_letters",
        "sluice_plugin_logs",
    ] {
        cluster.create_topic(topic, 4, 1).unwrap();
    }
    cluster
}

/// The worker's own cost per event of the Kafka ingest: polling rounds of up to 1,000 events
/// from the ingest topic (here holding the ClickHouse run's 200,000 events, read again by a new
/// group) and committing each round, with no chain and no sink.
fn consume_and_commit(brokers: &str) {
    use sluice::ingest::Ingest;
    let settings = sluice::ingest::kafka::KafkaSettings {
        brokers: brokers.to_owned(),
        topic: "sluice_ingest".into(),
        group: "bench-consume".into(),
        max_event_bytes: 1_000_000,
        delivery_timeout: Duration::from_secs(20),
        session_timeout: Duration::from_secs(6),
    };
    let mut ingest = sluice::ingest::kafka::KafkaIngest::new(&settings).unwrap();
    let (mut events, mut rounds) = (0u64, 0u64);
    // Joining the group takes a rebalance: wait for the first round, then time the rest.
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        if let Some(polled) = ingest.poll(1_000, Duration::from_millis(500)).unwrap() {
            break polled;
        }
        assert!(Instant::now() < deadline, "the ingest topic gave nothing");
    };
    ingest.ack(first.receipt).unwrap();
    let started = Instant::now();
    let mut finished = started;
    while let Some(polled) = ingest.poll(1_000, Duration::from_secs(2)).unwrap() {
        events += polled.events;
        rounds += 1;
        ingest.ack(polled.receipt).unwrap();
        finished = Instant::now();
    }
    let elapsed = (finished - started).as_secs_f64();
    println!(
        "  worker consume + commit alone: {events} events in {rounds} rounds, {:.0} events/s, {:.2} µs per event",
        events as f64 / elapsed,
        elapsed * 1e6 / events as f64
    );
}

/// A chain of wasm installations, each `(plugin name, config)`, answered by `services`.
/// The chain [downsample 50%, geoip] on `services`.
fn downsample_geoip(
    runtime: &Runtime,
    plugins: &std::path::Path,
    services: &Arc<Services>,
) -> Vec<Arc<Installation>> {
    chain_of(
        runtime,
        plugins,
        &[
            ("downsample", json!({"percentage": 50})),
            ("geoip", json!({})),
        ],
        services,
    )
}

fn chain_of(
    runtime: &Runtime,
    plugins: &std::path::Path,
    installations: &[(&str, Value)],
    services: &Arc<Services>,
) -> Vec<Arc<Installation>> {
    installations
        .iter()
        .map(|(name, config)| {
            let (plugin, settings) = instance(runtime, plugins, name, config.clone(), services);
            Arc::new(Installation::new(
                InstanceKey::unique(),
                plugin,
                settings,
                OnError::Skip,
                BreakerConfig::default(),
            ))
        })
        .collect()
}

/// The events of the peer's `mkEvent`: `$pageview`s of 10,000 users from two addresses of the
/// test network, with the same properties.
fn peer_events(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let ip = ["89.160.20.115", "89.160.20.120"][i % 2];
            bench_event(i, "$pageview", &format!("user-{}", i % USERS), Some(ip))
        })
        .collect()
}

/// What the sink does with an event before it writes it: its fields, plugins' edits applied.
fn ready_to_store(encoded: &[u8]) {
    let raw = sluice_abi::wire::parse_encoded(encoded).unwrap();
    raw.with_patch_applied(|fields| {
        std::hint::black_box(fields);
    })
    .unwrap();
}

/// Nanoseconds per input event of `chain` on `events`, in batches of [`BATCH`], including what
/// the sink does before storing what it keeps.
fn chain_ns(chain: &[Arc<Installation>], events: &[Vec<u8>]) -> f64 {
    let mut runner = ChainRunner::new(16);
    let ns = measure(|| {
        for chunk in events.chunks(BATCH) {
            let mut out = Output::default();
            runner.run(chain, chunk.to_vec(), &mut out);
            out.events.iter().for_each(|e| ready_to_store(e));
        }
    });
    runner.teardown();
    ns
}

/// Runs the peer's `bench.js` on the database at `db`; its events/s in, by chain name.
fn run_peer(db: &std::path::Path) -> Result<std::collections::HashMap<String, f64>, String> {
    let script = std::env::var_os("SLUICE_PEER_BENCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/peers/posthog-vm/bench.js"
            ))
        });
    if !script.is_file() {
        return Err(format!(
            "{} not found (set SLUICE_PEER_BENCH)",
            script.display()
        ));
    }
    let output = std::process::Command::new("node")
        .arg(&script)
        .arg(db)
        .arg(EVENTS.to_string())
        .output()
        .map_err(|e| format!("cannot run node: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "node {} failed (is maxmind@4 on NODE_PATH?): {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .next()
                .unwrap_or_default()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(": ")?;
            let rate = rest.split_whitespace().next()?.parse().ok()?;
            Some((name.to_owned(), rate))
        })
        .collect())
}

/// The peer's chains as sluice chains on the peer's events, beside the peer's figures.
fn peer_chains(runtime: &Runtime, plugins: &std::path::Path) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("city.mmdb");
    let (_, services) = geoip_services(&db);
    let events = peer_events(EVENTS);
    let down = ("downsample", json!({"percentage": 50}));
    // PostHog's property filter; like PostHog's (and unlike the peer's model), naming `$ip`
    // also removes the event's IP, so every kept event is changed.
    let filter = (
        "property-filter",
        json!({"properties": "$ip,password,email"}),
    );
    let geoip = ("geoip", json!({}));
    let chains = [
        ("empty", vec![]),
        ("downsample50+filter", vec![down.clone(), filter]),
        ("geoip", vec![geoip.clone()]),
        ("downsample50+geoip", vec![down, geoip]),
    ];
    let peer = run_peer(&db);
    println!(
        "  {:<22} {:>16} {:>16} {:>8}",
        "chain", "sluice", "peer", "ratio"
    );
    for (name, installations) in chains {
        let chain = chain_of(runtime, plugins, &installations, &services);
        let rate = 1e9 / chain_ns(&chain, &events);
        match peer.as_ref().ok().and_then(|peer| peer.get(name)) {
            Some(peer_rate) => println!(
                "  {name:<22} {rate:>16.0} {peer_rate:>16.0} {:>7.2}x",
                rate / peer_rate
            ),
            None => println!("  {name:<22} {rate:>16.0} {:>16} {:>8}", "-", "-"),
        }
    }
    if let Err(why) = peer {
        println!("  peer not run: {why}");
    }
}

/// The example JS/TS plugins' folder (`SLUICE_JS_PLUGIN_DIR`).
fn js_plugin_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("SLUICE_JS_PLUGIN_DIR")?);
    dir.join("property-filter.wasm").is_file().then_some(dir)
}

/// What one instance of `name` (in `dir`) costs per event of `events`, and its memory.
fn one_instance(
    runtime: &Runtime,
    dir: &std::path::Path,
    name: &str,
    config: Value,
    events: &[Vec<u8>],
) -> (f64, usize) {
    let (plugin, settings) = instance(runtime, dir, name, config, &Services::detached());
    let mut instance = Instance::start(&plugin, &settings).unwrap();
    let batches = batches(events);
    let ns = measure(|| {
        for batch in &batches {
            std::hint::black_box(instance.transform(batch).unwrap());
        }
    });
    (ns, instance.memory_high_water())
}

fn js_plugins(runtime: &Runtime, plugins: &std::path::Path) {
    let Some(js) = js_plugin_dir() else {
        println!(
            "  not run: SLUICE_JS_PLUGIN_DIR holds no built JS plugins (tests/run.sh builds them)"
        );
        return;
    };
    let events = peer_events(EVENTS);
    let filter = json!({"properties": "$ip,password,email"});
    let rates = json!({"rates": {"USD": 1.0, "EUR": 0.9}});
    let rows = [
        (
            "rust property-filter",
            plugins,
            "property-filter",
            filter.clone(),
        ),
        (
            "ts property-filter",
            js.as_path(),
            "property-filter",
            filter.clone(),
        ),
        (
            "js taxonomy ($pageview: the JS glue alone)",
            js.as_path(),
            "taxonomy",
            json!({}),
        ),
        (
            "ts currency-normalization (no amount)",
            js.as_path(),
            "currency-normalization",
            rates,
        ),
    ];
    println!(
        "  {:<44} {:>12} {:>12} {:>12}",
        "one instance", "events/s", "ns/event", "memory"
    );
    for (label, dir, name, config) in rows {
        let (ns, memory) = one_instance(runtime, dir, name, config, &events);
        println!(
            "  {label:<44} {:>12.0} {ns:>12.0} {:>9.1} MiB",
            1e9 / ns,
            memory as f64 / f64::from(1 << 20)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("city.mmdb");
    let (_, services) = geoip_services(&db);
    let peer = run_peer(&db);
    let down = [("downsample", json!({"percentage": 50}))];
    let mut chain = chain_of(runtime, plugins, &down, &services);
    let rust_filter = chain_of(
        runtime,
        plugins,
        &[("property-filter", filter.clone())],
        &services,
    );
    let js_filter = chain_of(runtime, &js, &[("property-filter", filter)], &services);
    println!(
        "  {:<44} {:>12}",
        "chain downsample50+filter", "events/s in"
    );
    for (label, last) in [
        ("sluice, filter in Rust", rust_filter),
        ("sluice, filter in TypeScript", js_filter),
    ] {
        chain.truncate(1);
        chain.extend(last);
        println!("  {label:<44} {:>12.0}", 1e9 / chain_ns(&chain, &events));
    }
    match peer
        .as_ref()
        .ok()
        .and_then(|p| p.get("downsample50+filter"))
    {
        Some(rate) => println!("  {:<44} {rate:>12.0}", "peer (node vm, JSON in and out)"),
        None => println!("  peer not run: {}", peer.err().unwrap_or_default()),
    }
}

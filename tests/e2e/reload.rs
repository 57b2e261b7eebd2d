//! Hot reload through the real binary: `sluice reload`, SIGHUP and the admin API, under load.
//! Two stamper installations write the chain's version into every event, so each stored event
//! shows which version of the chain it went through, and that it went through one only.

use crate::process::signal;
use crate::support::{Sluice, plugin};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Team 1's chain at `version`: two stampers and a passthrough that never changes.
fn chain(version: &str) -> String {
    let stamper = |id: &str, key: &str| {
        format!(
            "[[teams.plugins]]\nid = \"{id}\"\nplugin = \"{}\"\nconfig = {{ key = \"{key}\", value = \"{version}\" }}\n",
            plugin("stamper").display()
        )
    };
    format!(
        "[[teams]]\nid = 1\ntoken = \"phc_one\"\n{}[[teams.plugins]]\nid = \"keep\"\nplugin = \"{}\"\n{}",
        stamper("s1", "first"),
        plugin("passthrough").display(),
        stamper("s2", "second"),
    )
}

fn uuid_of(n: usize) -> String {
    format!("0190d2f5-6bd4-7c3e-9a51-{n:012x}")
}

/// `sluice reload --config path`: whether it succeeded, stdout and stderr.
fn reload(sluice: &Sluice, path: &Path) -> (bool, String, String) {
    let output = crate::support::output(
        std::process::Command::new(crate::support::sluice_bin())
            .args(["reload", "--config"])
            .arg(path),
    );
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap() + &sluice.stderr(),
    )
}

/// How often the `keep` installation's instance was started, per the admin API's metrics.
fn keep_started(sluice: &Sluice) -> u64 {
    let (status, metrics) = sluice.admin("GET", "/metrics", None);
    assert_eq!(status, 200);
    metrics
        .as_str()
        .unwrap()
        .lines()
        .find_map(|line| {
            line.strip_prefix(
                "sluice_plugin_instances_started_total{installation=\"team-1/keep\"} ",
            )
        })
        .map_or(0, |n| n.parse().unwrap())
}

#[test]
fn twenty_reloads_under_load_store_every_event_once_through_one_version_of_the_chain() {
    let sluice = Sluice::start(&chain("A"));
    let a = sluice.config_path();
    let b = sluice.dir.path().join("b.toml");
    let text = std::fs::read_to_string(&a).unwrap();
    std::fs::write(&b, text.replace("value = \"A\"", "value = \"B\"")).unwrap();

    // The admin API wants its token.
    let (status, body) = sluice.admin("GET", "/admin/v1/teams", Some("wrong-token-wrong-token"));
    assert_eq!(
        (status, &body["code"]),
        (401, &json!("unauthorized")),
        "{body}"
    );
    let (status, teams) = sluice.admin("GET", "/admin/v1/teams", None);
    assert_eq!(status, 200, "{teams}");
    let ids: Vec<&str> = teams[0]["installations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["team-1/s1", "team-1/keep", "team-1/s2"]);
    assert_eq!(teams[0]["installations"][0]["status"], "healthy");
    assert_eq!(
        teams[0]["installations"][0]["hash"].as_str().unwrap().len(),
        64
    );

    // Metrics, on the admin listener too: described, durations as histograms.
    sluice.post_json(
        "/batch",
        &json!({"api_key": "phc_one", "batch": [{"event": "e", "distinct_id": "u", "uuid": uuid_of(2_000_000)}]}),
    );
    sluice.drain();
    let (_, metrics) = sluice.admin("GET", "/metrics", None);
    let metrics = metrics.as_str().unwrap();
    for line in metrics.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
    assert!(
        metrics.contains("# TYPE sluice_plugin_call_duration_seconds histogram")
            && metrics.contains("sluice_plugin_call_duration_seconds_bucket{installation=\"team-1/s1\",le=\"0.001\"}"),
        "{metrics}"
    );

    // A tap watches every fifth event all along.
    let tapped = sluice.dir.path().join("tap.jsonl");
    let mut tap = std::process::Command::new(crate::support::sluice_bin())
        .args(["tap", "--sample", "5", "--config"])
        .arg(&a)
        .stdout(std::fs::File::create(&tapped).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let mut reloads = (0, 0);
    let load = |stop: &AtomicBool| {
        let client = reqwest::blocking::Client::new();
        let (mut acknowledged, mut failures) = (Vec::new(), Vec::new());
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            let events: Vec<Value> = (n..n + 20)
                .map(|i| json!({"event": "e", "distinct_id": format!("u{}", i % 7), "uuid": uuid_of(i)}))
                .collect();
            let response = client
                .post(format!("{}/batch", sluice.url))
                .header("content-type", "application/json")
                .body(json!({"api_key": "phc_one", "batch": events}).to_string())
                .send()
                .unwrap();
            if response.status() == 200 {
                acknowledged.extend((n..n + 20).map(uuid_of));
            } else {
                failures.push(response.status().as_u16());
            }
            n += 20;
        }
        (acknowledged, failures)
    };
    let ((acknowledged, failures), ()) = crate::support::with_load(load, || {
        std::thread::sleep(Duration::from_millis(300));
        let started = keep_started(&sluice);
        reloads.0 = chrono::Utc::now().timestamp_millis();
        for round in 0..20 {
            let file = if round % 2 == 0 { &b } else { &a };
            let (ok, out, err) = reload(&sluice, file);
            assert!(ok, "reload {round} failed: {err}");
            let changes: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(
                changes["changed"],
                json!(["team-1/s1", "team-1/s2"]),
                "{out}"
            );
            assert_eq!(changes["unchanged"], json!(["team-1/keep"]), "{out}");
            std::thread::sleep(Duration::from_millis(100));
        }
        reloads.1 = chrono::Utc::now().timestamp_millis();
        assert_eq!(
            keep_started(&sluice),
            started,
            "the unchanged installation kept its instance"
        );
        std::thread::sleep(Duration::from_millis(500));
    });
    assert!(
        failures.is_empty(),
        "requests refused during reloads: {failures:?}"
    );
    assert!(
        acknowledged.len() > 1_000,
        "too little load: {}",
        acknowledged.len()
    );

    sluice.drain();
    let events = sluice.events(1);
    let stored: Vec<&str> = events.iter().map(|e| e["uuid"].as_str().unwrap()).collect();
    let unique: BTreeSet<&str> = stored.iter().copied().collect();
    assert_eq!(unique.len(), stored.len(), "an event was stored twice");
    let first = uuid_of(2_000_000);
    let expected: BTreeSet<&str> = acknowledged
        .iter()
        .map(String::as_str)
        .chain([first.as_str()])
        .collect();
    assert_eq!(unique, expected, "stored exactly the acknowledged events");
    let mut versions = BTreeSet::new();
    for event in &events {
        let (first, second) = (
            &event["properties"]["first"],
            &event["properties"]["second"],
        );
        assert_eq!(first, second, "an event went through two versions: {event}");
        versions.insert(first.as_str().unwrap().to_owned());
    }
    assert_eq!(versions, BTreeSet::from(["A".to_owned(), "B".to_owned()]));

    // The tap streamed before, during and after the reloads.
    tap.kill().unwrap();
    tap.wait().unwrap();
    let records: Vec<Value> = std::fs::read_to_string(&tapped)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let times = |installation: &str| -> Vec<i64> {
        records
            .iter()
            .filter(|r| r["installation"] == installation)
            .map(|r| r["time_ms"].as_i64().unwrap())
            .collect()
    };
    for installation in ["team-1/s1", "team-1/keep", "team-1/s2"] {
        let times = times(installation);
        assert!(
            times.iter().any(|t| *t < reloads.0) && times.iter().any(|t| *t > reloads.1),
            "{installation}: the tap did not stream across the reloads ({} records)",
            times.len()
        );
    }
    let s1 = records
        .iter()
        .find(|r| r["installation"] == "team-1/s1")
        .unwrap();
    assert_eq!(
        (&s1["outcome"], &s1["detail"]),
        (&json!("patched"), &json!("properties.first"))
    );
    let keep = records
        .iter()
        .find(|r| r["installation"] == "team-1/keep")
        .unwrap();
    assert_eq!(keep["outcome"], "kept");
    eprintln!(
        "20 reloads under load: {} events acknowledged, each stored once, through one version; 0 refused; the tap streamed {} records across them",
        acknowledged.len(),
        records.len()
    );

    // A bad file changes nothing and says why, every problem at once.
    let bad = sluice.dir.path().join("bad.toml");
    std::fs::write(&bad, text.replace("value = \"A\"", "valeur = \"A\"")).unwrap();
    let (ok, _, err) = reload(&sluice, &bad);
    assert!(!ok);
    assert!(
        err.contains("invalid_config")
            && err.contains("teams[0].plugins[0].config")
            && err.contains("teams[0].plugins[2].config"),
        "{err}"
    );
    // So does one that changes what only a restart applies.
    std::fs::write(&bad, text.replace("workers = 1", "workers = 2")).unwrap();
    let (ok, _, err) = reload(&sluice, &bad);
    assert!(
        !ok && err.contains("needs_restart") && err.contains("[server]"),
        "{err}"
    );

    // SIGHUP reloads the file in force (the last one loaded: `a`), here changed to version C.
    std::fs::write(&a, text.replace("value = \"A\"", "value = \"C\"")).unwrap();
    signal(sluice.pid(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 1_000_000;
    loop {
        let (status, _) = sluice.post_json(
            "/batch",
            &json!({"api_key": "phc_one", "batch": [{"event": "e", "distinct_id": "u", "uuid": uuid_of(n)}]}),
        );
        assert_eq!(status, 200);
        sluice.drain();
        let last = sluice.events(1).pop().unwrap();
        if last["properties"]["first"] == "C" {
            assert_eq!(last["properties"]["second"], "C");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload: {}",
            sluice.stderr()
        );
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// At scale each node reloads on its own: two worker nodes on Kafka, storing into ClickHouse,
/// are reloaded between two chains again and again under load, each at its own moment.
#[test]
fn worker_nodes_on_kafka_reload_on_their_own_and_every_event_goes_through_one_version() {
    let engines = crate::fleet::Engines::start();
    let node = |roles| engines.node(&chain("A"), roles);
    let capture = node("capture");
    let workers = [node("worker,loader"), node("worker,loader")];
    let urls = std::sync::Mutex::new(vec![capture.url.clone()]);
    let acknowledged = crate::kafka::under_load(&urls, || {
        // The workers consume before the first reload (so the first version is seen), and an
        // odd number of switches leaves the other in force for the load that follows.
        let deadline = Instant::now() + Duration::from_secs(60);
        while capture.events(1).is_empty() {
            assert!(
                Instant::now() < deadline,
                "nothing stored before the reloads"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        for round in 0..5 {
            let (from, to) = if round % 2 == 0 {
                ("A", "B")
            } else {
                ("B", "A")
            };
            for worker in &workers {
                let path = worker.config_path();
                let text = std::fs::read_to_string(&path).unwrap();
                std::fs::write(
                    &path,
                    text.replace(&format!("value = \"{from}\""), &format!("value = \"{to}\"")),
                )
                .unwrap();
                let (ok, out, err) = reload(worker, &path);
                assert!(ok, "{err}");
                assert!(out.contains("team-1/s1"), "{out}");
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    });
    // Every acknowledged round (30 users' events each) is stored once, through one version.
    let expected = acknowledged.len() * 30;
    let deadline = Instant::now() + Duration::from_secs(90);
    let events = loop {
        let events = capture.events(1);
        if events.len() >= expected {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {expected} stored",
            events.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(events.len(), expected, "stored once each");
    let mut versions = BTreeSet::new();
    for event in &events {
        let (first, second) = (
            &event["properties"]["first"],
            &event["properties"]["second"],
        );
        assert_eq!(first, second, "an event went through two versions: {event}");
        versions.insert(first.as_str().unwrap().to_owned());
    }
    // The last version is in force (events a rebalance made a worker read again went through
    // the version in force then: the stored copy is the later one, whole).
    assert!(versions.contains("B"), "{versions:?}");
    eprintln!(
        "10 reloads across 2 worker nodes under load: {expected} events stored once each, each through one version"
    );
}

//! The configs in `examples/`, run as a newcomer runs them: the file as it is, the plugins
//! `plugins/build.sh` built, next to it in `plugins/`.

use crate::s3::files;
use crate::support::{Sluice, plugin};
use flate2::read::GzDecoder;
use serde_json::{Value, json};
use sluice_plugin_downsample::hash_fraction;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

/// A temp folder holding `examples/<config>` as `sluice.toml` and `plugins` in `plugins/`.
fn example(config: &str, plugins: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(config);
    std::fs::copy(path, dir.path().join("sluice.toml")).unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    for name in plugins {
        std::fs::copy(
            plugin(name),
            dir.path().join(format!("plugins/{name}.wasm")),
        )
        .unwrap();
    }
    dir
}

/// Waits until the (only) export installation has exported `count` events.
fn wait_exported(sluice: &Sluice, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while sluice.exports()[0]["exported_events"] != count {
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            sluice.exports(),
            sluice.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The JSON lines of every gzip file under `folder`.
fn gzip_lines(folder: &Path) -> Vec<Value> {
    files(folder)
        .values()
        .flat_map(|body| {
            let mut text = String::new();
            GzDecoder::new(&body[..]).read_to_string(&mut text).unwrap();
            text.lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect()
}

#[test]
fn the_quickstart_example_downsamples_exactly_like_the_native_logic() {
    let sluice = Sluice::start_in(example("quickstart.toml", &["downsample", "s3-export"]));

    let ids: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    let batch: Vec<_> = ids
        .iter()
        .map(|id| json!({"event": "$pageview", "distinct_id": id}))
        .collect();
    let (status, _) = sluice.post_json(
        "/batch",
        &json!({"api_key": "phc_quickstart", "batch": batch}),
    );
    assert_eq!(status, 200);
    sluice.drain();

    // Two lanes store users in parallel, so compare as sets; per-user order has its own test.
    let stored: BTreeSet<String> = sluice
        .events(1)
        .iter()
        .map(|e| e["distinct_id"].as_str().unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = ids
        .iter()
        .filter(|id| hash_fraction(id) <= 0.5)
        .cloned()
        .collect();
    assert_eq!(stored, expected);
    assert!(
        (120..180).contains(&stored.len()),
        "{} of 300 kept at 50%",
        stored.len()
    );
    assert!(
        sluice
            .events(1)
            .iter()
            .all(|e| e["properties"]["$sample_rate"] == 0.5)
    );

    // The example's export writes the kept events to the local folder store, once each.
    wait_exported(&sluice, stored.len());
    let exported = gzip_lines(&sluice.dir.path().join("data/objects/exports/events"));
    assert_eq!(exported.len(), stored.len());
}

#[test]
fn the_full_example_locates_exports_and_retains_recordings() {
    let dir = example("full.toml", &["geoip", "s3-export", "recording-retention"]);
    // What `examples/quickstart.sh full` writes before it starts sluice.
    std::fs::create_dir_all(dir.path().join("data/full")).unwrap();
    sluice_demo_geoip::write(&dir.path().join("data/full/demo-city.mmdb"), "Linköping").unwrap();
    let sluice = Sluice::start_in(dir);

    let now = chrono::Utc::now();
    let at = |days: i64| (now - chrono::Duration::days(days)).to_rfc3339();
    let snapshot = |session: &str, days: i64| {
        json!({"event": "$snapshot", "distinct_id": "u1", "timestamp": at(days),
               "properties": {"$session_id": session, "$snapshot_data": {"type": 2, "days": days}}})
    };
    let batch = json!({"api_key": "phc_full", "batch": [
        {"event": "$pageview", "distinct_id": "u1", "properties": {"$ip": sluice_demo_geoip::SAMPLE_IP}},
        {"event": "$pageview", "distinct_id": "u2"},
        snapshot("old", 30), snapshot("old", 29), snapshot("new", 0),
    ]});
    assert_eq!(sluice.post_json("/batch", &batch).0, 200);
    sluice.drain();

    let events = sluice.events(1);
    assert_eq!(events.len(), 2);
    let located = events.iter().find(|e| e["distinct_id"] == "u1").unwrap();
    assert_eq!(located["properties"]["$geoip_city_name"], "Linköping");
    assert_eq!(located["properties"]["$geoip_country_code"], "SE");
    wait_exported(&sluice, 2);
    let exported = gzip_lines(&sluice.dir.path().join("data/full/objects/exports/events"));
    assert_eq!(exported.len(), 2);

    let before = sluice.recordings(1, Some("old"));
    assert_eq!(before.len(), 2);
    let (ok, out, err) = sluice.run(&[
        "tasks",
        "run",
        "--installation",
        "team-1/retention",
        "--task",
        "retain",
    ]);
    assert!(ok, "{err}\n{out}");
    let archived = gzip_lines(
        &sluice
            .dir
            .path()
            .join("data/full/objects/recordings/session_recordings/team_id/1/session_id/old"),
    );
    assert_eq!(archived.len(), 2);
    let sessions: BTreeSet<String> = sluice
        .recordings(1, None)
        .iter()
        .map(|r| r["session_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sessions, BTreeSet::from(["new".to_owned()]));
    assert_eq!(sluice.recordings(1, Some("old")), before);
}

#[test]
fn the_examples_tests_pass_and_the_candidate_replays_against_the_quickstart() {
    let dir = example(
        "quickstart.toml",
        &["downsample", "s3-export", "property-filter"],
    );
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    std::fs::copy(
        examples.join("candidate.toml"),
        dir.path().join("candidate.toml"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    std::fs::copy(
        examples.join("tests/candidate.toml"),
        dir.path().join("tests/candidate.toml"),
    )
    .unwrap();
    let sluice = Sluice::start_in(dir);
    let (ok, out, err) = sluice.run(&["test"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("test result: ok. 2 passed"), "{out}");
    let candidate = sluice.dir.path().join("candidate.toml");
    let scenarios = sluice.dir.path().join("tests/candidate.toml");
    let output = crate::support::output(
        std::process::Command::new(crate::support::sluice_bin())
            .args(["test", "--config"])
            .args([&candidate, &scenarios]),
    );
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("test result: ok. 3 passed"), "{out}");

    let batch: Vec<Value> = (0..100)
        .map(|i| json!({"event": "$pageview", "distinct_id": format!("user-{i}")}))
        .collect();
    let (status, _) = sluice.post_json(
        "/batch",
        &json!({"api_key": "phc_quickstart", "batch": batch}),
    );
    assert_eq!(status, 200);
    sluice.drain();
    let kept = sluice.events(1).len();
    let candidate_arg = candidate.to_str().unwrap();
    let (ok, out, err) = sluice.run(&["replay", "--format", "json", "--candidate", candidate_arg]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["events"], 100);
    // Events sent over HTTP carry the client's address; the candidate stores none of them.
    assert_eq!(report["diff"]["keys"]["ip"]["changed"], kept);
    assert_eq!(report["side_effects"]["current"], json!([]));
}

//! Plugin chains through the running binary: the quickstart example, plugin state, config errors.

use crate::support::{Sluice, plugin, serve_fails, team_with_plugin};
use flate2::read::GzDecoder;
use serde_json::json;
use sluice_plugin_downsample::hash_fraction;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[test]
fn the_quickstart_example_downsamples_exactly_like_the_native_logic() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/quickstart.toml");
    std::fs::copy(example, dir.path().join("sluice.toml")).unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    for name in ["downsample", "s3-export"] {
        std::fs::copy(
            plugin(name),
            dir.path().join(format!("plugins/{name}.wasm")),
        )
        .unwrap();
    }
    let sluice = Sluice::start_in(dir);

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
    let deadline = Instant::now() + Duration::from_secs(40);
    while sluice.exports()[0]["exported_events"] != stored.len() {
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            sluice.exports(),
            sluice.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let folder = sluice.dir.path().join("data/objects/exports/events");
    let exported: usize = walk(&folder)
        .iter()
        .map(|file| {
            let mut text = String::new();
            GzDecoder::new(&std::fs::read(file).unwrap()[..])
                .read_to_string(&mut text)
                .unwrap();
            text.lines().count()
        })
        .sum();
    assert_eq!(exported, stored.len());
}

/// Every file under `folder`.
fn walk(folder: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn plugin_state_persists_between_batches_in_one_instance() {
    let config = team_with_plugin(1, "phc_one", "adversary", "config = { mode = \"drop\" }");
    let sluice = Sluice::start(&config);
    for _ in 0..3 {
        sluice.post_json(
            "/e",
            &json!({"event": "normal", "distinct_id": "u", "token": "phc_one"}),
        );
        sluice.drain();
    }
    let seqs: Vec<_> = sluice
        .events(1)
        .iter()
        .map(|e| e["properties"]["seq"].clone())
        .collect();
    assert_eq!(seqs, [json!(1), json!(2), json!(3)]);
}

#[test]
fn plugin_config_is_checked_against_the_manifest_before_serving() {
    let stderr = serve_fails(&team_with_plugin(
        1,
        "phc_one",
        "downsample",
        "config = { percentage = \"half\", colour = 1 }",
    ));
    assert!(
        stderr.contains("teams[0].plugins[0].config.percentage: must be a number, got \"half\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("teams[0].plugins[0].config.colour: unknown key"),
        "{stderr}"
    );

    let stderr = serve_fails(&team_with_plugin(
        1,
        "phc_one",
        "downsample",
        "config = { percentage = 150 }",
    ));
    assert!(
        stderr.contains("teams[0].plugins[0]: plugin `downsample` failed to start"),
        "{stderr}"
    );
    assert!(
        stderr.contains("percentage must be between 0 and 100, got 150"),
        "{stderr}"
    );

    let stderr = serve_fails(&team_with_plugin(
        1,
        "phc_one",
        "adversary",
        "config = { mode = \"drop\", fail_setup = true }",
    ));
    assert!(stderr.contains("setup refused on purpose"), "{stderr}");
}

#[test]
fn a_keep_everything_plugin_stores_events_unchanged() {
    let sluice = Sluice::start(&crate::support::team_with_plugin(
        1,
        "phc_one",
        "passthrough",
        "",
    ));
    let event = json!({"event": "e", "distinct_id": "u", "token": "phc_one", "properties": {"a": [1, {"b": null}]}});
    assert_eq!(sluice.post_json("/e", &event).0, 200);
    sluice.drain();
    let events = sluice.events(1);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["properties"], json!({"a": [1, {"b": null}]}));
}

//! `sluice import` with the real binary: killed and resumed, run again, bad lines, and an export
//! imported back into another team.

use crate::support::{Sluice, output, plugin, sluice_bin};
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A team without a chain and one that downsamples.
fn teams() -> String {
    format!(
        "[[teams]]\nid = 1\ntoken = \"phc_import\"\n\
         [[teams]]\nid = 2\ntoken = \"phc_import_two\"\n\
         [[teams.plugins]]\nid = \"sample\"\nplugin = \"{}\"\nconfig = {{ percentage = 50 }}\n",
        plugin("downsample").display()
    )
}

/// Writes a mixed file of `count` events: single events with and without uuids, PostHog
/// `/batch` bodies of 10, and `broken` lines that are not JSON spread among them; gzip if
/// `gzip`. Returns the line numbers of the broken lines.
fn mixed_file(path: &Path, count: usize, broken: usize, gzip: bool) -> Vec<usize> {
    let mut text = String::new();
    let (mut written, mut line, mut bad) = (0, 0, Vec::new());
    let event = |n: usize| {
        let mut e = json!({"event": "$pageview", "distinct_id": format!("user-{}", n % 997),
                           "timestamp": "2025-03-01T12:00:00.000Z", "properties": {"n": n, "$browser": "Firefox"}});
        if n.is_multiple_of(2) {
            e["uuid"] = json!(format!("01950000-0000-7000-8000-{n:012}"));
        }
        e
    };
    while written < count {
        line += 1;
        if bad.len() < broken && written >= (bad.len() + 1) * count / (broken + 1) {
            text.push_str("{\"event\": \"broken\"\n");
            bad.push(line);
            continue;
        }
        if line % 7 == 0 && written + 10 <= count {
            let batch: Vec<Value> = (written..written + 10).map(event).collect();
            text.push_str(&json!({"api_key": "phc_import", "batch": batch}).to_string());
            written += 10;
        } else {
            text.push_str(&event(written).to_string());
            written += 1;
        }
        text.push('\n');
    }
    let body = if gzip {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        gz.finish().unwrap()
    } else {
        text.into_bytes()
    };
    std::fs::write(path, body).unwrap();
    bad
}

/// `sluice import --config CONFIG ARGS`, to run.
fn import_command(config: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(sluice_bin());
    command
        .args(["import", "--config", config.to_str().unwrap()])
        .args(args);
    command
}

/// Runs `sluice import --config CONFIG ARGS`, which must succeed; exit code and stdout.
fn import(config: &Path, args: &[&str]) -> (i32, String) {
    let output = output(&mut import_command(config, args));
    let out = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.code() == Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (0, out)
}

/// The imports `sluice imports` lists.
fn imports(sluice: &Sluice) -> Vec<Value> {
    let (ok, out, err) = sluice.run(&["imports"]);
    assert!(ok, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn an_import_killed_twice_resumes_to_exactly_every_event_and_again_stores_nothing() {
    let sluice = Sluice::start(&teams());
    let file = sluice.dir.path().join("history.jsonl.gz");
    mixed_file(&file, 100_000, 0, true);
    let config = sluice.config_path();
    for kill in 1..=2 {
        let mut child = import_command(
            &config,
            &["--team", "1", "--rate", "20000", file.to_str().unwrap()],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let read = imports(&sluice)
                .first()
                .map_or(0, |i| i["read"].as_u64().unwrap());
            if read >= 30_000 * kill {
                break;
            }
            assert!(Instant::now() < deadline, "the import made no progress");
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let listed = &imports(&sluice)[0];
        assert_eq!(listed["status"], "running", "{listed}");
    }
    let (_, out) = import(&config, &["--team", "1", file.to_str().unwrap()]);
    assert!(out.contains(" done: "), "{out}");
    let listed = &imports(&sluice)[0];
    assert_eq!(listed["read"], 100_000, "{listed}");
    assert_eq!(listed["bytes"], listed["total_bytes"]);
    let conn = sluice::store::open(&sluice.dir.path().join("data")).unwrap();
    let stored: i64 = conn
        .query_row("SELECT COUNT(*) FROM events WHERE team_id = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(stored, 100_000);
    // The same import again stores nothing new.
    let (_, out) = import(&config, &["--team", "1", file.to_str().unwrap()]);
    let listed = &imports(&sluice)[0];
    assert_eq!(
        (listed["stored"].as_u64(), listed["already_stored"].as_u64()),
        (Some(0), Some(100_000)),
        "{out}"
    );
}

#[test]
fn bad_lines_are_rejected_with_their_line_and_the_chain_runs_unless_skipped() {
    let sluice = Sluice::start(&teams());
    let file = sluice.dir.path().join("history.jsonl");
    let bad = mixed_file(&file, 2_000, 10, false);
    assert_eq!(bad.len(), 10);
    let config = sluice.config_path();
    let (_, out) = import(&config, &["--team", "2", file.to_str().unwrap()]);
    assert!(out.contains("10 rejected"), "{out}");
    let listed = &imports(&sluice)[0];
    let rejects = std::fs::read_to_string(listed["rejects"].as_str().unwrap()).unwrap();
    let lines: Vec<u64> = rejects
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["line"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(lines, bad.iter().map(|&l| l as u64).collect::<Vec<_>>());
    // The admin API (and page) show the same progress.
    let (_, answer) = sluice.admin("GET", "/admin/v1/imports", None);
    assert_eq!(answer["imports"][0]["rejected"], 10, "{answer}");
    assert_eq!(answer["imports"][0]["status"], "done");
    // Team 2's chain samples at 50%: about half stored, none twice.
    let stored = listed["stored"].as_u64().unwrap();
    assert!((800..1200).contains(&stored), "{listed}");
    assert_eq!(listed["dropped"].as_u64().unwrap() + stored, 2_000);
    // --strict stops at the first, naming it.
    let output = output(&mut import_command(
        &config,
        &["--team", "1", "--strict", file.to_str().unwrap()],
    ));
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains(&format!("history.jsonl:{}", bad[0])), "{err}");
    // Captured with `historical_migration`, events are counted apart from live traffic.
    let (status, _) = sluice.post_json(
        "/batch/",
        &json!({"api_key": "phc_import", "historical_migration": true, "batch": [{"event": "old", "distinct_id": "u"}]}),
    );
    assert_eq!(status, 200);
    let (_, metrics) = sluice.get("/metrics");
    assert!(
        metrics.contains("sluice_capture_historical_events_total{team=\"1\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_parquet_export_imports_into_another_team_as_identical_events() {
    let config = format!(
        "[object_stores.lake]\nkind = \"local\"\n\
         [[teams]]\nid = 1\ntoken = \"phc_source\"\n\
         [[teams.plugins]]\nid = \"parquet\"\nplugin = \"{}\"\nconfig = {{ store = \"lake\", prefix = \"p/\", format = \"parquet\" }}\n\
         grants = [\"object_store\"]\nobject_store = {{ stores = [\"lake\"] }}\n\
         export = {{ max_events = 300, max_age_seconds = 1 }}\n\
         [[teams]]\nid = 2\ntoken = \"phc_target\"\n",
        plugin("s3-export").display()
    );
    let sluice = Sluice::start(&config);
    let batch: Vec<Value> = (0..1_000)
        .map(|n| {
            let mut e = json!({"event": if n % 5 == 0 { "signup" } else { "$pageview" },
                "distinct_id": format!("user-{}", n % 31), "timestamp": "2026-10-01T08:30:00.123Z",
                "properties": {"n": n, "nested": {"a": [1, 2.5, "x"]}, "big": 12345678901234567890u64}});
            if n % 3 == 0 {
                e["$set"] = json!({"plan": "pro"});
                e["$set_once"] = json!({"first": n});
            }
            e
        })
        .collect();
    for chunk in batch.chunks(250) {
        assert_eq!(
            sluice
                .post_json("/batch/", &json!({"api_key": "phc_source", "batch": chunk}))
                .0,
            200
        );
    }
    sluice.drain();
    let deadline = Instant::now() + Duration::from_secs(60);
    while sluice.exports()[0]["exported_events"] != 1_000 {
        assert!(Instant::now() < deadline, "{:?}", sluice.exports());
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut files: Vec<std::path::PathBuf> = walk(&sluice.dir.path().join("data/objects/lake/p"));
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let config_path = sluice.config_path();
    let mut args = vec!["--team", "2", "--skip-chain"];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let (_, out) = import(&config_path, &args);
    assert!(out.contains("1000 stored"), "{out}");
    let comparable = |team: u64| -> Vec<Value> {
        let mut events: Vec<Value> = read_events(&sluice, team)
            .into_iter()
            .map(|mut e| {
                e.as_object_mut().unwrap().remove("team_id");
                e
            })
            .collect();
        events.sort_by(|a, b| a["uuid"].as_str().cmp(&b["uuid"].as_str()));
        events
    };
    let (source, imported) = (comparable(1), comparable(2));
    assert_eq!(source.len(), 1_000);
    assert_eq!(source, imported);
}

/// Every file under `folder`.
fn walk(folder: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(folder)
        .unwrap()
        .flat_map(|entry| {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

/// Every stored event of `team`.
fn read_events(sluice: &Sluice, team: u64) -> Vec<Value> {
    let (ok, out, err) = sluice.run(&["events", "--team", &team.to_string(), "--limit", "100000"]);
    assert!(ok, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

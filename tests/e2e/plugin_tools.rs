//! What plugin authors use, through the real binary: `sluice plugin check` on built components,
//! `sluice plugin run` on sample events, a task and a job, the SDK's `Harness::wasm` agreeing
//! with its native harness, and `sluice plugin new` writing a crate, outside this repository,
//! that tests and builds for wasm at once.

use crate::support::{output, plugin, sluice_bin};
use serde_json::{Value, json};
use sluice_plugin_downsample::Downsample;
use sluice_sdk::testing::{Harness, TestEvent};
use std::path::Path;
use std::process::{Command, Output};

fn sluice(args: &[&str]) -> Output {
    output(Command::new(sluice_bin()).args(args))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_says_what_a_component_is_and_needs_or_why_it_cannot_load() {
    let ticker = plugin("ticker");
    let out = sluice(&["plugin", "check", ticker.to_str().unwrap()]);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for line in [
        ": loads",
        "contract   1.0.0",
        "hooks      scheduled, jobs",
        "imports    jobs (sluice:plugin/job-queue), log (sluice:plugin/log)",
        "grants     an operator must grant: grants = [\"jobs\", \"log\"]",
        "tasks      tick (`every minute`), slow (`0 0 0 1 1 * 2099`)",
    ] {
        assert!(shown.contains(line), "missing `{line}` in\n{shown}");
    }
    let size = std::fs::metadata(&ticker).unwrap().len();
    assert!(
        shown.contains(&format!("size       {size} bytes")),
        "{shown}"
    );

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"not a component").unwrap();
    let out = sluice(&["plugin", "check", garbage.to_str().unwrap()]);
    assert!(!out.status.success());
    let error = text(&out.stderr);
    assert!(
        error.contains("cannot compile") && error.contains("garbage.wasm"),
        "{error}"
    );
}

/// A mixed sample: users the 50% downsample keeps and users it drops.
fn sample() -> Vec<TestEvent> {
    (0..12)
        .map(|n| {
            TestEvent::new("purchase")
                .distinct_id(&format!("user-{n}"))
                .property("amount", n)
                .set(json!({"plan": "pro"}))
        })
        .collect()
}

#[test]
fn run_shows_each_events_outcome_as_stored_and_the_wasm_harness_agrees_with_the_native_one() {
    let config = json!({"percentage": 50, "set_sample_rate": true});
    let mut native = Harness::<Downsample>::new(config.clone()).unwrap();
    let mut wasm =
        Harness::<Downsample>::wasm(plugin("downsample"), config.clone()).binary(sluice_bin());
    let events = sample();
    let in_host = wasm.stored_batch(events.clone()).unwrap();
    let (mut kept, mut dropped) = (0, 0);
    for (event, hosted) in events.into_iter().zip(in_host) {
        let here = native.stored(event).unwrap();
        let hosted = hosted.unwrap();
        assert_eq!(here, hosted, "native and in the host differ");
        match hosted {
            Some(stored) => {
                kept += 1;
                assert_eq!(stored.properties["$sample_rate"], json!(0.5));
                assert_eq!(
                    stored.set,
                    Some(json!({"plan": "pro"}).as_object().unwrap().clone())
                );
            }
            None => dropped += 1,
        }
    }
    assert!(kept > 0 && dropped > 0, "kept {kept}, dropped {dropped}");
    assert_eq!(
        wasm.logs(),
        [
            "dropped an event: sampled out (the first with this reason; each is counted in sluice_plugin_dropped_by_reason_total)"
        ],
        "the first drop of each reason is logged, once"
    );

    // The text report: per event, what the installation did and what changed.
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        "{\"event\": \"a\", \"distinct_id\": \"user-1\"}\n{\"event\": \"b\", \"distinct_id\": \"user-3\"}\n",
    )
    .unwrap();
    let out = sluice(&[
        "plugin",
        "run",
        plugin("downsample").to_str().unwrap(),
        "--config",
        &config.to_string(),
        "--events",
        events.to_str().unwrap(),
    ]);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(shown.contains("team-1/downsample: "), "{shown}");
    assert!(
        shown.contains("+ properties.$sample_rate: - -> 0.5") || shown.contains("sampled out"),
        "{shown}"
    );
    assert!(shown.contains("2 events: "), "{shown}");

    // As installed in a sluice.toml: that installation's config (everything sampled out).
    let toml = dir.path().join("sluice.toml");
    std::fs::write(
        &toml,
        "[[teams]]\nid = 1\ntoken = \"phc_x\"\n[[teams.plugins]]\nid = \"ds\"\nplugin = \"ds.wasm\"\nconfig = { percentage = 0 }\n",
    )
    .unwrap();
    let out = sluice(&[
        "plugin",
        "run",
        plugin("downsample").to_str().unwrap(),
        "--with",
        toml.to_str().unwrap(),
        "--installation",
        "team-1/ds",
        "--events",
        events.to_str().unwrap(),
    ]);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(shown.contains("2 events: 0 stored, 2 not"), "{shown}");
    assert!(
        shown.contains("team-1/ds: dropped (sampled out)"),
        "{shown}"
    );

    // A bad config is refused with the key and the reason.
    let out = sluice(&[
        "plugin",
        "run",
        plugin("downsample").to_str().unwrap(),
        "--config",
        "{\"percentage\": \"half\"}",
        "--events",
        events.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("percentage"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn run_runs_one_task_or_one_job_and_prints_what_it_logged() {
    let ticker = plugin("ticker");
    let ticker = ticker.to_str().unwrap();
    let out = sluice(&["plugin", "run", ticker, "--task", "tick", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], json!({"Ok": null}));
    assert!(
        report["logs"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("tick "),
        "{report}"
    );
    let out = sluice(&["plugin", "run", ticker, "--task", "nope"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no task `nope` (its tasks: tick"),
        "{}",
        text(&out.stderr)
    );
    let out = sluice(&[
        "plugin",
        "run",
        ticker,
        "--job",
        "echo",
        "--payload",
        "{\"n\":7}",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("echo "), "{}", text(&out.stdout));
    let out = sluice(&["plugin", "run", ticker, "--job", "nope"]);
    let shown = text(&out.stdout);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains("failed in ") && shown.contains("no job `nope`"),
        "{shown}"
    );
}

/// Runs `cargo args` in `dir`; fails the test with its output if it fails.
fn cargo(dir: &Path, args: &[&str]) {
    let out = output(Command::new(env!("CARGO")).args(args).current_dir(dir));
    assert!(
        out.status.success(),
        "cargo {args:?} failed in the new crate:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn new_writes_a_crate_outside_the_repository_that_tests_builds_and_runs_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("rates");
    let out = sluice(&[
        "plugin",
        "new",
        "rate-norm",
        "--hooks",
        "transform,scheduled,jobs,export",
        "--dir",
        crate_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for file in [
        "Cargo.toml",
        "rust-toolchain.toml",
        "src/lib.rs",
        "README.md",
        "events.jsonl",
    ] {
        assert!(crate_dir.join(file).is_file(), "{file} missing");
    }
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("sluice-sdk = { version = \"0.1.0\", path = \""),
        "{manifest}"
    );
    assert!(manifest.contains("[workspace]"), "{manifest}");

    cargo(&crate_dir, &["test"]);
    cargo(
        &crate_dir,
        &["build", "--release", "--target", "wasm32-wasip2"],
    );
    let target =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| crate_dir.join("target"), Into::into);
    let component = target.join("wasm32-wasip2/release/rate_norm.wasm");
    let checked = sluice(&["plugin", "check", component.to_str().unwrap()]);
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    assert!(
        text(&checked.stdout).contains("hooks      transform, exporter, scheduled, jobs"),
        "{}",
        text(&checked.stdout)
    );
    let events = crate_dir.join("events.jsonl");
    let out = sluice(&[
        "plugin",
        "run",
        component.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    for event in report["events"].as_array().unwrap() {
        assert_eq!(event["outcome"], "stored");
        assert_eq!(event["stored"]["properties"]["processed_by"], "rate-norm");
    }

    // A name that cannot be a crate, and a folder in use, are refused.
    let out = sluice(&[
        "plugin",
        "new",
        "Bad Name",
        "--dir",
        crate_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot name a plugin"));
    let out = sluice(&[
        "plugin",
        "new",
        "again",
        "--dir",
        crate_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("is not empty"));
}

//! The real PostHog SDKs, installed by `tests/run.sh`, sending through a running sluice; and the
//! payloads they sent when the fixtures were recorded, replayed fast.

use crate::support::{Sluice, plain_team};
use base64::Engine;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

const TOKEN: &str = "phc_sdk";

fn sdk_dir() -> PathBuf {
    let dir = std::env::var_os("SLUICE_SDK_DIR")
        .unwrap_or_else(|| panic!("SLUICE_SDK_DIR is not set: run the tests with tests/run.sh, which installs the PostHog SDKs"));
    PathBuf::from(dir)
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/sdk")
        .join(name)
}

fn run(mut command: Command) -> String {
    let output = crate::support::output(&mut command);
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        text(output.stdout.clone()),
        text(output.stderr)
    );
    text(output.stdout)
}

pub(crate) fn node(script_name: &str, args: &[&str]) -> String {
    let mut command = Command::new("node");
    command
        .arg(script(script_name))
        .args(args)
        .env("NODE_PATH", sdk_dir().join("node/node_modules"));
    run(command)
}

fn stored_by(sluice: &Sluice, distinct_id: &str) -> Vec<Value> {
    sluice
        .events(1)
        .into_iter()
        .filter(|e| e["distinct_id"] == distinct_id)
        .collect()
}

#[test]
fn posthog_python_default_gzip_and_v1_modes_arrive_intact() {
    let sluice = Sluice::start(&plain_team(1, TOKEN));
    for mode in ["default", "gzip", "v1"] {
        let mut command = Command::new("python3");
        command
            .arg(script("python_client.py"))
            .args([&sluice.url, TOKEN, mode])
            .env("PYTHONPATH", sdk_dir().join("python"));
        run(command);
    }
    sluice.drain();
    for mode in ["default", "gzip", "v1"] {
        let events = stored_by(&sluice, &format!("python-{mode}"));
        let event = events
            .iter()
            .find(|e| e["event"] == "python event")
            .unwrap_or_else(|| panic!("{mode}: {events:?}"));
        assert_eq!(event["properties"]["mode"], mode);
        assert_eq!(event["properties"]["nested"], json!({"list": [1, 2, 3]}));
        assert_eq!(event["properties"]["text"], "ünïcødé");
        assert_eq!(event["properties"]["$lib"], "posthog-python", "{mode}");
        let set = events
            .iter()
            .find(|e| e["event"] == "$set")
            .unwrap_or_else(|| panic!("{mode}: {events:?}"));
        assert_eq!(set["$set"]["plan"], "pro", "{mode}: {set}");
    }
}

#[test]
fn posthog_node_gzip_batches_arrive_in_order() {
    let sluice = Sluice::start(&plain_team(1, TOKEN));
    node("node_client.cjs", &[&sluice.url, TOKEN]);
    sluice.drain();
    let events = stored_by(&sluice, "node-user");
    let numbers: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "node event")
        .map(|e| &e["properties"]["n"])
        .collect();
    assert_eq!(numbers, [&json!(1), &json!(2)]);
    assert_eq!(events[0]["properties"]["nested"], json!({"list": [1, 2]}));
    assert_eq!(events[0]["properties"]["$lib"], "posthog-node");
    // posthog-node sends `$set` inside properties; sluice stores it as sent.
    let identify = events.iter().find(|e| e["event"] == "$identify");
    let identify = identify.unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(identify["properties"]["$set"]["plan"], "pro");
}

#[test]
fn posthog_js_in_chromium_sends_gzip_requests_and_a_base64_unload_beacon() {
    let sluice = Sluice::start(&plain_team(1, TOKEN));
    let report: Value =
        serde_json::from_str(node("browser.cjs", &[&sluice.url, TOKEN]).trim()).unwrap();
    assert_eq!(report["failures"], json!([]), "{report}");
    sluice.drain();
    let events = sluice.events(1);
    let seen = |name: &str, visit: &str| {
        events.iter().any(|e| {
            e["event"] == name && (e["properties"]["visit"] == visit || name == "$pageview")
        })
    };
    // Default compression (gzip bodies sent as text/plain, recognised by their magic bytes).
    assert!(seen("$pageview", "default"), "{events:?}");
    assert!(seen("browser event", "default"), "{events:?}");
    assert!(seen("left page", "default"), "{events:?}");
    // Compression disabled: posthog-js sends the unload beacon as a base64 form body.
    assert!(seen("left page", "uncompressed"), "{events:?}");
    let custom = events
        .iter()
        .find(|e| e["event"] == "browser event")
        .unwrap();
    assert_eq!(custom["properties"]["nested"], json!({"list": [1, 2]}));
    assert_eq!(custom["properties"]["$lib"], "web");
    assert_eq!(custom["distinct_id"], "browser-user");
}

#[test]
fn recorded_sdk_payloads_replay_and_are_stored() {
    let sluice = Sluice::start(&plain_team(1, "phc_fixture"));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sdk");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 12, "fixtures missing in {}", dir.display());
    let beacon = files.iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap()
            .contains("compression=base64")
    });
    assert!(beacon, "no base64 beacon among the fixtures");
    let client = reqwest::blocking::Client::new();
    for file in &files {
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let body = base64::engine::general_purpose::STANDARD
            .decode(fixture["body_base64"].as_str().unwrap())
            .unwrap();
        let query = fixture["query"].as_str().unwrap();
        let url = format!(
            "{}{}{}{query}",
            sluice.url,
            fixture["path"].as_str().unwrap(),
            if query.is_empty() { "" } else { "?" }
        );
        let method =
            reqwest::Method::from_bytes(fixture["method"].as_str().unwrap().as_bytes()).unwrap();
        let mut request = client.request(method, url).body(body);
        for (name, value) in fixture["headers"].as_object().unwrap() {
            request = request.header(name.as_str(), value.as_str().unwrap());
        }
        let response = request.send().unwrap();
        let status = response.status();
        assert!(
            status.is_success(),
            "{}: {status} {}",
            file.display(),
            response.text().unwrap()
        );
    }
    sluice.drain();
    let events = sluice.events(1);
    for distinct_id in [
        "python-default",
        "python-gzip",
        "python-v1",
        "node-user",
        "browser-user",
    ] {
        assert!(
            events.iter().any(|e| e["distinct_id"] == distinct_id),
            "nothing from {distinct_id}"
        );
    }
}

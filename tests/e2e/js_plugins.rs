//! Plugins written in JavaScript and TypeScript with PostHog's plugin API (`sdk/js`), built
//! into components by `sluice-js` with componentize-js, run by the real binary: the behaviour
//! of three PostHog plugins (Property Filter, Taxonomy, Currency Normalization) on captured
//! events in a server's chain, beside Rust plugins, and the JS property filter agreeing with the
//! Rust one.

use crate::support::{Sluice, js_plugin, plugin, sluice_bin};
use serde_json::{Value, json};
use std::process::Command;

fn installation(id: &str, path: &std::path::Path, config: &str, grants: &str) -> String {
    format!(
        "[[teams.plugins]]\nid = \"{id}\"\nplugin = \"{}\"\nconfig = {config}\ngrants = [{grants}]\nmemory_mb = 128\n",
        path.display()
    )
}

fn by_distinct_id(events: &[Value], id: &str) -> Value {
    events
        .iter()
        .find(|e| e["distinct_id"] == id)
        .unwrap_or_else(|| panic!("no stored event of {id}: {events:?}"))
        .clone()
}

#[test]
fn three_posthog_plugins_in_js_and_ts_run_in_a_chain_on_captured_events() {
    let chain = [
        installation(
            "taxonomy",
            &js_plugin("taxonomy"),
            "{ defaultNamingConvention = \"snake_case\" }",
            "\"metrics\"",
        ),
        installation(
            "filter",
            &js_plugin("property-filter"),
            "{ properties = \"email,nested.secret,$ip\" }",
            "",
        ),
        installation(
            "currency",
            &js_plugin("currency-normalization"),
            "{ normalizedCurrency = \"EUR\", rates = { USD = 1.0, EUR = 0.5, GBP = 0.8 } }",
            "\"cache\", \"log\"",
        ),
        installation(
            "downsample",
            &plugin("downsample"),
            "{ percentage = 100 }",
            "",
        ),
    ]
    .concat();
    let sluice = Sluice::start(&format!("[[teams]]\nid = 1\ntoken = \"phc_js\"\n{chain}"));
    let (status, body) = sluice.post_json(
        "/batch/",
        &json!({"api_key": "phc_js", "batch": [
            {"event": "Order Completed", "distinct_id": "u1", "properties": {
                "amount": 10, "currency": "usd", "email": "a@example.com", "plan": "pro",
                "nested": {"secret": 1, "kept": 2}, "$set": {"tier": "gold"}}},
            {"event": "$pageview", "distinct_id": "u2", "properties": {"$ip": "10.1.2.3", "amount": 3, "currency": "XYZ"}},
            {"event": "userSignedUp", "distinct_id": "u3", "$set": {"name": "Ann"}, "properties": {"amount": 8, "currency": "GBP"}},
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    sluice.drain();
    let events = sluice.events(1);
    assert_eq!(events.len(), 3, "{events:?}");

    let order = by_distinct_id(&events, "u1");
    assert_eq!(order["event"], "order_completed", "taxonomy: {order}");
    let props = &order["properties"];
    assert!(props.get("email").is_none(), "property filter: {props}");
    assert_eq!(props["nested"], json!({"kept": 2}));
    assert_eq!(props["plan"], "pro");
    assert_eq!(
        props["$set"],
        json!({"tier": "gold"}),
        "untouched keys stay as sent"
    );
    assert_eq!(props["amount_normalized"], json!(5), "currency: {props}");
    assert_eq!(props["currency_normalized"], "EUR");

    let pageview = by_distinct_id(&events, "u2");
    assert_eq!(
        pageview["event"], "$pageview",
        "PostHog's own events keep their names"
    );
    assert!(pageview["properties"].get("$ip").is_none());
    assert!(
        pageview["ip"].is_null(),
        "`$ip` clears the event's IP: {pageview}"
    );
    assert!(pageview["properties"].get("amount_normalized").is_none());

    let signup = by_distinct_id(&events, "u3");
    assert_eq!(signup["event"], "user_signed_up");
    assert_eq!(
        signup["$set"],
        json!({"name": "Ann"}),
        "top-level $set survives a rename"
    );
    assert_eq!(signup["properties"]["amount_normalized"], json!(5));

    let logs = sluice.logs(&["--installation", "team-1/currency"]);
    assert!(
        logs.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.contains("no rate for XYZ"))),
        "console.log reaches sluice logs: {logs:?}"
    );
}

/// What `sluice plugin run --json` stores of `events` through `component` with `config`.
fn stored(component: &std::path::Path, config: &str, events: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, events).unwrap();
    let out = crate::support::output(
        Command::new(sluice_bin())
            .args(["plugin", "run"])
            .arg(component)
            .args(["--config", config, "--json", "--events"])
            .arg(&file),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            json!({"outcome": e["outcome"], "stored": {
            "properties": e["stored"]["properties"], "ip": e["stored"]["ip"]}})
        })
        .collect()
}

#[test]
fn the_js_property_filter_stores_what_the_rust_one_stores() {
    let events = [
        json!({"event": "a", "distinct_id": "u1", "ip": "10.0.0.1", "properties": {"$ip": "10.0.0.1", "email": "x", "keep": 1}}),
        json!({"event": "b", "distinct_id": "u2", "properties": {"nested": {"email": "y", "deep": {"email": 1}}, "list": [1, 2.5, "3"]}}),
        json!({"event": "c", "distinct_id": "u3", "properties": {"big": 12345678901234567890u64, "f": 0.1}}),
    ]
    .iter()
    .map(|e| e.to_string() + "\n")
    .collect::<String>();
    let config = r#"{"properties": "email,nested.email,nested.deep.email,$ip"}"#;
    let rust = stored(&plugin("property-filter"), config, &events);
    let js = stored(&js_plugin("property-filter"), config, &events);
    assert_eq!(rust, js);
    assert_eq!(
        js[2]["stored"]["properties"]["big"],
        json!(12345678901234567890u64),
        "a key the plugin leaves alone keeps its exact number, though JS cannot hold it"
    );
}

/// `sluice plugin run COMPONENT args...`: whether it succeeded, and its report.
fn run_js(component: &std::path::Path, args: &[&str], stdin: &str) -> (bool, Value) {
    use std::io::Write;
    let mut child = Command::new(sluice_bin())
        .args(["plugin", "run"])
        .arg(component)
        .args(args)
        .arg("--json")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("no report: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report)
}

fn logged(report: &Value) -> Vec<String> {
    report["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_js_plugin_changes_events_exports_runs_its_task_and_jobs_and_says_what_it_did_not_declare() {
    let hooks = js_plugin("hooks");
    let (ok, report) = run_js(
        &hooks,
        &["--events", "-"],
        "{\"event\": \"rebuild\", \"distinct_id\": \"u\", \"properties\": {\"a\": 1}}\n\
         {\"event\": \"retime\", \"distinct_id\": \"u\"}\n{\"event\": \"same\", \"distinct_id\": \"u\"}\n",
    );
    assert!(ok, "{report}");
    let events = report["events"].as_array().unwrap();
    assert_eq!(events[0]["stored"]["event"], "rebuilt", "{report}");
    assert_eq!(events[0]["stored"]["properties"], json!({"only": 1}));
    assert_eq!(
        events[1]["timestamp_ms"],
        json!(1_577_836_800_000i64),
        "{report}"
    );
    assert_eq!(events[2]["steps"][0]["outcome"], "kept", "{report}");
    let (ok, report) = run_js(
        &hooks,
        &["--export", "--events", "-"],
        "{\"event\": \"a\", \"distinct_id\": \"u\"}\n{\"event\": \"b\", \"distinct_id\": \"v\"}\n",
    );
    assert!(ok, "{report}");
    assert!(
        logged(&report)[0].starts_with("exported 2 events of batch plugin-run-"),
        "{report}"
    );
    let (ok, report) = run_js(&hooks, &["--task", "runEveryMinute"], "");
    assert!(ok, "{report}");
    assert_eq!(logged(&report), ["tick 1; last batch none"]);
    let (ok, report) = run_js(
        &hooks,
        &["--job", "greet", "--payload", "{\"name\": \"Ann\"}"],
        "",
    );
    assert!(ok, "{report}");
    assert_eq!(logged(&report), ["hello Ann"]);
    let (ok, report) = run_js(
        &hooks,
        &[
            "--job",
            "greet",
            "--payload",
            "{\"name\": \"Bo\", \"fail\": true}",
        ],
        "",
    );
    assert!(!ok);
    assert_eq!(
        report["outcome"]["Err"],
        "plugin error: cannot greet Bo yet"
    );
    let (ok, report) = run_js(
        &hooks,
        &["--job", "chain", "--payload", "{\"name\": \"Cy\"}"],
        "",
    );
    assert!(ok, "{report}");
    assert!(
        logged(&report)[0].starts_with("queued greet as "),
        "{report}"
    );
    let (ok, report) = run_js(&hooks, &["--job", "locate"], "");
    assert!(!ok);
    assert_eq!(
        report["outcome"]["Err"],
        "plugin error: the `geoip` capability is not declared: add \"geoip\" to \"capabilities\" in plugin.json"
    );
}

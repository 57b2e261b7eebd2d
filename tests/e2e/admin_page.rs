//! The operator page (`/admin/`) in headless Chromium (Debian's, driven by playwright-core as the
//! posthog-js tests do), against the real binary under traffic.

use crate::sdk::node;
use crate::support::{Sluice, plugin, with_load};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};

/// Team 1's chain: `first` (an installation table) then a passthrough, and a shadow that would
/// replace the passthrough with a stamper.
fn chain(first: &str) -> String {
    format!(
        "[[teams]]\nid = 1\ntoken = \"phc_one\"\n{first}[[teams.plugins]]\nid = \"keep\"\nplugin = \"{}\"\n\
         [[teams.plugins]]\nid = \"keep-v2\"\nplugin = \"{}\"\nconfig = {{ key = \"shadowed\", value = \"yes\" }}\n\
         shadow = true\nreplaces = \"keep\"\n",
        plugin("passthrough").display(),
        plugin("stamper").display()
    )
}

#[test]
fn the_operator_page_flags_a_failing_installation_taps_and_reloads_a_new_chain_in_a_real_browser() {
    let failing = format!(
        "[[teams.plugins]]\nid = \"bad\"\nplugin = \"{}\"\nconfig = {{ mode = \"error\", trigger = \"e\" }}\non_error = \"dead_letter\"\n",
        plugin("adversary").display()
    );
    let sluice = Sluice::start(&chain(&failing));
    let next = sluice.dir.path().join("next.toml");
    let text = std::fs::read_to_string(sluice.config_path()).unwrap();
    let stamper = format!(
        "[[teams.plugins]]\nid = \"new\"\nplugin = \"{}\"\nconfig = {{ key = \"chain\", value = \"new\" }}\n",
        plugin("stamper").display()
    );
    std::fs::write(&next, text.replace(&failing, &stamper)).unwrap();
    let (admin, token) = sluice.admin_settings();

    let traffic = |stop: &AtomicBool| {
        while !stop.load(Ordering::SeqCst) {
            sluice.post_json(
                "/batch",
                &json!({"api_key": "phc_one", "batch": [{"event": "e", "distinct_id": "u"}]}),
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let shots = std::env::var("SLUICE_SCREENSHOTS").unwrap_or_default();
    let ((), output) = with_load(traffic, || {
        node(
            "admin_page.cjs",
            &[
                &admin,
                &token,
                next.to_str().unwrap(),
                "team-1/bad",
                "team-1/new",
                &shots,
            ],
        )
    });
    let report: Value = serde_json::from_str(output.trim()).unwrap();
    assert_eq!(report["consoleErrors"], json!([]), "{report}");
    assert_eq!(report["wrongTokenRefused"], true, "{report}");
    assert!(
        ["failing", "open"].contains(&report["flagged"].as_str().unwrap()),
        "{report}"
    );
    assert!(
        report["summary"].as_str().unwrap().contains("team-1/bad"),
        "{report}"
    );
    assert!(
        report["tapped"].as_str().unwrap().contains("team-1/"),
        "{report}"
    );
    assert!(
        report["reloaded"].as_str().unwrap().contains("team-1/new"),
        "{report}"
    );
    assert_eq!(report["failingGone"], true, "{report}");
    assert!(
        report["shadowed"]
            .as_str()
            .unwrap()
            .contains("properties.shadowed (+"),
        "{report}"
    );
    assert!(
        report["promoted"]
            .as_str()
            .unwrap()
            .contains("team-1/keep-v2 is live in place of team-1/keep"),
        "{report}"
    );
    assert_eq!(
        report["installations"],
        json!(["team-1/new", "team-1/keep"]),
        "{report}"
    );
    // The dead letter replayed from the page went through the new chain and was stored.
    let replayed = report["replayed"].as_str().unwrap();
    sluice.drain();
    let stored = sluice.events(1);
    let event = stored
        .iter()
        .find(|e| e["uuid"] == replayed)
        .unwrap_or_else(|| panic!("{replayed} not stored: {report}"));
    assert_eq!(event["properties"]["chain"], "new");
    // The new chain is the one in force.
    sluice.post_json(
        "/batch",
        &json!({"api_key": "phc_one", "batch": [{"event": "after", "distinct_id": "u"}]}),
    );
    sluice.drain();
    let last = sluice.events(1).pop().unwrap();
    assert_eq!(
        (
            &last["event"],
            &last["properties"]["chain"],
            &last["properties"]["shadowed"]
        ),
        (&json!("after"), &json!("new"), &json!("yes"))
    );
}

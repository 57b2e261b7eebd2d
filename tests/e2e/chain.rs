//! Plugin chains through the running binary: plugin state, config errors.

use crate::support::{Sluice, serve_fails, team_with_plugin};
use serde_json::json;

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

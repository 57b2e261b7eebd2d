//! Nothing acknowledged is lost, and replays are stored once.

use crate::support::{Sluice, plain_team};
use serde_json::json;
use std::collections::HashSet;

#[test]
fn acknowledged_events_survive_a_crash() {
    let mut sluice = Sluice::start(&plain_team(1, "phc_one"));
    let mut acknowledged = 0;
    for request in 0..30 {
        let batch: Vec<_> = (0..10).map(|i| json!({"event": "e", "distinct_id": format!("u{i}"), "properties": {"r": request}})).collect();
        let (status, _) =
            sluice.post_json("/batch", &json!({"api_key": "phc_one", "batch": batch}));
        assert_eq!(status, 200);
        acknowledged += 10;
    }
    sluice.crash();
    sluice.restart();
    sluice.drain();
    let events = sluice.events(1);
    let uuids: HashSet<_> = events
        .iter()
        .map(|e| e["uuid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events.len(), acknowledged);
    assert_eq!(uuids.len(), acknowledged);
}

#[test]
fn a_replayed_batch_is_stored_once() {
    let sluice = Sluice::start(&plain_team(1, "phc_one"));
    let batch = json!({"api_key": "phc_one", "batch": [
        {"event": "e", "distinct_id": "u", "uuid": "0190d2f5-6bd4-7c3e-9a51-2b1f0e4c8d01"},
        {"event": "e", "distinct_id": "u", "uuid": "0190d2f5-6bd4-7c3e-9a51-2b1f0e4c8d02"}
    ]});
    for _ in 0..3 {
        assert_eq!(sluice.post_json("/batch", &batch).0, 200);
    }
    sluice.drain();
    assert_eq!(sluice.events(1).len(), 2);
}

#[test]
fn events_of_one_user_are_stored_in_arrival_order_across_workers() {
    let config = plain_team(1, "phc_one");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        format!("[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nworkers = 2\n[queue]\nbatch_events = 7\n{config}"),
    )
    .unwrap();
    let sluice = Sluice::start_in(dir);
    for n in 0..60 {
        let event = json!({"event": "step", "distinct_id": format!("user-{}", n % 3), "properties": {"n": n}, "token": "phc_one"});
        assert_eq!(sluice.post_json("/e", &event).0, 200);
    }
    sluice.drain();
    let events = sluice.events(1);
    assert_eq!(events.len(), 60);
    for user in 0..3 {
        let ns: Vec<i64> = events
            .iter()
            .filter(|e| e["distinct_id"] == format!("user-{user}"))
            .map(|e| e["properties"]["n"].as_i64().unwrap())
            .collect();
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, sorted, "user-{user} out of order");
    }
}

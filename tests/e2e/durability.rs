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
        format!("[admin]\nlisten = \"127.0.0.1:0\"\n[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nworkers = 2\n[queue]\nbatch_events = 7\n{config}"),
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

#[test]
fn teams_sharing_uuids_each_keep_their_events_recordings_and_dead_letters() {
    let config = plain_team(1, "phc_one") + &plain_team(2, "phc_two");
    let sluice = Sluice::start(&config);
    let uuid = |n: usize| format!("0190d2f5-6bd4-7c3e-9a51-{n:012x}");
    let batch = |token: &str| {
        let mut events: Vec<_> = (0..50)
            .map(|n| json!({"event": "e", "distinct_id": "u", "uuid": uuid(n), "properties": {"team": token}}))
            .collect();
        events.push(
            json!({"event": "$snapshot", "distinct_id": "u", "uuid": uuid(99),
            "properties": {"$session_id": "s", "$snapshot_data": {"team": token}}}),
        );
        json!({"api_key": token, "batch": events})
    };
    for token in ["phc_one", "phc_two"] {
        assert_eq!(sluice.post_json("/batch", &batch(token)).0, 200);
        sluice.drain();
    }
    for (team, token) in [(1, "phc_one"), (2, "phc_two")] {
        let events = sluice.events(team);
        assert_eq!(
            events.len(),
            50,
            "team {team} lost events to the other team"
        );
        assert!(events.iter().all(|e| e["properties"]["team"] == token));
        let recordings = sluice.recordings(team, Some("s"));
        assert_eq!(recordings.len(), 1, "team {team}: {recordings:?}");
        assert_eq!(recordings[0]["properties"]["$snapshot_data"]["team"], token);
    }
}

/// Writes queue rows into the stopped server's database, as a damaged disk could leave them.
fn insert_queue_rows(sluice: &Sluice, rows: &[(u64, u64, Vec<u8>)]) {
    let conn = rusqlite::Connection::open(sluice.dir.path().join("data/sluice.db")).unwrap();
    for (team, events, payload) in rows {
        conn.execute(
            "INSERT INTO queue (team_id, events, payload) VALUES (?1, ?2, ?3)",
            rusqlite::params![*team as i64, *events as i64, payload],
        )
        .unwrap();
    }
}

/// A batch in the wire encoding of events `names` of team 1 (uuid last byte = index + `first`).
fn wire_batch(names: &[&str], first: u8) -> Vec<u8> {
    let mut batch = sluice_abi::wire::BatchWriter::with_capacity(1024);
    for (i, name) in names.iter().enumerate() {
        let mut uuid = [0x01; 16];
        uuid[15] = first + i as u8;
        batch
            .push(&sluice_abi::wire::EventFields {
                uuid,
                team_id: 1,
                timestamp_ms: 1_700_000_000_000,
                event: name,
                distinct_id: "u",
                ip: None,
                properties: "{\"damaged\":\"zzzz\"}",
                set: None,
                set_once: None,
            })
            .unwrap();
    }
    batch.finish()
}

#[test]
fn a_round_that_cannot_be_stored_is_split_and_a_corrupt_row_quarantined() {
    let mut sluice = Sluice::start(&plain_team(1, "phc_one"));
    sluice.crash();
    // Row 1: three events, the second of which has properties that are not UTF-8 any more.
    let mut damaged = wire_batch(&["ok-1", "bad", "ok-2"], 1);
    let at = damaged.windows(4).position(|w| w == b"zzzz").unwrap();
    let second = at
        + 1
        + damaged[at + 1..]
            .windows(4)
            .position(|w| w == b"zzzz")
            .unwrap();
    damaged[second] = 0xFF;
    // Row 2: not a batch at all. Row 3: intact.
    insert_queue_rows(
        &sluice,
        &[
            (1, 3, damaged),
            (1, 2, b"\x02\x00\x00\x00garbage".to_vec()),
            (1, 2, wire_batch(&["ok-3", "ok-4"], 10)),
        ],
    );
    sluice.restart();
    for n in 0..5 {
        let event = json!({"event": format!("live-{n}"), "distinct_id": "u", "token": "phc_one"});
        assert_eq!(sluice.post_json("/e", &event).0, 200);
    }
    sluice.drain();
    let names: HashSet<String> = sluice
        .events(1)
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    let expected: HashSet<String> = ["ok-1", "ok-2", "ok-3", "ok-4"]
        .into_iter()
        .map(str::to_owned)
        .chain((0..5).map(|n| format!("live-{n}")))
        .collect();
    assert_eq!(names, expected);
    let letters = sluice.dead_letters(1);
    let [letter] = &letters[..] else {
        panic!("one dead letter expected: {letters:?}")
    };
    assert!(
        letter["error"]
            .as_str()
            .unwrap()
            .contains("not valid UTF-8"),
        "{letter}"
    );
    let (ok, quarantined, stderr) = sluice.run(&["quarantine"]);
    assert!(ok, "{stderr}");
    let rows: Vec<serde_json::Value> = quarantined
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let [row] = &rows[..] else {
        panic!("one quarantined row expected: {quarantined}")
    };
    assert_eq!(row["team_id"], 1);
    assert_eq!(row["events"], 2);
    assert!(
        row["error"].as_str().unwrap().contains("truncated"),
        "{row}"
    );
}

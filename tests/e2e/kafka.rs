//! sluice at scale through the real binary: capture produces to a Kafka-protocol broker, the
//! worker consumes it as a member of the workers' group and stores, into the embedded database
//! or (with `[clickhouse]`) to the stored topics, which loaders insert into a real ClickHouse.
//! See [`crate::broker`] and [`crate::clickhouse_server`] for the engines.

use crate::broker::Broker;
use crate::clickhouse_server::ClickHouseServer;
use crate::support::{Sluice, plain_team};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

/// `count` events of user `user-<u>` for `u` in `users`, numbered `n` from `first` per user,
/// each with its own uuid (as SDKs send), so a request sent again is the same events.
fn batch(users: usize, first: usize, count: usize) -> Vec<Value> {
    (first..first + count)
        .flat_map(|n| {
            (0..users).map(move |u| {
                json!({"event": "e", "distinct_id": format!("user-{u}"), "properties": {"n": n},
                       "uuid": format!("0190a000-0000-7000-8000-{u:04}{n:08}")})
            })
        })
        .collect()
}

/// Each user's event numbers (`n`), in storage order.
fn per_user(events: &[Value]) -> BTreeMap<String, Vec<u64>> {
    let mut users: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for event in events {
        users
            .entry(event["distinct_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(event["properties"]["n"].as_u64().unwrap());
    }
    users
}

/// Waits until team 1 has `count` stored events; returns them.
fn stored(sluice: &Sluice, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = sluice.events(1);
        if events.len() >= count {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} events stored\n{}",
            events.len(),
            sluice.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn on_kafka_every_acknowledged_event_is_stored_once_in_order_per_user_and_a_down_broker_gets_503() {
    let mut broker = Broker::start();
    let config = format!(
        "[kafka]\nbrokers = \"{}\"\ndelivery_timeout_ms = 2000\nsession_timeout_ms = 6000\nmax_event_bytes = 4000\n{}",
        broker.brokers,
        plain_team(1, "phc_one")
    );
    let sluice = Sluice::start(&config);
    let post = |events: Vec<Value>| {
        sluice.post_json("/batch", &json!({"api_key": "phc_one", "batch": events}))
    };
    let mut acknowledged = 0;
    for round in 0..10 {
        let (status, body) = post(batch(20, round * 3, 3));
        assert_eq!(status, 200, "{body}");
        acknowledged += 60;
    }
    let events = stored(&sluice, acknowledged);
    assert_eq!(events.len(), acknowledged, "nothing stored twice");
    // Per user, in the order sent (storage order).
    for (user, ns) in &per_user(&events) {
        assert_eq!(ns, &(0..30).collect::<Vec<u64>>(), "{user}");
    }

    // Too large for the ingest: refused with a clear 413, never a 200.
    let large =
        json!({"event": "e", "distinct_id": "big", "properties": {"blob": "x".repeat(5_000)}});
    let (status, body) = post(vec![large]);
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("event_too_large")),
        "{body}"
    );

    // The broker down: 503 (never a 200 for what is not delivered).
    broker.tell("down");
    let (status, body) = post(batch(5, 100, 1));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "queue_unavailable", "{body}");
    // Not ready while its broker is away, with the reason.
    let (status, ready) = sluice.get("/ready");
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("unavailable"), "{ready}");
    broker.tell("up");
    // Back up: the same request is accepted once the producer reconnects.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = post(batch(5, 100, 1));
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "never recovered: {body}");
    }
    acknowledged += 5;
    assert_eq!(sluice.get("/ready").0, 200);
    let events = stored(&sluice, acknowledged);
    let uuids: BTreeSet<&str> = events.iter().map(|e| e["uuid"].as_str().unwrap()).collect();
    // A request refused while the broker was down may have delivered some of its events; their
    // copies sent again are stored once.
    assert_eq!(uuids.len(), events.len(), "no event stored twice");
    let late = events
        .iter()
        .filter(|e| e["properties"]["n"] == 100)
        .count();
    assert_eq!(late, 5, "the accepted request is stored, once");
}

#[test]
fn on_kafka_a_worker_killed_under_load_loses_nothing_and_stores_nothing_twice() {
    let broker = Broker::start();
    let config = format!(
        "[kafka]\nbrokers = \"{}\"\nsession_timeout_ms = 6000\n{}",
        broker.brokers,
        plain_team(1, "phc_one")
    );
    let mut sluice = Sluice::start(&config);
    let urls = std::sync::Mutex::new(vec![sluice.url.clone()]);
    let acknowledged = under_load(&urls, || {
        for _ in 0..2 {
            std::thread::sleep(Duration::from_millis(1_500));
            sluice.restart();
            *urls.lock().unwrap() = vec![sluice.url.clone()];
        }
    });
    let (stored, users) = check_stored(&sluice, &acknowledged);
    eprintln!(
        "killed twice: {} events acknowledged, {stored} stored, 0 duplicated, 0 out of order across {users} users",
        acknowledged.len() * 30
    );
}

/// A node with `roles` and its own data folder, on the broker, storing into `clickhouse`, with
/// `rest` after (further sections, then team 1's `[[teams]]` table).
pub(crate) fn node(
    broker: &Broker,
    clickhouse: &ClickHouseServer,
    rest: &str,
    roles: &str,
) -> Sluice {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nworkers = 1\n\
         [kafka]\nbrokers = \"{}\"\nsession_timeout_ms = 6000\n{}{rest}",
        broker.brokers,
        clickhouse.section(),
    );
    std::fs::write(dir.path().join("sluice.toml"), config).unwrap();
    Sluice::start_in_with(dir, &["--role", roles])
}

/// Sends rounds (one request of 30 users' next event) to the capture nodes in turn (as `urls`
/// holds them at each round) until `stop`; returns the rounds acknowledged with `200`.
fn load(urls: &std::sync::Mutex<Vec<String>>, stop: &std::sync::atomic::AtomicBool) -> Vec<usize> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut acknowledged = Vec::new();
    let mut round = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let url = {
            let urls = urls.lock().unwrap();
            urls[round % urls.len()].clone()
        };
        let body = json!({"api_key": "phc_one", "batch": batch(30, round, 1)}).to_string();
        let sent = client.post(format!("{url}/batch")).body(body).send();
        if sent.is_ok_and(|r| r.status() == 200) {
            acknowledged.push(round);
            round += 1;
        }
    }
    acknowledged
}

/// Runs [`load`] on `urls` while `meanwhile` runs, and a second more; returns the rounds
/// acknowledged (a good many, or the test fails).
pub(crate) fn under_load(
    urls: &std::sync::Mutex<Vec<String>>,
    meanwhile: impl FnOnce(),
) -> Vec<usize> {
    let (acknowledged, ()) = crate::support::with_load(
        |stop| load(urls, stop),
        || {
            meanwhile();
            std::thread::sleep(Duration::from_millis(1_000));
        },
    );
    assert!(
        acknowledged.len() > 20,
        "only {} rounds acknowledged",
        acknowledged.len()
    );
    acknowledged
}

/// Waits until every event of the `acknowledged` rounds is stored; checks none is stored twice
/// and each user's are in order; returns (events stored, users).
fn check_stored(reader: &Sluice, acknowledged: &[usize]) -> (usize, usize) {
    let expected = acknowledged.len() * 30;
    let rounds: BTreeSet<u64> = acknowledged.iter().map(|r| *r as u64).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let events = loop {
        let events = reader.events(1);
        let acked = events
            .iter()
            .filter(|e| rounds.contains(&e["properties"]["n"].as_u64().unwrap()))
            .count();
        if acked >= expected {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "{acked} of {expected} acknowledged events stored"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let uuids: BTreeSet<&str> = events.iter().map(|e| e["uuid"].as_str().unwrap()).collect();
    assert_eq!(uuids.len(), events.len(), "no event stored twice");
    let seen = per_user(&events);
    for (user, ns) in &seen {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "{user} out of order: {ns:?}"
        );
    }
    (events.len(), seen.len())
}

#[test]
fn two_capture_and_two_worker_nodes_on_clickhouse_lose_nothing_when_a_worker_is_killed_or_a_third_joins_and_leaves()
 {
    let broker = Broker::start();
    let clickhouse = ClickHouseServer::start();
    let team = plain_team(1, "phc_one");
    let node = |roles| node(&broker, &clickhouse, &team, roles);
    let mut captures = [node("capture"), node("capture")];
    // Each worker node loads too, so the kill interrupts a worker and a loader.
    let mut workers = [node("worker,loader"), node("worker,loader")];
    let urls = std::sync::Mutex::new(captures.iter().map(|c| c.url.clone()).collect());
    let acknowledged = under_load(&urls, || {
        std::thread::sleep(Duration::from_millis(2_000));
        // SIGKILL one worker mid-batch; start it again later.
        workers[0].crash();
        std::thread::sleep(Duration::from_millis(2_000));
        workers[0].restart();
        // A third worker joins under load, then leaves (shut down with SIGTERM).
        let mut third = node("worker,loader");
        std::thread::sleep(Duration::from_millis(3_000));
        third.stop();
    });
    let (stored, users) = check_stored(&workers[1], &acknowledged);
    let (_, produced) = captures[0].get("/metrics");
    assert!(
        produced.contains("sluice_ingest_produce_seconds"),
        "{produced}"
    );
    let (_, consumed) = workers[1].get("/metrics");
    assert!(
        consumed.contains("sluice_kafka_consumer_lag_events{topic=\"sluice_ingest\",partition=")
            && consumed.contains("sluice_loader_insert_seconds"),
        "{consumed}"
    );
    // Every kind of node shuts down cleanly.
    for node in captures.iter_mut().chain(&mut workers) {
        node.stop();
    }
    // Loaded more than once somewhere (the kill), kept once.
    let loaded = clickhouse.query("SELECT count() FROM sluice.events");
    eprintln!(
        "2 capture + 2 worker/loader nodes on ClickHouse, one killed and restarted, a third joined and left: {} events acknowledged, {} rows loaded, {stored} stored after de-duplication, 0 duplicated, 0 out of order across {users} users",
        acknowledged.len() * 30,
        loaded.trim(),
    );
}

#[test]
fn capture_and_worker_apart_without_a_shared_ingest_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n{}",
            plain_team(1, "phc_one")
        ),
    )
    .unwrap();
    let output = crate::support::output(
        Command::new(crate::support::sluice_bin())
            .args(["serve", "--role", "capture", "--config"])
            .arg(&config),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--role capture") && stderr.contains("[kafka]"),
        "{stderr}"
    );
}

#[test]
fn at_scale_a_poison_event_is_dead_lettered_in_clickhouse_as_in_the_embedded_mode_and_recordings_and_plugin_logs_land_there_too()
 {
    let broker = Broker::start();
    let clickhouse = ClickHouseServer::start();
    let team = crate::support::team_with_plugin(
        1,
        "phc_one",
        "adversary",
        "config = { mode = \"panic\" }\non_error = \"dead_letter\"",
    );
    let sluice = node(&broker, &clickhouse, &team, "capture,worker,loader");
    let mut events = batch(10, 0, 3);
    events.push(json!({"event": "attack", "distinct_id": "mallory",
                       "uuid": "0190a000-0000-7000-8000-999999999999"}));
    let (status, body) =
        sluice.post_json("/batch", &json!({"api_key": "phc_one", "batch": events}));
    assert_eq!(status, 200, "{body}");
    let stored = stored(&sluice, 30);
    assert_eq!(stored.len(), 30);
    assert!(stored.iter().all(|e| e["event"] == "e"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let letters = sluice.dead_letters(1);
        if !letters.is_empty() {
            break letters;
        }
        assert!(Instant::now() < deadline, "no dead letter");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["event"]["event"], "attack");
    assert!(
        letters[0]["error"].as_str().unwrap().contains("panicked"),
        "{letters:?}"
    );

    // The failure is in the plugin's log, read back from ClickHouse.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sluice.logs(&["--team", "1"]).iter().any(|line| {
        line["installation"] == "team-1/p" && line["message"].as_str().unwrap().contains("panic")
    }) {
        assert!(Instant::now() < deadline, "{:?}", sluice.logs(&[]));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, _, stderr) = sluice.run(&["logs", "--follow"]);
    assert!(!ok && stderr.contains("--follow"), "{stderr}");

    // Replayed from ClickHouse (its installation disabled, so it passes now): stored, and gone
    // from the dead letters.
    let uuid = "0190a000-0000-7000-8000-999999999999";
    sluice.replay_dead_letter_past("team-1/p", 1, uuid);
    assert!(sluice.dead_letters(1).is_empty(), "removed once replayed");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sluice.events(1).iter().any(|e| e["uuid"] == uuid) {
        assert!(
            Instant::now() < deadline,
            "the replayed event was not stored"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Recordings skip the chain and are stored as captured.
    let snapshots: Vec<Value> = (0..2)
        .map(|n| {
            json!({"event": "$snapshot", "distinct_id": "viewer",
                   "properties": {"$session_id": "s1", "$window_id": format!("w{n}"),
                                  "$snapshot_data": crate::retention::snapshot_data("s1", n)}})
        })
        .collect();
    let (status, body) =
        sluice.post_json("/s/", &json!({"api_key": "phc_one", "batch": snapshots}));
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let recordings = loop {
        let recordings = sluice.recordings(1, Some("s1"));
        if recordings.len() == 2 {
            break recordings;
        }
        assert!(Instant::now() < deadline, "{recordings:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let data = &recordings[1]["properties"]["$snapshot_data"];
    assert_eq!(data["data"]["positions"][0]["x"].to_string(), "1.5");
    assert_eq!(data["data"]["big"].to_string(), "12345678901234567");
    assert_eq!(recordings[0]["window_id"], "w0");
}

/// The value of the metric line starting with `name ` in `metrics` (0 when absent).
fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_clickhouse_outage_never_stops_ingestion_and_the_loader_catches_up_without_loss_or_duplicates()
{
    let broker = Broker::start();
    let mut clickhouse = ClickHouseServer::start();
    let team = plain_team(1, "phc_one");
    let sluice = node(&broker, &clickhouse, &team, "capture,worker,loader");
    let processed = || metric(&sluice.get("/metrics").1, "sluice_worker_events_in_total");
    let urls = std::sync::Mutex::new(vec![sluice.url.clone()]);
    let acknowledged = under_load(&urls, || {
        std::thread::sleep(Duration::from_millis(1_500));
        clickhouse.kill();
        let before = processed();
        std::thread::sleep(Duration::from_millis(4_000));
        // Capture and the worker go on; the loader waits, and /ready says why.
        assert!(
            processed() > before,
            "the worker stopped while ClickHouse was down"
        );
        let (status, ready) = sluice.get("/ready");
        assert_eq!(status, 503, "{ready}");
        assert!(ready.contains("ClickHouse cannot be reached"), "{ready}");
        clickhouse.resume();
    });
    let (stored, users) = check_stored(&sluice, &acknowledged);
    let (_, metrics) = sluice.get("/metrics");
    assert!(
        metric(&metrics, "sluice_loader_insert_failures_total") >= 1.0,
        "{metrics}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while sluice.get("/ready").0 != 200 {
        assert!(Instant::now() < deadline, "{}", sluice.get("/ready").1);
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "ClickHouse down 4 s under load: {} events acknowledged, {stored} stored after it came back, 0 duplicated, 0 out of order across {users} users",
        acknowledged.len() * 30
    );
}

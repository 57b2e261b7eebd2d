//! The recording-retention plugin at scale, through the real binary: recordings captured on
//! Kafka and loaded into a real ClickHouse, retention jobs queued on a real Redis and run by two
//! scheduler nodes, archives written to a real S3-compatible server. The node running the job
//! is SIGKILLed again and again while it works; no session may be lost, and each must end up
//! in one whole object.

use crate::broker::Broker;
use crate::clickhouse_server::ClickHouseServer;
use crate::kafka::node;
use crate::redis_server::RedisServer;
use crate::retention::{DAY, MINUTE, archive_lines, capture, printed, retention, stored_sessions};
use crate::s3::S3Server;
use crate::support::Sluice;
use chrono::Utc;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Old sessions in the backlog.
const SESSIONS: usize = 200;

/// Waits until `reader` sees `count` sessions of team 1.
fn wait_sessions(reader: &Sluice, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored_sessions(reader, 1).len() < count {
        assert!(Instant::now() < deadline, "sessions were not loaded");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn at_scale_a_retention_backlog_survives_sigkill_of_its_node_and_no_session_is_lost() {
    let broker = Broker::start();
    let clickhouse = ClickHouseServer::start();
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    let rest = format!(
        "[redis]\nurl = \"{}\"\n{}{}",
        redis.url,
        s3.store_config("archive"),
        retention(1, "archive", ", sessions_per_run = 10")
    );
    let node = |roles| node(&broker, &clickhouse, &rest, roles);
    let capture_node = node("capture");
    let _worker = node("worker,loader");
    let mut schedulers = [node("scheduler"), node("scheduler")];
    let now = Utc::now().timestamp_millis();
    let old: Vec<String> = (0..SESSIONS).map(|i| format!("old-{i:03}")).collect();
    let mut sessions: Vec<(&str, Vec<i64>)> = old
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let start = now - 60 * DAY + i as i64 * MINUTE;
            (s.as_str(), vec![start, start + 1_000, start + 2_000])
        })
        .collect();
    sessions.push(("recent", vec![now - MINUTE]));
    capture(&capture_node, 1, &sessions);
    wait_sessions(&capture_node, SESSIONS + 1);
    let before: BTreeMap<&str, String> = old
        .iter()
        .map(|s| (s.as_str(), printed(&capture_node, 1, s)))
        .collect();

    // Retention by job, queued where every scheduler node sees it; the node that runs it is
    // killed while it works (and started again), so the other one (or it) takes over.
    let threshold = now - 7 * DAY - 30 * MINUTE;
    let (ok, _, err) = capture_node.run(&[
        "jobs",
        "enqueue",
        "--installation",
        "team-1/retention",
        "--name",
        "retain",
        "--payload",
        &json!({"last_before": threshold}).to_string(),
    ]);
    assert!(ok, "{err}");
    let mut killed_working = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let left = stored_sessions(&capture_node, 1).len();
        let (ok, jobs, _) = capture_node.run(&["jobs", "--installation", "team-1/retention"]);
        assert!(ok);
        if left == 1 && jobs.trim().is_empty() {
            break;
        }
        assert!(!jobs.contains("\"failed\""), "a job gave up: {jobs}");
        assert!(
            Instant::now() < deadline,
            "retention did not finish: {left} sessions left, jobs {jobs}"
        );
        let running = jobs
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|job| job["status"] == "running");
        match running {
            Some(job) if killed_working < 4 && left > 1 => {
                let holder = job["holder"].as_str().unwrap_or_default().to_owned();
                let node = schedulers
                    .iter_mut()
                    .find(|n| crate::shared_state::node_id(n) == holder)
                    .unwrap_or_else(|| panic!("no scheduler node is {holder}"));
                node.restart();
                killed_working += 1;
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    assert_eq!(killed_working, 4, "killed while it worked");
    assert_eq!(
        stored_sessions(&capture_node, 1),
        BTreeMap::from([("recent".into(), 1)])
    );
    let objects = s3.objects();
    assert_eq!(objects.len(), old.len(), "one object per session");
    for body in objects.values() {
        assert_eq!(archive_lines(body).len(), 3, "every archive is whole");
    }
    for (session, text) in &before {
        assert_eq!(
            &printed(&capture_node, 1, session),
            text,
            "session {session}"
        );
    }
    eprintln!(
        "{SESSIONS} sessions archived once each and deleted from ClickHouse; the job's node SIGKILLed {killed_working} times while it worked"
    );
}

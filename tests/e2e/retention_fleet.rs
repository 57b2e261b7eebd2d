//! The recording-retention plugin at scale, through the real binary: recordings captured on
//! Kafka and loaded into a real ClickHouse, retention jobs queued on a real Redis and run by two
//! scheduler nodes, archives written to a real S3-compatible server. The node running the job
//! is SIGKILLed again and again while it works; no session may be lost, and each must end up
//! in one whole object.

use crate::fleet::Engines;
use crate::retention::{assert_retained, backlog, retention, stored_sessions};
use crate::support::Sluice;
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
    let engines = Engines::start();
    let teams = retention(1, "lake", ", sessions_per_run = 10");
    let node = |roles| engines.node(&teams, roles);
    let capture_node = node("capture");
    let _worker = node("worker,loader");
    let mut schedulers = [node("scheduler"), node("scheduler")];
    let before = backlog(&capture_node, SESSIONS, || {
        wait_sessions(&capture_node, SESSIONS + 1)
    });

    // The job is queued where every scheduler node sees it; the node that runs it is killed
    // while it works (and started again), so the other one (or it) takes over.
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
    assert_retained(&capture_node, &engines.s3, &before);
    eprintln!(
        "{SESSIONS} sessions archived once each and deleted from ClickHouse; the job's node SIGKILLed {killed_working} times while it worked"
    );
}

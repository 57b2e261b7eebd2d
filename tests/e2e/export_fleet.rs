//! Exports across exporter nodes, through the real binary: events captured on Kafka, loaded into
//! a real ClickHouse, exported by two exporter nodes that share the export state and the
//! installation's lease on a real Redis, into a real S3-compatible server. The node holding the
//! installation is SIGKILLed mid-batch, and later another is paused (SIGSTOP) mid-batch past its
//! lease; every stored event must still arrive exactly once, in objects named after their batch.

use crate::exports::{assert_exactly_once, jsonl_uuids, jsonl_uuids_of, s3_installation, team};
use crate::fleet::Engines;
use crate::kafka::under_load;
use crate::process::signal;
use crate::s3::S3Server;
use crate::shared_state::node_id;
use crate::support::Sluice;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The status of the one export installation, as every node sees it.
fn status(node: &Sluice) -> Value {
    node.exports()
        .into_iter()
        .find(|s| s["installation"] == "team-1/s3")
        .unwrap_or_default()
}

/// Polls the status until `check` accepts it, for at most `seconds`; returns it.
fn wait_status(node: &Sluice, seconds: u64, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let status = status(node);
        if check(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops the S3 server and waits until the holder has a batch in flight (its write hangs);
/// returns the status then.
fn stuck_mid_batch(s3: &S3Server, reader: &Sluice) -> Value {
    s3.signal("STOP");
    wait_status(reader, 30, "a batch in flight", |s| s["batch"].is_string())
}

/// Which of `exporters` the status names as the holder.
fn holder(exporters: &[Sluice; 2], status: &Value) -> usize {
    let ids = [node_id(&exporters[0]), node_id(&exporters[1])];
    ids.iter()
        .position(|id| status["holder"] == id.as_str())
        .unwrap_or_else(|| panic!("no exporter holds it: {status}"))
}

#[test]
fn two_exporter_nodes_export_every_stored_event_once_when_the_holder_is_killed_or_paused_mid_batch()
{
    let engines = Engines::start();
    let s3 = &engines.s3;
    let teams = team(&s3_installation("s3", "jsonl", "events/"));
    let node = |roles| engines.node(&teams, roles);
    let capture = node("capture");
    let _worker = node("worker,loader");
    let mut exporters = [node("exporter"), node("exporter")];
    let urls = std::sync::Mutex::new(vec![capture.url.clone()]);
    let mut report = String::new();
    let acknowledged = under_load(&urls, || {
        let first = wait_status(&capture, 60, "a first delivery", |s| {
            s["exported_events"].as_u64() > Some(0)
        });
        // SIGKILL the holder while its batch is in flight: the other node takes the installation
        // over within the lease's TTL and sends the same batch again.
        let killed = holder(&exporters, &first);
        let stuck = stuck_mid_batch(s3, &capture);
        exporters[killed].crash();
        let killed_at = Instant::now();
        s3.signal("CONT");
        let taken = wait_status(&capture, 30, "the other node taking over", |s| {
            s["holder"] == node_id(&exporters[1 - killed]).as_str()
                && s["exported_events"].as_u64() > stuck["exported_events"].as_u64()
        });
        let takeover = killed_at.elapsed();
        assert!(takeover < Duration::from_secs(10 + 2 + 3), "{takeover:?}");
        exporters[killed].restart();

        // SIGSTOP the new holder mid-batch past its lease: the restarted node takes over under
        // a larger token; once continued, the paused node's late write is refused and logged.
        let paused = 1 - killed;
        let stuck = stuck_mid_batch(s3, &capture);
        signal(exporters[paused].pid(), "STOP");
        s3.signal("CONT");
        let retaken = wait_status(&capture, 30, "the restarted node taking over", |s| {
            s["holder"] == node_id(&exporters[killed]).as_str()
                && s["exported_events"].as_u64() > stuck["exported_events"].as_u64()
        });
        signal(exporters[paused].pid(), "CONT");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !exporters[paused]
            .stderr()
            .contains("lost its installation to another node")
        {
            assert!(Instant::now() < deadline, "{}", exporters[paused].stderr());
            std::thread::sleep(Duration::from_millis(100));
        }
        report = format!(
            "SIGKILL mid-batch: taken over after {} ms (token {} -> {}); SIGSTOP mid-batch: token {} taken over by {}, the late write refused",
            takeover.as_millis(),
            first["fencing_token"],
            taken["fencing_token"],
            taken["fencing_token"],
            retaken["fencing_token"],
        );
    });

    // Everything acknowledged is stored, and every stored event is exported exactly once.
    let expected = acknowledged.len() * 30;
    let deadline = Instant::now() + Duration::from_secs(120);
    let stored: BTreeSet<String> = loop {
        let events = capture.events(1);
        if events.len() >= expected {
            break events
                .iter()
                .map(|e| e["uuid"].as_str().unwrap().to_owned())
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} of {expected} stored",
            events.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(stored.len(), expected, "stored exactly the acknowledged");
    let done = wait_status(&capture, 120, "the exports catching up", |s| {
        s["lag_events"] == 0 && s["batch"].is_null()
    });
    let objects = s3.objects();
    assert_exactly_once("objects", &jsonl_uuids(s3, "events/"), &stored);
    // A backfill of everything, read from ClickHouse with its state on Redis: each stored event
    // once more, in objects named apart from the live ones.
    let output = crate::support::output(
        std::process::Command::new(crate::support::sluice_bin())
            .args(["exports", "backfill", "--config"])
            .arg(capture.config_path())
            .args(["--installation", "team-1/s3", "--from", "2000-01-01"]),
    );
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        out.contains(&format!("done: {} of ? events sent", stored.len())),
        "{out}"
    );
    let backfilled = jsonl_uuids_of(s3, "events/", |key| key.contains("backfill-"));
    assert_exactly_once("backfilled objects", &backfilled, &stored);
    let live = jsonl_uuids_of(s3, "events/", |key| !key.contains("backfill-"));
    assert_exactly_once("live objects", &live, &stored);
    assert_eq!(done["exported_events"].as_u64(), Some(stored.len() as u64));
    eprintln!(
        "{report}; {} events stored, exported once each in {} objects",
        stored.len(),
        objects.len()
    );
}

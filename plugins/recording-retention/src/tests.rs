//! The plugin natively, against the harness's recordings, object store and job queue.

use super::*;
use flate2::read::GzDecoder;
use sluice_sdk::host::{ErrorKind, HostError};
use sluice_sdk::testing::Harness;
use std::io::Read;

/// The tick the tests run at: 2024-01-31T00:00:00Z.
const NOW: i64 = 1_706_659_200_000;

fn harness(config: Value) -> Harness<Retention> {
    let mut harness = Harness::<Retention>::new(config).unwrap();
    let threshold = NOW - 7 * DAY_MS;
    // Old: ended two days before the threshold.
    harness.add_recording(
        "old",
        threshold - 3 * DAY_MS,
        r#"{"$snapshot_data":{"n":1}}"#,
    );
    harness.add_recording(
        "old",
        threshold - 2 * DAY_MS,
        r#"{"$snapshot_data":{"n":2}}"#,
    );
    // Straddles the threshold: kept whole.
    harness.add_recording("straddle", threshold - DAY_MS, "{}");
    harness.add_recording("straddle", threshold + 1_000, "{}");
    // Ends just inside the 30-minute margin: kept.
    harness.add_recording("margin", threshold - 10 * 60_000, "{}");
    harness.add_recording("recent", NOW - 60_000, "{}");
    harness
}

fn sessions(harness: &Harness<Retention>) -> Vec<String> {
    let mut ids: Vec<String> = harness.recordings().into_iter().map(|(id, _)| id).collect();
    ids.dedup();
    ids
}

#[test]
fn old_sessions_are_archived_whole_then_deleted() {
    let mut harness = harness(json!({"store": "archive", "prefix": "rec/"}));
    harness.run_task("retain", NOW).unwrap();
    assert_eq!(sessions(&harness), ["straddle", "margin", "recent"]);
    let archives = harness.archives();
    let [archive] = &archives[..] else {
        panic!("{archives:?}")
    };
    let first = NOW - 10 * DAY_MS;
    let last = NOW - 9 * DAY_MS;
    assert_eq!(
        archive.key,
        format!("rec/session_recordings/team_id/1/session_id/old/data/{first}-{last}.jsonl.gz")
    );
    assert_eq!(archive.events, 2);
    let objects = harness.objects("archive");
    let mut text = String::new();
    GzDecoder::new(&objects[&archive.key][..])
        .read_to_string(&mut text)
        .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["session_id"], "old");
    assert_eq!(lines[0]["team_id"], 1);
    assert_eq!(lines[1]["properties"], json!({"$snapshot_data": {"n": 2}}));
    assert_eq!(lines[0]["timestamp"], "2024-01-21T00:00:00.000Z");
}

#[test]
fn without_a_store_sessions_are_only_deleted() {
    let mut harness = harness(json!({}));
    harness.run_task("retain", NOW).unwrap();
    assert_eq!(sessions(&harness), ["straddle", "margin", "recent"]);
    assert!(harness.archives().is_empty());
    assert!(harness.objects("archive").is_empty());
}

#[test]
fn a_backlog_is_worked_off_in_bounded_runs_continued_by_jobs() {
    let mut harness =
        Harness::<Retention>::new(json!({"store": "archive", "sessions_per_run": 2})).unwrap();
    for i in 0..5 {
        harness.add_recording(&format!("s{i}"), NOW - 100 * DAY_MS + i, "{}");
    }
    harness.run_task("retain", NOW).unwrap();
    assert_eq!(harness.archives().len(), 2, "one bounded run");
    assert_eq!(harness.queued_jobs().len(), 1, "the rest is left to a job");
    assert_eq!(harness.drain_jobs().unwrap(), 2, "two more bounded runs");
    assert_eq!(harness.archives().len(), 5);
    assert!(harness.recordings().is_empty());
    assert!(harness.queued_jobs().is_empty());
}

#[test]
fn odd_session_ids_make_safe_keys() {
    assert_eq!(safe("0192-ab_C"), "0192-ab_C");
    assert_eq!(safe("a/b/../c d"), "a~2Fb~2F~2E~2E~2Fc~20d");
    assert_ne!(safe("a/b"), safe("a_b"));
    assert_eq!(safe("é"), "~C3~A9");
    assert_eq!(safe(""), "~");
    let error = Harness::<Retention>::new(json!({"retention_days": 0})).unwrap_err();
    assert!(error.message.contains("retention_days"), "{error}");
}

#[test]
fn a_session_the_store_refuses_is_kept_and_the_others_go_on() {
    let mut harness = harness(json!({"store": "archive"})).with_put_errors(|_, key, _| {
        key.contains("/old/")
            .then(|| HostError::new(ErrorKind::TooLarge, "object of 70 MiB (cap 64 MiB)"))
    });
    harness.add_recording("older", NOW - 30 * DAY_MS, "{}");
    harness.run_task("retain", NOW).unwrap();
    assert_eq!(sessions(&harness), ["old", "straddle", "margin", "recent"]);
    let archived: Vec<String> = harness
        .archives()
        .into_iter()
        .map(|a| a.session_id)
        .collect();
    assert_eq!(archived, ["older"]);
    assert!(harness.queued_jobs().is_empty(), "a refusal is not retried");
}

#[test]
fn when_the_store_is_away_a_job_tries_again() {
    let away = std::rc::Rc::new(std::cell::Cell::new(true));
    let outage = away.clone();
    let mut harness = harness(json!({"store": "archive"})).with_put_errors(move |_, _, _| {
        outage
            .get()
            .then(|| HostError::new(ErrorKind::Unavailable, "store down"))
    });
    let error = harness.run_task("retain", NOW).unwrap_err();
    assert!(error.retryable, "{error}");
    assert_eq!(sessions(&harness), ["old", "straddle", "margin", "recent"]);
    assert_eq!(harness.queued_jobs().len(), 1, "a job tries again");
    away.set(false);
    assert_eq!(harness.drain_jobs().unwrap(), 1);
    assert_eq!(sessions(&harness), ["straddle", "margin", "recent"]);
    assert_eq!(harness.archives().len(), 1);
}

//! The recording-retention plugin through the real binary: recordings captured with old
//! timestamps, archived to a real S3-compatible server (`s3s-fs`) for one team and to the local
//! folder store for another, deleted, and read back by `sluice recordings --session`.

use crate::s3::{S3Server, files};
use crate::support::{Sluice, plugin};
use chrono::{DateTime, SecondsFormat, Utc};
use flate2::read::GzDecoder;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::time::{Duration, Instant};

const DAY: i64 = 86_400_000;
const MINUTE: i64 = 60_000;
/// A schedule that does not fire during a test: the tests run retention by hand or by job.
const NEVER: &str = "0 0 0 1 1 * 2099";

/// A retention installation for team `team` archiving to `store` (empty: delete only).
pub(crate) fn retention(team: u64, store: &str, extra: &str) -> String {
    let granted = if store.is_empty() {
        "object_store = { stores = [] }".to_owned()
    } else {
        format!("object_store = {{ stores = [\"{store}\"] }}")
    };
    format!(
        "[[teams]]\nid = {team}\ntoken = \"phc_{team}\"\n[[teams.plugins]]\nid = \"retention\"\nplugin = \"{}\"\n\
         config = {{ store = \"{store}\", prefix = \"rec/\", retention_days = 7{extra} }}\n\
         grants = [\"recordings\", \"object_store\", \"jobs\", \"log\"]\n{granted}\n\
         schedule = {{ tasks = {{ retain = \"{NEVER}\" }} }}\n\
         jobs = {{ retry_base_seconds = 1, retry_max_seconds = 2, max_attempts = 100 }}\n",
        plugin("recording-retention").display()
    )
}

pub(crate) fn iso(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Snapshot data as a browser sends it, with text and numbers that must survive unchanged.
pub(crate) fn snapshot_data(session: &str, n: usize) -> Value {
    json!({"type": 3, "timestamp": n, "data": {"source": 1, "positions": [{"x": 1.5, "y": -2, "id": n, "timeOffset": -0.25}],
           "text": format!("{session} #{n}: héllo \u{2028} \"quoted\" 🙂"), "big": 12345678901234567_u64}})
}

/// Captures `$snapshot` events for `team`: per session, one event at each of `times` (ms).
pub(crate) fn capture(sluice: &Sluice, team: u64, sessions: &[(&str, Vec<i64>)]) {
    let mut batch = Vec::new();
    for (session, times) in sessions {
        for (n, at) in times.iter().enumerate() {
            batch.push(json!({"event": "$snapshot", "distinct_id": format!("user-{session}"), "timestamp": iso(*at),
                              "properties": {"$session_id": session, "$window_id": format!("w{}", n % 2),
                                             "$snapshot_data": snapshot_data(session, n)}}));
        }
    }
    for chunk in batch.chunks(500) {
        let (status, body) = sluice.post_json(
            "/s/",
            &json!({"api_key": format!("phc_{team}"), "batch": chunk}),
        );
        assert_eq!(status, 200, "{body}");
    }
    sluice.drain();
}

/// `sluice recordings --team T --session S` as printed: the exact lines.
fn printed(sluice: &Sluice, team: u64, session: &str) -> String {
    let (ok, out, err) = sluice.run(&[
        "recordings",
        "--team",
        &team.to_string(),
        "--session",
        session,
        "--limit",
        "100000",
    ]);
    assert!(ok, "sluice recordings failed: {err}");
    out
}

/// The sessions of `team` still in the database.
pub(crate) fn stored_sessions(sluice: &Sluice, team: u64) -> BTreeMap<String, usize> {
    let mut sessions = BTreeMap::new();
    for line in sluice.recordings(team, None) {
        *sessions
            .entry(line["session_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    sessions
}

pub(crate) fn retain_now(sluice: &Sluice, team: u64) {
    let installation = format!("team-{team}/retention");
    let (ok, out, err) = sluice.run(&[
        "tasks",
        "run",
        "--installation",
        &installation,
        "--task",
        "retain",
    ]);
    assert!(ok, "retention failed: {err}\n{out}\n{}", sluice.stderr());
}

/// The lines of a gzip JSON-lines archive.
fn archive_lines(body: &[u8]) -> Vec<Value> {
    let mut text = String::new();
    GzDecoder::new(body).read_to_string(&mut text).unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// A backlog of team 1, captured through `sluice`: `count` sessions two months old (three
/// events each, a minute apart) and one recent one; `stored` waits until they can be read back.
/// Returns what `sluice recordings --session` prints of each old session. Then queues the
/// retention job (what its daily task continues with) for everything older than 7 days.
pub(crate) fn backlog(
    sluice: &Sluice,
    count: usize,
    stored: impl FnOnce(),
) -> BTreeMap<String, String> {
    let now = Utc::now().timestamp_millis();
    let old: Vec<String> = (0..count).map(|i| format!("old-{i:03}")).collect();
    let mut sessions: Vec<(&str, Vec<i64>)> = old
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let start = now - 60 * DAY + i as i64 * MINUTE;
            (s.as_str(), vec![start, start + 1_000, start + 2_000])
        })
        .collect();
    sessions.push(("recent", vec![now - MINUTE]));
    capture(sluice, 1, &sessions);
    stored();
    let before = old
        .iter()
        .map(|s| (s.clone(), printed(sluice, 1, s)))
        .collect();
    let threshold = now - 7 * DAY - 30 * MINUTE;
    let (ok, _, err) = sluice.run(&[
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
    before
}

/// Asserts that retention of the [`backlog`] (printed `before`) left only the recent session,
/// archived each old one whole in one object of `s3`, and that each still reads back the same.
pub(crate) fn assert_retained(sluice: &Sluice, s3: &S3Server, before: &BTreeMap<String, String>) {
    assert_eq!(
        stored_sessions(sluice, 1),
        BTreeMap::from([("recent".into(), 1)])
    );
    let objects = s3.objects();
    assert_eq!(objects.len(), before.len(), "one object per session");
    for body in objects.values() {
        assert_eq!(archive_lines(body).len(), 3, "every archive is whole");
    }
    for (session, text) in before {
        assert_eq!(&printed(sluice, 1, session), text, "session {session}");
    }
}

#[test]
fn old_sessions_are_archived_whole_deleted_and_still_read_back() {
    let s3 = S3Server::start();
    let config = format!(
        "{}[object_stores.folder]\nkind = \"local\"\n{}{}",
        s3.store_config("archive"),
        retention(1, "archive", ""),
        retention(2, "folder", ""),
    );
    let sluice = Sluice::start(&config);
    let now = Utc::now().timestamp_millis();
    let threshold = now - 7 * DAY;
    let weird = "old/b ü";
    capture(
        &sluice,
        1,
        &[
            (
                "old-a",
                vec![
                    threshold - 3 * DAY,
                    threshold - 3 * DAY + 1_000,
                    threshold - 2 * DAY,
                ],
            ),
            (
                weird,
                vec![threshold - 60 * MINUTE, threshold - 45 * MINUTE],
            ),
            // Its last event is after the threshold: kept whole, its old events included.
            ("straddle", vec![threshold - DAY, threshold + 60 * MINUTE]),
            // Ended less than 30 minutes before the threshold: kept for now.
            ("margin", vec![threshold - 10 * MINUTE]),
            ("recent", vec![now - MINUTE]),
        ],
    );
    capture(
        &sluice,
        2,
        &[
            ("old-c", vec![threshold - 5 * DAY, threshold - 4 * DAY]),
            // The same session id as team 1's archived one, but recent: another team's.
            ("old-a", vec![now - 2 * MINUTE]),
        ],
    );
    let before: BTreeMap<(u64, &str), String> = [
        (1, "old-a"),
        (1, weird),
        (1, "straddle"),
        (2, "old-c"),
        (2, "old-a"),
    ]
    .into_iter()
    .map(|(team, session)| ((team, session), printed(&sluice, team, session)))
    .collect();
    assert_eq!(before[&(1, "old-a")].lines().count(), 3);

    retain_now(&sluice, 1);
    retain_now(&sluice, 2);

    // Only whole old sessions left the database.
    assert_eq!(
        stored_sessions(&sluice, 1),
        BTreeMap::from([
            ("margin".into(), 1),
            ("recent".into(), 1),
            ("straddle".into(), 2)
        ])
    );
    assert_eq!(
        stored_sessions(&sluice, 2),
        BTreeMap::from([("old-a".into(), 1)])
    );
    // Each is one object where the layout says.
    let objects = s3.objects();
    let keys: BTreeSet<&str> = objects.keys().map(String::as_str).collect();
    let a = format!(
        "rec/session_recordings/team_id/1/session_id/old-a/data/{}-{}.jsonl.gz",
        threshold - 3 * DAY,
        threshold - 2 * DAY
    );
    let b = format!(
        "rec/session_recordings/team_id/1/session_id/old~2Fb~20~C3~BC/data/{}-{}.jsonl.gz",
        threshold - 60 * MINUTE,
        threshold - 45 * MINUTE
    );
    assert_eq!(keys, BTreeSet::from([a.as_str(), b.as_str()]));
    let folder = files(&sluice.dir.path().join("data/objects/folder"));
    let c = format!(
        "rec/session_recordings/team_id/2/session_id/old-c/data/{}-{}.jsonl.gz",
        threshold - 5 * DAY,
        threshold - 4 * DAY
    );
    assert_eq!(folder.keys().collect::<Vec<_>>(), [&c]);

    // The archive holds the snapshot data exactly as captured.
    let lines = archive_lines(&objects[&a]);
    assert_eq!(lines.len(), 3);
    for (n, line) in lines.iter().enumerate() {
        assert_eq!(line["session_id"], "old-a");
        assert_eq!(line["team_id"], 1);
        assert_eq!(line["distinct_id"], "user-old-a");
        assert_eq!(
            line["properties"]["$snapshot_data"].to_string(),
            snapshot_data("old-a", n).to_string()
        );
    }
    // And `sluice recordings --session` prints exactly what it printed before.
    for ((team, session), text) in &before {
        assert_eq!(
            &printed(&sluice, *team, session),
            text,
            "team {team} session {session}"
        );
    }

    // A second run finds nothing more to do.
    retain_now(&sluice, 1);
    assert_eq!(s3.objects().len(), 2);
    assert_eq!(stored_sessions(&sluice, 1).len(), 3);
    let logged: Vec<String> = sluice
        .logs(&["--installation", "team-1/retention"])
        .into_iter()
        .map(|line| line["message"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        logged[0].starts_with("retention: 2 session(s)")
            && logged[1].starts_with("retention: 0 session(s)"),
        "{logged:?}"
    );
}

#[test]
fn without_a_store_old_sessions_are_only_deleted() {
    let sluice = Sluice::start(&retention(1, "", ""));
    let now = Utc::now().timestamp_millis();
    capture(
        &sluice,
        1,
        &[("old", vec![now - 30 * DAY]), ("recent", vec![now - DAY])],
    );
    retain_now(&sluice, 1);
    assert_eq!(
        stored_sessions(&sluice, 1),
        BTreeMap::from([("recent".into(), 1)])
    );
    assert_eq!(printed(&sluice, 1, "old"), "");
    assert!(files(&sluice.dir.path().join("data/objects")).is_empty());
}

#[test]
fn a_backlog_survives_sigkill_at_any_point_and_no_session_is_lost() {
    let s3 = S3Server::start();
    let config = format!(
        "{}{}",
        s3.store_config("archive"),
        retention(1, "archive", ", sessions_per_run = 10")
    );
    let mut sluice = Sluice::start(&config);
    let before = backlog(&sluice, 600, || {});

    // Retention by job (what its daily task continues with), killed again and again.
    let mut kills = 0;
    let mut killed_working = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let left = stored_sessions(&sluice, 1).len();
        let (ok, jobs, _) = sluice.run(&["jobs", "--installation", "team-1/retention"]);
        assert!(ok);
        if left == 1 && jobs.trim().is_empty() {
            break;
        }
        assert!(
            !jobs.contains("\"failed\""),
            "a job gave up: {jobs}\n{}",
            sluice.stderr()
        );
        assert!(
            Instant::now() < deadline,
            "retention did not finish: {left} sessions left, jobs {jobs}"
        );
        if kills < 12 {
            std::thread::sleep(Duration::from_millis(100 + 40 * kills));
            sluice.restart();
            kills += 1;
            killed_working += usize::from(left > 1);
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(
        killed_working >= 4,
        "killed only {killed_working} times while it worked"
    );
    assert_retained(&sluice, &s3, &before);
}

#[test]
fn events_arriving_while_retention_runs_are_still_stored_or_archived() {
    let config = format!(
        "[object_stores.folder]\nkind = \"local\"\n{}",
        retention(1, "folder", ", sessions_per_run = 1000")
    );
    let sluice = Sluice::start(&config);
    let base = Utc::now().timestamp_millis() - 60 * DAY;
    let sessions: Vec<String> = (0..40).map(|i| format!("s{i:02}")).collect();
    let sent = std::sync::Mutex::new(BTreeMap::<String, Vec<String>>::new());
    let next = std::sync::atomic::AtomicI64::new(0);
    // One event for every session per request, each with its own time and uuid.
    let send_round = || {
        let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let batch: Vec<Value> = sessions
            .iter()
            .enumerate()
            .map(|(i, session)| {
                let uuid = format!("0190d2f5-6bd4-7c3e-{:04x}-{:012x}", i, n);
                json!({"event": "$snapshot", "distinct_id": "u", "uuid": uuid,
                       "timestamp": iso(base + n * 100 + i as i64),
                       "properties": {"$session_id": session, "$snapshot_data": {"n": n}}})
            })
            .collect();
        let (status, body) = sluice.post_json("/s/", &json!({"api_key": "phc_1", "batch": batch}));
        assert_eq!(status, 200, "{body}");
        let mut sent = sent.lock().unwrap();
        for event in &batch {
            sent.entry(
                event["properties"]["$session_id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
            .or_default()
            .push(event["uuid"].as_str().unwrap().to_owned());
        }
    };
    for _ in 0..5 {
        send_round();
    }
    sluice.drain();
    let senders = |stop: &std::sync::atomic::AtomicBool| {
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        send_round();
                    }
                });
            }
        })
    };
    crate::support::with_load(senders, || {
        for _ in 0..4 {
            retain_now(&sluice, 1);
        }
    });
    sluice.drain();
    let sent = sent.into_inner().unwrap();
    let mut lost = Vec::new();
    for (session, uuids) in &sent {
        let printed = printed(&sluice, 1, session);
        lost.extend(
            uuids
                .iter()
                .filter(|uuid| !printed.contains(uuid.as_str()))
                .cloned(),
        );
    }
    let total: usize = sent.values().map(Vec::len).sum();
    assert!(
        lost.is_empty(),
        "{} of {total} events lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // What was left behind is archived by the next run, as its own part.
    retain_now(&sluice, 1);
    assert!(stored_sessions(&sluice, 1).is_empty());
    for (session, uuids) in &sent {
        let printed = printed(&sluice, 1, session);
        assert_eq!(printed.lines().count(), uuids.len(), "session {session}");
    }
}

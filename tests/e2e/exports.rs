//! Exports through the real binary: the S3 export plugin into a real S3-compatible server
//! (`s3s-fs`, SigV4-checked), and the BigQuery export plugin into the local BigQuery stand-in.
//! Every stored event must arrive exactly once, whatever happens on the way.

use crate::bigquery::{FakeBigQuery, Fault};
use crate::s3::S3Server;
use crate::support::{Sluice, plugin};
use flate2::read::GzDecoder;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::RowAccessor;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Quick batches and retries for tests.
const EXPORT: &str = "export = { max_events = 200, max_age_seconds = 1, retry_base_seconds = 1, \
                      retry_max_seconds = 2, max_attempts = 100, events_to_ignore = [\"$feature_flag_called\"] }";

/// An S3 export installation `id` writing `format` under `prefix` to the store `lake`.
pub(crate) fn s3_installation(id: &str, format: &str, prefix: &str) -> String {
    format!(
        "[[teams.plugins]]\nid = \"{id}\"\nplugin = \"{}\"\nconfig = {{ store = \"lake\", prefix = \"{prefix}\", format = \"{format}\" }}\n\
         grants = [\"object_store\"]\nobject_store = {{ stores = [\"lake\"] }}\n{EXPORT}\n",
        plugin("s3-export").display()
    )
}

/// A BigQuery export installation writing to table `events` of the stand-in.
fn bigquery_installation(bq: &FakeBigQuery) -> String {
    format!(
        "[[teams.plugins]]\nid = \"bq\"\nplugin = \"{}\"\n\
         config = {{ key_json = '''{}''', dataset_id = \"analytics\", table_id = \"events\", api_base = \"{}\" }}\n\
         grants = [\"http\"]\nhttp = {{ allow_hosts = [\"127.0.0.1\"], allow_private_addresses = true }}\n{EXPORT}\n",
        plugin("bigquery-export").display(),
        bq.key_json,
        bq.url
    )
}

pub(crate) fn team(installations: &str) -> String {
    format!("[[teams]]\nid = 1\ntoken = \"phc_one\"\n{installations}")
}

/// Sends `count` events as one batch, every tenth a `$feature_flag_called` (ignored by the
/// exports); returns the uuids of the others.
fn send(sluice: &Sluice, first: usize, count: usize) -> BTreeSet<String> {
    let events: Vec<Value> = (first..first + count)
        .map(|n| {
            let name = if n % 10 == 3 {
                "$feature_flag_called"
            } else {
                "$pageview"
            };
            json!({"event": name, "distinct_id": format!("u{}", n % 17),
                   "uuid": uuid_of(n), "properties": {"n": n, "$current_url": "https://x"}})
        })
        .collect();
    let (status, body) =
        sluice.post_json("/batch", &json!({"api_key": "phc_one", "batch": events}));
    assert_eq!(status, 200, "{body}");
    (first..first + count)
        .filter(|n| n % 10 != 3)
        .map(uuid_of)
        .collect()
}

fn uuid_of(n: usize) -> String {
    format!("0190d2f5-6bd4-7c3e-9a51-{n:012x}")
}

/// Waits until every listed installation has exported everything stored (no lag, no batch in
/// flight); returns their statuses.
pub(crate) fn wait_exported(sluice: &Sluice, installations: &[&str]) -> HashMap<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        sluice.drain();
        let statuses: HashMap<String, Value> = sluice
            .exports()
            .into_iter()
            .map(|s| (s["installation"].as_str().unwrap().to_owned(), s))
            .collect();
        let done = installations.iter().all(|id| {
            statuses
                .get(*id)
                .is_some_and(|s| s["lag_events"] == 0 && s["batch"].is_null())
        });
        if done {
            return statuses;
        }
        assert!(
            Instant::now() < deadline,
            "exports did not catch up: {statuses:?}\n{}",
            sluice.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The uuid of every event in every JSON-lines object under `prefix`, as often as it appears.
pub(crate) fn jsonl_uuids(s3: &S3Server, prefix: &str) -> Vec<String> {
    jsonl_uuids_of(s3, prefix, |_| true)
}

/// The uuid of every event in the JSON lines objects under `prefix` whose key `keep` accepts.
pub(crate) fn jsonl_uuids_of(
    s3: &S3Server,
    prefix: &str,
    keep: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut uuids = Vec::new();
    for (key, body) in s3.objects() {
        if !key.starts_with(prefix) || !keep(&key) {
            continue;
        }
        assert!(key.ends_with(".jsonl.gz"), "{key}");
        let mut text = String::new();
        GzDecoder::new(&body[..]).read_to_string(&mut text).unwrap();
        for line in text.lines() {
            let event: Value = serde_json::from_str(line).unwrap();
            assert_eq!(event["team_id"], 1);
            assert!(event["timestamp"].as_str().unwrap().ends_with('Z'));
            uuids.push(event["uuid"].as_str().unwrap().to_owned());
        }
    }
    uuids
}

/// The uuid of every row in every Parquet object under `prefix`.
fn parquet_uuids(s3: &S3Server, prefix: &str) -> Vec<String> {
    let mut uuids = Vec::new();
    for (key, body) in s3.objects() {
        if !key.starts_with(prefix) {
            continue;
        }
        assert!(key.ends_with(".parquet"), "{key}");
        let reader = SerializedFileReader::new(bytes::Bytes::from(body)).unwrap();
        for row in reader.get_row_iter(None).unwrap() {
            uuids.push(row.unwrap().get_string(0).unwrap().clone());
        }
    }
    uuids
}

/// Asserts that `found` holds each of `expected` exactly once and nothing else.
pub(crate) fn assert_exactly_once(what: &str, found: &[String], expected: &BTreeSet<String>) {
    let unique: BTreeSet<String> = found.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        found.len(),
        "{what}: some events arrived twice"
    );
    assert_eq!(&unique, expected, "{what}: not exactly the stored events");
}

fn bigquery_uuids(bq: &FakeBigQuery) -> Vec<String> {
    bq.rows()
        .iter()
        .map(|row| row["uuid"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_stored_event_arrives_once_in_the_bucket_and_the_table_and_ignored_ones_never() {
    let s3 = S3Server::start();
    let bq = FakeBigQuery::start();
    let config = s3.store_config("lake")
        + &team(
            &(s3_installation("s3", "jsonl", "events/")
                + &s3_installation("parquet", "parquet", "parquet/")
                + &bigquery_installation(&bq)),
        );
    let sluice = Sluice::start(&config);
    let mut expected = BTreeSet::new();
    for round in 0..3 {
        expected.extend(send(&sluice, round * 300, 300));
    }
    let statuses = wait_exported(&sluice, &["team-1/s3", "team-1/parquet", "team-1/bq"]);
    let stored: BTreeSet<String> = sluice
        .events(1)
        .iter()
        .filter(|e| e["event"] != "$feature_flag_called")
        .map(|e| e["uuid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stored, expected);
    assert_exactly_once("jsonl objects", &jsonl_uuids(&s3, "events/"), &expected);
    assert_exactly_once(
        "parquet objects",
        &parquet_uuids(&s3, "parquet/"),
        &expected,
    );
    assert_exactly_once("BigQuery rows", &bigquery_uuids(&bq), &expected);
    let table = bq.table("events").unwrap();
    assert_eq!(
        table["timePartitioning"],
        json!({"type": "DAY", "field": "timestamp"})
    );
    for id in ["team-1/s3", "team-1/parquet", "team-1/bq"] {
        assert_eq!(statuses[id]["exported_events"], expected.len(), "{id}");
        assert!(statuses[id]["last_success"].is_string());
    }
    let (_, metrics) = sluice.get("/metrics");
    let line = format!(
        "sluice_export_events_total{{installation=\"team-1/s3\"}} {}",
        expected.len()
    );
    assert!(metrics.contains(&line), "{metrics}");
    // What was exported replays: each Parquet and JSON lines object read back as events.
    for prefix in ["parquet/", "events/"] {
        let (key, body) = s3
            .objects()
            .into_iter()
            .find(|(key, _)| key.starts_with(prefix))
            .unwrap();
        let file = sluice.dir.path().join(key.rsplit('/').next().unwrap());
        std::fs::write(&file, &body).unwrap();
        let config = sluice.config_path();
        let (ok, out, err) = sluice.run(&[
            "replay",
            "--format",
            "json",
            "--candidate",
            config.to_str().unwrap(),
            "--from",
            file.to_str().unwrap(),
        ]);
        assert!(ok, "{key}: {err}");
        let report: Value = serde_json::from_str(&out).unwrap();
        let events = report["events"].as_u64().unwrap();
        assert!(events > 0, "{key}: {report}");
        assert_eq!(report["diff"]["first"]["stored"], events, "{key}");
        assert_eq!(report["diff"]["same"], events, "{key}");
    }
}

#[test]
fn exports_survive_being_killed_again_and_again_under_load() {
    let s3 = S3Server::start();
    let bq = FakeBigQuery::start();
    let config = s3.store_config("lake")
        + &team(&(s3_installation("s3", "jsonl", "events/") + &bigquery_installation(&bq)));
    let mut sluice = Sluice::start(&config);
    let url = Mutex::new(sluice.url.clone());
    let load = |stop: &AtomicBool| {
        let client = reqwest::blocking::Client::new();
        let mut acknowledged = BTreeSet::new();
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            let events: Vec<Value> = (n..n + 20)
                .map(|i| json!({"event": "e", "distinct_id": format!("u{}", i % 7), "uuid": uuid_of(i)}))
                .collect();
            let target = format!("{}/batch", url.lock().unwrap());
            let body = json!({"api_key": "phc_one", "batch": events});
            let request = client
                .post(target)
                .header("content-type", "application/json")
                .body(body.to_string());
            match request.send() {
                Ok(response) if response.status() == 200 => {
                    acknowledged.extend((n..n + 20).map(uuid_of));
                    n += 20;
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        acknowledged
    };
    let (acknowledged, ()) = crate::support::with_load(load, || {
        for kill in 0..6 {
            std::thread::sleep(Duration::from_millis(700 + 150 * kill));
            sluice.restart();
            *url.lock().unwrap() = sluice.url.clone();
        }
    });
    assert!(
        acknowledged.len() > 500,
        "too little load: {}",
        acknowledged.len()
    );
    wait_exported(&sluice, &["team-1/s3", "team-1/bq"]);
    let stored: BTreeSet<String> = sluice
        .events(1)
        .iter()
        .map(|e| e["uuid"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        acknowledged.is_subset(&stored),
        "acknowledged events were lost"
    );
    assert_exactly_once("objects after kills", &jsonl_uuids(&s3, "events/"), &stored);
    assert_exactly_once("BigQuery rows after kills", &bigquery_uuids(&bq), &stored);
}

#[test]
fn a_destination_down_for_a_while_builds_lag_then_catches_up() {
    let mut s3 = S3Server::start();
    let config = s3.store_config("lake") + &team(&s3_installation("s3", "jsonl", "events/"));
    let sluice = Sluice::start(&config);
    let mut expected = send(&sluice, 0, 100);
    wait_exported(&sluice, &["team-1/s3"]);
    s3.stop();
    expected.extend(send(&sluice, 100, 200));
    // `/ready` says the store does not answer (it lists the stores every 10 s at most).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = sluice.get("/ready");
        if status == 503 && body.contains("object store `lake` cannot be listed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/ready never told: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = sluice.exports().remove(0);
        if status["retrying_until"].is_string() && status["attempts"].as_u64() >= Some(2) {
            break status;
        }
        assert!(Instant::now() < deadline, "never retried: {status}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status["lag_events"].as_u64().unwrap() >= 180, "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot write"),
        "{status}"
    );
    // The lag grows while the destination is down.
    let before = status["lag_seconds"].as_f64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sluice.exports()[0]["lag_seconds"].as_f64().unwrap() <= before {
        assert!(Instant::now() < deadline, "the lag did not grow");
        std::thread::sleep(Duration::from_millis(100));
    }
    s3.resume();
    wait_exported(&sluice, &["team-1/s3"]);
    assert_exactly_once(
        "objects after the outage",
        &jsonl_uuids(&s3, "events/"),
        &expected,
    );
}

#[test]
fn a_refused_batch_is_dead_lettered_then_replayed_and_delivered() {
    let bq = FakeBigQuery::start();
    let sluice = Sluice::start(&team(&bigquery_installation(&bq)));
    // The stand-in calls one row invalid once: the batch fails for good after the other rows
    // went in.
    bq.fail_next([Fault::InvalidRow(uuid_of(5))]);
    let expected = send(&sluice, 0, 20);
    let deadline = Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let letters = sluice.export_dead_letters();
        if !letters.is_empty() {
            break letters;
        }
        assert!(
            Instant::now() < deadline,
            "never dead-lettered\n{}",
            sluice.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(letters[0]["installation"], "team-1/bq");
    assert!(
        letters[0]["error"]
            .as_str()
            .unwrap()
            .contains("1 invalid rows"),
        "{letters:?}"
    );
    assert_eq!(bigquery_uuids(&bq).len(), expected.len() - 1);
    let status = wait_exported(&sluice, &["team-1/bq"]);
    assert_eq!(status["team-1/bq"]["dead_letters"], 1);
    // The failure is in the installation's log too.
    let logged = sluice.logs(&["--installation", "team-1/bq"]);
    assert!(
        logged.iter().any(|l| l["level"] == "error"
            && l["message"]
                .as_str()
                .unwrap()
                .contains("moved to the export dead letters")),
        "{logged:?}"
    );

    let (ok, out, err) = sluice.run(&["exports", "replay", "--installation", "team-1/bq"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("1 batch(es) of team-1/bq queued for replay"),
        "{out}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sluice.export_dead_letters().is_empty() {
        assert!(
            Instant::now() < deadline,
            "replay never delivered\n{}",
            sluice.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_exactly_once("rows after replay", &bigquery_uuids(&bq), &expected);
    let (ok, _, err) = sluice.run(&["exports", "replay", "--installation", "team-1/bq"]);
    assert!(
        !ok && err.contains("no dead-lettered batch of team-1/bq"),
        "{err}"
    );
}

#[test]
fn outages_and_quota_errors_at_bigquery_are_retried_without_duplicates() {
    let bq = FakeBigQuery::start();
    let sluice = Sluice::start(&team(&bigquery_installation(&bq)));
    bq.fail_next([
        Fault::Status(503, "backendError"),
        Fault::Status(429, "rateLimitExceeded"),
        Fault::Status(403, "quotaExceeded"),
    ]);
    let expected = send(&sluice, 0, 50);
    wait_exported(&sluice, &["team-1/bq"]);
    assert_exactly_once("rows after faults", &bigquery_uuids(&bq), &expected);
    assert!(bq.insert_calls() >= 4);
    assert!(sluice.export_dead_letters().is_empty());
}

#[test]
fn export_config_problems_are_reported_with_their_keys() {
    let stderr = crate::support::serve_fails(&format!(
        "[object_stores.lake]\nkind = \"local\"\n{}",
        team(&format!(
            "[[teams.plugins]]\nid = \"s3\"\nplugin = \"{}\"\nconfig = {{ store = \"lake\", key_template = \"{{prefix}}x\" }}\n\
             grants = [\"object_store\"]\nobject_store = {{ stores = [\"lake\", \"elsewhere\"] }}\n\
             export = {{ max_events = 0 }}\n\
             [[teams.plugins]]\nid = \"down\"\nplugin = \"{}\"\nexport = {{ max_age_seconds = 5 }}\n",
            plugin("s3-export").display(),
            plugin("downsample").display()
        ))
    ));
    for expected in [
        "teams[0].plugins[0].export.max_events: must be between 1 and 100000",
        "teams[0].plugins[0].object_store.stores[1]: no `[object_stores.elsewhere]` is configured (configured: lake)",
    ] {
        assert!(stderr.contains(expected), "{expected}\n{stderr}");
    }
    let stderr = crate::support::serve_fails(&format!(
        "[object_stores.lake]\nkind = \"local\"\n{}",
        team(&format!(
            "[[teams.plugins]]\nid = \"s3\"\nplugin = \"{}\"\nconfig = {{ key_template = \"{{prefix}}x\" }}\n\
             grants = [\"object_store\"]\nobject_store = {{ stores = [\"lake\"] }}\n\
             [[teams.plugins]]\nid = \"down\"\nplugin = \"{}\"\nexport = {{ max_age_seconds = 5 }}\n",
            plugin("s3-export").display(),
            plugin("downsample").display()
        ))
    ));
    assert!(
        stderr.contains("teams[0].plugins[0]: plugin `s3-export` failed to start")
            && stderr.contains("key_template must contain {id}"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "teams[0].plugins[1].export: is set but plugin `downsample` does not export `exporter`"
        ),
        "{stderr}"
    );
}

#[test]
fn a_store_the_export_may_not_use_or_a_bucket_that_does_not_exist_stops_the_start() {
    // A typo in the plugin's `store`: caught when the plugin starts, naming what is granted.
    let stderr = crate::support::serve_fails(&format!(
        "[object_stores.lake]\nkind = \"local\"\n{}",
        team(
            &s3_installation("s3", "jsonl", "events/")
                .replace("store = \"lake\"", "store = \"lakee\"")
        )
    ));
    assert!(
        stderr.contains("teams[0].plugins[0]: plugin `s3-export` failed to start")
            && stderr.contains(
                "config `store`: refused: store `lakee` is not granted to this installation (granted: lake)"
            ),
        "{stderr}"
    );
    // A bucket that does not exist: caught at start, not at the first batch.
    let s3 = S3Server::start();
    let config = s3.store_config("lake").replace(
        &format!("bucket = \"{}\"", crate::s3::BUCKET),
        "bucket = \"nope\"",
    ) + &team(&s3_installation("s3", "jsonl", "events/"));
    let stderr = crate::support::serve_fails(&config);
    assert!(
        stderr.contains("object_stores.lake: bucket `nope` cannot be listed"),
        "{stderr}"
    );
}

#[test]
fn a_backfill_killed_and_resumed_sends_every_event_of_its_range_exactly_once() {
    let s3 = S3Server::start();
    let config = s3.store_config("lake")
        + &team(
            &(s3_installation("s3", "jsonl", "events/")
                + &s3_installation("archive", "jsonl", "archive/")),
        );
    let sluice = Sluice::start(&config);
    // 3,000 events, a day apart in groups of 500: days 0 to 5 of November 2026.
    let day = |d: usize| format!("2026-11-0{}T12:00:00.000Z", d + 1);
    let events: Vec<Value> = (0..3_000)
        .map(|n| {
            json!({"event": "$pageview", "distinct_id": format!("u{}", n % 13), "uuid": uuid_of(100_000 + n),
                   "timestamp": day(n / 500), "properties": {"n": n}})
        })
        .collect();
    for chunk in events.chunks(500) {
        let (status, body) =
            sluice.post_json("/batch", &json!({"api_key": "phc_one", "batch": chunk}));
        assert_eq!(status, 200, "{body}");
    }
    wait_exported(&sluice, &["team-1/s3", "team-1/archive"]);
    // Days 2 and 3: 1,000 events.
    let expected: BTreeSet<String> = (1_000..2_000).map(|n| uuid_of(100_000 + n)).collect();
    let backfill = |extra: &[&str]| {
        let mut command = std::process::Command::new(crate::support::sluice_bin());
        command
            .args(["exports", "backfill", "--config"])
            .arg(sluice.config_path())
            .args([
                "--installation",
                "team-1/archive",
                "--from",
                "2026-11-03",
                "--to",
                "2026-11-05",
            ])
            .args(extra);
        command
    };
    let mut child = backfill(&["--rate", "300"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out, _) = sluice.run(&["exports", "backfills"]);
        let exported = ok
            .then(|| {
                out.lines()
                    .next()
                    .map(|l| serde_json::from_str::<Value>(l).unwrap())
            })
            .flatten()
            .map_or(0, |b| b["exported"].as_u64().unwrap());
        if exported >= 400 {
            break;
        }
        assert!(Instant::now() < deadline, "the backfill made no progress");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let output = crate::support::output(&mut backfill(&[]));
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(out.contains("done: 1000 of 1000 events sent"), "{out}");
    // The backfill's objects, named apart from the live ones, hold the range exactly once.
    let backfilled = jsonl_uuids_of(&s3, "archive/", |key| key.contains("backfill-"));
    assert_exactly_once("backfilled objects", &backfilled, &expected);
    // The live export went on beside it, and a cancel of nothing running says so.
    let statuses = wait_exported(&sluice, &["team-1/archive"]);
    assert_eq!(statuses["team-1/archive"]["exported_events"], 3_000);
    let (ok, _, err) = sluice.run(&[
        "exports",
        "backfill",
        "cancel",
        "--installation",
        "team-1/archive",
    ]);
    assert!(!ok && err.contains("no running backfill"), "{err}");
}

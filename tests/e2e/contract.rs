//! Plugins built against the 0.5.0 contract run beside plugins built against 1.0.0 in one
//! server. `tests/fixtures/contract-0.5.0` holds the first-party plugins (and the prober guest)
//! exactly as they were built for 0.5.0 (`plugins/build.sh` at the last commit before 1.0); the
//! same plugins built from this tree speak 1.0.0. Every hook (transform, exporter, scheduled,
//! jobs) and every capability those plugins use runs through both contracts.

use crate::bigquery::FakeBigQuery;
use crate::exports::wait_exported;
use crate::retention::{capture, retain_now, stored_sessions};
use crate::s3::files;
use crate::support::{Sluice, plugin};
use chrono::Utc;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The contract a plugin was built against.
#[derive(Clone, Copy)]
enum Contract {
    V0_5,
    V1,
}

/// The plugin `name` built against `contract`.
fn built(contract: Contract, name: &str) -> PathBuf {
    match contract {
        Contract::V0_5 => {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/contract-0.5.0")
                .join(format!("{name}.wasm"));
            assert!(path.is_file(), "{} is missing", path.display());
            path
        }
        Contract::V1 => plugin(name),
    }
}

/// A never-firing schedule: the test runs retention by hand.
const NEVER: &str = "0 0 0 1 1 * 2099";

/// Team `team` with every first-party plugin built against `contract`: a chain of property
/// filter (`email`, everywhere), downsampling (keeps all) and GeoIP; exports to the folder store
/// and to the BigQuery stand-in; recording retention archiving to the folder store.
fn team(team: u64, contract: Contract, bq: &FakeBigQuery) -> String {
    let path = |name: &str| built(contract, name).display().to_string();
    format!(
        "[[teams]]\nid = {team}\ntoken = \"phc_{team}\"\n\
         [[teams.plugins]]\nid = \"filter\"\nplugin = \"{filter}\"\nconfig = {{ properties = \"email\" }}\n\
         [[teams.plugins]]\nid = \"sample\"\nplugin = \"{sample}\"\nconfig = {{ percentage = 100 }}\n\
         [[teams.plugins]]\nid = \"geoip\"\nplugin = \"{geoip}\"\ngrants = [\"geoip\"]\n\
         [[teams.plugins]]\nid = \"s3\"\nplugin = \"{s3}\"\n\
         config = {{ store = \"folder\", prefix = \"events/\", format = \"jsonl\" }}\n\
         grants = [\"object_store\"]\nobject_store = {{ stores = [\"folder\"], prefix = \"team-{team}/\" }}\n\
         export = {{ max_events = 7, max_age_seconds = 1 }}\n\
         [[teams.plugins]]\nid = \"bq\"\nplugin = \"{bigquery}\"\n\
         config = {{ key_json = '''{key}''', dataset_id = \"analytics\", table_id = \"events\", api_base = \"{api}\" }}\n\
         grants = [\"http\"]\nhttp = {{ allow_hosts = [\"127.0.0.1\"], allow_private_addresses = true }}\n\
         export = {{ max_events = 7, max_age_seconds = 1 }}\n\
         [[teams.plugins]]\nid = \"retention\"\nplugin = \"{retention}\"\n\
         config = {{ store = \"folder\", prefix = \"rec/\", retention_days = 7 }}\n\
         grants = [\"recordings\", \"object_store\", \"jobs\", \"log\"]\n\
         object_store = {{ stores = [\"folder\"], prefix = \"team-{team}/\" }}\n\
         schedule = {{ tasks = {{ retain = \"{NEVER}\" }} }}\n",
        filter = path("property-filter"),
        sample = path("downsample"),
        geoip = path("geoip"),
        s3 = path("s3-export"),
        bigquery = path("bigquery-export"),
        retention = path("recording-retention"),
        key = bq.key_json,
        api = bq.url,
    )
}

/// A server with the test GeoIP database, a local folder store and `teams`.
fn start(teams: &str) -> Sluice {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("GeoIP2-City-Test.mmdb");
    sluice_demo_geoip::write(&db, "Linköping").unwrap();
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nworkers = 1\n\
         [geoip]\ndatabase = \"{}\"\n[object_stores.folder]\nkind = \"local\"\n{teams}",
        db.display(),
    );
    std::fs::write(dir.path().join("sluice.toml"), config).unwrap();
    Sluice::start_in(dir)
}

/// Sends 20 identified events with personal data to `team`; returns their uuids.
fn send(sluice: &Sluice, team: u64) -> BTreeSet<String> {
    let events: Vec<Value> = (0..20)
        .map(|i| {
            json!({"event": "$identify", "distinct_id": format!("user-{i}"),
                   "uuid": format!("0190a000-0000-7000-8000-{team:04}{i:08}"),
                   "properties": {"email": "a@b.example", "$ip": "89.160.20.115",
                                  "$set": {"email": "a@b.example", "plan": "pro"}}})
        })
        .collect();
    let (status, body) = sluice.post_json(
        "/batch",
        &json!({"api_key": format!("phc_{team}"), "batch": events}),
    );
    assert_eq!(status, 200, "{body}");
    sluice.drain();
    events
        .iter()
        .map(|e| e["uuid"].as_str().unwrap().to_owned())
        .collect()
}

/// The uuids of the events in the JSON-lines objects of `team` in the folder store.
fn exported_to_folder(sluice: &Sluice, team: u64) -> Vec<String> {
    let root = sluice
        .dir
        .path()
        .join(format!("data/objects/folder/team-{team}/events"));
    let mut uuids = Vec::new();
    for body in files(&root).values() {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text)
            .unwrap();
        for line in text.lines() {
            let event: Value = serde_json::from_str(line).unwrap();
            uuids.push(event["uuid"].as_str().unwrap().to_owned());
        }
    }
    uuids.sort();
    uuids
}

#[test]
fn plugins_built_against_0_5_0_run_beside_the_same_plugins_built_against_1_0_0() {
    let bq = FakeBigQuery::start();
    let sluice = start(&(team(1, Contract::V0_5, &bq) + &team(2, Contract::V1, &bq)));

    // Transforms: every event filtered (person data too), sampled and located, both contracts.
    let sent: BTreeMap<u64, BTreeSet<String>> =
        [1, 2].into_iter().map(|t| (t, send(&sluice, t))).collect();
    for t in [1, 2] {
        let stored = sluice.events(t);
        assert_eq!(stored.len(), 20, "team {t}");
        for event in &stored {
            let p = &event["properties"];
            assert!(p.get("email").is_none(), "team {t}: {event}");
            assert!(p["$set"].get("email").is_none(), "team {t}: {event}");
            assert_eq!(p["$set"]["plan"], "pro");
            assert_eq!(p["$geoip_city_name"], "Linköping", "team {t}: {event}");
        }
    }

    // Exports: every stored event once in the folder store and in the table, both contracts.
    wait_exported(
        &sluice,
        &["team-1/s3", "team-2/s3", "team-1/bq", "team-2/bq"],
    );
    for t in [1, 2] {
        let expected: Vec<String> = sent[&t].iter().cloned().collect();
        assert_eq!(exported_to_folder(&sluice, t), expected, "team {t}");
    }
    let mut in_table: Vec<String> = bq
        .rows()
        .iter()
        .map(|row| row["uuid"].as_str().unwrap().to_owned())
        .collect();
    in_table.sort();
    let all: Vec<String> = sent.values().flatten().cloned().collect();
    assert_eq!(in_table, all);

    // Tasks, jobs and recordings: old sessions archived and deleted, both contracts.
    let old = Utc::now().timestamp_millis() - 10 * 86_400_000;
    for t in [1, 2] {
        capture(
            &sluice,
            t,
            &[
                ("old", vec![old, old + 1_000]),
                ("recent", vec![Utc::now().timestamp_millis()]),
            ],
        );
        retain_now(&sluice, t);
        assert_eq!(
            stored_sessions(&sluice, t),
            BTreeMap::from([("recent".to_owned(), 1)]),
            "team {t}"
        );
        let archived = files(
            &sluice
                .dir
                .path()
                .join(format!("data/objects/folder/team-{t}/rec")),
        );
        assert_eq!(archived.len(), 1, "team {t}: {:?}", archived.keys());
    }
}

#[test]
fn a_filter_declares_its_safe_failure_default_and_the_operator_may_override_it() {
    // The filter's instance is capped so small that an event with a large property makes it
    // run out of memory. Built against 1.0.0, the property filter declares `dead_letter`: the
    // event waits in the dead letters, unfiltered data is never stored. Built against 0.5.0, it
    // could declare nothing, so it keeps 0.5.0's `skip`; an operator may set either.
    let installation = |team: u64, contract: Contract, on_error: &str| {
        format!(
            "[[teams]]\nid = {team}\ntoken = \"phc_{team}\"\n[[teams.plugins]]\nid = \"filter\"\n\
             plugin = \"{}\"\nconfig = {{ properties = \"email\" }}\nmemory_mb = 2\n{on_error}\n",
            built(contract, "property-filter").display()
        )
    };
    let sluice = Sluice::start(
        &(installation(1, Contract::V1, "")
            + &installation(2, Contract::V0_5, "")
            + &installation(3, Contract::V1, "on_error = \"skip\"")),
    );
    let large = "x".repeat(3 << 20);
    for t in [1, 2, 3] {
        let (status, body) = sluice.post_json(
            "/batch",
            &json!({"api_key": format!("phc_{t}"), "batch": [
                {"event": "small", "distinct_id": "u", "properties": {"email": "a@b.example"}},
                {"event": "large", "distinct_id": "u", "properties": {"email": "a@b.example", "blob": large}},
            ]}),
        );
        assert_eq!(status, 200, "{body}");
    }
    sluice.drain();
    let stored = |t: u64| -> BTreeMap<String, bool> {
        sluice
            .events(t)
            .iter()
            .map(|e| {
                let name = e["event"].as_str().unwrap().to_owned();
                (name, e["properties"].get("email").is_some())
            })
            .collect()
    };
    let dead = |t: u64| -> Vec<String> {
        sluice
            .dead_letters(t)
            .iter()
            .map(|d| d["event"]["event"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    // 1.0.0, default: the failed event is dead-lettered, the other filtered and stored.
    assert_eq!(stored(1), BTreeMap::from([("small".to_owned(), false)]));
    assert_eq!(dead(1), ["large"]);
    // 0.5.0, default `skip`: the failed event is stored as it came.
    assert_eq!(
        stored(2),
        BTreeMap::from([("large".to_owned(), true), ("small".to_owned(), false)])
    );
    assert!(dead(2).is_empty());
    // 1.0.0, the operator chose `skip`.
    assert_eq!(
        stored(3),
        BTreeMap::from([("large".to_owned(), true), ("small".to_owned(), false)])
    );
}

#[test]
fn every_capability_answers_a_0_5_0_plugin_as_it_answers_a_1_0_0_one() {
    // The prober writes what the host answered (a value or an error) into each event.
    let actions = [
        "storage_count",
        "storage_list",
        "storage_oversize",
        "cache_count",
        "geoip",
    ];
    let prober = |team: u64, contract: Contract, action: &str| {
        format!(
            "[[teams]]\nid = {team}\ntoken = \"phc_{team}\"\n[[teams.plugins]]\nid = \"probe\"\n\
             plugin = \"{}\"\nconfig = {{ action = \"{action}\" }}\n\
             grants = [\"log\", \"storage\", \"cache\", \"geoip\", \"http\"]\n\
             http = {{ allow_hosts = [\"127.0.0.1\"] }}\n",
            built(contract, "prober").display()
        )
    };
    let mut teams = String::new();
    for (k, action) in (0..).zip(actions) {
        teams += &prober(10 + k, Contract::V0_5, action);
        teams += &prober(20 + k, Contract::V1, action);
    }
    let sluice = start(&teams);
    let probes = |team: u64| -> Vec<Value> {
        let events: Vec<Value> = (0..3)
            .map(|i| json!({"event": "probe", "distinct_id": format!("user-{i}")}))
            .collect();
        for event in events {
            let (status, body) = sluice.post_json(
                "/batch",
                &json!({"api_key": format!("phc_{team}"), "batch": [event]}),
            );
            assert_eq!(status, 200, "{body}");
            sluice.drain();
        }
        let mut stored = sluice.events(team);
        stored.sort_by_key(|e| e["distinct_id"].as_str().unwrap().to_owned());
        stored
            .iter()
            .map(|e| e["properties"]["probe"].clone())
            .collect()
    };
    let mut answers = BTreeMap::new();
    for (k, action) in (0..).zip(actions) {
        let legacy = probes(10 + k);
        assert_eq!(legacy.len(), 3, "{action}");
        assert_eq!(legacy, probes(20 + k), "{action}");
        answers.insert(action, legacy);
    }
    assert_eq!(
        answers["storage_count"],
        [json!({"ok": 1}), json!({"ok": 2}), json!({"ok": 3})]
    );
    assert_eq!(answers["storage_oversize"][0]["error"]["kind"], "TooLarge");
    // The capture address (loopback) is private: located nowhere, by either contract.
    assert_eq!(answers["geoip"][0], json!({"ok": null}));
}

//! Changing a chain safely, with the real binary: tests in config (`sluice test`), replay with
//! a diff (`sluice replay`), shadow installations on live traffic, failure bundles (`sluice
//! debug replay`), versions and rollback (by hand and by the breaker).

use crate::support::{Sluice, output, plugin, sluice_bin};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `sluice` with `args`; (exit code, stdout, stderr).
fn sluice(args: &[&str]) -> (i32, String, String) {
    let output = output(Command::new(sluice_bin()).args(args));
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// Captures `count` `$pageview`s for `token`, each with `$browser` and `n`.
fn capture(sluice: &Sluice, token: &str, name: &str, count: usize) {
    let batch: Vec<Value> = (0..count)
        .map(|n| {
            json!({"event": name, "distinct_id": format!("user-{}", n % 17),
                   "properties": {"$browser": "Firefox", "n": n}})
        })
        .collect();
    for chunk in batch.chunks(100) {
        let (status, body) =
            sluice.post_json("/batch/", &json!({"api_key": token, "batch": chunk}));
        assert_eq!(status, 200, "{body}");
    }
}

/// `sluice replay --config current --candidate candidate ARGS --format json`'s report.
fn replay(current: &Path, candidate: &Path, args: &[&str]) -> Value {
    let mut all = vec![
        "replay",
        "--config",
        current.to_str().unwrap(),
        "--candidate",
        candidate.to_str().unwrap(),
        "--format",
        "json",
    ];
    all.extend(args);
    let (code, out, err) = sluice(&all);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// Polls `f` until it gives a value, for at most 30 s.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn config_tests_fake_the_capabilities_pass_and_fail_like_cargo_test() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("city.mmdb");
    sluice_demo_geoip::write(&db, "Linköping").unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = \"data\"\n[geoip]\ndatabase = \"{}\"\n\
             [[teams]]\nid = 1\ntoken = \"phc_tests\"\n\
             [[teams.plugins]]\nid = \"filter\"\nplugin = \"{}\"\nconfig = {{ properties = \"$browser\" }}\n\
             [[teams.plugins]]\nid = \"where\"\nplugin = \"{prober}\"\nconfig = {{ action = \"geoip\" }}\ngrants = [\"log\", \"storage\", \"cache\", \"geoip\", \"http\"]\n\
             http = {{ allow_hosts = [\"api.example.com\"] }}\n\
             [[teams.plugins]]\nid = \"call\"\nplugin = \"{prober}\"\nconfig = {{ action = \"http\", url = \"https://api.example.com/rates\" }}\ngrants = [\"log\", \"storage\", \"cache\", \"geoip\", \"http\"]\n\
             http = {{ allow_hosts = [\"api.example.com\"] }}\n\
             [[tests]]\nname = \"the filter removes the browser\"\ninstallation = \"filter\"\n\
             events = [{{ event = \"$pageview\", distinct_id = \"u1\", properties = {{ \"$browser\" = \"Firefox\", n = 1 }} }}]\n\
             [[tests.expect]]\nabsent = [\"properties.$browser\"]\nequal = {{ \"properties.n\" = 1 }}\n",
            db.display(),
            plugin("property-filter").display(),
            prober = plugin("prober").display(),
        ),
    )
    .unwrap();
    let scenarios = dir.path().join("scenarios.toml");
    std::fs::write(
        &scenarios,
        "[[tests]]\nname = \"geoip answers from the fakes, not the database\"\ninstallation = \"where\"\n\
         events = [{ event = \"e\", distinct_id = \"u\", ip = \"81.2.69.142\" }]\n\
         fakes.geoip.\"81.2.69.142\" = { city_name = \"Wellington\" }\n\
         [[tests.expect]]\nequal = { \"properties.probe\" = { ok = \"Wellington\" } }\n\
         [[tests]]\nname = \"http is answered by the fakes and never sent\"\ninstallation = \"call\"\n\
         events = [{ event = \"e\", distinct_id = \"u\" }]\n\
         fakes.http = [{ url = \"https://api.example.com/*\", status = 201, body = \"NZD\" }]\n\
         [[tests.expect]]\nequal = { \"properties.probe\" = { ok = { status = 201, body = \"NZD\" } } }\n\
         [[tests]]\nname = \"a wrong expectation\"\ninstallation = \"filter\"\n\
         events = [{ event = \"e\", distinct_id = \"u\", properties = { \"$browser\" = \"Firefox\" } }]\n\
         [[tests.expect]]\nequal = { \"properties.$browser\" = \"Firefox\" }\n",
    )
    .unwrap();
    let (code, out, err) = sluice(&[
        "test",
        "--config",
        config.to_str().unwrap(),
        scenarios.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}\n{err}");
    for line in [
        "running 4 tests",
        "test the filter removes the browser ... ok",
        "test geoip answers from the fakes, not the database ... ok",
        "test http is answered by the fakes and never sent ... ok",
        "test a wrong expectation ... FAILED",
        "event 1: properties.$browser\n  - expected: \"Firefox\"\n  + actual:   (absent)",
        "test result: FAILED. 3 passed; 1 failed",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    // Without the wrong test, the run passes.
    let (code, out, _) = sluice(&["test", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("test result: ok. 1 passed; 0 failed"), "{out}");
}

#[test]
fn a_replay_names_the_property_the_candidate_drops_and_how_often() {
    let team = format!(
        "[[teams]]\nid = 1\ntoken = \"phc_replay\"\n[[teams.plugins]]\nid = \"sample\"\nplugin = \"{}\"\nconfig = {{ percentage = 50 }}\n",
        plugin("downsample").display()
    );
    let sluice_server = Sluice::start(&team);
    capture(&sluice_server, "phc_replay", "$pageview", 600);
    sluice_server.drain();
    let kept = sluice_server.events(1).len();
    assert!(kept > 200 && kept < 400, "{kept}");
    let current = sluice_server.config_path();
    let candidate = sluice_server.dir.path().join("candidate.toml");
    std::fs::write(
        &candidate,
        format!(
            "{}\n[[teams.plugins]]\nid = \"filter\"\nplugin = \"{}\"\nconfig = {{ properties = \"$browser\" }}\n",
            std::fs::read_to_string(&current).unwrap(),
            plugin("property-filter").display()
        ),
    )
    .unwrap();
    let report = replay(&current, &candidate, &[]);
    assert_eq!(report["events"], 600);
    // The downsampling is the same in both; the candidate removes `$browser` from what it keeps.
    assert_eq!(report["diff"]["first"]["stored"], kept);
    assert_eq!(report["diff"]["second"]["stored"], kept);
    assert_eq!(
        report["diff"]["keys"]["properties.$browser"],
        json!({"added": 0, "removed": kept, "changed": 0})
    );
    assert_eq!(report["diff"]["differences"]["changed"]["count"], kept);
    let sample = &report["diff"]["differences"]["changed"]["samples"][0];
    assert_eq!(sample["changes"][0]["key"], "properties.$browser");
    let filter = &report["candidate"][1];
    assert_eq!(filter["installation"], "team-1/filter");
    assert_eq!(filter["events"], kept);
    assert_eq!(filter["changed"], kept);
    assert!(
        filter["p99_ms"].as_f64().is_some() && filter["memory_peak_mib"].as_f64().unwrap() > 0.0
    );
    // The table says the same to a person.
    let (code, table, _) = sluice(&[
        "replay",
        "--config",
        current.to_str().unwrap(),
        "--candidate",
        candidate.to_str().unwrap(),
        "--limit",
        "100",
    ]);
    assert_eq!(code, 0);
    assert!(table.contains("replayed 100 events"), "{table}");
    assert!(table.contains("properties.$browser"), "{table}");
    // A file of events replays the same way, and nothing of either run was stored.
    let file = sluice_server.dir.path().join("events.jsonl");
    std::fs::write(
        &file,
        "{\"event\": \"a\", \"distinct_id\": \"x\", \"properties\": {\"$browser\": \"Opera\"}}\n",
    )
    .unwrap();
    let report = replay(&current, &candidate, &["--from", file.to_str().unwrap()]);
    assert_eq!(report["events"], 1);
    assert_eq!(sluice_server.events(1).len(), kept);
}

#[test]
fn a_shadow_that_panics_on_every_event_changes_nothing_live_and_a_good_one_is_promoted() {
    let config = format!(
        "[[teams]]\nid = 1\ntoken = \"phc_shadow_bad\"\n\
         [[teams.plugins]]\nid = \"live\"\nplugin = \"{passthrough}\"\n\
         breaker = {{ consecutive_failures = 3, cooldown_seconds = 60, max_cooldown_seconds = 60 }}\n\
         [[teams.plugins]]\nid = \"crash\"\nplugin = \"{adversary}\"\nconfig = {{ mode = \"panic\", trigger = \"$pageview\" }}\n\
         on_error = \"drop\"\nshadow = true\n\
         breaker = {{ consecutive_failures = 3, cooldown_seconds = 60, max_cooldown_seconds = 60 }}\n\
         [[teams]]\nid = 2\ntoken = \"phc_shadow_good\"\n\
         [[teams.plugins]]\nid = \"stamp\"\nplugin = \"{stamper}\"\nconfig = {{ key = \"version\", value = \"1\" }}\n\
         [[teams.plugins]]\nid = \"stamp-v2\"\nplugin = \"{stamper}\"\nconfig = {{ key = \"version\", value = \"2\" }}\n\
         shadow = true\nsample = 0.5\nreplaces = \"stamp\"\n",
        passthrough = plugin("passthrough").display(),
        adversary = plugin("adversary").display(),
        stamper = plugin("stamper").display(),
    );
    let sluice_server = Sluice::start(&config);
    capture(&sluice_server, "phc_shadow_bad", "$pageview", 200);
    capture(&sluice_server, "phc_shadow_good", "$pageview", 400);
    sluice_server.drain();
    // Live: every event stored, untouched, and the live breaker closed.
    assert_eq!(sluice_server.events(1).len(), 200);
    assert!(
        sluice_server
            .events(2)
            .iter()
            .all(|e| e["properties"]["version"] == "1")
    );
    let (_, teams) = sluice_server.admin("GET", "/admin/v1/teams", None);
    let live = teams.to_string();
    assert!(!live.contains("breaker_open"), "{live}");
    assert!(
        !live.contains("crash"),
        "a shadow is not in the live chains: {live}"
    );
    // The shadow side: the panicking chain dropped what the live one stored.
    // Done once team 1's 200 are compared and team 2's count holds still for a second.
    let mut last = None;
    let report = wait_for("the shadow report", || {
        let (status, report) = sluice_server.admin("GET", "/admin/v1/shadow", None);
        assert_eq!(status, 200, "{report}");
        let counts = (
            report["teams"][0]["diff"]["events"].clone(),
            report["teams"][1]["diff"]["events"].clone(),
        );
        let settled = counts.0 == 200 && last.as_ref() == Some(&counts);
        last = Some(counts);
        std::thread::sleep(Duration::from_millis(900));
        settled.then_some(report)
    });
    let bad = &report["teams"][0];
    assert_eq!(bad["team"], 1);
    assert_eq!(bad["diff"]["first"]["stored"], 200);
    assert_eq!(bad["diff"]["second"]["dropped"], 200);
    assert_eq!(bad["diff"]["differences"]["stored → dropped"]["count"], 200);
    let crash = &bad["candidate"][1];
    assert_eq!(crash["installation"], "team-1/crash~shadow");
    assert_eq!(crash["failed"], 200, "{crash}");
    // About half of team 2's events, each with the version the candidate would stamp.
    let good = &report["teams"][1];
    let sampled = good["diff"]["events"].as_u64().unwrap();
    assert!(sampled > 120 && sampled < 280, "{sampled}");
    assert_eq!(
        good["diff"]["keys"]["properties.version"],
        json!({"added": 0, "removed": 0, "changed": sampled})
    );
    let (ok, out, err) = sluice_server.run(&["shadow", "report"]);
    assert!(ok, "{err}");
    assert!(out.contains("stored → dropped: 200"), "{out}");
    // Promoted: stamp-v2 replaces stamp, by a reload that loses nothing.
    let (ok, out, err) =
        sluice_server.run(&["shadow", "promote", "--installation", "team-2/stamp-v2"]);
    assert!(ok, "{err}");
    assert!(out.contains("in place of team-2/stamp"), "{out}");
    let text = std::fs::read_to_string(sluice_server.config_path()).unwrap();
    assert!(
        !text.contains("id = \"stamp\"\n") && !text.contains("replaces"),
        "{text}"
    );
    capture(&sluice_server, "phc_shadow_good", "after", 50);
    sluice_server.drain();
    let events = sluice_server.events(2);
    assert_eq!(events.len(), 450);
    let after: Vec<&Value> = events.iter().filter(|e| e["event"] == "after").collect();
    assert_eq!(after.len(), 50);
    assert!(after.iter().all(|e| e["properties"]["version"] == "2"));
}

#[test]
fn a_bundle_from_a_timeout_reproduces_it_and_the_fixed_plugin_passes() {
    let config = format!(
        "[[teams]]\nid = 1\ntoken = \"phc_bundle\"\n\
         [[teams.plugins]]\nid = \"wobbly\"\nplugin = \"{}\"\ngrants = [\"storage\"]\nbundles = true\ntimeout_ms = 300\n",
        plugin("wobbly").display()
    );
    let sluice_server = Sluice::start(&config);
    capture(&sluice_server, "phc_bundle", "$pageview", 5);
    let (status, body) = sluice_server.post_json(
        "/capture/",
        &json!({"api_key": "phc_bundle", "event": "spin", "distinct_id": "u", "properties": {"spin": true}}),
    );
    assert_eq!(status, 200, "{body}");
    sluice_server.drain();
    let (ok, out, err) = sluice_server.run(&["debug", "bundles"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(listed["kind"], "timeout");
    assert_eq!(listed["events"], 1);
    let path = listed["path"].as_str().unwrap();
    let bundle: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(bundle["readable"][0]["event"], "spin");
    assert_eq!(bundle["journal"]["setup"][0]["op"], "storage.get");
    assert!(Path::new(path).starts_with(sluice_server.dir.path().join("data/bundles")));

    let (code, out, _) = sluice(&["debug", "replay", path]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ran against the same plugin"), "{out}");
    assert!(out.contains("still fails, the same way: timeout"), "{out}");
    let (code, out, _) = sluice(&[
        "debug",
        "replay",
        path,
        "--plugin",
        plugin("wobbly-fixed").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let rerun: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rerun["failure"], Value::Null);
    assert_eq!(rerun["same_plugin"], false);
    assert_eq!(rerun["outcomes"], json!(["patched"]));
}

#[test]
fn an_event_reported_failed_in_a_call_that_returns_leaves_a_bundle_of_its_batch() {
    let config = format!(
        "[[teams]]\nid = 1\ntoken = \"phc_error\"\n\
         [[teams.plugins]]\nid = \"adv\"\nplugin = \"{}\"\nconfig = {{ mode = \"error\", trigger = \"bad\" }}\nbundles = true\n",
        plugin("adversary").display()
    );
    let sluice_server = Sluice::start(&config);
    let batch = json!({"api_key": "phc_error", "batch": [
        {"event": "good", "distinct_id": "u"}, {"event": "bad", "distinct_id": "u"}, {"event": "good", "distinct_id": "u"},
    ]});
    assert_eq!(sluice_server.post_json("/batch/", &batch).0, 200);
    sluice_server.drain();
    let (ok, out, err) = sluice_server.run(&["debug", "bundles"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(listed["kind"], "plugin_error");
    assert_eq!(listed["events"], 3);
    let (code, out, _) = sluice(&[
        "debug",
        "replay",
        listed["path"].as_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 1, "{out}");
    let rerun: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rerun["reproduced"], true, "{rerun}");
    assert_eq!(rerun["outcomes"][1], "failed: adversary fails this event");
}

#[test]
fn rollback_returns_to_the_last_good_version_by_hand_or_when_the_breaker_trips() {
    let versions = tempfile::tempdir().unwrap();
    let (good, bad) = (
        versions.path().join("good.wasm"),
        versions.path().join("bad.wasm"),
    );
    std::fs::copy(plugin("wobbly-fixed"), &good).unwrap();
    std::fs::copy(plugin("wobbly"), &bad).unwrap();
    let installation = |file: &Path, extra: &str| {
        format!(
            "[[teams]]\nid = 1\ntoken = \"phc_rollback\"\n\
             [[teams.plugins]]\nid = \"w\"\nplugin = \"{}\"\ngrants = [\"storage\"]\ntimeout_ms = 200\n\
             breaker = {{ consecutive_failures = 2, cooldown_seconds = 60, max_cooldown_seconds = 60 }}\n{extra}",
            file.display()
        )
    };
    let mut sluice_server = Sluice::start(&installation(&good, "auto_rollback = true\n"));
    let reload = |sluice_server: &Sluice, teams: &str| {
        let path = sluice_server.config_path();
        let text = std::fs::read_to_string(&path).unwrap();
        let head = &text[..text.find("[[teams]]").unwrap()];
        std::fs::write(&path, format!("{head}{teams}")).unwrap();
        sluice_server.run(&["reload"])
    };
    let spin = |sluice_server: &Sluice, n: usize| {
        for _ in 0..n {
            let (status, _) = sluice_server.post_json(
                "/capture/",
                &json!({"api_key": "phc_rollback", "event": "spin", "distinct_id": "u", "properties": {"spin": true}}),
            );
            assert_eq!(status, 200);
        }
        sluice_server.drain();
    };
    // A version asking for a capability it is not granted is refused, old and new side by side.
    let (ok, _, err) = reload(
        &sluice_server,
        &installation(&plugin("prober"), "config = { action = \"geoip\" }\n"),
    );
    assert!(!ok);
    for part in ["in force (", "needs      storage", "missing", "geoip"] {
        assert!(err.contains(part), "missing {part:?} in {err}");
    }
    // The bad version trips its breaker right after the reload: it is rolled back by itself.
    let (ok, _, err) = reload(
        &sluice_server,
        &installation(&bad, "auto_rollback = true\n"),
    );
    assert!(ok, "{err}");
    spin(&sluice_server, 3);
    let rolled = wait_for("the automatic rollback", || {
        let (_, answer) =
            sluice_server.admin("GET", "/admin/v1/versions?installation=team-1/w", None);
        (answer["rollbacks"].as_array().unwrap().len() == 1).then_some(answer)
    });
    let rollback = &rolled["rollbacks"][0];
    let (_, made) = sluice_server.admin("GET", "/admin/v1/rollbacks", None);
    assert_eq!(&made[0], rollback);
    assert!(
        rollback["reason"]
            .as_str()
            .unwrap()
            .starts_with("auto_rollback"),
        "{rollback}"
    );
    let text = std::fs::read_to_string(sluice_server.config_path()).unwrap();
    assert!(
        text.contains(rollback["to"]["file"].as_str().unwrap()),
        "{text}"
    );
    let logged = sluice_server.logs(&["--installation", "team-1/w"]);
    assert!(
        logged.iter().any(|l| l["message"]
            .as_str()
            .unwrap()
            .starts_with("rolled back from")),
        "{logged:?}"
    );
    // The good version stores what the bad one could not.
    spin(&sluice_server, 1);
    let stamped = sluice_server
        .events(1)
        .iter()
        .filter(|e| e["properties"]["wobbly_count"].is_number())
        .count();
    assert_eq!(stamped, 1);
    // By hand: back to the bad version's predecessor is refused (it was marked bad), a restart
    // keeps the versions, and an explicit `--to` works.
    let (ok, _, err) = sluice_server.run(&["rollback", "--installation", "team-1/w"]);
    assert!(!ok && err.contains("no earlier good version"), "{err}");
    sluice_server.restart();
    let (ok, out, err) = sluice_server.run(&["versions", "--installation", "team-1/w"]);
    assert!(ok, "{err}");
    let listed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(
        listed[1]["bad"]
            .as_str()
            .unwrap()
            .starts_with("auto_rollback")
    );
    let bad_sha = listed[1]["sha256"].as_str().unwrap().to_owned();
    let (ok, out, err) =
        sluice_server.run(&["rollback", "--installation", "team-1/w", "--to", &bad_sha]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("to {bad_sha}")), "{out}");
}

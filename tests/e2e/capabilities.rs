//! Host capabilities through the running binary: grants, the GeoIP chain, storage, cache, http
//! and log limits, with the `prober` guest asking for what the host must refuse.

use crate::support::{Sluice, plugin, serve_fails};
use serde_json::{Value, json};
use sluice_plugin_downsample::hash_fraction;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

const ALL_GRANTS: &str = r#"grants = ["log", "storage", "cache", "geoip", "http"]"#;

/// A team whose chain is one prober installation doing `action`; `http` is its http policy.
pub(crate) fn prober_team(team: u64, action: &str, url: &str, http: &str) -> String {
    format!(
        "[[teams]]\nid = {team}\ntoken = \"phc_team{team}\"\n[[teams.plugins]]\nid = \"prober\"\n\
         plugin = \"{}\"\nconfig = {{ action = \"{action}\", url = \"{url}\" }}\n{ALL_GRANTS}\nhttp = {http}\n",
        plugin("prober").display()
    )
}

/// A team whose chain is `[downsample 50%, geoip]`, or just `[geoip]`.
fn geoip_team(team: u64, with_downsample: bool) -> String {
    geoip_team_granted(team, with_downsample, r#"["geoip"]"#)
}

/// [`geoip_team`] with the geoip installation granted `grants` (a TOML array).
fn geoip_team_granted(team: u64, with_downsample: bool, grants: &str) -> String {
    let mut text = format!("[[teams]]\nid = {team}\ntoken = \"phc_team{team}\"\n");
    if with_downsample {
        text += &format!(
            "[[teams.plugins]]\nid = \"downsample\"\nplugin = \"{}\"\nconfig = {{ percentage = 50 }}\n",
            plugin("downsample").display()
        );
    }
    text += &format!(
        "[[teams.plugins]]\nid = \"geoip\"\nplugin = \"{}\"\ngrants = {grants}\n",
        plugin("geoip").display()
    );
    text
}

/// A server with the test GeoIP database and the teams in `teams` (TOML).
fn geoip_sluice(teams: &str) -> Sluice {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("GeoIP2-City-Test.mmdb");
    sluice_demo_geoip::write(&db, "Linköping").unwrap();
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nworkers = 1\n\
         [geoip]\ndatabase = \"{}\"\n{teams}",
        db.display(),
    );
    std::fs::write(dir.path().join("sluice.toml"), config).unwrap();
    Sluice::start_in(dir)
}

/// How many geoip instances the server started, from `/metrics`.
fn geoip_instance_starts(sluice: &Sluice) -> f64 {
    let (_, metrics) = sluice.get("/metrics");
    metrics
        .lines()
        .filter(|l| l.starts_with("sluice_plugin_instances_started_total") && l.contains("/geoip"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sends one event per distinct id to `team` and waits until they are processed.
pub(crate) fn send(sluice: &Sluice, team: u64, events: Vec<Value>) {
    let body = json!({"api_key": format!("phc_team{team}"), "batch": events});
    let (status, response) = sluice.post_json("/batch", &body);
    assert_eq!(status, 200, "{response}");
    sluice.drain();
}

/// The `probe` property of each stored event of `team`, in order.
pub(crate) fn probes(sluice: &Sluice, team: u64) -> Vec<Value> {
    sluice
        .events(team)
        .iter()
        .map(|e| e["properties"]["probe"].clone())
        .collect()
}

fn refusal(probe: &Value) -> (&str, &str) {
    (
        probe["error"]["kind"].as_str().unwrap_or_default(),
        probe["error"]["message"].as_str().unwrap_or_default(),
    )
}

/// A one-connection-at-a-time HTTP server on a free local port answering `pong`.
fn pong_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0; 4096];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\npong",
            );
        }
    });
    port
}

#[test]
fn downsample_then_geoip_enriches_kept_events_and_teams_share_one_geoip_instance() {
    let sluice = geoip_sluice(&(geoip_team(1, true) + &geoip_team(2, false)));

    let ids: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let events: Vec<Value> = ids
        .iter()
        .map(|id| json!({"event": "$pageview", "distinct_id": id, "properties": {"$ip": "89.160.20.115"}}))
        .collect();
    send(&sluice, 1, events);
    let stored = sluice.events(1);
    let kept: BTreeSet<&str> = stored
        .iter()
        .map(|e| e["distinct_id"].as_str().unwrap())
        .collect();
    let expected: BTreeSet<&str> = ids
        .iter()
        .filter(|id| hash_fraction(id) <= 0.5)
        .map(String::as_str)
        .collect();
    assert_eq!(kept, expected, "downsampling ran before geoip");
    for event in &stored {
        let p = &event["properties"];
        assert_eq!(p["$geoip_city_name"], "Linköping", "{event}");
        assert_eq!(p["$geoip_country_code"], "SE");
        assert_eq!(p["$geoip_continent_name"], "Europe");
        assert_eq!(p["$geoip_subdivision_1_code"], "E");
        assert_eq!(p["$geoip_accuracy_radius"], 76);
        assert_eq!(p["$geoip_time_zone"], "Europe/Stockholm");
        assert_eq!(p["$set"]["$geoip_country_name"], "Sweden");
        assert_eq!(p["$set_once"]["$initial_geoip_city_name"], "Linköping");
    }

    // Team 2: private, unknown, disabled and user-set cases through the same shared instance.
    send(
        &sluice,
        2,
        vec![
            json!({"event": "private", "distinct_id": "a", "properties": {"$ip": "192.168.1.20"}}),
            json!({"event": "unknown", "distinct_id": "b", "properties": {"$ip": "8.8.8.8"}}),
            json!({"event": "disabled", "distinct_id": "c", "properties": {"$ip": "89.160.20.113", "$geoip_disable": true}}),
            json!({"event": "mine", "distinct_id": "d", "properties": {"$ip": "89.160.20.113", "$set": {"$geoip_city_name": "Mine"}}}),
        ],
    );
    let by_name = |name: &str| {
        sluice
            .events(2)
            .into_iter()
            .find(|e| e["event"] == name)
            .unwrap()
    };
    for name in ["private", "unknown", "disabled"] {
        let event = by_name(name);
        assert!(
            event["properties"].get("$geoip_city_name").is_none(),
            "{event}"
        );
    }
    let mine = by_name("mine");
    assert_eq!(mine["properties"]["$set"]["$geoip_city_name"], "Mine");
    assert_eq!(mine["properties"]["$geoip_city_name"], "Linköping");

    // Both teams' geoip installations were served by one instance (one lane, one start).
    assert_eq!(geoip_instance_starts(&sluice), 1.0);
}

#[test]
fn installations_granted_differently_never_share_an_instance() {
    let teams = geoip_team(1, false)
        + &geoip_team(2, false)
        + &geoip_team_granted(3, false, r#"["geoip", "log"]"#);
    let sluice = geoip_sluice(&teams);
    for team in 1..=3 {
        send(
            &sluice,
            team,
            vec![json!({"event": "e", "distinct_id": "u", "properties": {"$ip": "89.160.20.115"}})],
        );
        assert_eq!(
            sluice.events(team)[0]["properties"]["$geoip_city_name"],
            "Linköping"
        );
    }
    // Teams 1 and 2 share one instance; team 3, with another grant, has its own.
    assert_eq!(geoip_instance_starts(&sluice), 2.0);
}

#[test]
fn the_geoip_database_is_reloaded_when_its_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("city.mmdb");
    sluice_demo_geoip::write(&db, "Linköping").unwrap();
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nworkers = 1\n\
         [geoip]\ndatabase = \"city.mmdb\"\ncheck_interval_seconds = 1\n{}",
        geoip_team(1, false)
    );
    std::fs::write(dir.path().join("sluice.toml"), config).unwrap();
    let sluice = Sluice::start_in(dir);
    let event = |id: &str| {
        vec![json!({"event": "e", "distinct_id": id, "properties": {"$ip": "89.160.20.120"}})]
    };
    send(&sluice, 1, event("before"));
    // A different modification time and size, as a real update has.
    let modified = std::fs::metadata(&db).unwrap().modified().unwrap();
    sluice_demo_geoip::write(&db, "Linköping (updated)").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&db)
        .unwrap()
        .set_modified(modified + Duration::from_secs(2))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut round = 0;
    loop {
        round += 1;
        let id = format!("after-{round}");
        send(&sluice, 1, event(&id));
        let stored = sluice.events(1);
        let city = &stored.last().unwrap()["properties"]["$geoip_city_name"];
        if city == "Linköping (updated)" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never reloaded: {city}\n{}",
            sluice.stderr()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        sluice.events(1)[0]["properties"]["$geoip_city_name"],
        "Linköping"
    );
}

/// A team whose chain is `[geoip, patcher]`, the patcher in `mode`.
fn geoip_then_patcher(team: u64, mode: &str) -> String {
    format!(
        "{}[[teams.plugins]]\nid = \"patcher\"\nplugin = \"{}\"\nconfig = {{ mode = \"{mode}\" }}\n",
        geoip_team(team, false),
        plugin("patcher").display()
    )
}

/// What GeoIP writes for the test database's network, as properties, `$set` and `$set_once`.
fn located(properties: Value) -> Value {
    let fields = json!({
        "city_name": "Linköping", "country_name": "Sweden", "country_code": "SE",
        "continent_name": "Europe", "continent_code": "EU", "latitude": 58.4167,
        "longitude": 15.6167, "accuracy_radius": 76, "time_zone": "Europe/Stockholm",
        "subdivision_1_code": "E", "subdivision_1_name": "Östergötland County",
    });
    let mut stored = properties;
    let (mut set, mut set_once) = (json!({}), json!({}));
    for (key, value) in fields.as_object().unwrap() {
        stored[format!("$geoip_{key}")] = value.clone();
        set[format!("$geoip_{key}")] = value.clone();
        set_once[format!("$initial_geoip_{key}")] = value.clone();
    }
    for stale in ["postal_code", "subdivision_2_code", "subdivision_2_name"] {
        set[format!("$geoip_{stale}")] = Value::Null;
    }
    stored["$set"] = set;
    stored["$set_once"] = set_once;
    stored
}

#[test]
fn edits_of_two_plugins_compose_in_chain_order_and_a_replacement_keeps_earlier_edits() {
    let sluice = geoip_sluice(&(geoip_then_patcher(1, "edit") + &geoip_then_patcher(2, "replace")));
    let event = json!({"event": "e", "distinct_id": "u", "properties": {"$ip": "89.160.20.115", "plan": "pro"}});
    send(&sluice, 1, vec![event.clone()]);
    send(&sluice, 2, vec![event]);

    // GeoIP's edits, then the patcher's on the same keys: later sets win, `if absent` loses to
    // what GeoIP set, and the patcher saw GeoIP's edits.
    let mut expected = located(json!({"$ip": "89.160.20.115", "plan": "pro"}));
    expected["seen_city"] = json!("Linköping");
    expected["$geoip_city_name"] = json!("Override");
    expected
        .as_object_mut()
        .unwrap()
        .remove("$geoip_country_code");
    expected["$set"]["$geoip_time_zone"] = json!("UTC");
    let stored = sluice.events(1);
    assert_eq!(stored[0]["properties"], expected);

    // A replacement after edits is the event with those edits applied, then its own changes.
    let mut expected = located(json!({"$ip": "89.160.20.115", "plan": "pro"}));
    expected["seen_city"] = json!("Linköping");
    expected["replaced"] = json!(true);
    let stored = sluice.events(2);
    assert_eq!(stored[0]["properties"], expected);
}

#[test]
fn a_dead_letter_shows_the_event_with_the_edits_made_before_the_failure() {
    let teams = format!(
        "{}[[teams.plugins]]\nid = \"adversary\"\nplugin = \"{}\"\nconfig = {{ mode = \"panic\" }}\non_error = \"dead_letter\"\n",
        geoip_team(1, false),
        plugin("adversary").display()
    );
    let sluice = geoip_sluice(&teams);
    send(
        &sluice,
        1,
        vec![
            json!({"event": "attack", "distinct_id": "u", "properties": {"$ip": "89.160.20.115"}}),
        ],
    );
    let letters = sluice.dead_letters(1);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0]["event"]["properties"],
        located(json!({"$ip": "89.160.20.115"}))
    );
}

#[test]
fn a_plugin_needing_an_ungranted_capability_is_refused_by_name() {
    let installation = format!(
        "[[teams]]\nid = 7\ntoken = \"phc_seven\"\n[[teams.plugins]]\nid = \"probe\"\nplugin = \"{}\"\n\
         config = {{ action = \"storage_count\" }}\ngrants = [\"log\", \"cache\"]\n",
        plugin("prober").display()
    );
    let stderr = serve_fails(&installation);
    for needed in [
        "sluice:plugin/storage",
        "sluice:plugin/geoip",
        "sluice:plugin/http",
    ] {
        assert!(
            stderr.contains(&format!(
                "needs `{needed}`, which installation team-7/probe is not granted"
            )),
            "{stderr}"
        );
    }
    assert!(!stderr.contains("sluice:plugin/cache`"), "{stderr}");
    assert!(stderr.contains("teams[0].plugins[0].grants"), "{stderr}");

    // Nothing is granted by default, not even logging.
    let stderr = serve_fails(&installation.replace("grants = [\"log\", \"cache\"]\n", ""));
    assert!(stderr.contains("needs `sluice:plugin/log`"), "{stderr}");
}

#[test]
fn capabilities_refuse_what_they_must_while_other_teams_are_served() {
    let pong = pong_server();
    let unused = r#"{ allow_hosts = ["unused.invalid"] }"#;
    let loopback = r#"{ allow_hosts = ["127.0.0.1", "169.254.169.254", "localhost"] }"#;
    let private = r#"{ allow_hosts = ["127.0.0.1"], allow_private_addresses = true }"#;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("city.mmdb");
    sluice_demo_geoip::write(&db, "Linköping").unwrap();
    let teams = [
        prober_team(1, "storage_count", "", unused),
        prober_team(2, "storage_oversize", "", unused),
        prober_team(3, "http", &format!("http://127.0.0.1:{pong}/"), loopback),
        prober_team(
            4,
            "http",
            "http://169.254.169.254/latest/meta-data/",
            loopback,
        ),
        prober_team(5, "http", &format!("http://localhost:{pong}/"), loopback),
        prober_team(6, "http", &format!("http://127.0.0.1:{pong}/"), private),
        prober_team(7, "http", "http://example.com/", private),
        prober_team(8, "log_flood", "", unused),
        prober_team(9, "cache_count", "", unused),
        prober_team(10, "cache_count", "", unused),
        prober_team(11, "geoip", "", unused),
    ];
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nworkers = 1\n[geoip]\ndatabase = \"city.mmdb\"\n{}",
        teams.concat()
    );
    std::fs::write(dir.path().join("sluice.toml"), config).unwrap();
    let mut sluice = Sluice::start_in(dir);
    let events = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"event": "probe", "distinct_id": "same-user", "properties": {"i": i}}))
            .collect()
    };

    // storage: durable across a crash and restart, counted per installation.
    send(&sluice, 1, events(3));
    sluice.restart();
    send(&sluice, 1, events(2));
    let counts: Vec<Value> = probes(&sluice, 1).iter().map(|p| p["ok"].clone()).collect();
    assert_eq!(counts, [json!(1), json!(2), json!(3), json!(4), json!(5)]);

    // storage: a value over the cap is refused; the event goes on.
    send(&sluice, 2, events(1));
    let oversize = probes(&sluice, 2);
    let (kind, message) = refusal(&oversize[0]);
    assert_eq!(kind, "TooLarge");
    assert!(message.contains("65537 bytes (cap 65536)"), "{message}");

    // http: loopback and metadata addresses are refused, by literal and after DNS.
    for team in [3, 4, 5] {
        send(&sluice, team, events(1));
        let stored = probes(&sluice, team);
        let probe = &stored[0];
        let (kind, message) = refusal(probe);
        assert_eq!(kind, "Refused", "team {team}: {probe}");
        assert!(
            message.contains("not a public address"),
            "team {team}: {message}"
        );
    }
    // ...unless the operator allows private addresses; the allow-list still applies.
    send(&sluice, 6, events(1));
    assert_eq!(
        probes(&sluice, 6)[0]["ok"],
        json!({"status": 200, "body": "pong"})
    );
    send(&sluice, 7, events(1));
    let stored = probes(&sluice, 7);
    let probe = &stored[0];
    let (kind, message) = refusal(probe);
    assert_eq!(kind, "Refused", "{probe}");
    assert!(
        message.contains("`example.com` is not on the installation's allow-list"),
        "{message}"
    );

    // log: a flood of 100,000 lines keeps 100 and reports the rest.
    send(&sluice, 8, events(1));
    assert_eq!(probes(&sluice, 8)[0]["ok"], "flooded");
    let logs = sluice.logs(&["--installation", "team-8/prober"]);
    assert_eq!(logs.len(), 101, "{:?}", logs.last());
    assert!(
        logs.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("99900 log lines suppressed"),
        "{:?}",
        logs.last()
    );

    // cache: per (plugin, team) namespace.
    send(&sluice, 9, events(3));
    send(&sluice, 10, events(1));
    let nine: Vec<Value> = probes(&sluice, 9).iter().map(|p| p["ok"].clone()).collect();
    assert_eq!(nine, [json!(1), json!(2), json!(3)]);
    assert_eq!(probes(&sluice, 10)[0]["ok"], 1);

    // geoip through the prober: the event's own IP (loopback here) is private, so none.
    send(&sluice, 11, events(1));
    assert_eq!(probes(&sluice, 11)[0], json!({"ok": null}));
}

#[test]
fn a_plugin_may_use_every_capability_in_setup() {
    let port = pong_server();
    let teams = format!(
        "[object_stores.folder]\nkind = \"local\"\n\
         [[teams]]\nid = 1\ntoken = \"phc_team1\"\n[[teams.plugins]]\nid = \"eager\"\nplugin = \"{}\"\n\
         config = {{ store = \"folder\", url = \"http://127.0.0.1:{port}/ping\" }}\n\
         grants = [\"log\", \"metrics\", \"storage\", \"cache\", \"geoip\", \"http\", \"object_store\", \"jobs\", \"recordings\"]\n\
         object_store = {{ stores = [\"folder\"] }}\n\
         http = {{ allow_hosts = [\"127.0.0.1\"], allow_private_addresses = true }}\n",
        plugin("eager").display()
    );
    let sluice = geoip_sluice(&teams);
    send(&sluice, 1, vec![json!({"event": "e", "distinct_id": "u"})]);
    let mut answers = sluice.events(1)[0]["properties"]["setup"].clone();
    // Every instance ran setup (loading, the chain, the job runner): the counter counts them.
    let setups = answers["cache"]["ok"].as_i64();
    assert!(setups.is_some_and(|n| n >= 1), "{answers}");
    answers["cache"] = json!("counted");
    assert_eq!(
        answers,
        json!({
            "storage": {"ok": "set"},
            "cache": "counted",
            "geoip": {"ok": true},
            "http": {"ok": 200},
            "object_store": {"ok": "hello"},
            "jobs": {"ok": "queued"},
            "recordings": {"ok": 0},
        }),
        "{}",
        sluice.stderr()
    );
}

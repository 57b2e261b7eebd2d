//! State nodes share on Redis (`[redis]`), through the real binary and a real `redis-server`:
//! plugin storage and cache seen alike by every node, and a Redis outage that is a clear,
//! retryable error to plugins while events keep flowing.

use crate::capabilities::{prober_team, probes, send};
use crate::redis_server::RedisServer;
use crate::support::Sluice;
use serde_json::{Value, json};

/// A team whose chain is one prober installation doing `action` (the prober is granted every
/// capability it imports, http to nowhere).
fn prober(team: u64, action: &str) -> String {
    prober_team(team, action, "", r#"{ allow_hosts = ["unused.invalid"] }"#)
}

/// The config of a node on `redis` (teams 1 and 9 count in storage and cache), with the GeoIP
/// database the prober's grants need, in `dir`.
fn config(redis: &RedisServer, dir: &std::path::Path) -> String {
    let db = dir.join("city.mmdb");
    sluice_demo_geoip::write(&db, "Linköping").unwrap();
    format!(
        "[redis]\nurl = \"{}\"\n[geoip]\ndatabase = \"{}\"\n{}{}",
        redis.url,
        db.display(),
        prober(1, "storage_count"),
        prober(9, "cache_count")
    )
}

/// `n` events of one user.
fn events(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"event": "probe", "distinct_id": "same-user", "properties": {"i": i}}))
        .collect()
}

/// The counts the prober saw in the stored events of `team` on `node`.
fn counts(node: &Sluice, team: u64) -> Vec<Value> {
    probes(node, team).iter().map(|p| p["ok"].clone()).collect()
}

#[test]
fn two_nodes_on_one_redis_share_plugin_storage_and_cache_and_an_outage_is_a_clear_error() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&redis, dir.path());
    let mut one = Sluice::start(&config);
    let two = Sluice::start(&config);

    // One counter for the installation, whichever node counts.
    for team in [1, 9] {
        send(&one, team, events(2));
        send(&two, team, events(3));
        assert_eq!(counts(&one, team), [json!(1), json!(2)], "team {team}");
        assert_eq!(
            counts(&two, team),
            [json!(3), json!(4), json!(5)],
            "team {team}"
        );
    }
    // A node restarted finds the shared state where it was.
    one.restart();
    send(&one, 1, events(1));
    assert_eq!(counts(&one, 1).last(), Some(&json!(6)));

    // Redis down: the plugin gets `unavailable` naming Redis, and the event is stored anyway.
    redis.kill();
    send(&two, 1, events(1));
    let probe = probes(&two, 1).pop().unwrap();
    assert_eq!(probe["error"]["kind"], "Unavailable", "{probe}");
    assert!(
        probe["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Redis"),
        "{probe}"
    );
    // Back: nothing Redis acknowledged is lost, and counting goes on.
    redis.resume();
    send(&two, 1, events(1));
    assert_eq!(counts(&two, 1).last(), Some(&json!(7)));
}

#[test]
fn a_node_whose_redis_does_not_answer_refuses_to_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&RedisServer::start(), dir.path());
    // The server is gone once `config` is written.
    let stderr = crate::support::serve_fails(&config);
    assert!(
        stderr.contains("redis.url") && stderr.contains("does not answer"),
        "{stderr}"
    );
}

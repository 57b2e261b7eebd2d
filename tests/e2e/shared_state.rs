//! State nodes share on Redis (`[redis]`), through the real binary and a real `redis-server`:
//! plugin storage and cache seen alike by every node, a Redis outage that is a clear, retryable
//! error to plugins while events keep flowing, and scheduled tasks that run once per tick
//! across scheduler nodes under fenced leases.

use crate::capabilities::{prober_team, probes, send};
use crate::process::signal;
use crate::redis_server::RedisServer;
use crate::schedule::time;
use crate::support::Sluice;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

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
    let config = config(&RedisServer::start_volatile(), dir.path());
    // The server is gone once `config` is written.
    let stderr = crate::support::serve_fails(&config);
    assert!(
        stderr.contains("redis.url") && stderr.contains("does not answer"),
        "{stderr}"
    );
}

/// A scheduler node on `redis` with the ticker installed as `team-1/p` (`extra`: its schedule
/// and config), with a data folder of its own.
fn scheduler(redis: &RedisServer, extra: &str) -> Sluice {
    Sluice::start(&format!(
        "[redis]\nurl = \"{}\"\n[[teams]]\nid = 1\ntoken = \"phc_one\"\n[[teams.plugins]]\n\
         id = \"p\"\nplugin = \"{}\"\ngrants = [\"log\", \"jobs\"]\n{extra}\n",
        redis.url,
        crate::support::plugin("ticker").display()
    ))
}

/// The runs of `task` every node sees (via `sluice tasks` on `node`), oldest first.
fn task_runs(node: &Sluice, task: &str) -> Vec<Value> {
    let (ok, out, err) = node.run(&["tasks", "--installation", "team-1/p", "--limit", "10000"]);
    assert!(ok, "sluice tasks failed: {err}");
    out.lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|run| run["task"] == task)
        .collect()
}

/// Polls `check` on the runs of `task` until it returns something, for at most `seconds`.
fn wait_for_runs<T>(
    node: &Sluice,
    task: &str,
    seconds: u64,
    what: &str,
    mut check: impl FnMut(&[Value]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let runs = task_runs(node, task);
        if let Some(found) = check(&runs) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {runs:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The node id of `node` (the holder its runs are recorded with).
pub(crate) fn node_id(node: &Sluice) -> String {
    std::fs::read_to_string(node.dir.path().join("data/node-id"))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn two_scheduler_nodes_run_each_tick_of_a_task_once_across_the_fleet() {
    let redis = RedisServer::start();
    let schedule = r#"schedule = { tasks = { tick = "* * * * * *" } }"#;
    let nodes = [scheduler(&redis, schedule), scheduler(&redis, schedule)];
    let runs = wait_for_runs(&nodes[0], "tick", 90, "30 ticks", |runs| {
        let ok = runs.iter().filter(|run| run["outcome"] == "ok").count();
        (ok >= 30).then(|| runs.to_vec())
    });
    let ticks: Vec<DateTime<Utc>> = runs
        .iter()
        .filter(|run| run["outcome"] == "ok")
        .map(|run| time(&run["scheduled_at"]))
        .collect();
    let mut sorted = ticks.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ticks.len(), "a tick ran twice: {runs:?}");
    for pair in sorted.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            chrono::Duration::seconds(1),
            "a tick did not run: {runs:?}"
        );
    }
    assert!(
        runs.iter().all(|run| run["outcome"] != "missed"),
        "{runs:?}"
    );
    let holders: std::collections::BTreeSet<&str> = runs
        .iter()
        .filter_map(|run| run["holder"].as_str())
        .collect();
    eprintln!(
        "2 scheduler nodes, 1-second task: {} ticks, {} runs, 0 twice, 0 missed, run by {} node(s)",
        sorted.len(),
        ticks.len(),
        holders.len()
    );
}

#[test]
fn a_killed_lease_holder_is_replaced_within_its_ttl_and_a_paused_ones_late_end_is_refused() {
    let redis = RedisServer::start();
    let schedule = r#"config = { slow_ms = 2500 }
schedule = { tasks = { slow = "*/3 * * * * *", tick = "0 0 0 1 1 * 2099" } }"#;
    let mut nodes = [scheduler(&redis, schedule), scheduler(&redis, schedule)];
    let ids = [node_id(&nodes[0]), node_id(&nodes[1])];
    let running = |runs: &[Value]| {
        runs.iter()
            .rev()
            .find(|run| run["outcome"] == "running")
            .cloned()
    };

    // SIGKILL the node that holds the lease mid-run: the other runs a later tick within the TTL.
    let run = wait_for_runs(&nodes[0], "slow", 30, "a running run", running);
    let holder = ids
        .iter()
        .position(|id| run["holder"] == id.as_str())
        .unwrap();
    nodes[holder].crash();
    let killed = Utc::now();
    let other = &nodes[1 - holder];
    let taken = wait_for_runs(other, "slow", 30, "a run by the other node", |runs| {
        runs.iter()
            .find(|r| {
                r["holder"] == ids[1 - holder].as_str()
                    && r["outcome"] == "ok"
                    && time(&r["started_at"]) > killed
            })
            .cloned()
    });
    let takeover = time(&taken["started_at"]) - killed;
    assert!(
        takeover < chrono::Duration::seconds(10 + 3 + 2),
        "replaced after {takeover}"
    );
    nodes[holder].restart();

    // SIGSTOP the holder mid-run past its lease: the other takes over under a larger token;
    // once resumed (SIGCONT), the paused node's end of its run is refused and logged.
    let run = wait_for_runs(&nodes[0], "slow", 30, "a running run", running);
    let holder = ids
        .iter()
        .position(|id| run["holder"] == id.as_str())
        .unwrap();
    signal(nodes[holder].pid(), "STOP");
    let paused_token = run["fencing_token"].as_u64().unwrap();
    let newer = wait_for_runs(
        &nodes[1 - holder],
        "slow",
        30,
        "a run under a newer lease",
        |runs| {
            runs.iter()
                .find(|r| r["outcome"] == "ok" && r["fencing_token"].as_u64() > Some(paused_token))
                .cloned()
        },
    );
    signal(nodes[holder].pid(), "CONT");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes[holder]
        .stderr()
        .contains("the end of a run was refused")
    {
        assert!(Instant::now() < deadline, "{}", nodes[holder].stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    let runs = task_runs(&nodes[0], "slow");
    let paused = runs.iter().find(|r| r["id"] == run["id"]).unwrap();
    assert_eq!(
        paused["outcome"], "running",
        "its late end was not recorded: {paused}"
    );
    eprintln!(
        "SIGKILL: replaced {} ms after the kill; SIGSTOP: token {} taken over by token {}, the late end refused",
        takeover.num_milliseconds(),
        paused_token,
        newer["fencing_token"]
    );
}

/// Queues job `name` of `team-1/p` with `payload` through `node` (`when`, e.g. `--in 4s`); its
/// id.
fn enqueue(node: &Sluice, name: &str, payload: &str, when: &[&str]) -> String {
    crate::schedule::enqueue(node, name, payload, when).0
}

/// The messages `team-1/p` logged on `node` (each node keeps its own plugin logs).
fn logged(node: &Sluice) -> Vec<String> {
    node.logs(&["--installation", "team-1/p"])
        .into_iter()
        .map(|line| line["message"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_job_queued_on_one_node_runs_once_on_either_and_a_dead_nodes_job_runs_again_on_the_other() {
    let redis = RedisServer::start();
    let extra = r#"config = { slow_ms = 3000 }
schedule = { tasks = { tick = "0 0 0 1 1 * 2099" } }"#;
    let mut nodes = [scheduler(&redis, extra), scheduler(&redis, extra)];

    // Twenty jobs queued through either node: each runs exactly once, wherever.
    let ids: Vec<String> = (0..20)
        .map(|n| enqueue(&nodes[n % 2], "echo", &format!("{{\"n\":{n}}}"), &[]))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let echoes = loop {
        let echoes: Vec<String> = nodes
            .iter()
            .flat_map(logged)
            .filter(|m| m.starts_with("echo"))
            .collect();
        if echoes.len() >= ids.len() {
            break echoes;
        }
        assert!(Instant::now() < deadline, "{echoes:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    for id in &ids {
        let runs = echoes
            .iter()
            .filter(|m| m.starts_with(&format!("echo {id} ")))
            .count();
        assert_eq!(runs, 1, "job {id} ran {runs} times: {echoes:?}");
    }
    assert_eq!(echoes.len(), ids.len(), "{echoes:?}");
    let ran_on: Vec<usize> = nodes
        .iter()
        .map(|node| {
            logged(node)
                .iter()
                .filter(|m| m.starts_with("echo"))
                .count()
        })
        .collect();

    // A node killed while it runs a job: the other runs it again, same id, once the dead
    // node's lease is gone.
    let id = enqueue(&nodes[0], "busy", "{}", &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let holder = loop {
        if let Some(n) = (0..2).find(|&n| logged(&nodes[n]).contains(&format!("busy {id} 1"))) {
            break n;
        }
        assert!(Instant::now() < deadline, "the job never started");
        std::thread::sleep(Duration::from_millis(100));
    };
    nodes[holder].crash();
    let killed = Instant::now();
    let other = &nodes[1 - holder];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !logged(other).contains(&format!("busy {id} 2")) {
        assert!(Instant::now() < deadline, "{:?}", logged(other));
        std::thread::sleep(Duration::from_millis(100));
    }
    let again = killed.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, _) = other.run(&["jobs", "--installation", "team-1/p"]);
        if ok && out.trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "jobs across 2 nodes: {} jobs ran once each ({ran_on:?} per node); a killed node's job ran again on the other after {} ms",
        ids.len(),
        again.as_millis()
    );
}

#[test]
fn redis_restarted_mid_run_gives_clear_errors_then_tasks_and_queued_jobs_go_on_with_nothing_lost() {
    let mut redis = RedisServer::start();
    let schedule = r#"schedule = { tasks = { tick = "* * * * * *" } }"#;
    let nodes = [scheduler(&redis, schedule), scheduler(&redis, schedule)];
    wait_for_runs(&nodes[0], "tick", 30, "a first tick", |runs| {
        runs.iter().any(|run| run["outcome"] == "ok").then_some(())
    });
    // A job acknowledged before the outage, due after it.
    let id = enqueue(&nodes[0], "echo", "{}", &["--in", "4s"]);

    redis.kill();
    let down = Utc::now();
    std::thread::sleep(Duration::from_secs(3));
    // The commands say why they cannot answer.
    let (ok, _, err) = nodes[1].run(&["tasks", "--installation", "team-1/p"]);
    assert!(!ok && err.contains("Redis"), "{err}");
    redis.resume();

    // Ticks run again after the outage, each once; the queued job runs, once.
    let runs = wait_for_runs(&nodes[0], "tick", 30, "ticks after the outage", |runs| {
        let after = runs
            .iter()
            .filter(|run| {
                run["outcome"] == "ok"
                    && time(&run["scheduled_at"]) > down + chrono::Duration::seconds(3)
            })
            .count();
        (after >= 3).then(|| runs.to_vec())
    });
    let ok: Vec<DateTime<Utc>> = runs
        .iter()
        .filter(|run| run["outcome"] == "ok")
        .map(|run| time(&run["scheduled_at"]))
        .collect();
    let mut unique = ok.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ok.len(), "a tick ran twice: {runs:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ran = nodes
            .iter()
            .flat_map(logged)
            .filter(|m| m.starts_with(&format!("echo {id} ")))
            .count();
        if ran == 1 {
            break;
        }
        assert!(
            ran == 0 && Instant::now() < deadline,
            "job {id} ran {ran} times"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let stderr = nodes[0].stderr() + &nodes[1].stderr();
    assert!(stderr.contains("Redis"), "the outage is in the logs");
}

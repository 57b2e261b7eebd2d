//! Housekeeping at scale, through the real binary: two nodes on a real ClickHouse and a real
//! Redis prune what is older than `[retention]` allows (plugin log lines and dead letters in
//! ClickHouse, task runs in Redis), once per interval across the fleet, not once per node.

use crate::fleet::Engines;
use crate::support::{Sluice, plain_team};
use std::time::{Duration, Instant};

const DAY_MS: i64 = 86_400_000;

/// The sum over `nodes` of the samples of metric `name` whose labels include `labels`.
fn total(nodes: &[Sluice], name: &str, labels: &str) -> f64 {
    nodes
        .iter()
        .flat_map(|node| {
            let (_, metrics) = node.get("/metrics");
            metrics
                .lines()
                .filter(|line| line.starts_with(name) && line.contains(labels))
                .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
                .collect::<Vec<_>>()
        })
        .sum()
}

#[test]
fn at_scale_one_node_per_interval_prunes_clickhouse_and_redis_by_the_same_retention() {
    let engines = Engines::start();
    let teams = format!(
        "[retention]\ninterval_seconds = 1\nplugin_logs_days = 1\ndead_letters_days = 1\n\
         task_runs_days = 1\n{}",
        plain_team(1, "phc_one")
    );
    let started = Instant::now();
    let nodes = [
        engines.node(&teams, "worker,loader"),
        engines.node(&teams, "scheduler"),
    ];
    let now = chrono::Utc::now().timestamp_millis();
    let week_ago = now - 7 * DAY_MS;

    // What a week-old fleet left: a log line and a dead letter in ClickHouse (beside a line of
    // today), a finished task run in Redis.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !engines
        .clickhouse
        .query("EXISTS TABLE sluice.dead_letters")
        .starts_with('1')
    {
        assert!(Instant::now() < deadline, "the loader made no tables");
        std::thread::sleep(Duration::from_millis(100));
    }
    engines.clickhouse.query(&format!(
        "INSERT INTO sluice.plugin_logs (id, installation, level, message, time_ms, \
         kafka_partition, kafka_offset) VALUES ('old', 'team-1/p', 'info', 'a week ago', \
         {week_ago}, 0, 0), ('new', 'team-1/p', 'info', 'today', {now}, 0, 1)"
    ));
    engines.clickhouse.query(&format!(
        "INSERT INTO sluice.dead_letters (team_id, installation, uuid, event_base64, error, \
         backtrace, created_at_ms, kafka_partition, kafka_offset) VALUES (1, 'team-1/p', \
         'old', '', 'trap', NULL, {week_ago}, 0, 0)"
    ));
    let mut redis = redis::Client::open(engines.redis.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("HSET")
        .arg("sluice:tasks:run:1")
        .arg(&[
            ("id", "1"),
            ("installation", "team-1/p"),
            ("task", "daily"),
            ("trigger", "schedule"),
            ("outcome", "ok"),
        ])
        .arg("scheduled_at_ms")
        .arg(week_ago)
        .exec(&mut redis)
        .unwrap();
    for index in ["sluice:tasks:runs", "sluice:tasks:runs:team-1/p"] {
        redis::cmd("ZADD")
            .arg(index)
            .arg(1)
            .arg(1)
            .exec(&mut redis)
            .unwrap();
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = engines
            .clickhouse
            .query("SELECT id FROM sluice.plugin_logs ORDER BY id");
        let letters = engines
            .clickhouse
            .query("SELECT count() FROM sluice.dead_letters");
        let run: bool = redis::cmd("EXISTS")
            .arg("sluice:tasks:run:1")
            .query(&mut redis)
            .unwrap();
        if lines == "new\n" && letters == "0\n" && !run {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not pruned: lines {lines:?}, dead letters {letters:?}, run {run}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, runs, err) = nodes[1].run(&["tasks", "--installation", "team-1/p"]);
    assert!(ok, "{err}");
    assert!(!runs.contains("daily"), "{runs}");

    // Pruned once across the fleet, by one node per interval.
    std::thread::sleep(Duration::from_secs(3));
    let passes = |store: &str| {
        total(
            &nodes,
            "sluice_housekeeping_pass_seconds_count",
            &format!("store=\"{store}\""),
        )
    };
    let pruned = |store: &str, table: &str| {
        total(
            &nodes,
            "sluice_housekeeping_pruned_total",
            &format!("store=\"{store}\",table=\"{table}\""),
        )
    };
    let (clickhouse, redis_passes, embedded) =
        (passes("clickhouse"), passes("redis"), passes("embedded"));
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(pruned("clickhouse", "plugin_logs"), 1.0);
    assert_eq!(pruned("clickhouse", "dead_letters"), 1.0);
    assert_eq!(pruned("redis", "task_runs"), 1.0);
    for shared in [clickhouse, redis_passes] {
        assert!(
            shared >= 3.0 && shared <= seconds + 2.0,
            "{shared} passes over a shared store in {seconds:.1} s by two nodes"
        );
    }
    assert!(
        embedded > clickhouse,
        "each node prunes its own database: {embedded} passes"
    );
    eprintln!(
        "2 nodes, {seconds:.1} s, 1-second interval: {clickhouse} passes over ClickHouse, \
         {redis_passes} over Redis, {embedded} over the nodes' own databases"
    );
}

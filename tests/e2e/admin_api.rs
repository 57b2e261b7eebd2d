//! The admin API's routes through the real binary: what operators read (logs, dead letters,
//! exports, task runs, jobs) and what they ask (replays, retries, a task run now), each behind
//! the token, with a stable error code when the target does not exist.

use crate::support::{Sluice, plugin};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Team 1: an installation failing on every `e` event (dead-lettered) and an export to a local
/// folder; team 2: the ticker's tasks and jobs.
fn config() -> String {
    format!(
        "[object_stores.lake]\nkind = \"local\"\n\
         [[teams]]\nid = 1\ntoken = \"phc_one\"\n\
         [[teams.plugins]]\nid = \"bad\"\nplugin = \"{}\"\nconfig = {{ mode = \"error\", trigger = \"e\" }}\non_error = \"dead_letter\"\n\
         [[teams.plugins]]\nid = \"s3\"\nplugin = \"{}\"\nconfig = {{ store = \"lake\", prefix = \"events/\" }}\n\
         grants = [\"object_store\"]\nobject_store = {{ stores = [\"lake\"] }}\n\
         export = {{ max_events = 10, max_age_seconds = 1 }}\n\
         [[teams]]\nid = 2\ntoken = \"phc_two\"\n\
         [[teams.plugins]]\nid = \"p\"\nplugin = \"{}\"\ngrants = [\"log\", \"jobs\"]\n\
         schedule = {{ tasks = {{ tick = \"0 0 0 1 1 * 2099\" }} }}\n",
        plugin("adversary").display(),
        plugin("s3-export").display(),
        plugin("ticker").display(),
    )
}

/// Polls `GET path` until `check` accepts the answer, for at most 30 s.
fn wait_for(sluice: &Sluice, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = sluice.admin("GET", path, None);
        assert_eq!(status, 200, "{path}: {body}");
        if check(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn operators_read_logs_dead_letters_exports_tasks_and_jobs_and_ask_for_runs_and_replays() {
    let sluice = Sluice::start(&config());
    let (status, _) = sluice.post_json(
        "/batch",
        &json!({"api_key": "phc_one", "batch": [{"event": "e", "distinct_id": "u"}, {"event": "ok", "distinct_id": "u"}]}),
    );
    assert_eq!(status, 200);
    sluice.drain();

    let letters = wait_for(
        &sluice,
        "/admin/v1/dead-letters?team=1",
        "a dead letter",
        |b| b.as_array().is_some_and(|l| !l.is_empty()),
    );
    assert_eq!(letters[0]["installation"], "team-1/bad");
    // Its counts, latency and last error, on the teams route.
    let (_, teams) = sluice.admin("GET", "/admin/v1/teams", None);
    let stats = &teams[0]["installations"][0]["stats"];
    assert!(stats["calls"].as_u64() >= Some(1), "{stats}");
    assert_eq!(stats["failed"], 1, "{stats}");
    assert!(
        stats["p50_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{stats}"
    );
    assert_eq!(stats["last_errors"][0]["kind"], "plugin_error", "{stats}");
    let logs = wait_for(
        &sluice,
        "/admin/v1/logs?installation=team-1/bad",
        "the failure logged",
        |b| b.as_array().is_some_and(|l| !l.is_empty()),
    );
    assert!(
        logs[0]["message"]
            .as_str()
            .unwrap()
            .contains("failed on event"),
        "{logs}"
    );
    let exports = wait_for(&sluice, "/admin/v1/exports", "the export caught up", |b| {
        b[0]["exported_events"] == 1
    });
    assert_eq!(exports[0]["installation"], "team-1/s3");
    let (status, body) = sluice.admin("GET", "/admin/v1/exports/dead-letters", None);
    assert_eq!((status, body), (200, json!([])));
    for action in ["replay", "discard"] {
        let (status, body) = sluice.admin_with(
            "POST",
            &format!("/admin/v1/exports/{action}"),
            None,
            Some(&json!({"installation": "team-1/s3"})),
        );
        assert_eq!(
            (status, &body["code"]),
            (404, &json!("not_found")),
            "{body}"
        );
    }

    // A task run now: an unknown task is refused naming the real ones.
    let (status, body) = sluice.admin_with(
        "POST",
        "/admin/v1/tasks/run",
        None,
        Some(&json!({"installation": "team-2/p", "task": "nope"})),
    );
    assert_eq!(status, 404, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("tick, slow"),
        "{body}"
    );
    let (status, body) = sluice.admin_with(
        "POST",
        "/admin/v1/tasks/run",
        None,
        Some(&json!({"installation": "team-2/p", "task": "tick"})),
    );
    assert_eq!(status, 202, "{body}");
    let runs = wait_for(
        &sluice,
        "/admin/v1/tasks?installation=team-2/p",
        "the run",
        |b| {
            b.as_array().is_some_and(|runs| {
                runs.iter()
                    .any(|r| r["trigger"] == "manual" && r["outcome"] == "ok")
            })
        },
    );
    assert_eq!(runs[0]["task"], "tick");

    let (_, schedules) = sluice.admin("GET", "/admin/v1/tasks/schedules", None);
    assert!(
        schedules
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["task"] == "tick" && s["installation"] == "team-2/p"),
        "{schedules}"
    );
    let (status, body) = sluice.admin("GET", "/admin/v1/jobs", None);
    assert_eq!((status, body), (200, json!([])));
    let (status, body) = sluice.admin_with(
        "POST",
        "/admin/v1/jobs/retry",
        None,
        Some(&json!({"installation": "team-2/p"})),
    );
    assert_eq!((status, body), (200, json!({"queued": 0})));

    // Plugin log lines followed live: the next failure's line arrives on the stream.
    let (url, token) = sluice.admin_settings();
    let follower = std::thread::spawn(move || {
        let response = reqwest::blocking::Client::new()
            .get(format!(
                "{url}/admin/v1/logs/stream?installation=team-1/bad"
            ))
            .bearer_auth(token)
            .send()
            .unwrap();
        std::io::BufRead::lines(std::io::BufReader::new(response))
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("data: ").map(str::to_owned))
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(500));
    sluice.post_json(
        "/batch",
        &json!({"api_key": "phc_one", "batch": [{"event": "e", "distinct_id": "v"}]}),
    );
    let followed: Value = serde_json::from_str(&follower.join().unwrap()).unwrap();
    assert_eq!(
        (&followed["installation"], &followed["level"]),
        (&json!("team-1/bad"), &json!("error"))
    );
    assert!(
        followed["message"]
            .as_str()
            .unwrap()
            .contains("failed on event"),
        "{followed}"
    );

    // A dead letter replayed (its installation disabled, so it passes now): stored, and gone
    // from the dead letters.
    let uuid = letters[0]["event"]["uuid"].as_str().unwrap().to_owned();
    sluice.replay_dead_letter_past("team-1/bad", 1, &uuid);
    sluice.drain();
    assert!(sluice.events(1).iter().any(|e| e["uuid"] == uuid.as_str()));
    let (_, left) = sluice.admin("GET", "/admin/v1/dead-letters?team=1", None);
    assert!(
        !left
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["event"]["uuid"] == uuid.as_str()),
        "{left}"
    );
    // The one the log stream's event left is discarded; then there is none.
    let discard = json!({"team": 1});
    let (status, body) = sluice.admin_with(
        "POST",
        "/admin/v1/dead-letters/discard",
        None,
        Some(&discard),
    );
    assert_eq!((status, &body), (200, &json!({"discarded": 1})), "{body}");
    let (status, body) = sluice.admin_with(
        "POST",
        "/admin/v1/dead-letters/discard",
        None,
        Some(&discard),
    );
    assert_eq!(
        (status, &body["code"]),
        (404, &json!("not_found")),
        "{body}"
    );

    // The effective config, secrets redacted.
    let (status, shown) = sluice.admin("GET", "/admin/v1/config", None);
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["teams"][0]["installations"][0]["id"], "team-1/bad");
    assert_eq!(
        shown["teams"][0]["installations"][0]["on_error"],
        "dead_letter"
    );
    assert_eq!(shown["object_stores"], json!(["lake"]));

    // Every route wants the token.
    for path in [
        "/admin/v1/logs",
        "/admin/v1/exports",
        "/admin/v1/jobs",
        "/metrics",
    ] {
        let (status, body) = sluice.admin("GET", path, Some("not-the-token-at-all"));
        assert_eq!(
            (status, &body["code"]),
            (401, &json!("unauthorized")),
            "{path}"
        );
    }
}

#[test]
fn slow_failing_calls_spend_the_budget_until_the_breaker_opens_and_an_operator_overrides_it() {
    let sluice = Sluice::start(&format!(
        "[[teams]]\nid = 1\ntoken = \"phc_one\"\n\
         [[teams.plugins]]\nid = \"slow\"\nplugin = \"{}\"\nconfig = {{ mode = \"loop\", trigger = \"e\" }}\n\
         timeout_ms = 100\non_error = \"skip\"\n\
         breaker = {{ budget_ms = 300, refill_ms_per_second = 1, error_cost_ms = 50, consecutive_failures = 1000, window = 1000, failure_rate = 1.0 }}\n",
        plugin("adversary").display(),
    ));
    let send = |event: &str| {
        let (status, _) = sluice.post_json(
            "/batch",
            &json!({"api_key": "phc_one", "batch": [{"event": event, "distinct_id": "u"}]}),
        );
        assert_eq!(status, 200);
        sluice.drain();
    };
    let health = || {
        let (_, teams) = sluice.admin("GET", "/admin/v1/teams", None);
        teams[0]["installations"][0].clone()
    };
    assert_eq!(health()["status"], "healthy");
    // Each call loops until its 100 ms deadline: time and the error both cost.
    let mut states = Vec::new();
    for _ in 0..6 {
        send("e");
        states.push(health()["status"].as_str().unwrap().to_owned());
    }
    assert!(states.contains(&"degraded".to_owned()), "{states:?}");
    let open = health();
    assert_eq!(open["status"], "breaker_open", "{states:?} {open}");
    assert!(
        open["reason"].as_str().unwrap().contains("budget"),
        "{open}"
    );
    let logged: Vec<String> = sluice
        .logs(&["--installation", "team-1/slow"])
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        logged.iter().any(|m| m.starts_with("degraded")),
        "{logged:?}"
    );
    let (_, metrics) = sluice.admin("GET", "/metrics", None);
    assert!(
        metrics.as_str().unwrap().contains(
            "sluice_plugin_breaker_transitions_total{installation=\"team-1/slow\",state=\"degraded\"} 1"
        ),
        "{metrics}"
    );

    // The operator's override: enabled again whole; disabled, events pass it by untouched.
    let target = json!({"installation": "team-1/slow"});
    let (status, body) = sluice.admin_with(
        "POST",
        "/admin/v1/installations/enable",
        None,
        Some(&target),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["health"]["state"], &body["health"]["budget_left"]),
        (&json!("healthy"), &json!(1.0))
    );
    sluice.admin_with(
        "POST",
        "/admin/v1/installations/disable",
        None,
        Some(&target),
    );
    assert_eq!(health()["status"], "disabled");
    send("passed-by");
    sluice.admin_with(
        "POST",
        "/admin/v1/installations/enable",
        None,
        Some(&target),
    );
    send("seen");
    let events = sluice.events(1);
    let seq = |name: &str| {
        events
            .iter()
            .find(|e| e["event"] == name)
            .map(|e| e["properties"]["seq"].clone())
            .unwrap()
    };
    assert_eq!(
        seq("passed-by"),
        Value::Null,
        "the disabled plugin never saw it"
    );
    assert!(seq("seen").is_number(), "enabled again");
    let (status, body) = sluice.admin_with(
        "POST",
        "/admin/v1/installations/disable",
        None,
        Some(&json!({"installation": "team-1/nope"})),
    );
    assert_eq!((status, &body["code"]), (404, &json!("not_found")));
}

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
    let (status, body) = sluice.admin_with(
        "POST",
        "/admin/v1/exports/replay",
        None,
        Some(&json!({"installation": "team-1/s3"})),
    );
    assert_eq!(
        (status, &body["code"]),
        (404, &json!("not_found")),
        "{body}"
    );

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

    let (status, body) = sluice.admin("GET", "/admin/v1/jobs", None);
    assert_eq!((status, body), (200, json!([])));
    let (status, body) = sluice.admin_with(
        "POST",
        "/admin/v1/jobs/retry",
        None,
        Some(&json!({"installation": "team-2/p"})),
    );
    assert_eq!((status, body), (200, json!({"queued": 0})));

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

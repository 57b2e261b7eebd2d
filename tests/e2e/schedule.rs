//! Scheduled tasks and jobs through the real binary, with the `ticker` test plugin: schedules
//! with seconds so that ticks come every second (no sleeps of minutes), runs read back with
//! `sluice tasks`, jobs with `sluice jobs`, and what the plugin did with `sluice logs`.

use crate::support::{Sluice, plugin, serve_fails};
use chrono::{DateTime, Datelike, Timelike, Utc};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The installation every test uses.
const ID: &str = "team-1/p";
/// A schedule that does not fire during a test.
const NEVER: &str = "0 0 0 1 1 * 2099";

/// One team with the ticker installed as `p`, with `extra` TOML lines for the installation.
fn ticker(extra: &str) -> String {
    format!(
        "[[teams]]\nid = 1\ntoken = \"phc_one\"\n{}",
        installation("p", extra)
    )
}

/// A `[[teams.plugins]]` table for the ticker as `id`.
fn installation(id: &str, extra: &str) -> String {
    format!(
        "[[teams.plugins]]\nid = \"{id}\"\nplugin = \"{}\"\ngrants = [\"log\", \"jobs\"]\n{extra}\n",
        plugin("ticker").display()
    )
}

/// The runs of `installation`'s `task` (via `sluice tasks`), oldest first.
fn runs(sluice: &Sluice, installation: &str, task: &str) -> Vec<Value> {
    let (ok, out, err) = sluice.run(&["tasks", "--installation", installation, "--limit", "10000"]);
    assert!(ok, "sluice tasks failed: {err}");
    out.lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|run| run["task"] == task)
        .collect()
}

fn with_outcome<'a>(runs: &'a [Value], outcome: &str) -> Vec<&'a Value> {
    runs.iter()
        .filter(|run| run["outcome"] == outcome)
        .collect()
}

/// What `installation` logged, oldest first.
fn messages(sluice: &Sluice, installation: &str) -> Vec<String> {
    sluice
        .logs(&["--installation", installation])
        .into_iter()
        .map(|line| line["message"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls `check` until it returns something, for at most `seconds`.
fn wait_for<T>(
    sluice: &Sluice,
    seconds: u64,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            sluice.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn time(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

/// How many ticks a `missed` row stands for (its reason starts with the count).
fn missed_count(run: &Value) -> usize {
    let error = run["error"].as_str().unwrap();
    error
        .split_once(' ')
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(1)
}

#[test]
fn ticks_come_on_schedule_and_every_run_is_listed() {
    let sluice = Sluice::start(&ticker(
        r#"schedule = { tasks = { tick = "* * * * * *" } }"#,
    ));
    let runs = wait_for(&sluice, 30, "four ticks", || {
        let runs = runs(&sluice, ID, "tick");
        (with_outcome(&runs, "ok").len() >= 4).then_some(runs)
    });
    let ok = with_outcome(&runs, "ok");
    let mut previous: Option<DateTime<Utc>> = None;
    for run in &ok {
        assert_eq!(run["installation"], ID);
        assert_eq!(run["trigger"], "schedule");
        assert!(run["error"].is_null(), "{run}");
        let tick = time(&run["scheduled_at"]);
        let (started, ended) = (time(&run["started_at"]), time(&run["ended_at"]));
        assert_eq!(
            tick.timestamp_subsec_millis(),
            0,
            "ticks are whole seconds: {run}"
        );
        assert!(started >= tick, "a run never starts before its tick: {run}");
        assert!(
            started - tick < chrono::Duration::seconds(2),
            "a run starts at its tick: {run}"
        );
        assert!(ended >= started, "{run}");
        if let Some(previous) = previous {
            assert!(tick > previous, "ticks move forward: {runs:?}");
        }
        previous = Some(tick);
    }
    // The plugin was called with the tick it ran for.
    let logged = messages(&sluice, ID);
    for run in &ok {
        let tick = format!("tick {}", time(&run["scheduled_at"]).timestamp_millis());
        assert!(logged.contains(&tick), "{tick} not in {logged:?}");
    }
}

#[test]
fn a_task_never_overlaps_itself_and_ticks_during_a_run_are_missed() {
    let sluice = Sluice::start(&ticker(&format!(
        "config = {{ slow_ms = 2500 }}\nschedule = {{ tasks = {{ slow = \"* * * * * *\", tick = \"{NEVER}\" }} }}"
    )));
    let runs = wait_for(&sluice, 60, "three runs of the slow task", || {
        let runs = runs(&sluice, ID, "slow");
        (with_outcome(&runs, "ok").len() >= 3).then_some(runs)
    });
    let ok = with_outcome(&runs, "ok");
    for pair in ok.windows(2) {
        let (first, next) = (pair[0], pair[1]);
        assert!(
            time(&next["started_at"]) >= time(&first["ended_at"]),
            "runs overlap: {first} {next}"
        );
        assert!(
            time(&next["scheduled_at"]) - time(&first["scheduled_at"])
                >= chrono::Duration::seconds(3),
            "the ticks during a 2.5 s run were skipped: {first} {next}"
        );
    }
    let missed = with_outcome(&runs, "missed");
    assert!(!missed.is_empty(), "skipped ticks are recorded: {runs:?}");
    for run in &missed {
        let error = run["error"].as_str().unwrap();
        assert!(
            error.contains("while a run of the task was still going"),
            "{run}"
        );
        assert!(
            run["started_at"].is_null(),
            "a missed tick never started: {run}"
        );
    }
    // The plugin saw every run start and end before the next one started.
    let slow: Vec<String> = messages(&sluice, ID)
        .into_iter()
        .filter(|m| m.starts_with("slow"))
        .collect();
    for (i, message) in slow.iter().enumerate() {
        let expected = if i % 2 == 0 { "slow start" } else { "slow end" };
        assert!(message.starts_with(expected), "interleaved runs: {slow:?}");
    }
}

#[test]
fn ticks_missed_while_down_run_once_at_start() {
    let mut sluice = Sluice::start(&ticker(
        r#"schedule = { tasks = { tick = "* * * * * *" } }"#,
    ));
    wait_for(&sluice, 30, "a tick", || {
        (!with_outcome(&runs(&sluice, ID, "tick"), "ok").is_empty()).then_some(())
    });
    sluice.crash();
    let down = Utc::now();
    std::thread::sleep(Duration::from_millis(3_500));
    let up = Utc::now();
    sluice.restart();
    let runs = wait_for(&sluice, 30, "the catch-up run", || {
        let runs = runs(&sluice, ID, "tick");
        runs.iter()
            .any(|run| run["trigger"] == "catch_up" && run["outcome"] == "ok")
            .then_some(runs)
    });
    let catch_up: Vec<&Value> = runs
        .iter()
        .filter(|run| run["trigger"] == "catch_up")
        .collect();
    let [catch_up] = &catch_up[..] else {
        panic!("one catch-up run: {runs:?}")
    };
    let tick = time(&catch_up["scheduled_at"]);
    assert!(
        tick > down + chrono::Duration::seconds(2) && tick <= up + chrono::Duration::seconds(1),
        "the latest tick missed while down runs: {catch_up} (down {down}, up {up})"
    );
    let missed: Vec<&Value> = with_outcome(&runs, "missed")
        .into_iter()
        .filter(|run| {
            run["error"]
                .as_str()
                .unwrap()
                .contains("while sluice was down")
        })
        .collect();
    let [missed] = &missed[..] else {
        panic!("one row for the others: {runs:?}")
    };
    assert!(missed_count(missed) >= 2, "{missed}");
    // And the schedule goes on.
    wait_for(&sluice, 30, "a tick after the catch-up", || {
        runs_after(&sluice, tick).then_some(())
    });
}

fn runs_after(sluice: &Sluice, tick: DateTime<Utc>) -> bool {
    runs(sluice, ID, "tick").iter().any(|run| {
        run["trigger"] == "schedule" && run["outcome"] == "ok" && time(&run["scheduled_at"]) > tick
    })
}

/// A 7-field schedule that fires once, at `at`.
fn once(at: DateTime<Utc>) -> String {
    format!(
        "{} {} {} {} {} * {}",
        at.second(),
        at.minute(),
        at.hour(),
        at.day(),
        at.month(),
        at.year()
    )
}

#[test]
fn a_tick_missed_while_down_runs_only_within_the_starting_deadline() {
    let config = |tick: &str| {
        format!(
            "[[teams]]\nid = 1\ntoken = \"phc_one\"\n{}{}",
            installation(
                "patient",
                &format!(
                    "schedule = {{ starting_deadline_seconds = 600, tasks = {{ tick = \"{tick}\" }} }}"
                )
            ),
            installation(
                "strict",
                &format!(
                    "schedule = {{ starting_deadline_seconds = 1, tasks = {{ tick = \"{tick}\" }} }}"
                )
            ),
        )
    };
    // First start: both tasks are seen, and remembered as handled up to now.
    let mut sluice = Sluice::start(&config(NEVER));
    sluice.crash();
    // While down, the task's schedule becomes one tick, which comes and goes.
    let at = Utc::now().with_nanosecond(0).unwrap() + chrono::Duration::seconds(1);
    std::fs::write(
        sluice.config_path(),
        std::fs::read_to_string(sluice.config_path())
            .unwrap()
            .replace(NEVER, &once(at)),
    )
    .unwrap();
    while Utc::now() < at + chrono::Duration::seconds(3) {
        std::thread::sleep(Duration::from_millis(100));
    }
    sluice.restart();
    let patient = wait_for(&sluice, 30, "the catch-up run", || {
        let runs = runs(&sluice, "team-1/patient", "tick");
        (!with_outcome(&runs, "ok").is_empty()).then_some(runs)
    });
    let [run] = &patient[..] else {
        panic!("{patient:?}")
    };
    assert_eq!(run["trigger"], "catch_up");
    assert_eq!(time(&run["scheduled_at"]), at);
    let strict = runs(&sluice, "team-1/strict", "tick");
    let [run] = &strict[..] else {
        panic!("{strict:?}")
    };
    assert_eq!(
        run["outcome"], "missed",
        "3 s late is past a 1 s deadline: {run}"
    );
    assert_eq!(time(&run["scheduled_at"]), at);
    assert!(
        run["error"].as_str().unwrap().contains("starting deadline"),
        "{run}"
    );
    let logged = messages(&sluice, "team-1/strict");
    assert!(!logged.iter().any(|m| m.starts_with("tick")), "{logged:?}");
}

/// Runs `task` every two seconds, and `tick` every second, under `limits` (TOML lines), until
/// two runs of `task` failed; checks that each failed with `error` and that `tick` ran after
/// the first failure on a fresh instance. Returns the failed runs and what the plugin logged.
fn stopped_runs_leave_the_schedule_running(
    task: &str,
    limits: &str,
    error: &str,
) -> (Vec<Value>, Vec<String>) {
    let sluice = Sluice::start(&ticker(&format!(
        "{limits}\nschedule = {{ tasks = {{ {task} = \"*/2 * * * * *\", tick = \"* * * * * *\" }} }}"
    )));
    let failed: Vec<Value> = wait_for(&sluice, 60, "two stopped runs", || {
        let failed: Vec<Value> = with_outcome(&runs(&sluice, ID, task), "failed")
            .into_iter()
            .cloned()
            .collect();
        (failed.len() >= 2).then_some(failed)
    });
    for run in &failed {
        assert!(run["error"].as_str().unwrap().starts_with(error), "{run}");
    }
    let stopped = time(&failed[0]["ended_at"]);
    let ticks = runs(&sluice, ID, "tick");
    assert!(
        with_outcome(&ticks, "ok")
            .iter()
            .any(|run| time(&run["started_at"]) > stopped),
        "other tasks keep running on a fresh instance: {ticks:?}"
    );
    let logged = messages(&sluice, ID);
    assert!(
        logged
            .iter()
            .filter(|m| {
                m.strip_prefix(&format!("{task} "))
                    .is_some_and(|tick| tick.parse::<i64>().is_ok())
            })
            .count()
            >= 2,
        "every tick started a run: {logged:?}"
    );
    assert!(
        logged
            .iter()
            .any(|m| m.contains(&format!("task `{task}` failed"))),
        "the failure is logged for the operator: {logged:?}"
    );
    (failed, logged)
}

#[test]
fn a_task_that_loops_forever_is_stopped_at_its_deadline_and_the_next_tick_runs() {
    let (failed, _) =
        stopped_runs_leave_the_schedule_running("forever", "timeout_ms = 500", "timeout:");
    for run in &failed {
        let took = time(&run["ended_at"]) - time(&run["started_at"]);
        assert!(
            took < chrono::Duration::seconds(5),
            "stopped at its deadline: {run}"
        );
    }
}

#[test]
fn a_task_past_its_memory_cap_fails_and_the_next_tick_runs() {
    let (_, logged) = stopped_runs_leave_the_schedule_running(
        "hog",
        "memory_mb = 32",
        "memory_limit: plugin `ticker` ran out of memory",
    );
    assert!(
        !logged.iter().any(|m| m.starts_with("hog got")),
        "{logged:?}"
    );
}

#[test]
fn an_operator_runs_a_task_now() {
    let sluice = Sluice::start(&ticker(&format!(
        "schedule = {{ tasks = {{ tick = \"{NEVER}\" }} }}"
    )));
    let (ok, out, err) = sluice.run(&["tasks", "run", "--installation", ID, "--task", "tick"]);
    assert!(ok, "{err}");
    let run: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(run["trigger"], "manual");
    assert_eq!(run["outcome"], "ok");
    let tick = time(&run["scheduled_at"]).timestamp_millis();
    assert!(messages(&sluice, ID).contains(&format!("tick {tick}")));
    // What the task reported during its run is printed too.
    assert!(err.contains(&format!("tick {tick}")), "{err}");
    assert_eq!(runs(&sluice, ID, "tick").len(), 1, "listed once");

    let (ok, _, err) = sluice.run(&["tasks", "run", "--installation", ID, "--task", "nope"]);
    assert!(!ok);
    assert!(
        err.contains("has no task `nope` (its tasks: ") && err.contains("tick"),
        "{err}"
    );
    let (ok, _, err) = sluice.run(&[
        "tasks",
        "run",
        "--installation",
        "team-1/q",
        "--task",
        "tick",
    ]);
    assert!(!ok);
    assert!(err.contains("no installation team-1/q"), "{err}");
}

/// Queues a job with `sluice jobs enqueue`; returns its id and due time.
pub(crate) fn enqueue(
    sluice: &Sluice,
    name: &str,
    payload: &str,
    when: &[&str],
) -> (String, DateTime<Utc>) {
    let args = [
        &[
            "jobs",
            "enqueue",
            "--installation",
            ID,
            "--name",
            name,
            "--payload",
            payload,
        ],
        when,
    ]
    .concat();
    let (ok, out, err) = sluice.run(&args);
    assert!(ok, "sluice jobs enqueue failed: {err}");
    let job: Value = serde_json::from_str(out.trim()).unwrap();
    (job["id"].as_str().unwrap().to_owned(), time(&job["run_at"]))
}

/// Every log line of the installation with its time.
fn timed_messages(sluice: &Sluice) -> Vec<(DateTime<Utc>, String)> {
    sluice
        .logs(&["--installation", ID])
        .into_iter()
        .map(|line| {
            (
                time(&line["time"]),
                line["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn jobs(sluice: &Sluice) -> Vec<Value> {
    let (ok, out, err) = sluice.run(&["jobs", "--installation", ID]);
    assert!(ok, "sluice jobs failed: {err}");
    out.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn jobs_run_in_order_of_their_time_and_survive_a_crash() {
    let mut sluice = Sluice::start(&ticker(&format!(
        "schedule = {{ tasks = {{ tick = \"{NEVER}\" }} }}"
    )));
    let at = (Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let late = enqueue(&sluice, "echo", r#"{"n":3}"#, &["--in", "3 seconds"]);
    let middle = enqueue(&sluice, "echo", r#"{"n":2}"#, &["--at", &at]);
    let early = enqueue(&sluice, "echo", r#"{"n":1}"#, &["--in", "1s"]);
    let queued = jobs(&sluice);
    assert_eq!(queued.len(), 3, "{queued:?}");
    assert!(
        queued.iter().all(|job| job["status"] == "queued"),
        "{queued:?}"
    );
    // A job queued just before a crash runs after the restart.
    sluice.crash();
    let survivor = enqueue(&sluice, "echo", r#"{"n":4}"#, &["--in", "1s"]);
    sluice.restart();
    let logged = wait_for(&sluice, 30, "four jobs", || {
        let logged = timed_messages(&sluice);
        (logged.iter().filter(|(_, m)| m.starts_with("echo")).count() >= 4).then_some(logged)
    });
    let echoes: Vec<&(DateTime<Utc>, String)> = logged
        .iter()
        .filter(|(_, m)| m.starts_with("echo"))
        .collect();
    let expected = [&early, &middle, &late, &survivor];
    let mut by_time = expected.to_vec();
    by_time.sort_by_key(|(_, run_at)| *run_at);
    assert_eq!(echoes.len(), 4, "each job ran once: {echoes:?}");
    for ((logged_at, message), (id, run_at)) in echoes.iter().zip(&by_time) {
        assert!(
            message.starts_with(&format!("echo {id} 1 ")),
            "in order of their time: {echoes:?}"
        );
        assert!(
            logged_at >= run_at,
            "not before its time: {message} at {logged_at}, due {run_at}"
        );
    }
    assert!(echoes[0].1.ends_with(r#"{"n":1}"#), "{echoes:?}");
    wait_for(&sluice, 10, "an empty queue", || {
        jobs(&sluice).is_empty().then_some(())
    });
}

#[test]
fn a_job_running_when_sluice_is_killed_runs_again_with_its_id() {
    let mut sluice = Sluice::start(&ticker(&format!(
        "config = {{ slow_ms = 4000 }}\nschedule = {{ tasks = {{ tick = \"{NEVER}\" }} }}"
    )));
    let (id, _) = enqueue(&sluice, "busy", "{}", &[]);
    wait_for(&sluice, 30, "the job to start", || {
        messages(&sluice, ID)
            .contains(&format!("busy {id} 1"))
            .then_some(())
    });
    let running = jobs(&sluice);
    assert_eq!(running[0]["status"], "running", "{running:?}");
    sluice.crash();
    sluice.restart();
    wait_for(&sluice, 30, "the job to run again", || {
        messages(&sluice, ID)
            .contains(&format!("busy {id} 2"))
            .then_some(())
    });
    wait_for(&sluice, 30, "the job to finish", || {
        jobs(&sluice).is_empty().then_some(())
    });
}

#[test]
fn failing_jobs_are_retried_with_backoff_then_marked_failed() {
    let sluice = Sluice::start(&ticker(&format!(
        "schedule = {{ tasks = {{ tick = \"{NEVER}\" }} }}\njobs = {{ max_attempts = 3, retry_base_seconds = 1, retry_max_seconds = 1 }}"
    )));
    let (recovers, _) = enqueue(&sluice, "flaky", r#"{"succeed_on":2}"#, &[]);
    let (gives_up, _) = enqueue(&sluice, "flaky", r#"{"succeed_on":99}"#, &[]);
    let failed = wait_for(&sluice, 60, "the job that never succeeds to fail", || {
        jobs(&sluice)
            .into_iter()
            .find(|job| job["status"] == "failed")
    });
    assert_eq!(failed["id"], gives_up.as_str());
    assert_eq!(failed["attempts"], 3);
    assert_eq!(failed["payload"]["succeed_on"], 99);
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("flaky fails attempt 3"),
        "{failed}"
    );
    let remaining = jobs(&sluice);
    assert_eq!(
        remaining.len(),
        1,
        "the job that recovered is done: {remaining:?}"
    );

    let logged = timed_messages(&sluice);
    let attempts = |id: &str| -> Vec<DateTime<Utc>> {
        logged
            .iter()
            .filter(|(_, m)| m.starts_with(&format!("flaky {id} attempt")))
            .map(|(t, _)| *t)
            .collect()
    };
    assert_eq!(attempts(&recovers).len(), 2);
    let tries = attempts(&gives_up);
    assert_eq!(tries.len(), 3, "{logged:?}");
    for pair in tries.windows(2) {
        assert!(
            pair[1] - pair[0] >= chrono::Duration::milliseconds(450),
            "retried after a backoff: {tries:?}"
        );
    }
    assert!(
        logged
            .iter()
            .any(|(_, m)| m.contains(&format!("({gives_up}) failed on attempt 3"))),
        "{logged:?}"
    );

    // An operator queues the failed job again: it gets its attempts anew, under the same id.
    let (ok, out, err) = sluice.run(&["jobs", "retry", "--installation", ID, "--id", &gives_up]);
    assert!(ok, "{err}");
    assert!(out.contains(r#""retried":1"#), "{out}");
    let failed = wait_for(&sluice, 60, "the retried job to fail again", || {
        let logged = timed_messages(&sluice);
        let tries = logged
            .iter()
            .filter(|(_, m)| m.starts_with(&format!("flaky {gives_up} attempt")))
            .count();
        (tries == 6)
            .then(|| jobs(&sluice))
            .filter(|jobs| jobs.first().is_some_and(|job| job["status"] == "failed"))
    });
    assert_eq!(failed[0]["attempts"], 3);
    let (ok, _, err) = sluice.run(&["jobs", "retry", "--installation", ID, "--id", "nope"]);
    assert!(!ok);
    assert!(err.contains("no failed job nope"), "{err}");
}

#[test]
fn a_job_queues_another() {
    let sluice = Sluice::start(&ticker(&format!(
        "schedule = {{ tasks = {{ tick = \"{NEVER}\" }} }}"
    )));
    let (chain, queued_at) = enqueue(&sluice, "chain", r#"{"from":"chain"}"#, &[]);
    let logged = wait_for(&sluice, 30, "the queued job", || {
        let logged = timed_messages(&sluice);
        logged
            .iter()
            .any(|(_, m)| m.starts_with("echo"))
            .then_some(logged)
    });
    let (at, echo) = logged.iter().find(|(_, m)| m.starts_with("echo")).unwrap();
    assert!(echo.ends_with(r#" 1 {"from":"chain"}"#), "{echo}");
    assert!(!echo.contains(&chain), "a job of its own: {echo}");
    assert!(
        *at >= queued_at + chrono::Duration::seconds(1),
        "queued one second later: {at}"
    );
}

#[test]
fn bad_jobs_and_schedules_are_refused_with_the_reason() {
    let sluice = Sluice::start(&ticker(&format!(
        "schedule = {{ tasks = {{ tick = \"{NEVER}\" }} }}"
    )));
    let refused = |args: &[&str], reason: &str| {
        let (ok, _, err) = sluice.run(args);
        assert!(!ok, "{args:?} was accepted");
        assert!(err.contains(reason), "{args:?}: {err}");
    };
    let enqueue = ["jobs", "enqueue", "--installation", ID, "--name"];
    refused(
        &[&enqueue[..], &["echo", "--payload", "{not json"]].concat(),
        "job payload is not JSON",
    );
    refused(&[&enqueue[..], &["no spaces"]].concat(), "job name");
    refused(
        &[&enqueue[..], &["echo", "--in", "3 fortnights"]].concat(),
        "--in",
    );
    refused(
        &[&enqueue[..], &["echo", "--at", "tomorrow"]].concat(),
        "--at",
    );
    refused(
        &[
            "jobs",
            "enqueue",
            "--installation",
            "team-9/x",
            "--name",
            "echo",
        ],
        "no installation team-9/x",
    );
    assert!(jobs(&sluice).is_empty(), "nothing was queued");

    let problems = [
        (
            r#"schedule = { tasks = { nope = "every day" } }"#,
            "teams[0].plugins[0].schedule.tasks.nope",
            "has no task `nope`",
        ),
        (
            r#"schedule = { tasks = { tick = "every fortnight" } }"#,
            "teams[0].plugins[0].schedule.tasks.tick",
            "is not a schedule",
        ),
        (
            r#"schedule = { time_zone = "Mars/Olympus" }"#,
            "teams[0].plugins[0].schedule.time_zone",
            "not an IANA time zone",
        ),
        (
            r#"jobs = { max_attempts = 0 }"#,
            "teams[0].plugins[0].jobs.max_attempts",
            "between 1 and 100",
        ),
    ];
    for (extra, key, reason) in problems {
        let stderr = serve_fails(&ticker(extra));
        assert!(
            stderr.contains(key) && stderr.contains(reason),
            "{extra}: {stderr}"
        );
    }
    let downsample = format!(
        "[[teams]]\nid = 1\ntoken = \"phc_one\"\n[[teams.plugins]]\nid = \"d\"\nplugin = \"{}\"\nschedule = {{}}\n",
        plugin("downsample").display()
    );
    let stderr = serve_fails(&downsample);
    assert!(stderr.contains("does not export `scheduled`"), "{stderr}");
}

#[test]
fn tasks_schedules_shows_each_schedule_and_its_next_tick() {
    let sluice = Sluice::start(&ticker(&format!(
        "schedule = {{ time_zone = \"Europe/Paris\", tasks = {{ tick = \"0 0 1,15 * 1\", slow = \"{NEVER}\" }} }}"
    )));
    let schedules: Vec<Value> = wait_for(&sluice, 20, "the schedules", || {
        let (ok, out, _) = sluice.run(&["tasks", "schedules", "--installation", ID]);
        let lines: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (ok && lines.len() >= 2).then_some(lines)
    });
    let tick = schedules.iter().find(|s| s["task"] == "tick").unwrap();
    assert_eq!(tick["schedule"], "0 0 1,15 * 1");
    assert_eq!(tick["time_zone"], "Europe/Paris");
    // Unix cron: the 1st, the 15th or a Monday, at midnight in Paris.
    let next = time(&tick["next_tick"]).with_timezone(&chrono_tz::Europe::Paris);
    assert_eq!((next.hour(), next.minute()), (0, 0), "{tick}");
    assert!(
        [1, 15].contains(&next.day()) || next.weekday() == chrono::Weekday::Mon,
        "{tick}"
    );
    assert!(next > Utc::now() && next < Utc::now() + chrono::Duration::days(8));
    let slow = schedules.iter().find(|s| s["task"] == "slow").unwrap();
    // Midnight of 2099-01-01 in Paris.
    assert_eq!(slow["next_tick"], "2098-12-31T23:00:00.000Z");
    // With no run yet, `sluice tasks` says so and shows what is scheduled.
    let (ok, out, err) = sluice.run(&["tasks", "--installation", ID]);
    assert!(ok, "{err}");
    assert!(err.contains("no task runs yet"), "{err}");
    assert!(out.contains("\"next_tick\""), "{out}");
}

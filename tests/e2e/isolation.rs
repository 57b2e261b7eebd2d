//! One bad event never takes its batch with it: failures are isolated to the events responsible,
//! a plugin that keeps failing trips its circuit breaker, and failures are readable in the
//! server log, `sluice logs` and the dead letters.

use crate::support::{Sluice, plain_team, team_with_plugin};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const BATCH: usize = 1_000;
const USERS: usize = 50;

fn uuid_of(n: usize) -> String {
    format!("0190d2f5-6bd4-7c3e-9a51-{n:012x}")
}

/// A server where team 1 runs the adversary in `mode` with `settings`, and team 2 no plugin.
fn start(mode: &str, settings: &str) -> Sluice {
    let config = team_with_plugin(
        1,
        "phc_one",
        "adversary",
        &format!("config = {{ mode = \"{mode}\" }}\n{settings}"),
    ) + &plain_team(2, "phc_two");
    Sluice::start(&config)
}

/// Sends one batch of [`BATCH`] events for team 1, those in `poison` named `attack`, and waits
/// until they are processed.
fn send_batch(sluice: &Sluice, poison: &[usize]) {
    let events: Vec<Value> = (0..BATCH)
        .map(|n| {
            let name = if poison.contains(&n) {
                "attack"
            } else {
                "normal"
            };
            json!({"event": name, "distinct_id": format!("user-{}", n % USERS),
                   "uuid": uuid_of(n), "properties": {"n": n}})
        })
        .collect();
    let (status, body) =
        sluice.post_json("/batch", &json!({"api_key": "phc_one", "batch": events}));
    assert_eq!(status, 200, "{body}");
    sluice.drain();
}

/// Stored events of team 1 by their `n`.
fn stored(sluice: &Sluice) -> BTreeMap<usize, Value> {
    sluice
        .events(1)
        .into_iter()
        .map(|e| (e["properties"]["n"].as_u64().unwrap() as usize, e))
        .collect()
}

/// Every event not in `poison` went through the plugin (it carries the plugin's `seq`), once, and
/// each user's events are stored in the order they were sent.
fn assert_innocents_processed(sluice: &Sluice, poison: &[usize]) {
    let stored = stored(sluice);
    for n in (0..BATCH).filter(|n| !poison.contains(n)) {
        let event = stored
            .get(&n)
            .unwrap_or_else(|| panic!("innocent event {n} was not stored"));
        assert_eq!(event["uuid"], uuid_of(n));
        assert!(
            event["properties"]["seq"].is_u64(),
            "event {n} skipped the plugin: {event}"
        );
    }
    let events = sluice.events(1);
    for user in 0..USERS {
        let ns: Vec<u64> = events
            .iter()
            .filter(|e| e["distinct_id"] == format!("user-{user}"))
            .map(|e| e["properties"]["n"].as_u64().unwrap())
            .collect();
        assert!(ns.is_sorted(), "user-{user} out of order: {ns:?}");
    }
}

#[test]
fn one_poison_event_in_a_batch_of_1000_takes_the_policy_alone() {
    const POISON: usize = 437;
    for policy in ["skip", "drop", "dead_letter"] {
        let sluice = start("panic", &format!("on_error = \"{policy}\""));
        send_batch(&sluice, &[POISON]);
        assert_innocents_processed(&sluice, &[POISON]);
        let stored = stored(&sluice);
        let letters = sluice.dead_letters(1);
        match policy {
            "skip" => {
                assert_eq!(stored.len(), BATCH);
                let attack = &stored[&POISON];
                assert_eq!(attack["properties"], json!({"n": POISON}), "unchanged");
                assert!(letters.is_empty());
            }
            "drop" => {
                assert_eq!(stored.len(), BATCH - 1);
                assert!(letters.is_empty());
            }
            _ => {
                assert_eq!(stored.len(), BATCH - 1);
                let [letter] = &letters[..] else {
                    panic!("{letters:?}")
                };
                assert_eq!(letter["event"]["uuid"], uuid_of(POISON));
                let error = letter["error"].as_str().unwrap();
                assert!(
                    error.contains("plugin `adversary` panicked: adversary panics on purpose"),
                    "{error}"
                );
                assert!(!error.contains("backtrace"), "{error}");
                assert!(letter["backtrace"].as_str().is_some_and(|b| !b.is_empty()));
            }
        }
        let (_, metrics) = sluice.get("/metrics");
        let line = "sluice_plugin_failures_total{installation=\"team-1/p\",kind=\"panic\"} 1";
        assert!(metrics.contains(line), "{policy}: {metrics}");
    }
}

#[test]
fn three_scattered_poison_events_are_each_isolated() {
    let poison = [3, 512, 998];
    let sluice = start("recurse", "on_error = \"dead_letter\"");
    send_batch(&sluice, &poison);
    assert_innocents_processed(&sluice, &poison);
    assert_eq!(stored(&sluice).len(), BATCH - poison.len());
    let letters = sluice.dead_letters(1);
    let lettered: BTreeSet<String> = letters
        .iter()
        .map(|l| l["event"]["uuid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(lettered, poison.iter().map(|n| uuid_of(*n)).collect());
    for letter in &letters {
        let error = letter["error"].as_str().unwrap();
        assert!(
            error.starts_with("stack_overflow: stack overflow in plugin `adversary`"),
            "{error}"
        );
        assert!(error.contains("memory cap 64 MiB"), "{error}");
    }
}

#[test]
fn a_batch_level_plugin_error_is_isolated_too() {
    let sluice = start("error_batch", "on_error = \"dead_letter\"");
    send_batch(&sluice, &[0, 999]);
    assert_innocents_processed(&sluice, &[0, 999]);
    let letters = sluice.dead_letters(1);
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters
            .iter()
            .all(|l| l["error"] == "plugin error: adversary fails the whole batch")
    );
}

/// The lines of `sluice logs` for team 1 containing `text`.
fn log_lines(sluice: &Sluice, text: &str) -> Vec<Value> {
    sluice
        .logs(&["--installation", "team-1/p"])
        .into_iter()
        .filter(|l| l["message"].as_str().unwrap().contains(text))
        .collect()
}

/// Waits until `sluice logs` for team 1 has more than `seen` lines containing `text`; returns
/// the newest.
fn wait_for_log_after(sluice: &Sluice, text: &str, seen: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = log_lines(sluice, text);
        if lines.len() > seen {
            return lines[lines.len() - 1].clone();
        }
        assert!(Instant::now() < deadline, "no new `{text}` in the logs");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `sluice logs` for team 1 has a line containing `text`; returns the newest.
fn wait_for_log(sluice: &Sluice, text: &str) -> Value {
    wait_for_log_after(sluice, text, 0)
}

fn metric(sluice: &Sluice, line_start: &str) -> Option<f64> {
    let (_, metrics) = sluice.get("/metrics");
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn send_one(sluice: &Sluice, name: &str, token: &str) {
    let event = json!({"event": name, "distinct_id": "u", "token": token});
    assert_eq!(sluice.post_json("/e", &event).0, 200);
    sluice.drain();
}

#[test]
fn a_plugin_that_keeps_failing_trips_its_breaker_and_a_trial_closes_it() {
    let mut sluice = start(
        "panic",
        "breaker = { consecutive_failures = 3, cooldown_seconds = 1, max_cooldown_seconds = 1 }",
    );
    for _ in 0..8 {
        send_one(&sluice, "attack", "phc_one");
        send_one(&sluice, "other-team", "phc_two");
    }
    let opened = wait_for_log(&sluice, "circuit breaker opened after 3 failures in a row");
    assert_eq!(opened["level"], "error");
    let failures = |kind: &str| {
        metric(
            &sluice,
            &format!("sluice_plugin_failures_total{{installation=\"team-1/p\",kind=\"{kind}\"}}"),
        )
        .unwrap_or(0.0)
    };
    // Three calls failed; the other events took `skip` without calling the plugin (but for a
    // trial after each 1 s cool-down, which failed and re-opened it).
    assert!(
        (3.0..=5.0).contains(&failures("panic")),
        "{}",
        failures("panic")
    );
    assert_eq!(failures("panic") + failures("circuit_open"), 8.0);
    assert_eq!(
        metric(
            &sluice,
            "sluice_plugin_breaker_open{installation=\"team-1/p\"}"
        ),
        Some(1.0)
    );
    assert_eq!(sluice.events(2).len(), 8, "the other team is unaffected");
    assert_eq!(sluice.events(1).len(), 8, "`skip` kept every event");

    // After the cool-down, a working call is the trial that closes the breaker; until then,
    // events pass by the plugin.
    let deadline = Instant::now() + Duration::from_secs(10);
    while log_lines(&sluice, "circuit breaker closed").is_empty() {
        assert!(Instant::now() < deadline, "the breaker never closed");
        send_one(&sluice, "normal", "phc_one");
    }
    assert_eq!(
        metric(
            &sluice,
            "sluice_plugin_breaker_open{installation=\"team-1/p\"}"
        ),
        Some(0.0)
    );
    let last = sluice.events(1).pop().unwrap();
    assert!(last["properties"]["seq"].is_u64(), "{last}");

    // A plugin failing every event opens it again; fixed and restarted, events flow.
    let config = std::fs::read_to_string(sluice.config_path()).unwrap();
    let failing = config.replace(
        "mode = \"panic\" }",
        "mode = \"panic\", trigger = \"normal\" }",
    );
    std::fs::write(sluice.config_path(), &failing).unwrap();
    sluice.restart();
    let openings = log_lines(&sluice, "circuit breaker opened").len();
    for _ in 0..3 {
        send_one(&sluice, "normal", "phc_one");
    }
    wait_for_log_after(&sluice, "circuit breaker opened", openings);
    std::fs::write(sluice.config_path(), &config).unwrap();
    sluice.restart();
    send_one(&sluice, "normal", "phc_one");
    let last = sluice.events(1).pop().unwrap();
    assert_eq!(last["properties"]["seq"], 1, "{last}");
    assert_eq!(
        metric(
            &sluice,
            "sluice_plugin_breaker_open{installation=\"team-1/p\"}"
        ),
        Some(0.0)
    );
}

#[test]
fn deep_recursion_reads_as_a_stack_overflow_everywhere_it_is_reported() {
    let sluice = start("recurse", "on_error = \"dead_letter\"\nmemory_mb = 32");
    send_one(&sluice, "attack", "phc_one");
    let expected = "stack overflow in plugin `adversary`";
    let letters = sluice.dead_letters(1);
    let error = letters[0]["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("stack_overflow: {expected}"))
            && error.ends_with("(memory cap 32 MiB)"),
        "{error}"
    );
    let logged = wait_for_log(&sluice, error);
    assert_eq!(logged["level"], "error");
    assert!(
        logged["message"].as_str().unwrap().starts_with(&format!(
            "transform failed on event {}",
            letters[0]["event"]["uuid"].as_str().unwrap()
        )),
        "{logged}"
    );
    let stderr = sluice.stderr();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("kind=\"stack_overflow\""))
        .collect();
    let [line] = &lines[..] else {
        panic!("one server log line per failure:\n{stderr}")
    };
    assert!(
        line.contains(expected)
            && line.contains("installation=\"team-1/p\"")
            && line.contains("hook=\"transform\"")
            && line.contains(letters[0]["event"]["uuid"].as_str().unwrap()),
        "{line}"
    );
    assert!(
        !stderr.contains("wasm backtrace"),
        "backtraces are debug only:\n{stderr}"
    );
}

#[test]
fn plugin_stderr_is_stored_at_warn_and_stdout_at_info() {
    let sluice = start("panic", "");
    send_one(&sluice, "attack", "phc_one");
    let panic_line = wait_for_log(&sluice, "panicked at");
    assert_eq!(panic_line["level"], "warn");
    let failure = wait_for_log(&sluice, "transform failed on event");
    assert_eq!(failure["level"], "error");
}

//! Plugins that misbehave on purpose: each must leave the host serving, with the documented
//! outcome for the event under the installation's `on_error` policy.
//!
//! Every scenario runs the adversary for team 1 and no plugin for team 2, and sends: a normal
//! event, the attack, another normal event (each processed before the next is sent), then an
//! event for team 2. Normal events come back with `seq`, the instance's call counter, which
//! restarts at 1 when the instance was rebuilt after a trap.

use crate::support::{Sluice, plain_team, team_with_plugin};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const ATTACK_UUID: &str = "0190d2f5-6bd4-7c3e-9a51-2b1f0e4c8dff";

struct Outcome {
    sluice: Sluice,
    events: Vec<Value>,
    dead_letters: Vec<Value>,
    attack_took: Duration,
}

impl Outcome {
    fn seq_of(&self, event: &str) -> Option<Value> {
        self.events
            .iter()
            .find(|e| e["event"] == event)
            .map(|e| e["properties"]["seq"].clone())
    }

    fn attack(&self) -> Option<&Value> {
        self.events.iter().find(|e| e["event"] == "attack")
    }
}

fn run(mode: &str, settings: &str) -> Outcome {
    let config = format!(
        "{}{}",
        team_with_plugin(
            1,
            "phc_one",
            "adversary",
            &format!("config = {{ mode = \"{mode}\" }}\n{settings}")
        ),
        plain_team(2, "phc_two")
    );
    let sluice = Sluice::start(&config);
    let send = |name: &str, extra: Value| {
        let mut event = json!({"event": name, "distinct_id": "u", "token": "phc_one", "properties": {"k": "v"}});
        if let (Value::Object(event), Value::Object(extra)) = (&mut event, extra) {
            event.extend(extra);
        }
        let (status, body) = sluice.post_json("/e", &event);
        assert_eq!(status, 200, "{body}");
        sluice.drain();
    };
    send("before", json!({}));
    let started = Instant::now();
    send("attack", json!({"uuid": ATTACK_UUID}));
    let attack_took = started.elapsed();
    send("after", json!({}));
    let (status, _) = sluice.post_json(
        "/e",
        &json!({"event": "other-team", "distinct_id": "u", "token": "phc_two"}),
    );
    assert_eq!(status, 200, "the host stopped serving after `{mode}`");
    sluice.drain();
    assert_eq!(sluice.events(2).len(), 1, "team 2 was affected by `{mode}`");
    Outcome {
        events: sluice.events(1),
        dead_letters: sluice.dead_letters(1),
        sluice,
        attack_took,
    }
}

/// Under `skip`, a trapping plugin leaves the event as it was and its instance is rebuilt.
fn assert_trap_skipped(outcome: &Outcome, kind: &str) {
    let attack = outcome
        .attack()
        .expect("the attack event continues unchanged under `skip`");
    assert_eq!(attack["uuid"], ATTACK_UUID);
    assert_eq!(
        attack["properties"],
        json!({"k": "v"}),
        "no plugin changes survive a trap"
    );
    assert_eq!(outcome.seq_of("before"), Some(json!(1)));
    assert_eq!(
        outcome.seq_of("after"),
        Some(json!(1)),
        "the instance was not rebuilt"
    );
    let (_, metrics) = outcome.sluice.get("/metrics");
    let line =
        format!("sluice_plugin_failures_total{{installation=\"team-1/p\",kind=\"{kind}\"}} 1");
    assert!(metrics.contains(&line), "missing `{line}` in\n{metrics}");
}

#[test]
fn a_panicking_plugin_is_rebuilt_and_the_event_skips_it() {
    assert_trap_skipped(&run("panic", ""), "panic");
}

#[test]
fn an_endless_loop_is_stopped_at_the_deadline() {
    let outcome = run("loop", "timeout_ms = 200");
    assert_trap_skipped(&outcome, "timeout");
    assert!(
        outcome.attack_took < Duration::from_secs(5),
        "took {:?}",
        outcome.attack_took
    );
}

#[test]
fn unbounded_allocation_hits_the_memory_cap() {
    assert_trap_skipped(&run("alloc", "memory_mb = 16"), "memory_limit");
}

#[test]
fn undecodable_output_is_a_contract_violation() {
    assert_trap_skipped(&run("garbage_outcomes", ""), "contract_violation");
}

#[test]
fn changing_team_id_or_uuid_is_undone() {
    let outcome = run("tamper_envelope", "");
    let attack = outcome
        .attack()
        .expect("the tampered event is stored under its real identity");
    assert_eq!(attack["uuid"], ATTACK_UUID);
    assert_eq!(attack["team_id"], 1);
    assert_eq!(
        attack["properties"]["tampered"], true,
        "the rest of the change is kept"
    );
    assert!(outcome.sluice.events(1001).is_empty());
    let (_, metrics) = outcome.sluice.get("/metrics");
    assert!(
        metrics.contains("kind=\"envelope_changed\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        outcome.seq_of("after"),
        Some(json!(2)),
        "not a trap: the instance lives on"
    );
}

#[test]
fn non_object_properties_go_to_the_dead_letter_table() {
    let outcome = run("non_object_properties", "on_error = \"dead_letter\"");
    assert!(outcome.attack().is_none());
    let [letter] = &outcome.dead_letters[..] else {
        panic!("{:?}", outcome.dead_letters)
    };
    assert_eq!(letter["installation"], "team-1/p");
    assert!(
        letter["error"]
            .as_str()
            .unwrap()
            .contains("not a JSON object"),
        "{letter}"
    );
    assert_eq!(letter["event"]["uuid"], ATTACK_UUID);
    assert_eq!(
        letter["event"]["properties"],
        json!({"k": "v"}),
        "kept as it was before the plugin"
    );
}

#[test]
fn oversized_properties_are_dropped_under_the_drop_policy() {
    let outcome = run("oversized_properties", "on_error = \"drop\"");
    assert!(outcome.attack().is_none());
    assert!(outcome.dead_letters.is_empty());
    assert_eq!(outcome.seq_of("after"), Some(json!(2)));
}

#[test]
fn a_plugin_error_is_dead_lettered_with_its_message() {
    let outcome = run("error", "on_error = \"dead_letter\"");
    assert!(outcome.attack().is_none());
    assert!(
        outcome.dead_letters[0]["error"]
            .as_str()
            .unwrap()
            .contains("adversary fails this event")
    );
}

#[test]
fn an_explicit_drop_drops_only_that_event() {
    let outcome = run("drop", "");
    assert!(outcome.attack().is_none());
    assert_eq!(outcome.events.len(), 2);
}

#[test]
fn a_stdout_flood_is_capped_and_the_plugin_keeps_working() {
    let outcome = run("stdout_flood", "");
    assert!(outcome.attack().is_some());
    assert_eq!(outcome.seq_of("after"), Some(json!(2)));
    let stderr = outcome.sluice.stderr();
    assert!(
        stderr.contains("bytes of stdout/stderr dropped"),
        "{stderr}"
    );
    let flood_lines = stderr.lines().filter(|l| l.contains("flood line")).count();
    assert!(
        (1..=100).contains(&flood_lines),
        "{flood_lines} flood lines reached the log"
    );

    // The same lines are stored for `sluice logs`, with the notices about what was cut.
    let sluice = &outcome.sluice;
    let deadline = Instant::now() + Duration::from_secs(10);
    let logs = loop {
        let logs = sluice.logs(&["--installation", "team-1/p"]);
        if logs.iter().any(|l| {
            l["message"]
                .as_str()
                .unwrap()
                .contains("log lines suppressed")
        }) {
            break logs;
        }
        assert!(Instant::now() < deadline, "notices never stored: {logs:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let stored_flood = logs
        .iter()
        .filter(|l| l["message"].as_str().unwrap().starts_with("flood line"))
        .count();
    assert_eq!(stored_flood, flood_lines);
    assert!(logs.iter().any(|l| {
        l["level"] == "warn"
            && l["message"]
                .as_str()
                .unwrap()
                .contains("bytes of stdout/stderr dropped")
    }));
    assert_eq!(logs[0]["installation"], "team-1/p");
    assert!(sluice.logs(&["--team", "2"]).is_empty());
    assert_eq!(sluice.logs(&["--team", "1"]).len(), logs.len());
}

/// Sends an attack event and waits until its log lines (and the notices that end them) are stored;
/// returns how many lines are stored in all.
fn attack_and_wait_for_logs(sluice: &Sluice) -> usize {
    let before = sluice.logs(&[]).len();
    sluice.post_json(
        "/e",
        &json!({"event": "attack", "distinct_id": "u", "token": "phc_one"}),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = sluice.logs(&[]);
        let notices = logs[before.min(logs.len())..]
            .iter()
            .filter(|l| l["level"] == "warn")
            .count();
        if notices == 2 {
            return logs.len();
        }
        assert!(
            Instant::now() < deadline,
            "log lines never stored: {logs:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn logs_follow_prints_only_lines_stored_after_it_started() {
    let config = team_with_plugin(
        1,
        "phc_one",
        "adversary",
        "config = { mode = \"stdout_flood\" }",
    );
    let sluice = Sluice::start(&config);
    let first = attack_and_wait_for_logs(&sluice);
    let mut follow = std::process::Command::new(crate::support::sluice_bin())
        .args(["logs", "--follow", "--limit", "0", "--config"])
        .arg(sluice.config_path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // It says on stderr once it has taken its starting point.
    let mut stderr = std::io::BufReader::new(follow.stderr.take().unwrap());
    let mut said = String::new();
    while !said.starts_with("following") {
        said.clear();
        let read = std::io::BufRead::read_line(&mut stderr, &mut said).unwrap();
        assert!(read > 0, "`sluice logs --follow` ended before it followed");
    }
    let total = attack_and_wait_for_logs(&sluice);
    let mut printed = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        printed.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    follow.kill().unwrap();
    let _ = follow.wait();
    assert_eq!(printed.len(), total - first, "{printed:?}");
    assert_eq!(printed[0]["message"], "flood line 0");
}

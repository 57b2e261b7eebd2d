//! A Kafka-protocol broker for tests: librdkafka's mock cluster (real Kafka protocol on a
//! localhost TCP port), in a process of its own so that several sluice processes share it.
//!
//! `sluice-test-broker [TOPIC:PARTITIONS ...]` creates the topics, prints
//! `brokers <host:port,...>` on one line, then reads commands on standard input, one per line,
//! answering each with `ok` or `error <reason>`:
//! - `down` / `up`: takes every broker down or brings it back (fault injection);
//! - `quit` (or the end of input): stops; the data lived only in this process.

use rdkafka::mocking::MockCluster;
use std::io::{BufRead, Write};

/// Brokers in the cluster.
const BROKERS: i32 = 1;

fn main() {
    if let Err(error) = run() {
        eprintln!("sluice-test-broker: {error}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let cluster = MockCluster::new(BROKERS).map_err(|e| format!("cannot start: {e}"))?;
    for spec in std::env::args().skip(1) {
        let (topic, partitions) = spec
            .split_once(':')
            .and_then(|(t, p)| Some((t, p.parse::<i32>().ok()?)))
            .ok_or_else(|| format!("`{spec}` is not TOPIC:PARTITIONS"))?;
        cluster
            .create_topic(topic, partitions, 1)
            .map_err(|e| format!("cannot create {topic}: {e}"))?;
    }
    let mut out = std::io::stdout();
    let say = |out: &mut std::io::Stdout, line: &str| -> Result<(), String> {
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())
    };
    say(
        &mut out,
        &format!("brokers {}", cluster.bootstrap_servers()),
    )?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let result = match line.trim() {
            "down" => (1..=BROKERS).try_for_each(|id| cluster.broker_down(id)),
            "up" => (1..=BROKERS).try_for_each(|id| cluster.broker_up(id)),
            "quit" => return Ok(()),
            other => {
                say(&mut out, &format!("error unknown command `{other}`"))?;
                continue;
            }
        };
        match result {
            Ok(()) => say(&mut out, "ok")?,
            Err(error) => say(&mut out, &format!("error {error}"))?,
        }
    }
    Ok(())
}

//! A Kafka-protocol broker for tests, as a real process: the `sluice-test-broker` helper
//! (librdkafka's mock cluster on a localhost port), which `tests/run.sh` builds; a test fails,
//! never skips, without it. Stopped when dropped.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The topics the broker starts with: the ingest and the stored topics, with their partitions.
const TOPICS: [&str; 5] = [
    "sluice_ingest:4",
    "sluice_events:4",
    "sluice_recordings:2",
    "sluice_dead_letters:2",
    "sluice_plugin_logs:2",
];

/// A running `sluice-test-broker`, stopped when dropped.
pub struct Broker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// `bootstrap.servers`.
    pub brokers: String,
}

impl Broker {
    /// Starts the broker with sluice's topics.
    pub fn start() -> Self {
        let path = std::env::var("SLUICE_TEST_BROKER").unwrap_or_else(|_| {
            panic!("SLUICE_TEST_BROKER is not set: run the tests with tests/run.sh, which builds the broker helper")
        });
        let mut child = Command::new(&path)
            .args(TOPICS)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the broker helper {path}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let brokers = line
            .trim()
            .strip_prefix("brokers ")
            .unwrap_or_else(|| panic!("the broker helper said {line:?}"))
            .to_owned();
        Self {
            child,
            stdin,
            stdout,
            brokers,
        }
    }

    /// Sends `command` (`down`, `up`) and waits for its `ok`.
    pub fn tell(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ok", "{command}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

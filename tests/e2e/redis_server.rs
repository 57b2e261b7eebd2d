//! Debian's `redis-server` as a real process for tests, on a free port, its append-only file
//! (fsync on every write) in a temp folder, killed when dropped; it can be killed and started
//! again on the same port and data (an outage that loses nothing it acknowledged).
//! `tests/run.sh` installs it (`SLUICE_REDIS_SERVER` names another); a test fails, never skips,
//! without it. Shared by `tests/e2e` and the host's unit tests (`#[path]`).

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Whether it keeps an append-only file (fsync on every write).
    persistent: bool,
    port: u16,
    /// `redis://127.0.0.1:PORT`.
    pub url: String,
}

impl RedisServer {
    /// Starts a server that fsyncs every write; returns once it answers `PING`.
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// Starts a server without persistence (a pure cache), for comparison.
    pub fn start_volatile() -> Self {
        Self::start_with(false)
    }

    fn start_with(persistent: bool) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("a free port");
        let mut server = Self {
            child: None,
            dir: tempfile::tempdir().expect("a temp folder"),
            persistent,
            port,
            url: format!("redis://127.0.0.1:{port}"),
        };
        server.resume();
        server
    }

    /// Starts it again after [`RedisServer::kill`], on the same port and data.
    pub fn resume(&mut self) {
        let binary =
            std::env::var("SLUICE_REDIS_SERVER").unwrap_or_else(|_| "/usr/bin/redis-server".into());
        let child = Command::new(&binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendfsync", "always", "--appendonly"])
            .arg(if self.persistent { "yes" } else { "no" })
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary}: {e} (tests/run.sh installs Debian's redis-server; SLUICE_REDIS_SERVER names another)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it answers `PING`.
    fn answers(&self) -> bool {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut reply = [0; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Kills it (SIGKILL): an outage until [`RedisServer::resume`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

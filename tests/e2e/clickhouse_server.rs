//! Debian's `clickhouse-server` as a real process for tests and benchmarks, on free ports with
//! its config and data in a temp folder, killed when dropped. `tests/run.sh` installs it; a test
//! fails, never skips, without it. Shared by `tests/e2e` and `host/benches` (`#[path]`).

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `clickhouse-server` with its config and data in a temp folder; killed when
/// dropped. It can be stopped and started again on the same ports and data (an outage).
pub struct ClickHouseServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The HTTP interface, e.g. `http://127.0.0.1:40123`.
    pub url: String,
}

impl ClickHouseServer {
    /// Starts a server; returns once it answers.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (http, tcp) = (free_port(), free_port());
        std::fs::write(dir.path().join("config.xml"), config(dir.path(), http, tcp)).unwrap();
        let mut server = Self {
            child: None,
            dir,
            url: format!("http://127.0.0.1:{http}"),
        };
        server.resume();
        server
    }

    /// Starts it again after [`ClickHouseServer::kill`], on the same ports and data.
    pub fn resume(&mut self) {
        let binary =
            std::env::var("SLUICE_CLICKHOUSE").unwrap_or_else(|_| "clickhouse-server".into());
        let log = std::fs::File::create(self.dir.path().join("stdout.log")).unwrap();
        let child = Command::new(&binary)
            .arg(format!(
                "--config-file={}",
                self.dir.path().join("config.xml").display()
            ))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary}: {e} (tests/run.sh installs Debian's clickhouse-server; SLUICE_CLICKHOUSE names another)")
            });
        self.child = Some(child);
        let client = reqwest::blocking::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !client
            .get(format!("{}/ping", self.url))
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                Instant::now() < deadline,
                "clickhouse-server did not answer within a minute:\n{}",
                std::fs::read_to_string(self.dir.path().join("log/error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills it (SIGKILL): an outage until [`ClickHouseServer::resume`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The `[clickhouse]` section naming this server.
    pub fn section(&self) -> String {
        format!("[clickhouse]\nurl = \"{}\"\nbatch_age_ms = 200\n", self.url)
    }

    /// The answer to `query` (tab-separated text).
    pub fn query(&self, query: &str) -> String {
        let response = reqwest::blocking::Client::new()
            .post(&self.url)
            .body(query.to_owned())
            .send()
            .unwrap();
        let status = response.status();
        let text = response.text().unwrap();
        assert!(status.is_success(), "{query}: {text}");
        text
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A server config with everything under `dir`, listening on loopback only.
fn config(dir: &Path, http: u16, tcp: u16) -> String {
    let d = dir.display();
    format!(
        "<yandex>
  <logger><level>warning</level><log>{d}/log/server.log</log><errorlog>{d}/log/error.log</errorlog></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>/etc/clickhouse-server/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>536870912</mark_cache_size>
</yandex>
"
    )
}

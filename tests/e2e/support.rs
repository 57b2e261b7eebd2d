//! Running the real `sluice` binary for tests: config in a temp folder, a free port, HTTP, and
//! the `sluice events` / `sluice dead-letters` commands to read storage back.

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The sluice binary cargo built for these tests.
pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// How long a command a test runs may take before it is killed and the test fails.
const COMMAND_DEADLINE: Duration = Duration::from_secs(600);

/// Runs `command` to its end like [`Command::output`]; one still running after
/// [`COMMAND_DEADLINE`] is killed and fails the test with what it printed, so that a hang is a
/// failure that names itself instead of a test run that never ends.
pub fn output(command: &mut Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + COMMAND_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let Some(status) = status else {
        panic!(
            "{command:?} was still running after {COMMAND_DEADLINE:?} and was killed:\n{}\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Runs `load` on a thread of its own while `meanwhile` runs, then returns what both returned.
/// `load` runs until the flag it is given is raised, which happens when `meanwhile` returns or
/// panics, so that a failing test ends instead of waiting on its load forever.
pub fn with_load<L: Send, M>(
    load: impl FnOnce(&AtomicBool) -> L + Send,
    meanwhile: impl FnOnce() -> M,
) -> (L, M) {
    struct Raise<'a>(&'a AtomicBool);
    impl Drop for Raise<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let loader = scope.spawn(|| load(&stop));
        let result = {
            let _raise = Raise(&stop);
            meanwhile()
        };
        (loader.join().unwrap(), result)
    })
}

/// Path of a wasm plugin built by `plugins/build.sh` (e.g. `downsample`, `adversary`).
///
/// Fails the test, never skips it, when the plugins were not built.
pub fn plugin(name: &str) -> PathBuf {
    built("SLUICE_PLUGIN_DIR", name, "plugins/build.sh DIR")
}

/// Path of an example JS/TS plugin of `sdk/js/examples` built by `tests/run.sh` (e.g.
/// `taxonomy`). Fails the test, never skips it, when they were not built.
pub fn js_plugin(name: &str) -> PathBuf {
    built(
        "SLUICE_JS_PLUGIN_DIR",
        name,
        "node sdk/js/bin/sluice-js.mjs build sdk/js/examples/NAME --out DIR/NAME.wasm",
    )
}

/// The component `name` in the folder the variable `var` names, which `how` builds.
fn built(var: &str, name: &str, how: &str) -> PathBuf {
    let dir = std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: run the tests with tests/run.sh, which builds the components")
    });
    let path = Path::new(&dir).join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build it with `{how}` (DIR = {})",
        path.display(),
        Path::new(&dir).display()
    );
    path
}

/// A running `sluice serve` with its own data folder, killed when dropped.
pub struct Sluice {
    child: Option<Child>,
    /// The temp folder holding `sluice.toml` and `data/`.
    pub dir: tempfile::TempDir,
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    /// What is passed to `serve` besides the config.
    args: Vec<String>,
    client: reqwest::blocking::Client,
}

impl Sluice {
    /// Writes `config` (TOML; `[server]` is added) to a temp folder and starts sluice on it.
    pub fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nworkers = 1\n{config}"
        );
        std::fs::write(dir.path().join("sluice.toml"), text).unwrap();
        Self::start_in(dir)
    }

    /// Starts sluice on the `sluice.toml` already in `dir`.
    pub fn start_in(dir: tempfile::TempDir) -> Self {
        Self::start_in_with(dir, &[])
    }

    /// Starts sluice on the `sluice.toml` already in `dir`, with `args` after `serve` (such as
    /// `--role worker`).
    pub fn start_in_with(dir: tempfile::TempDir, args: &[&str]) -> Self {
        let mut sluice = Self {
            child: None,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            dir,
            url: String::new(),
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        };
        sluice.launch();
        sluice
    }

    fn launch(&mut self) {
        let mut child = Command::new(sluice_bin())
            .arg("serve")
            .args(&self.args)
            .arg("--config")
            .arg(self.config_path())
            .env("SLUICE_LISTEN", "127.0.0.1:0")
            .env("SLUICE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn,sluice::plugin=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        // Keep stderr drained so a chatty plugin can never block the server on a full pipe.
        let log = self.dir.path().join("stderr.log");
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(log).unwrap();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
            }
        });
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(url) => self.url = url,
            Err(_) => {
                let _ = child.kill();
                panic!("sluice did not start; stderr:\n{}", self.stderr());
            }
        }
        self.child = Some(child);
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap()
    }

    /// The server's peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// The config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sluice.toml")
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Asks the process to shut down (SIGTERM) and waits for it to exit, within a minute.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let sent = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(sent.success(), "cannot send SIGTERM");
            let deadline = Instant::now() + Duration::from_secs(60);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!(
                        "sluice did not exit within a minute of SIGTERM\n{}",
                        self.stderr()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            assert!(
                status.success(),
                "sluice exited with {status} after SIGTERM"
            );
        }
    }

    /// Kills the process without letting it shut down (SIGKILL), like a crash.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts the process again on the same config and data.
    pub fn restart(&mut self) {
        self.crash();
        self.launch();
    }

    /// POSTs `body` to `path` with extra headers; returns status and JSON body. A request that
    /// got no answer at all is sent once more, as SDKs do: a pooled keep-alive connection the
    /// server closed just as it was reused fails that way (the request never reached it).
    pub fn post(&self, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> (u16, Value) {
        let send = || {
            let mut request = self
                .client
                .post(format!("{}{path}", self.url))
                .body(body.clone());
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.send()
        };
        let response = send()
            .or_else(|error| {
                assert!(error.is_request(), "{error}");
                send()
            })
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POSTs JSON to `path`.
    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post(
            path,
            body.to_string().into_bytes(),
            &[("content-type", "application/json")],
        )
    }

    /// Calls the admin API: `method` on `path`, with the server's own token (from its data
    /// folder) unless `token` says otherwise; returns status and JSON body.
    pub fn admin(&self, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
        self.admin_with(method, path, token, None)
    }

    /// Calls the admin API like [`Self::admin`], with a JSON `body`.
    pub fn admin_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let (url, own) = self.admin_settings();
        let mut request = self
            .client
            .request(method.parse().unwrap(), format!("{url}{path}"))
            .bearer_auth(token.unwrap_or(&own));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let text = response.text().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Disables installation `disabled` (so that it lets events pass), then replays the dead
    /// letter of `team` for event `uuid` through the admin API; asserts it was replayed.
    pub fn replay_dead_letter_past(&self, disabled: &str, team: u64, uuid: &str) {
        let disable = serde_json::json!({ "installation": disabled });
        let (status, body) = self.admin_with(
            "POST",
            "/admin/v1/installations/disable",
            None,
            Some(&disable),
        );
        assert_eq!(status, 200, "{body}");
        let replay = serde_json::json!({ "team": team, "uuid": uuid });
        let (status, body) =
            self.admin_with("POST", "/admin/v1/dead-letters/replay", None, Some(&replay));
        assert_eq!(
            (status, &body),
            (200, &serde_json::json!({ "replayed": 1 })),
            "{body}"
        );
    }

    /// The admin API's base URL and the server's own token, from its data folder.
    pub fn admin_settings(&self) -> (String, String) {
        let data = self.dir.path().join("data");
        let read = |file: &str| {
            std::fs::read_to_string(data.join(file))
                .unwrap()
                .trim()
                .to_owned()
        };
        (
            format!("http://{}", read("admin-address")),
            read("admin-token"),
        )
    }

    /// GETs `path` as text.
    pub fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .unwrap();
        (response.status().as_u16(), response.text().unwrap())
    }

    /// Stored events (via `sluice events`), oldest first.
    pub fn events(&self, team: u64) -> Vec<Value> {
        self.cli(&["events", "--team", &team.to_string(), "--limit", "100000"])
    }

    /// Stored session-recording events (via `sluice recordings`), oldest first.
    pub fn recordings(&self, team: u64, session: Option<&str>) -> Vec<Value> {
        let team = team.to_string();
        let mut args = vec!["recordings", "--team", &team, "--limit", "100000"];
        if let Some(session) = session {
            args.extend(["--session", session]);
        }
        self.cli(&args)
    }

    /// Stored plugin log lines (via `sluice logs` with `args`), oldest first.
    pub fn logs(&self, args: &[&str]) -> Vec<Value> {
        self.cli(&[&["logs", "--limit", "100000"], args].concat())
    }

    /// Dead letters (via `sluice dead-letters`), oldest first.
    pub fn dead_letters(&self, team: u64) -> Vec<Value> {
        self.cli(&[
            "dead-letters",
            "--team",
            &team.to_string(),
            "--limit",
            "100000",
        ])
    }

    /// The status of every export installation (via `sluice exports`).
    pub fn exports(&self) -> Vec<Value> {
        self.cli(&["exports"])
    }

    /// The export dead letters (via `sluice exports dead-letters`).
    pub fn export_dead_letters(&self) -> Vec<Value> {
        self.cli(&["exports", "dead-letters"])
    }

    /// Runs `sluice <args> --config <this config>`; returns whether it succeeded and its
    /// stdout and stderr.
    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        let output = output(
            Command::new(sluice_bin())
                .args(args)
                .arg("--config")
                .arg(self.config_path()),
        );
        (
            output.status.success(),
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    }

    fn cli(&self, args: &[&str]) -> Vec<Value> {
        let output = output(
            Command::new(sluice_bin())
                .args(args)
                .arg("--config")
                .arg(self.config_path()),
        );
        assert!(
            output.status.success(),
            "sluice {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Waits until the queue is empty (everything captured has been processed).
    pub fn drain(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.get("/ready");
            let ready: Value = serde_json::from_str(&body).unwrap_or_default();
            if status == 200 && ready["queue_depth"] == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "queue did not drain: {body}\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        self.crash();
    }
}

/// Gzips bytes.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A `[[teams]]` table with one plugin installation.
pub fn team_with_plugin(team: u64, token: &str, plugin: &str, extra: &str) -> String {
    format!(
        "[[teams]]\nid = {team}\ntoken = \"{token}\"\n[[teams.plugins]]\nid = \"p\"\nplugin = \"{}\"\n{extra}\n",
        crate::support::plugin(plugin).display()
    )
}

/// A `[[teams]]` table without plugins.
pub fn plain_team(team: u64, token: &str) -> String {
    format!("[[teams]]\nid = {team}\ntoken = \"{token}\"\n")
}

/// Runs `sluice serve` on `config` (TOML; `[server]` is added), expects it to refuse the config
/// (exit code 2) and returns its stderr.
pub fn serve_fails(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        format!("[admin]\nlisten = \"127.0.0.1:0\"\n[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n{config}"),
    )
    .unwrap();
    let output = output(
        Command::new(sluice_bin())
            .args(["serve", "--config"])
            .arg(&path),
    );
    assert_eq!(
        output.status.code(),
        Some(2),
        "sluice serve should refuse this config"
    );
    String::from_utf8(output.stderr).unwrap()
}

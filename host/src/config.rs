//! `sluice.toml`: the one config file, validated at start with every problem reported at once.
//!
//! Sections are deserialized one by one (each team and each plugin installation separately) so
//! that one mistake does not hide the next; each problem names the file, the key and the reason.
//! Relative paths are resolved against the config file's folder. `SLUICE_LISTEN` and
//! `SLUICE_DATA_DIR` override `server.listen` and `server.data_dir`.

use crate::capabilities::http::Policy as HttpPolicy;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sluice_abi::manifest::CAPABILITIES;
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the file was read from.
    pub path: PathBuf,
    /// Listener, storage and worker settings.
    pub server: ServerConfig,
    /// Capture API settings.
    pub capture: CaptureConfig,
    /// Embedded queue settings.
    pub queue: QueueConfig,
    /// The GeoIP database behind the `geoip` capability.
    pub geoip: GeoIpConfig,
    /// Teams, their tokens and plugin chains.
    pub teams: Vec<TeamConfig>,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP API listens on. Env: `SLUICE_LISTEN`.
    pub listen: SocketAddr,
    /// Folder for the SQLite database and the compiled-plugin cache. Env: `SLUICE_DATA_DIR`.
    pub data_dir: PathBuf,
    /// Threads that run plugin chains; defaults to the number of CPUs.
    pub workers: Option<usize>,
    /// Most plugin instances alive at once across all workers; beyond it, the least recently
    /// used instance of a worker is torn down (and rebuilt when needed again).
    pub max_instances: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            data_dir: PathBuf::from("data"),
            workers: None,
            max_instances: 1_000,
        }
    }
}

/// `[geoip]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeoIpConfig {
    /// MaxMind City database (`GeoLite2-City.mmdb`, `GeoIP2-City.mmdb`); required to grant `geoip`.
    pub database: Option<PathBuf>,
    /// How often the file is checked for a new version, in seconds.
    pub check_interval_seconds: u64,
}

impl Default for GeoIpConfig {
    fn default() -> Self {
        Self {
            database: None,
            check_interval_seconds: 60,
        }
    }
}

/// `[capture]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Largest request body for single-event paths (`/e`, `/capture`, `/i/v0/e`...), in bytes,
    /// before and after decompression.
    pub max_event_body_bytes: usize,
    /// Largest request body for `/batch` and `/i/v1/analytics/events`, in bytes, before and
    /// after decompression.
    pub max_batch_body_bytes: usize,
    /// Largest request body for session recordings (`/s`), in bytes, before and after
    /// decompression.
    pub max_recording_body_bytes: usize,
    /// Take the client IP from the first `X-Forwarded-For` entry (only behind a trusted proxy).
    pub trust_forwarded_for: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            max_event_body_bytes: 2 * 1024 * 1024,
            max_batch_body_bytes: 20 * 1024 * 1024,
            max_recording_body_bytes: 25 * 1024 * 1024,
            trust_forwarded_for: false,
        }
    }
}

/// `[queue]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Events waiting for plugins beyond which capture answers `503`.
    pub max_depth_events: u64,
    /// Most events a worker takes from the queue per round.
    pub batch_events: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_depth_events: 1_000_000,
            batch_events: 2_000,
        }
    }
}

/// `[[teams]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    /// Team id stored with every event.
    pub id: u64,
    /// Human name, for logs.
    #[serde(default)]
    pub name: Option<String>,
    /// Project API key producers send (`api_key` / `token`).
    pub token: String,
    /// Plugin installations, run in this order.
    #[serde(skip)]
    pub plugins: Vec<InstallationConfig>,
}

/// `[[teams.plugins]]`: one plugin installation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallationConfig {
    /// Id, unique within the team; the installation is called `team-<id>/<this>` in logs.
    pub id: String,
    /// Path of the plugin's `.wasm` component.
    pub plugin: PathBuf,
    /// Values for the plugin's config schema.
    #[serde(default)]
    pub config: toml::Table,
    /// Deadline of one call into the plugin, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Memory cap of one instance, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// What happens to an event when this plugin fails on it.
    #[serde(default)]
    pub on_error: OnError,
    /// Host capabilities granted to this installation (none by default).
    #[serde(default)]
    pub grants: Vec<String>,
    /// Where `http` may go; required when `http` is granted.
    #[serde(default)]
    pub http: Option<HttpPolicy>,
}

fn default_timeout_ms() -> u64 {
    1_000
}

fn default_memory_mb() -> u64 {
    64
}

/// What happens to an event when a plugin fails on it (error, trap, timeout, bad output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The event continues as it was before this plugin.
    #[default]
    Skip,
    /// The event is dropped.
    Drop,
    /// The event is kept in the dead-letter table with the error.
    DeadLetter,
}

/// One problem in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `teams[0].plugins[1].on_error`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(
            f,
            "{} has {count} problem{}:",
            self.path.display(),
            if count == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}: {}: {}", self.path.display(), p.key, p.reason)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Longest accepted project token, as in PostHog.
pub const MAX_TOKEN_LEN: usize = 64;

/// Why a token is not acceptable, as PostHog words it; `None` if it is fine.
pub fn token_shape_problem(token: &str) -> Option<&'static str> {
    if token.is_empty() {
        Some("empty")
    } else if token.len() > MAX_TOKEN_LEN {
        Some("too_long")
    } else if !token.is_ascii() {
        Some("not_ascii")
    } else if token.starts_with("phx_") {
        Some("personal_api_key")
    } else {
        None
    }
}

struct Collector(Vec<Problem>);

impl Collector {
    fn add(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            reason: reason.into(),
        });
    }

    fn section<T: DeserializeOwned + Default>(&mut self, table: &toml::Table, key: &str) -> T {
        match table.get(key) {
            None => T::default(),
            Some(value) => self.value(key, value.clone()).unwrap_or_default(),
        }
    }

    fn value<T: DeserializeOwned>(&mut self, key: &str, value: toml::Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                let inner = error.path().to_string();
                let full = if inner == "." {
                    key.to_owned()
                } else {
                    format!("{key}.{inner}")
                };
                self.add(full, error.into_inner().to_string());
                None
            }
        }
    }
}

impl Config {
    /// Reads and validates `path`; `env` looks up environment overrides.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let fail = |key: &str, reason: String| ConfigError {
            path: path.to_owned(),
            problems: vec![Problem {
                key: key.to_owned(),
                reason,
            }],
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail("(file)", format!("cannot read: {e}")))?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            fail("(syntax)", e.to_string().trim().replace('\n', " "))
        })?;
        // Relative paths in the file are relative to the file, wherever sluice runs from.
        let absolute = std::path::absolute(path)
            .map_err(|e| fail("(file)", format!("cannot resolve: {e}")))?;
        let base = absolute.parent().unwrap_or(Path::new("/"));
        Self::from_table(path, base, &table, env)
    }

    fn from_table(
        path: &Path,
        base: &Path,
        table: &toml::Table,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut c = Collector(Vec::new());
        for key in table.keys() {
            if !["server", "capture", "queue", "geoip", "teams"].contains(&key.as_str()) {
                c.add(
                    key,
                    "unknown section (expected server, capture, queue, geoip or teams)",
                );
            }
        }
        let mut server: ServerConfig = c.section(table, "server");
        let capture: CaptureConfig = c.section(table, "capture");
        let queue: QueueConfig = c.section(table, "queue");
        let mut geoip: GeoIpConfig = c.section(table, "geoip");
        geoip.database = geoip.database.map(|path| base.join(path));
        if geoip.check_interval_seconds == 0 {
            c.add("geoip.check_interval_seconds", "must be at least 1");
        }
        if server.max_instances == 0 {
            c.add("server.max_instances", "must be at least 1");
        }
        if let Some(listen) = env("SLUICE_LISTEN") {
            match listen.parse() {
                Ok(addr) => server.listen = addr,
                Err(e) => c.add(
                    "server.listen",
                    format!("SLUICE_LISTEN={listen:?} is not an address: {e}"),
                ),
            }
        }
        if let Some(dir) = env("SLUICE_DATA_DIR") {
            server.data_dir = PathBuf::from(dir);
        }
        // An environment override that is relative is relative to the config file too.
        server.data_dir = base.join(&server.data_dir);
        if server.workers == Some(0) {
            c.add("server.workers", "must be at least 1");
        }
        if queue.batch_events == 0 {
            c.add("queue.batch_events", "must be at least 1");
        }
        let teams = match table.get("teams") {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| team(&mut c, base, i, item))
                .collect(),
            Some(_) => {
                c.add("teams", "must be an array of tables ([[teams]])");
                Vec::new()
            }
        };
        check_unique(&mut c, &teams);
        check_geoip_grants(&mut c, &teams, &geoip);
        if c.0.is_empty() {
            Ok(Self {
                path: path.to_owned(),
                server,
                capture,
                queue,
                geoip,
                teams,
            })
        } else {
            Err(ConfigError {
                path: path.to_owned(),
                problems: c.0,
            })
        }
    }

    /// Number of chain workers: configured, or one per CPU.
    pub fn workers(&self) -> usize {
        self.server
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
    }
}

fn team(c: &mut Collector, base: &Path, i: usize, item: &toml::Value) -> Option<TeamConfig> {
    let key = format!("teams[{i}]");
    let mut item = item.clone();
    let plugins = item.as_table_mut().and_then(|t| t.remove("plugins"));
    let mut team: TeamConfig = c.value(&key, item)?;
    if let Some(reason) = token_shape_problem(&team.token) {
        c.add(
            format!("{key}.token"),
            format!("not a usable project token ({reason})"),
        );
    }
    let plugins = match plugins {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items,
        Some(_) => {
            c.add(
                format!("{key}.plugins"),
                "must be an array of tables ([[teams.plugins]])",
            );
            Vec::new()
        }
    };
    let mut ids = HashSet::new();
    for (j, plugin) in plugins.into_iter().enumerate() {
        let key = format!("{key}.plugins[{j}]");
        let Some(mut installation) = c.value::<InstallationConfig>(&key, plugin) else {
            continue;
        };
        if installation.id.is_empty()
            || !installation
                .id
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_".contains(ch))
        {
            c.add(
                format!("{key}.id"),
                "must be non-empty and use only letters, digits, `-` and `_`",
            );
        } else if !ids.insert(installation.id.clone()) {
            c.add(
                format!("{key}.id"),
                format!("`{}` is used twice in this team", installation.id),
            );
        }
        installation.plugin = base.join(&installation.plugin);
        if !installation.plugin.is_file() {
            c.add(
                format!("{key}.plugin"),
                format!("{} does not exist (build plugins with `cargo build --release --target wasm32-wasip2`)", installation.plugin.display()),
            );
        }
        if !(1..=60_000).contains(&installation.timeout_ms) {
            c.add(format!("{key}.timeout_ms"), "must be between 1 and 60000");
        }
        if !(1..=4_096).contains(&installation.memory_mb) {
            c.add(format!("{key}.memory_mb"), "must be between 1 and 4096");
        }
        check_grants(c, &key, &installation);
        team.plugins.push(installation);
    }
    Some(team)
}

fn check_grants(c: &mut Collector, key: &str, installation: &InstallationConfig) {
    let mut seen = HashSet::new();
    for (k, name) in installation.grants.iter().enumerate() {
        if !CAPABILITIES.contains(&name.as_str()) {
            c.add(
                format!("{key}.grants[{k}]"),
                format!(
                    "`{name}` is not a capability (known: {})",
                    CAPABILITIES.join(", ")
                ),
            );
        } else if !seen.insert(name.as_str()) {
            c.add(
                format!("{key}.grants[{k}]"),
                format!("`{name}` is granted twice"),
            );
        }
    }
    match (&installation.http, seen.contains("http")) {
        (None, true) => c.add(
            format!("{key}.http"),
            "`http` is granted, so `http.allow_hosts` must list the hosts it may reach",
        ),
        (Some(_), false) => c.add(
            format!("{key}.http"),
            "is set but `http` is not in `grants`",
        ),
        (Some(policy), true) => {
            if policy.allow_hosts.is_empty() {
                c.add(
                    format!("{key}.http.allow_hosts"),
                    "is empty: the plugin could reach nothing",
                );
            }
            for (h, host) in policy.allow_hosts.iter().enumerate() {
                let pattern = host.strip_prefix("*.").unwrap_or(host);
                let ip = pattern.trim_start_matches('[').trim_end_matches(']');
                let name = !pattern.is_empty()
                    && pattern
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "-.".contains(ch));
                if !name && ip.parse::<std::net::IpAddr>().is_err() {
                    c.add(
                        format!("{key}.http.allow_hosts[{h}]"),
                        format!("{host:?} is not a host name, `*.domain` or IP address (no scheme, port or path)"),
                    );
                }
            }
            if !(1..=256 << 20).contains(&policy.max_response_bytes) {
                c.add(
                    format!("{key}.http.max_response_bytes"),
                    "must be between 1 and 268435456",
                );
            }
        }
        (None, false) => {}
    }
}

fn check_geoip_grants(c: &mut Collector, teams: &[TeamConfig], geoip: &GeoIpConfig) {
    if geoip.database.is_some() {
        return;
    }
    for (i, team) in teams.iter().enumerate() {
        for (j, installation) in team.plugins.iter().enumerate() {
            if installation.grants.iter().any(|g| g == "geoip") {
                c.add(
                    format!("teams[{i}].plugins[{j}].grants"),
                    "`geoip` is granted but no `[geoip] database` is configured",
                );
            }
        }
    }
}

fn check_unique(c: &mut Collector, teams: &[TeamConfig]) {
    let mut ids = HashSet::new();
    let mut tokens = HashSet::new();
    for (i, team) in teams.iter().enumerate() {
        if !ids.insert(team.id) {
            c.add(
                format!("teams[{i}].id"),
                format!("team id {} is used twice", team.id),
            );
        }
        if !tokens.insert(team.token.as_str()) {
            c.add(format!("teams[{i}].token"), "token is used by another team");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("sluice-config-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("p.wasm"), b"").unwrap();
        let path = dir.join("sluice.toml");
        std::fs::write(&path, text).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let result = Config::load(&path, &|key| {
            env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
        });
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    #[test]
    fn a_valid_file_resolves_paths_and_defaults() {
        let config = load(
            r#"
            [server]
            listen = "127.0.0.1:9000"
            [[teams]]
            id = 1
            token = "phc_abc"
            [[teams.plugins]]
            id = "sample"
            plugin = "p.wasm"
            config = { percentage = 50 }
            on_error = "dead_letter"
            "#,
            &[],
        )
        .unwrap();
        assert_eq!(config.server.listen.port(), 9000);
        let installation = &config.teams[0].plugins[0];
        assert!(
            installation.plugin.is_absolute()
                || installation.plugin.starts_with(std::env::temp_dir())
        );
        assert_eq!(installation.on_error, OnError::DeadLetter);
        assert_eq!(installation.timeout_ms, 1_000);
        assert_eq!(installation.config["percentage"].as_integer(), Some(50));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let error = load(
            r#"
            [server]
            listen = "nowhere"
            [nonsense]
            [[teams]]
            id = 1
            token = "phx_personal"
            [[teams.plugins]]
            id = "a"
            plugin = "missing.wasm"
            on_error = "ignore"
            [[teams.plugins]]
            id = "b"
            plugin = "p.wasm"
            timeout_ms = 0
            colour = "red"
            [[teams]]
            id = 1
            token = "phc_other"
            "#,
            &[],
        )
        .unwrap_err();
        let keys: Vec<&str> = error.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "nonsense",
                "server.listen",
                "teams[0].token",
                "teams[0].plugins[0].on_error",
                "teams[0].plugins[1].colour",
                "teams[1].id",
            ],
            "{error}"
        );
        let text = error.to_string();
        assert!(text.contains("has 6 problems"), "{text}");
        assert!(
            text.contains(
                "unknown variant `ignore`, expected one of `skip`, `drop`, `dead_letter`"
            ),
            "{text}"
        );
        assert!(
            text.contains("not a usable project token (personal_api_key)"),
            "{text}"
        );
    }

    #[test]
    fn grants_are_checked() {
        let error = load(
            r#"
            [[teams]]
            id = 1
            token = "phc_abc"
            [[teams.plugins]]
            id = "a"
            plugin = "p.wasm"
            grants = ["storage", "teleport", "storage", "geoip", "http"]
            [[teams.plugins]]
            id = "b"
            plugin = "p.wasm"
            http = { allow_hosts = ["https://x.com/"] }
            [[teams.plugins]]
            id = "c"
            plugin = "p.wasm"
            grants = ["http"]
            http = { allow_hosts = ["api.example.com", "*.example.net", "127.0.0.1", "[::1]", "bad host"] }
            "#,
            &[],
        )
        .unwrap_err();
        let problems: Vec<String> = error
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.key, p.reason))
            .collect();
        assert_eq!(
            problems,
            [
                "teams[0].plugins[0].grants[1]: `teleport` is not a capability (known: log, metrics, storage, cache, geoip, http)",
                "teams[0].plugins[0].grants[2]: `storage` is granted twice",
                "teams[0].plugins[0].http: `http` is granted, so `http.allow_hosts` must list the hosts it may reach",
                "teams[0].plugins[1].http: is set but `http` is not in `grants`",
                "teams[0].plugins[2].http.allow_hosts[4]: \"bad host\" is not a host name, `*.domain` or IP address (no scheme, port or path)",
                "teams[0].plugins[0].grants: `geoip` is granted but no `[geoip] database` is configured",
            ],
        );
    }

    #[test]
    fn environment_overrides_listen_and_data_dir() {
        let config = load(
            "",
            &[
                ("SLUICE_LISTEN", "127.0.0.1:7777"),
                ("SLUICE_DATA_DIR", "/var/lib/sluice"),
            ],
        )
        .unwrap();
        assert_eq!(config.server.listen.port(), 7777);
        assert_eq!(config.server.data_dir, PathBuf::from("/var/lib/sluice"));
        let error = load("", &[("SLUICE_LISTEN", "bad")]).unwrap_err();
        assert!(error.problems[0].reason.contains("SLUICE_LISTEN=\"bad\""));
    }
}

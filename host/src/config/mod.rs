//! `sluice.toml`: the one config file, validated at start with every problem reported at once.
//!
//! Sections are deserialized one by one (each team and each plugin installation separately) so
//! that one mistake does not hide the next; each problem names the file, the key and the reason.
//! Relative paths are resolved against the config file's folder. `SLUICE_LISTEN` and
//! `SLUICE_DATA_DIR` override `server.listen` and `server.data_dir`.
//!
//! One file per section: [`server`], [`capture`], [`queue`], [`teams`]. Capabilities own their
//! sections (e.g. `[geoip]`) and their per-installation tables (e.g. `http`); this module hands
//! those to [`crate::capabilities`] and knows nothing of what is in them.

mod admin;
mod breaker;
mod capture;
mod clickhouse;
pub mod edit;
mod export;
mod ids;
mod kafka;
mod queue;
mod redis;
mod retention;
mod schedule;
mod server;
mod teams;

pub use admin::AdminConfig;
pub use breaker::BreakerConfig;
pub use capture::CaptureConfig;
pub use clickhouse::ClickHouseConfig;
pub use export::ExportConfig;
pub use ids::{InstallationId, MAX_TOKEN_LEN, Token};
pub use kafka::KafkaConfig;
pub use queue::QueueConfig;
pub use redis::RedisConfig;
pub use retention::RetentionConfig;
pub use schedule::{JobsConfig, ScheduleConfig};
pub use server::ServerConfig;
pub use teams::{
    DEFAULT_EXPORT_TIMEOUT_MS, DEFAULT_TASK_TIMEOUT_MS, DEFAULT_TRANSFORM_TIMEOUT_MS,
    InstallationConfig, OnError, Shadow, TeamConfig,
};

use crate::capabilities;
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the file was read from.
    pub path: PathBuf,
    /// Listener, storage and worker settings.
    pub server: ServerConfig,
    /// The operators' API.
    pub admin: AdminConfig,
    /// Capture API settings.
    pub capture: CaptureConfig,
    /// Embedded queue settings.
    pub queue: QueueConfig,
    /// The Kafka ingest, if the file names one (else the embedded queue).
    pub kafka: Option<KafkaConfig>,
    /// ClickHouse storage, if the file names it (else the embedded database).
    pub clickhouse: Option<ClickHouseConfig>,
    /// Shared state on Redis, if the file names it (else in this process).
    pub redis: Option<RedisConfig>,
    /// How long the embedded database keeps what it keeps for operators.
    pub retention: RetentionConfig,
    /// The sections capabilities own (`[geoip]`...).
    pub capabilities: capabilities::Settings,
    /// Teams, their tokens and plugin chains.
    pub teams: Vec<TeamConfig>,
}

/// A secret as the effective config shows it: whether it is set, never its value.
pub(crate) fn redacted<S: serde::Serializer>(
    secret: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => serializer.serialize_str("(redacted)"),
        None => serializer.serialize_none(),
    }
}

/// A URL as the effective config shows it: a password in it is replaced.
pub(crate) fn redacted_url<S: serde::Serializer>(
    url: &str,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let shown = match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user_info, host)) => {
                let user = user_info.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:(redacted)@{host}")
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    };
    serializer.serialize_str(&shown)
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

/// Gathers every problem of a config while it is read, so that all are reported at once.
#[derive(Debug, Default)]
pub struct Collector(Vec<Problem>);

impl Collector {
    /// Records a problem at `key`.
    pub fn add(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            reason: reason.into(),
        });
    }

    /// Deserializes `table[key]` as a section, or its default when absent or broken (the
    /// problem is recorded).
    pub fn section<T: DeserializeOwned + Default>(&mut self, table: &toml::Table, key: &str) -> T {
        match table.get(key) {
            None => T::default(),
            Some(value) => self.value(key, value.clone()).unwrap_or_default(),
        }
    }

    /// Deserializes `value`, recording a problem with its full key path when it does not fit.
    pub fn value<T: DeserializeOwned>(&mut self, key: &str, value: toml::Value) -> Option<T> {
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

    /// The problems so far, as an error about `path`, or `Ok(())` if there are none.
    pub fn finish(self, path: &Path) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                path: path.to_owned(),
                problems: self.0,
            })
        }
    }
}

/// The sections sluice itself reads; capabilities add theirs.
/// The section of config tests (`[[tests]]`), which only `sluice test` reads.
pub const TESTS: &str = "tests";

const OWN_SECTIONS: [&str; 8] = [
    "server",
    "admin",
    "capture",
    "queue",
    "kafka",
    "clickhouse",
    "redis",
    "retention",
];

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

    /// Validates the parsed `table` of the file `path` (named in errors), whose relative paths
    /// start in `base`.
    pub fn from_table(
        path: &Path,
        base: &Path,
        table: &toml::Table,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut c = Collector::default();
        let known: Vec<&str> = OWN_SECTIONS
            .into_iter()
            .chain(capabilities::Settings::SECTIONS.iter().copied())
            .collect();
        for key in table.keys() {
            if !known.contains(&key.as_str()) && key != "teams" && key != TESTS {
                c.add(
                    key,
                    format!(
                        "unknown section (expected {}, teams or tests)",
                        known.join(", ")
                    ),
                );
            }
        }
        let server = server::load(&mut c, table, base, env);
        let admin = admin::load(&mut c, table, env);
        let capture: CaptureConfig = c.section(table, "capture");
        let queue = queue::load(&mut c, table);
        let kafka = kafka::load(&mut c, table);
        let clickhouse = clickhouse::load(&mut c, table, kafka.is_some(), env);
        let redis = redis::load(&mut c, table, env);
        let retention = retention::load(&mut c, table);
        if clickhouse.is_some() && retention.events_days.is_some() {
            c.add(
                "retention.events_days",
                "applies to the embedded store only; with [clickhouse], stored events are in \
                 ClickHouse: drop the monthly partitions of its `events` table you no longer need",
            );
        }
        let capabilities = capabilities::Settings::load(&mut c, table, base, env);
        let teams = teams::load(&mut c, table.get("teams"), base);
        for installation in teams.iter().flat_map(|t| &t.plugins) {
            capabilities.check_grants(&mut c, &installation.key, &installation.grants);
            if installation.memory_mb > server.max_instance_memory_mb {
                c.add(
                    format!("{}.memory_mb", installation.key),
                    format!(
                        "is above `server.max_instance_memory_mb` ({})",
                        server.max_instance_memory_mb
                    ),
                );
            }
        }
        c.finish(path)?;
        Ok(Self {
            path: path.to_owned(),
            server,
            admin,
            capture,
            queue,
            kafka,
            clickhouse,
            redis,
            retention,
            capabilities,
            teams,
        })
    }

    /// Number of chain workers: configured, or one per CPU.
    pub fn workers(&self) -> usize {
        self.server
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
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
        assert_eq!(installation.on_error, Some(OnError::DeadLetter));
        assert_eq!(installation.transform_timeout_ms(), 1_000);
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
    fn secrets_in_urls_and_passwords_are_redacted_when_shown() {
        let config = load(
            "[kafka]\nbrokers = \"b:9092\"\n[clickhouse]\nurl = \"http://ch:8123\"\npassword = \"s3cret\"\n\
             [redis]\nurl = \"redis://app:s3cret@redis:6379/0\"\n",
            &[],
        )
        .unwrap();
        let shown = serde_json::to_string(&(&config.clickhouse, &config.redis)).unwrap();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("redis://app:(redacted)@redis:6379/0"),
            "{shown}"
        );
    }

    #[test]
    fn retention_ranges_are_checked_with_their_keys() {
        let error = load(
            "[retention]\nplugin_logs_days = 0\nevents_days = 0\ninterval_seconds = 0\n",
            &[],
        )
        .unwrap_err();
        let keys: Vec<&str> = error.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "retention.plugin_logs_days",
                "retention.events_days",
                "retention.interval_seconds"
            ]
        );
        let at_scale = load(
            "[kafka]\nbrokers = \"b:9092\"\n[clickhouse]\nurl = \"http://ch:8123\"\n\
             [retention]\nevents_days = 30\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(at_scale.problems[0].key, "retention.events_days");
        assert!(at_scale.problems[0].reason.contains("embedded store only"));
        let config = load("", &[]).unwrap();
        assert_eq!(config.retention.plugin_logs_days, 7);
        assert_eq!(
            config.retention.events_days, None,
            "stored events: for ever"
        );
    }

    #[test]
    fn the_admin_token_is_long_enough_comes_from_the_environment_and_is_never_printed() {
        let error = load("[admin]\ntoken = \"short\"\n", &[]).unwrap_err();
        assert_eq!(error.problems[0].key, "admin.token");
        let config = load(
            "[admin]\ntoken = \"short\"\n",
            &[
                ("SLUICE_ADMIN_TOKEN", "a-long-enough-secret-token"),
                ("SLUICE_ADMIN_LISTEN", "127.0.0.1:0"),
            ],
        )
        .unwrap();
        assert_eq!(
            config.admin.token.as_deref(),
            Some("a-long-enough-secret-token")
        );
        assert_eq!(config.admin.listen.port(), 0);
        assert!(!format!("{config:?}").contains("a-long-enough-secret-token"));
    }

    #[test]
    fn clickhouse_needs_kafka_and_a_usable_url_and_allows_recordings() {
        let error = load(
            r#"
            [clickhouse]
            url = "127.0.0.1:8123"
            database = "my-db"
            batch_rows = 0
            [[teams]]
            id = 1
            token = "phc_abc"
            [[teams.plugins]]
            id = "retention"
            plugin = "p.wasm"
            grants = ["recordings"]
            "#,
            &[],
        )
        .unwrap_err();
        let keys: Vec<&str> = error.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "clickhouse",
                "clickhouse.url",
                "clickhouse.database",
                "clickhouse.batch_rows",
            ],
            "{error}"
        );

        let config = load(
            "[kafka]\nbrokers = \"b:9092\"\n[clickhouse]\nurl = \"http://ch:8123\"\n",
            &[("SLUICE_CLICKHOUSE_PASSWORD", "secret")],
        )
        .unwrap();
        let clickhouse = config.clickhouse.unwrap();
        assert_eq!(clickhouse.settings().password.as_deref(), Some("secret"));
        assert_eq!(clickhouse.topics().events, "sluice_events");
        assert_eq!(clickhouse.loader().batch_rows, 50_000);
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
                "teams[0].plugins[0].grants[1]: `teleport` is not a capability (known: log, metrics, storage, cache, geoip, http, object_store, jobs, recordings)",
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

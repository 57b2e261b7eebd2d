//! ClickHouse, over its HTTP interface: where events, recordings, dead letters and plugin logs
//! are stored at scale. The worker's sink produces [`rows`] to their topics
//! ([`crate::sink::kafka`]); the [`loader`] inserts them; the commands [`read`] them back;
//! exports read events from it ([`source`]) and retention plugins recordings ([`recordings`]).
//!
//! Tables sluice creates if missing are `ReplacingMergeTree`s whose sorting key holds what
//! identifies a row (team and uuid for events), so a row delivered twice replaces itself when
//! parts merge, and reads de-duplicate with `FINAL`. Column types are those of every ClickHouse
//! since 18.16: integers for times (epoch milliseconds), strings for JSON.

pub mod loader;
pub mod read;
pub mod recordings;
pub mod retention;
pub mod rows;
pub mod source;

// The tests' ClickHouse helper, shared with `tests/e2e` and the benches; each uses a part of it.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../../tests/e2e/clickhouse_server.rs"]
mod clickhouse_server;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde::de::DeserializeOwned;
use std::io::Write;
use std::time::Duration;
use thiserror::Error;

/// Where ClickHouse is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickHouseSettings {
    /// The HTTP interface.
    pub url: String,
    /// sluice's database.
    pub database: String,
    /// The user.
    pub user: String,
    /// The password, if any.
    pub password: Option<String>,
}

/// The topics between the worker's sink and the loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Processed events.
    pub events: String,
    /// Session-recording events.
    pub recordings: String,
    /// Dead letters.
    pub dead_letters: String,
    /// Plugin log lines.
    pub logs: String,
}

impl Topics {
    /// The topic of rows of `table`.
    pub fn of(&self, table: Table) -> &str {
        match table {
            Table::Events => &self.events,
            Table::Recordings => &self.recordings,
            Table::DeadLetters => &self.dead_letters,
            Table::Logs => &self.logs,
        }
    }
}

/// How the loader batches its inserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderSettings {
    /// The loaders' consumer group.
    pub group: String,
    /// Rows that make an insert.
    pub batch_rows: usize,
    /// Bytes (before compression) that make an insert.
    pub batch_bytes: usize,
    /// How long the first row of an insert waits at most.
    pub batch_age: Duration,
}

/// One of sluice's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    /// Processed events, one per `(team, uuid)`.
    Events,
    /// Session-recording events, one per `(team, uuid)`.
    Recordings,
    /// Dead letters, one per `(team, installation, uuid)`.
    DeadLetters,
    /// Plugin log lines, one per line id.
    Logs,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 4] = [
        Table::Events,
        Table::Recordings,
        Table::DeadLetters,
        Table::Logs,
    ];

    /// Its name in the database.
    pub fn name(self) -> &'static str {
        match self {
            Table::Events => "events",
            Table::Recordings => "recordings",
            Table::DeadLetters => "dead_letters",
            Table::Logs => "plugin_logs",
        }
    }

    /// Its columns and engine. Every table ends with the topic partition and offset the row
    /// was loaded from, which order rows stored in the same millisecond.
    fn definition(self) -> &'static str {
        match self {
            Table::Events => {
                "(team_id UInt64, uuid String, event String, distinct_id String, \
                 timestamp_ms Int64, ip Nullable(String), properties String, \
                 set_json Nullable(String), set_once_json Nullable(String), stored_at_ms Int64, \
                 kafka_partition Int32, kafka_offset Int64) \
                 ENGINE = ReplacingMergeTree(stored_at_ms) \
                 PARTITION BY toYYYYMM(toDateTime(intDiv(timestamp_ms, 1000))) \
                 ORDER BY (team_id, uuid)"
            }
            Table::Recordings => {
                "(team_id UInt64, uuid String, session_id String, window_id Nullable(String), \
                 distinct_id String, timestamp_ms Int64, properties String, stored_at_ms Int64, \
                 kafka_partition Int32, kafka_offset Int64) \
                 ENGINE = ReplacingMergeTree(stored_at_ms) \
                 PARTITION BY toYYYYMM(toDateTime(intDiv(timestamp_ms, 1000))) \
                 ORDER BY (team_id, uuid)"
            }
            Table::DeadLetters => {
                "(team_id UInt64, installation String, uuid String, event_base64 String, \
                 error String, backtrace Nullable(String), created_at_ms Int64, \
                 kafka_partition Int32, kafka_offset Int64) \
                 ENGINE = ReplacingMergeTree(created_at_ms) \
                 ORDER BY (team_id, installation, uuid)"
            }
            Table::Logs => {
                "(id String, installation String, level String, message String, time_ms Int64, \
                 kafka_partition Int32, kafka_offset Int64) \
                 ENGINE = ReplacingMergeTree() \
                 PARTITION BY toYYYYMM(toDateTime(intDiv(time_ms, 1000))) \
                 ORDER BY (installation, time_ms, id)"
            }
        }
    }
}

/// Why a request to ClickHouse failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ClickHouseError {
    /// It could not be reached, or did not answer in time.
    #[error("ClickHouse cannot be reached: {0}")]
    Unreachable(String),
    /// It answered with an error.
    #[error("ClickHouse refused the request ({status}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// Its answer cannot be read.
    #[error("ClickHouse answered what sluice cannot read: {0}")]
    Unreadable(String),
}

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of one ClickHouse server's HTTP interface. It blocks: make it, use it and drop it
/// on threads that may block, never on the server's async threads.
#[derive(Clone)]
pub struct ClickHouse {
    http: reqwest::blocking::Client,
    settings: ClickHouseSettings,
}

impl ClickHouse {
    /// A client for `settings`; nothing is sent yet.
    pub fn new(settings: &ClickHouseSettings) -> Result<Self, ClickHouseError> {
        let http = reqwest::blocking::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| ClickHouseError::Unreachable(e.to_string()))?;
        Ok(Self {
            http,
            settings: settings.clone(),
        })
    }

    /// sluice's database.
    pub fn database(&self) -> &str {
        &self.settings.database
    }

    /// Sends `query` (with `body` after it, gzip-compressed, if given); the answer's text.
    fn send(&self, query: &str, body: Option<&[u8]>) -> Result<String, ClickHouseError> {
        let mut request = self
            .http
            .post(&self.settings.url)
            .query(&[
                ("query", query),
                ("output_format_json_quote_64bit_integers", "0"),
                // Rows of a newer sluice may carry columns an older table lacks.
                ("input_format_skip_unknown_fields", "1"),
            ])
            .basic_auth(&self.settings.user, self.settings.password.as_ref());
        request = request.body(Vec::new());
        if let Some(body) = body {
            let mut gzip = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
            let compressed = gzip
                .write_all(body)
                .and_then(|()| gzip.finish())
                .map_err(|e| ClickHouseError::Unreadable(e.to_string()))?;
            request = request
                .header(reqwest::header::CONTENT_ENCODING, "gzip")
                .body(compressed);
        }
        let response = request
            .send()
            .map_err(|e| ClickHouseError::Unreachable(e.to_string()))?;
        let status = response.status();
        let text = response
            .text()
            .map_err(|e| ClickHouseError::Unreachable(e.to_string()))?;
        if !status.is_success() {
            return Err(ClickHouseError::Refused {
                status: status.as_u16(),
                message: text.trim().to_owned(),
            });
        }
        Ok(text)
    }

    /// Whether the server answers.
    pub fn ping(&self) -> Result<(), ClickHouseError> {
        self.send("SELECT 1", None).map(drop)
    }

    /// Creates sluice's database and tables where missing.
    pub fn create_tables(&self) -> Result<(), ClickHouseError> {
        let database = self.database();
        self.send(&format!("CREATE DATABASE IF NOT EXISTS {database}"), None)?;
        for table in Table::ALL {
            self.send(
                &format!(
                    "CREATE TABLE IF NOT EXISTS {database}.{} {}",
                    table.name(),
                    table.definition()
                ),
                None,
            )?;
        }
        self.send(
            &format!(
                "CREATE TABLE IF NOT EXISTS {database}.{} {}",
                recordings::ARCHIVES,
                recordings::ARCHIVES_DEFINITION
            ),
            None,
        )?;
        Ok(())
    }

    /// Inserts `rows` (JSON objects, one per line) into `table`; `Ok` once ClickHouse
    /// acknowledged them.
    pub fn insert(&self, table: Table, rows: &[u8]) -> Result<(), ClickHouseError> {
        self.insert_into(table.name(), rows)
    }

    /// Inserts `rows` (JSON objects, one per line) into the table named `table` of sluice's
    /// database; `Ok` once ClickHouse acknowledged them.
    pub fn insert_into(&self, table: &str, rows: &[u8]) -> Result<(), ClickHouseError> {
        let query = format!("INSERT INTO {}.{table} FORMAT JSONEachRow", self.database());
        self.send(&query, Some(rows)).map(drop)
    }

    /// Deletes the rows of the table named `table` of sluice's database that match
    /// `condition`, and waits (at most `within`) until ClickHouse has applied the mutation, so
    /// that no read finds them afterwards.
    pub fn delete_where(
        &self,
        table: &str,
        condition: &str,
        within: Duration,
    ) -> Result<(), ClickHouseError> {
        let database = self.database();
        self.send(
            &format!("ALTER TABLE {database}.{table} DELETE WHERE {condition}"),
            None,
        )?;
        #[derive(serde::Deserialize)]
        struct Pending {
            n: u64,
        }
        let deadline = std::time::Instant::now() + within;
        loop {
            let pending: Vec<Pending> = self.select(&format!(
                "SELECT count() AS n FROM system.mutations WHERE database = {} AND table = {} \
                 AND is_done = 0",
                read::quoted(database),
                read::quoted(table)
            ))?;
            if pending.first().is_none_or(|p| p.n == 0) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(ClickHouseError::Unreachable(
                    "ClickHouse has not finished deleting yet; the delete goes on, try again"
                        .into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The rows `query` (without a `FORMAT`) selects.
    pub fn select<T: DeserializeOwned>(&self, query: &str) -> Result<Vec<T>, ClickHouseError> {
        self.send(&format!("{query} FORMAT JSONEachRow"), None)?
            .lines()
            .map(|line| {
                serde_json::from_str(line).map_err(|e| ClickHouseError::Unreadable(e.to_string()))
            })
            .collect()
    }
}

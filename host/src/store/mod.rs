//! The embedded SQLite database: one file (`<data_dir>/sluice.db`) holding the ingest queue
//! ([`crate::ingest::sqlite`]), stored events, recordings and dead letters
//! ([`crate::sink::sqlite`]), plugin log lines ([`logs`]), the exports' cursors, batches and dead
//! letters ([`crate::export::state`]), the scheduler's runs and jobs ([`crate::schedule::state`])
//! and recording archives ([`crate::capabilities::recordings`]); [`read`] is what the commands
//! print.
//!
//! WAL mode with `synchronous = FULL`, so a committed transaction survives a crash of the process
//! or the machine.

pub mod dead_letters;
pub mod logs;
pub mod progress;
pub mod read;

use rusqlite::{Connection, Transaction};
use sluice_abi::wire::WireError;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// File name of the database inside the data folder.
pub const DB_FILE: &str = "sluice.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY,
    team_id INTEGER NOT NULL,
    events INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS plugin_versions (
    installation TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    file TEXT NOT NULL,
    first_at_ms INTEGER NOT NULL,
    last_at_ms INTEGER NOT NULL,
    bad TEXT,
    PRIMARY KEY (installation, sha256)
);
CREATE TABLE IF NOT EXISTS backfills (
    key TEXT PRIMARY KEY,
    progress TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS imports (
    key TEXT PRIMARY KEY,
    progress TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS captured (
    id INTEGER PRIMARY KEY,
    team_id INTEGER NOT NULL,
    events INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS captured_received ON captured (received_ms);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    uuid BLOB NOT NULL,
    team_id INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    event TEXT NOT NULL,
    distinct_id TEXT NOT NULL,
    ip TEXT,
    properties TEXT NOT NULL,
    set_json TEXT,
    set_once_json TEXT,
    stored_at_ms INTEGER NOT NULL,
    UNIQUE (team_id, uuid)
);
CREATE INDEX IF NOT EXISTS events_by_team ON events (team_id, seq);
CREATE TABLE IF NOT EXISTS recordings (
    seq INTEGER PRIMARY KEY,
    uuid BLOB NOT NULL,
    team_id INTEGER NOT NULL,
    session_id TEXT NOT NULL,
    window_id TEXT,
    distinct_id TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    properties TEXT NOT NULL,
    stored_at_ms INTEGER NOT NULL,
    UNIQUE (team_id, uuid)
);
CREATE INDEX IF NOT EXISTS recordings_by_session ON recordings (team_id, session_id, window_id, timestamp_ms);
CREATE TABLE IF NOT EXISTS plugin_logs (
    id INTEGER PRIMARY KEY,
    installation TEXT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    time_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS plugin_logs_by_installation ON plugin_logs (installation, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    team_id INTEGER NOT NULL,
    installation TEXT NOT NULL,
    uuid BLOB NOT NULL,
    event BLOB NOT NULL,
    error TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    backtrace TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_by_event ON dead_letters (team_id, installation, uuid);
CREATE TABLE IF NOT EXISTS queue_quarantine (
    id INTEGER PRIMARY KEY,
    position TEXT NOT NULL UNIQUE,
    team_id INTEGER NOT NULL,
    events INTEGER NOT NULL,
    payload BLOB NOT NULL,
    error TEXT NOT NULL,
    quarantined_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS export_cursors (
    installation TEXT PRIMARY KEY,
    team_id INTEGER NOT NULL,
    cursor TEXT NOT NULL,
    exported_events INTEGER NOT NULL DEFAULT 0,
    last_success_ms INTEGER,
    last_error TEXT,
    last_error_ms INTEGER,
    fencing_token INTEGER NOT NULL DEFAULT 0,
    holder TEXT
);
CREATE TABLE IF NOT EXISTS export_batches (
    installation TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    team_id INTEGER NOT NULL,
    first_cursor TEXT NOT NULL,
    last_cursor TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_ms INTEGER NOT NULL,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS export_dead_letters (
    installation TEXT NOT NULL,
    id TEXT NOT NULL,
    team_id INTEGER NOT NULL,
    first_cursor TEXT NOT NULL,
    last_cursor TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    dead_at_ms INTEGER NOT NULL,
    replay_requested_ms INTEGER,
    replay_attempts INTEGER NOT NULL DEFAULT 0,
    replay_next_ms INTEGER,
    PRIMARY KEY (installation, id)
);
CREATE TABLE IF NOT EXISTS task_state (
    installation TEXT NOT NULL,
    task TEXT NOT NULL,
    last_tick_ms INTEGER NOT NULL,
    schedule TEXT,
    time_zone TEXT,
    PRIMARY KEY (installation, task)
);
CREATE TABLE IF NOT EXISTS task_runs (
    id INTEGER PRIMARY KEY,
    installation TEXT NOT NULL,
    task TEXT NOT NULL,
    trigger TEXT NOT NULL,
    scheduled_at_ms INTEGER NOT NULL,
    started_at_ms INTEGER,
    ended_at_ms INTEGER,
    outcome TEXT NOT NULL,
    error TEXT,
    fencing_token INTEGER,
    request_id INTEGER,
    holder TEXT
);
CREATE INDEX IF NOT EXISTS task_runs_by_installation ON task_runs (installation, id);
CREATE TABLE IF NOT EXISTS task_requests (
    id INTEGER PRIMARY KEY,
    installation TEXT NOT NULL,
    task TEXT NOT NULL,
    requested_at_ms INTEGER NOT NULL,
    taken_at_ms INTEGER
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    installation TEXT NOT NULL,
    name TEXT NOT NULL,
    payload TEXT NOT NULL,
    run_at_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    last_error TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    holder TEXT,
    fencing_token INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (installation, status, run_at_ms);
CREATE TABLE IF NOT EXISTS fencing_tokens (
    key TEXT PRIMARY KEY,
    token INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS recording_archives (
    team_id INTEGER NOT NULL,
    session_id TEXT NOT NULL,
    store TEXT NOT NULL,
    key TEXT NOT NULL,
    first_timestamp_ms INTEGER NOT NULL,
    last_timestamp_ms INTEGER NOT NULL,
    events INTEGER NOT NULL,
    archived_at_ms INTEGER NOT NULL,
    PRIMARY KEY (team_id, session_id, key)
);
";

/// Changes to databases made by earlier versions, in order; a fresh database gets [`SCHEMA`] and
/// counts as migrated. `PRAGMA user_version` records how many were applied. Each one leaves
/// alone a table an old database never had ([`SCHEMA`] creates it afterwards, as it is now).
const MIGRATIONS: &[fn(&Transaction<'_>) -> rusqlite::Result<()>] = &[
    // Dead letters keep the plugin's backtrace apart from the one-line error.
    |tx| add_column(tx, "dead_letters", "backtrace TEXT"),
    // Idempotence keys are per (team, uuid): a uuid one team used no longer hides another
    // team's event. Positions (`seq`) are kept, so export cursors stay valid.
    |tx| {
        rebuild(tx, "events", EVENT_COLUMNS, EVENT_COLUMNS)?;
        rebuild(tx, "recordings", RECORDING_COLUMNS, RECORDING_COLUMNS)?;
        if table_exists(tx, "dead_letters")? {
            tx.execute_batch(
                "DELETE FROM dead_letters WHERE id NOT IN
                 (SELECT MIN(id) FROM dead_letters GROUP BY team_id, installation, uuid)",
            )?;
        }
        Ok(())
    },
    // `sluice tasks schedules` shows each task's schedule and next tick.
    |tx| {
        add_column(tx, "task_state", "schedule TEXT")?;
        add_column(tx, "task_state", "time_zone TEXT")
    },
    // Export positions are the event source's opaque cursors (text), not row ids.
    |tx| {
        rebuild(
            tx,
            "export_cursors",
            "installation, team_id, cursor, exported_events, last_success_ms, last_error, last_error_ms",
            "installation, team_id, CAST(position AS TEXT), exported_events, last_success_ms, last_error, last_error_ms",
        )?;
        rebuild(
            tx,
            "export_batches",
            "installation, id, team_id, first_cursor, last_cursor, created_at_ms, attempts, next_attempt_ms, last_error",
            "installation, id, team_id, CAST(first_position AS TEXT), CAST(last_position AS TEXT), created_at_ms, \
             attempts, next_attempt_ms, last_error",
        )?;
        rebuild(
            tx,
            "export_dead_letters",
            "installation, id, team_id, first_cursor, last_cursor, created_at_ms, attempts, error, dead_at_ms, \
             replay_requested_ms, replay_attempts, replay_next_ms",
            "installation, id, team_id, CAST(first_position AS TEXT), CAST(last_position AS TEXT), created_at_ms, \
             attempts, error, dead_at_ms, replay_requested_ms, replay_attempts, replay_next_ms",
        )
    },
    // Jobs and task runs record which node ran them, and jobs the fencing token of its lease.
    |tx| {
        add_column(tx, "jobs", "holder TEXT")?;
        add_column(tx, "jobs", "fencing_token INTEGER")?;
        add_column(tx, "task_runs", "holder TEXT")
    },
    // Export runners hold a lease; the cursor keeps the largest fencing token written under,
    // and the node that claimed it.
    |tx| {
        add_column(
            tx,
            "export_cursors",
            "fencing_token INTEGER NOT NULL DEFAULT 0",
        )?;
        add_column(tx, "export_cursors", "holder TEXT")
    },
];

/// Rebuilds `table`, if it exists, as [`SCHEMA`] defines it now: its `columns` are filled from
/// `selected` (expressions over the old table's columns, in the same order).
fn rebuild(
    tx: &Transaction<'_>,
    table: &str,
    columns: &str,
    selected: &str,
) -> rusqlite::Result<()> {
    if table_exists(tx, table)? {
        let create = table_sql(table);
        tx.execute_batch(&format!(
            "ALTER TABLE {table} RENAME TO {table}_before;
             {create};
             INSERT INTO {table} ({columns}) SELECT {selected} FROM {table}_before;
             DROP TABLE {table}_before;"
        ))?;
    }
    Ok(())
}

const EVENT_COLUMNS: &str = "seq, uuid, team_id, timestamp_ms, event, distinct_id, ip, properties, \
     set_json, set_once_json, stored_at_ms";
const RECORDING_COLUMNS: &str = "seq, uuid, team_id, session_id, window_id, distinct_id, timestamp_ms, properties, stored_at_ms";

/// The `CREATE TABLE` statement of `table` in [`SCHEMA`].
fn table_sql(table: &str) -> String {
    let start = SCHEMA
        .find(&format!("CREATE TABLE IF NOT EXISTS {table} ("))
        .unwrap_or_default();
    let end = start + SCHEMA[start..].find(");").unwrap_or_default() + 1;
    SCHEMA[start..end].to_owned()
}

fn table_exists(tx: &Transaction<'_>, table: &str) -> rusqlite::Result<bool> {
    tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [table],
        |row| row.get(0),
    )
}

/// Adds `column` (name and type) to `table`, if the table exists without it.
fn add_column(tx: &Transaction<'_>, table: &str, column: &str) -> rusqlite::Result<()> {
    let name = column.split_whitespace().next().unwrap_or(column);
    let has: bool = tx.query_row(
        &format!("SELECT EXISTS (SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1)"),
        [name],
        |row| row.get(0),
    )?;
    if table_exists(tx, table)? && !has {
        tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column}"))?;
    }
    Ok(())
}

/// Why the embedded database failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The data folder could not be created.
    #[error("cannot create {path}: {source}")]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A database file could not be opened or set up.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// A query or transaction failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored event cannot be decoded.
    #[error("a stored event is corrupt: {0}")]
    Corrupt(#[from] WireError),
    /// A file of the data folder could not be read or written.
    #[error("cannot use {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A thread that writes to the database could not be started.
    #[error("cannot start {0}: {1}")]
    Thread(&'static str, std::io::Error),
    /// The store at scale (brokers, ClickHouse) did not take or give what was asked.
    #[error("{0}")]
    Remote(String),
}

impl StoreError {
    /// An error opening the database file at `path`.
    pub fn open(path: &Path, source: rusqlite::Error) -> Self {
        Self::Open {
            path: path.to_owned(),
            source,
        }
    }
}

/// Opens (creating if needed) the database in `data_dir`.
pub fn open(data_dir: &Path) -> Result<Connection, StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
        path: data_dir.to_owned(),
        source,
    })?;
    let path = data_dir.join(DB_FILE);
    let setup = |conn: &mut Connection| -> rusqlite::Result<()> {
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        migrate(conn)
    };
    let mut conn = Connection::open(&path).map_err(|e| StoreError::open(&path, e))?;
    setup(&mut conn).map_err(|e| StoreError::open(&path, e))?;
    Ok(conn)
}

/// Brings the schema up to date in one write transaction (several connections may open the
/// database at once).
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let existed: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events')",
        [],
        |row| row.get(0),
    )?;
    let applied: usize = if existed {
        tx.query_row("PRAGMA user_version", [], |row| row.get(0))?
    } else {
        MIGRATIONS.len()
    };
    for migration in MIGRATIONS.iter().skip(applied) {
        migration(&tx)?;
    }
    tx.execute_batch(SCHEMA)?;
    tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
    tx.commit()
}

/// File of the data folder holding this node's id.
const NODE_ID_FILE: &str = "node-id";

/// The id of the node using `data_dir`: made once, kept in the folder, so a restarted node
/// knows the work it claimed before it stopped.
pub fn node_id(data_dir: &Path) -> Result<String, StoreError> {
    let path = data_dir.join(NODE_ID_FILE);
    let io = |source| StoreError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io(error)),
    }
    let id = uuid::Uuid::now_v7().to_string();
    let partial = data_dir.join(format!("{NODE_ID_FILE}.{id}"));
    std::fs::write(&partial, &id).map_err(io)?;
    std::fs::rename(&partial, &path).map_err(io)?;
    // Whoever renamed last won; every caller reads the same id.
    Ok(std::fs::read_to_string(&path)
        .map_err(io)?
        .trim()
        .to_owned())
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The name of session-recording events, which are stored apart and skip plugin chains.
pub const SNAPSHOT_EVENT: &str = "$snapshot";

/// UUID bytes as hyphenated text.
pub fn uuid_text(bytes: &[u8]) -> String {
    uuid::Uuid::from_slice(bytes).map_or_else(|_| String::from("invalid"), |u| u.to_string())
}

/// Epoch milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tables the migrations change, as the first release created them (the export tables
    /// as the release that added them did).
    const FIRST_SCHEMA: &str = "
        CREATE TABLE events (seq INTEGER PRIMARY KEY, uuid BLOB NOT NULL UNIQUE,
            team_id INTEGER NOT NULL, timestamp_ms INTEGER NOT NULL, event TEXT NOT NULL,
            distinct_id TEXT NOT NULL, ip TEXT, properties TEXT NOT NULL, set_json TEXT,
            set_once_json TEXT, stored_at_ms INTEGER NOT NULL);
        CREATE TABLE recordings (seq INTEGER PRIMARY KEY, uuid BLOB NOT NULL UNIQUE,
            team_id INTEGER NOT NULL, session_id TEXT NOT NULL, window_id TEXT,
            distinct_id TEXT NOT NULL, timestamp_ms INTEGER NOT NULL, properties TEXT NOT NULL,
            stored_at_ms INTEGER NOT NULL);
        CREATE TABLE dead_letters (id INTEGER PRIMARY KEY, team_id INTEGER NOT NULL,
            installation TEXT NOT NULL, uuid BLOB NOT NULL, event BLOB NOT NULL,
            error TEXT NOT NULL, created_at_ms INTEGER NOT NULL);
        INSERT INTO events VALUES (7, x'01', 1, 0, 'e', 'u', NULL, '{}', NULL, NULL, 0);
        INSERT INTO recordings VALUES (9, x'02', 1, 's', NULL, 'u', 0, '{}', 0);
        INSERT INTO dead_letters VALUES (1, 1, 'i', x'03', x'00', 'e', 0);
        INSERT INTO dead_letters VALUES (2, 1, 'i', x'03', x'00', 'e', 0);
        CREATE TABLE export_cursors (installation TEXT PRIMARY KEY, team_id INTEGER NOT NULL,
            position INTEGER NOT NULL, exported_events INTEGER NOT NULL DEFAULT 0,
            last_success_ms INTEGER, last_error TEXT, last_error_ms INTEGER);
        CREATE TABLE export_batches (installation TEXT PRIMARY KEY, id TEXT NOT NULL,
            team_id INTEGER NOT NULL, first_position INTEGER NOT NULL, last_position INTEGER NOT NULL,
            created_at_ms INTEGER NOT NULL, attempts INTEGER NOT NULL, next_attempt_ms INTEGER NOT NULL,
            last_error TEXT);
        CREATE TABLE export_dead_letters (installation TEXT NOT NULL, id TEXT NOT NULL,
            team_id INTEGER NOT NULL, first_position INTEGER NOT NULL, last_position INTEGER NOT NULL,
            created_at_ms INTEGER NOT NULL, attempts INTEGER NOT NULL, error TEXT NOT NULL,
            dead_at_ms INTEGER NOT NULL, replay_requested_ms INTEGER,
            replay_attempts INTEGER NOT NULL DEFAULT 0, replay_next_ms INTEGER,
            PRIMARY KEY (installation, id));
        INSERT INTO export_cursors VALUES ('team-1/s3', 1, 42, 40, NULL, NULL, NULL);
        INSERT INTO export_batches VALUES ('team-1/s3', '43-50', 1, 43, 50, 0, 1, 0, NULL);
        INSERT INTO export_dead_letters VALUES ('team-1/s3', '1-42', 1, 1, 42, 0, 5, 'e', 0, NULL, 0, NULL);";

    #[test]
    fn a_database_of_the_first_version_is_migrated_keeping_positions_and_cursors() {
        let dir = tempfile::tempdir().unwrap();
        let old = Connection::open(dir.path().join(DB_FILE)).unwrap();
        old.execute_batch(FIRST_SCHEMA).unwrap();
        drop(old);
        for team in [2, 3] {
            let conn = open(dir.path()).unwrap();
            let version: usize = conn
                .query_row("PRAGMA user_version", [], |row| row.get(0))
                .unwrap();
            assert_eq!(version, MIGRATIONS.len());
            let seq: i64 = conn
                .query_row("SELECT seq FROM events WHERE uuid = x'01'", [], |row| {
                    row.get(0)
                })
                .unwrap();
            assert_eq!(seq, 7, "positions survive the migration");
            // Another team may now store the same uuids.
            conn.execute(
                "INSERT INTO events (uuid, team_id, timestamp_ms, event, distinct_id, properties, stored_at_ms) \
                 VALUES (x'01', ?1, 0, 'e', 'u', '{}', 0)",
                [team],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO recordings (uuid, team_id, session_id, distinct_id, timestamp_ms, properties, stored_at_ms) \
                 VALUES (x'02', ?1, 's', 'u', 0, '{}', 0)",
                [team],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO dead_letters (team_id, installation, uuid, event, error, created_at_ms, backtrace) \
                 VALUES (?1, 'i', x'03', x'00', 'e', 0, 'frames')",
                [team],
            )
            .unwrap();
        }
        let conn = open(dir.path()).unwrap();
        let count = |table: &str| -> i64 {
            conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                row.get(0)
            })
            .unwrap()
        };
        assert_eq!(count("events"), 3);
        assert_eq!(count("recordings"), 3);
        assert_eq!(
            count("dead_letters"),
            3,
            "the duplicate dead letter was merged"
        );
        let again = conn.execute(
            "INSERT INTO events (uuid, team_id, timestamp_ms, event, distinct_id, properties, stored_at_ms) \
             VALUES (x'01', 2, 0, 'e', 'u', '{}', 0)",
            [],
        );
        assert!(again.is_err(), "(team, uuid) stays unique");
        let text = |sql: &str| -> String { conn.query_row(sql, [], |row| row.get(0)).unwrap() };
        assert_eq!(text("SELECT cursor FROM export_cursors"), "42");
        assert_eq!(
            text("SELECT first_cursor || '..' || last_cursor FROM export_batches"),
            "43..50"
        );
        assert_eq!(
            text("SELECT first_cursor || '..' || last_cursor FROM export_dead_letters"),
            "1..42"
        );
    }
}

//! Housekeeping: what sluice keeps for operators does not grow without bound. Every
//! `[retention] interval_seconds`, a pass deletes, by age and size, plugin log lines, finished
//! task runs, jobs that failed for good, dead letters of the chains and of exports, and, if
//! asked, stored events that every export of their team has passed, from each store that holds
//! them ([`Prune`]): this node's embedded database here ([`Embedded`]), and at scale ClickHouse and
//! Redis, which every node shares, so one node of the fleet prunes them per interval (under a
//! lease). Each pass deletes at most [`BATCH`] rows per kind, in steps of their own, so it never
//! holds a store long and never blocks ingestion; what it deleted is counted in
//! `sluice_housekeeping_pruned_total{store, table}`.

use crate::config::RetentionConfig;
use crate::schedule::lock::RunLock;
use crate::store::{self, StoreError};
use rusqlite::{Connection, params};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most rows one pass deletes of one kind.
pub const BATCH: i64 = 5_000;

/// A day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// What one pass deleted, by table.
pub type Pruned = Vec<(&'static str, usize)>;

/// A store housekeeping prunes.
pub trait Prune: Send {
    /// Its name, the `store` label of what it pruned.
    fn store(&self) -> &'static str;

    /// Whether every node shares it (then one node per interval prunes it).
    fn shared(&self) -> bool;

    /// One pass at `now_ms`.
    fn prune(&self, retention: &RetentionConfig, now_ms: i64) -> Result<Pruned, String>;
}

/// This node's embedded database.
pub struct Embedded(Connection);

impl Embedded {
    /// The database of `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self(store::open(data_dir)?))
    }
}

impl Prune for Embedded {
    fn store(&self) -> &'static str {
        "embedded"
    }

    fn shared(&self) -> bool {
        false
    }

    fn prune(&self, retention: &RetentionConfig, now_ms: i64) -> Result<Pruned, String> {
        pass(&self.0, retention, now_ms).map_err(|e| e.to_string())
    }
}

/// One pass over the database of `conn` at `now_ms`.
pub fn pass(
    conn: &Connection,
    retention: &RetentionConfig,
    now_ms: i64,
) -> Result<Pruned, StoreError> {
    let before = |days: u64| now_ms - days as i64 * DAY_MS;
    let bounded = |table: &str, key: &str, condition: &str| {
        format!(
            "DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {condition} LIMIT {BATCH})"
        )
    };
    let mut pruned = Vec::new();
    let mut run = |table: &'static str, sql: String, cutoff: i64| -> Result<(), StoreError> {
        let deleted = conn.execute(&sql, params![cutoff])?;
        pruned.push((table, deleted));
        Ok(())
    };
    run(
        "plugin_logs",
        bounded("plugin_logs", "id", "time_ms < ?1"),
        before(retention.plugin_logs_days),
    )?;
    // The newest `plugin_logs_max_lines` stay.
    run(
        "plugin_logs",
        bounded(
            "plugin_logs",
            "id",
            "id <= (SELECT id FROM plugin_logs ORDER BY id DESC LIMIT 1 OFFSET ?1)",
        ),
        retention.plugin_logs_max_lines as i64,
    )?;
    run(
        "task_runs",
        bounded(
            "task_runs",
            "id",
            "outcome != 'running' AND scheduled_at_ms < ?1",
        ),
        before(retention.task_runs_days),
    )?;
    run(
        "jobs",
        bounded("jobs", "id", "status = 'failed' AND updated_at_ms < ?1"),
        before(retention.failed_jobs_days),
    )?;
    run(
        "dead_letters",
        bounded("dead_letters", "id", "created_at_ms < ?1"),
        before(retention.dead_letters_days),
    )?;
    run(
        "export_dead_letters",
        bounded(
            "export_dead_letters",
            "rowid",
            "dead_at_ms < ?1 AND replay_requested_ms IS NULL",
        ),
        before(retention.dead_letters_days),
    )?;
    run(
        "captured",
        bounded("captured", "id", "received_ms < ?1"),
        now_ms - retention.captured_hours as i64 * 3_600_000,
    )?;
    if let Some(days) = retention.events_days {
        // Only what every export of the team has passed (cursors are sequence numbers here).
        run(
            "events",
            bounded(
                "events",
                "seq",
                "stored_at_ms < ?1 AND seq <= COALESCE((SELECT MIN(CAST(cursor AS INTEGER)) \
                 FROM export_cursors c WHERE c.team_id = events.team_id), seq)",
            ),
            before(days),
        )?;
    }
    Ok(pruned)
}

/// Starts a thread that runs a pass over each of `prunes` every `retention.interval_seconds`,
/// until `stop` is set; a shared store only while this node holds its lease of `lock` (taken for
/// one interval and left to expire, so the fleet prunes it once per interval).
pub fn start(
    prunes: Vec<Box<dyn Prune>>,
    lock: Arc<dyn RunLock>,
    retention: RetentionConfig,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, StoreError> {
    std::thread::Builder::new()
        .name("sluice-housekeeping".into())
        .spawn(move || {
            let interval = Duration::from_secs(retention.interval_seconds);
            let mut next = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                if Instant::now() >= next {
                    for prune in &prunes {
                        if prune.shared() && !leased(&*lock, prune.store(), interval) {
                            continue;
                        }
                        pass_over(&**prune, &retention);
                    }
                    next = Instant::now() + interval;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .map_err(|e| StoreError::Thread("housekeeping", e))
}

/// Whether this node got the lease of pruning `store` for `interval`.
fn leased(lock: &dyn RunLock, store: &str, interval: Duration) -> bool {
    match lock.acquire(&format!("housekeeping/{store}"), interval) {
        Ok(lease) => lease.is_some(),
        Err(error) => {
            tracing::warn!(store, %error, "cannot take the housekeeping lease; the next pass tries again");
            false
        }
    }
}

/// One pass over `prune`, counted.
fn pass_over(prune: &dyn Prune, retention: &RetentionConfig) {
    let store = prune.store();
    let started = Instant::now();
    match prune.prune(retention, store::now_ms()) {
        Ok(pruned) => {
            for (table, deleted) in pruned {
                metrics::counter!("sluice_housekeeping_pruned_total", "store" => store, "table" => table)
                    .increment(deleted as u64);
            }
        }
        Err(error) => {
            tracing::warn!(store, %error, "housekeeping pass failed; the next one tries again")
        }
    }
    metrics::histogram!("sluice_housekeeping_pass_seconds", "store" => store)
        .record(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_prunes_by_age_and_size_in_bounded_steps_and_keeps_events_exports_have_not_passed() {
        let dir = tempfile::tempdir().unwrap();
        let conn = store::open(dir.path()).unwrap();
        let now = 100 * DAY_MS;
        let old = now - 40 * DAY_MS;
        for (time, n) in [(old, 3), (now, 2)] {
            for i in 0..n {
                conn.execute(
                    "INSERT INTO plugin_logs (installation, level, message, time_ms) VALUES ('team-1/p', 'info', ?1, ?2)",
                    params![format!("line {i}"), time],
                )
                .unwrap();
                conn.execute(
                    "INSERT INTO dead_letters (team_id, installation, uuid, event, error, created_at_ms) \
                     VALUES (1, 'team-1/p', ?1, x'00', 'e', ?2)",
                    params![vec![i as u8, (time % 251) as u8], time],
                )
                .unwrap();
            }
        }
        for (seq, stored) in [(1, old), (2, old), (3, old), (4, now)] {
            conn.execute(
                "INSERT INTO events (seq, uuid, team_id, timestamp_ms, event, distinct_id, properties, stored_at_ms) \
                 VALUES (?1, ?2, 1, 0, 'e', 'u', '{}', ?3)",
                params![seq, vec![seq as u8; 16], stored],
            )
            .unwrap();
        }
        // An export of team 1 has passed event 2 only.
        conn.execute(
            "INSERT INTO export_cursors (installation, team_id, cursor) VALUES ('team-1/s3', 1, '2')",
            [],
        )
        .unwrap();
        let count = |table: &str| -> i64 {
            conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                .unwrap()
        };
        let retention = RetentionConfig {
            plugin_logs_max_lines: 1,
            events_days: Some(30),
            ..RetentionConfig::default()
        };
        let pruned = pass(&conn, &retention, now).unwrap();
        assert!(pruned.contains(&("plugin_logs", 3)), "{pruned:?}");
        assert_eq!(count("plugin_logs"), 1, "the newest line, by size");
        assert_eq!(count("dead_letters"), 2);
        let seqs: Vec<i64> = conn
            .prepare("SELECT seq FROM events ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            seqs,
            [3, 4],
            "old events the export passed go; the one it has not stays"
        );
        // Without `events_days`, stored events are never touched.
        let kept = pass(&conn, &RetentionConfig::default(), now + 365 * DAY_MS).unwrap();
        assert!(!kept.iter().any(|(table, _)| *table == "events"));
        assert_eq!(count("events"), 2);
    }
}

//! Session-recording retention, the cron job PostHog's release plan asked for: every day,
//! sessions whose **last** event is more than 30 minutes older than the retention threshold (so a
//! session is never cut in half) are archived to an object store as one gzip JSON-lines object,
//! `{prefix}session_recordings/team_id/{team}/session_id/{session}/data/{first_ts}-{last_ts}.jsonl.gz`,
//! their archive is recorded, and they are deleted. `sluice recordings --session ID` reads an
//! archived session back from its object. Without a `store` it only deletes.
//!
//! - **Bounded.** A run handles at most `sessions_per_run` sessions and reads each in pages;
//!   when there are more, it queues a `retain` job that goes on from the last session, so a
//!   year of backlog never exceeds a run's deadline or memory cap.
//! - **Never half done.** Each session is written, then recorded, then deleted: interrupted at
//!   any point, a session is either still stored (and archived again, to the same key, next
//!   time) or archived and recorded.
//! - **Failures.** A session that cannot be archived for good (larger than the store takes) is
//!   kept and logged, and the others go on. When the store or the database is away, the run
//!   fails and a job tries again a minute later, with backoff, instead of waiting a day.

use chrono::{DateTime, SecondsFormat};
use flate2::Compression;
use flate2::write::GzEncoder;
use sluice_sdk::host::recordings::{self, Archive, Cursor, Session};
use sluice_sdk::host::{self, Level, jobs, object_store};
use sluice_sdk::{
    Config, ConfigField, ConfigType, Job, Jobs, Manifest, Plugin, PluginError, Scheduled, TimeUnit,
    Value, json,
};
use std::io::Write;

/// A day, in milliseconds.
const DAY_MS: i64 = 86_400_000;
/// Sessions ending this close to the threshold are kept whole for now.
const MARGIN_MS: i64 = 30 * 60_000;
/// Events read per page.
const PAGE: u32 = 500;

/// The retention plugin.
#[derive(Debug)]
pub struct Retention {
    retention_days: i64,
    store: Option<String>,
    prefix: String,
    sessions_per_run: u32,
}

impl Plugin for Retention {
    fn manifest() -> Manifest {
        Manifest::new(
            "recording-retention",
            env!("CARGO_PKG_VERSION"),
            "Archives session recordings older than the retention period, then deletes them",
        )
        .needs(&["recordings", "object_store", "jobs", "log"])
        .task(
            "retain",
            "every day",
            "Archives and deletes sessions older than the retention period",
        )
        .config(vec![
            ConfigField::new(
                "retention_days",
                ConfigType::Integer,
                "Days a session is kept after its last event",
            )
            .with_default(7),
            ConfigField::new(
                "store",
                ConfigType::Text,
                "The object store to archive to (`[object_stores.NAME]`); empty: only delete",
            )
            .with_default(""),
            ConfigField::new("prefix", ConfigType::Text, "Prepended to every archive key")
                .with_default(""),
            ConfigField::new(
                "sessions_per_run",
                ConfigType::Integer,
                "Sessions handled per run or job before the rest is left to a queued job",
            )
            .with_default(100),
        ])
    }

    fn setup(config: &Config) -> Result<Self, PluginError> {
        let retention_days = config.integer("retention_days")?;
        if !(1..=36_500).contains(&retention_days) {
            return Err(PluginError::new(format!(
                "retention_days must be between 1 and 36500, got {retention_days}"
            )));
        }
        let sessions_per_run = config.integer("sessions_per_run")?;
        let sessions_per_run = u32::try_from(sessions_per_run)
            .ok()
            .filter(|n| (1..=1_000).contains(n))
            .ok_or_else(|| {
                PluginError::new(format!(
                    "sessions_per_run must be between 1 and 1000, got {sessions_per_run}"
                ))
            })?;
        let store = Some(config.text("store")?.to_owned()).filter(|s| !s.is_empty());
        Ok(Self {
            retention_days,
            store,
            prefix: config.text("prefix")?.to_owned(),
            sessions_per_run,
        })
    }
}

impl Scheduled for Retention {
    fn run(&mut self, task: &str, scheduled_at_ms: i64) -> Result<(), PluginError> {
        if task != "retain" {
            return Err(PluginError::new(format!("no task `{task}`")));
        }
        let last_before = scheduled_at_ms - self.retention_days * DAY_MS - MARGIN_MS;
        self.retain(last_before, None).inspect_err(|error| {
            // The store or the database is away: rather than wait for tomorrow's tick, a job
            // tries again with backoff.
            if error.retryable {
                let payload = json!({"last_before": last_before}).to_string();
                if let Err(queue) = jobs::enqueue_in("retain", &payload, 1, TimeUnit::Minutes) {
                    host::log(Level::Error, &format!("cannot queue a retry: {queue}"));
                }
            }
        })
    }
}

impl Jobs for Retention {
    fn run_job(&mut self, job: &Job) -> Result<(), PluginError> {
        let payload: Value = serde_json::from_str(&job.payload)
            .map_err(|e| PluginError::new(format!("job payload is not JSON: {e}")))?;
        let last_before = payload["last_before"]
            .as_i64()
            .ok_or_else(|| PluginError::new("job payload has no `last_before`"))?;
        self.retain(last_before, payload["after"].as_str())
    }
}

impl Retention {
    /// Archives and deletes up to `sessions_per_run` sessions whose last event is before
    /// `last_before`, after session `after`; queues a job for the rest.
    fn retain(&self, last_before: i64, after: Option<&str>) -> Result<(), PluginError> {
        let sessions = recordings::list_sessions(last_before, after, self.sessions_per_run)
            .map_err(|e| PluginError::from(e).context("cannot list sessions"))?;
        let mut kept = 0;
        for session in &sessions {
            match self.retire(session) {
                Ok(()) => {}
                // The store or the database is away: the whole run is tried again later.
                Err(error) if error.retryable => return Err(error),
                // This session cannot be archived (too large for the store...): it stays,
                // and the others go on.
                Err(error) => {
                    kept += 1;
                    host::log(
                        Level::Error,
                        &format!("session {} kept: {}", session.session_id, error.message),
                    );
                }
            }
        }
        host::log(
            Level::Info,
            &format!(
                "retention: {} session(s) ending before {} {}{}",
                sessions.len() - kept,
                iso(last_before),
                if self.store.is_some() {
                    "archived and deleted"
                } else {
                    "deleted"
                },
                if kept > 0 {
                    format!("; {kept} kept after errors")
                } else {
                    String::new()
                }
            ),
        );
        if sessions.len() == self.sessions_per_run as usize
            && let Some(last) = sessions.last()
        {
            let payload = json!({"last_before": last_before, "after": last.session_id});
            jobs::enqueue("retain", &payload.to_string())
                .map_err(|e| PluginError::from(e).context("cannot queue the rest"))?;
        }
        Ok(())
    }

    /// Archives `session` (if there is a store), then deletes what was archived (or, without a
    /// store, what was listed); events stored since stay for the next run.
    fn retire(&self, session: &Session) -> Result<(), PluginError> {
        let through = match &self.store {
            Some(store) => self.archive(store, session)?,
            None => session.cursor.clone(),
        };
        recordings::delete_session(&session.session_id, &through)
            .map(drop)
            .map_err(|e| {
                PluginError::from(e)
                    .context(format!("cannot delete session {}", session.session_id))
            })
    }

    /// Writes `session` to `store` as one gzip JSON-lines object and records where; returns
    /// where what it archived ends.
    fn archive(&self, store: &str, session: &Session) -> Result<Cursor, PluginError> {
        let read = |after: Option<&Cursor>| {
            recordings::read_session(&session.session_id, after, PAGE).map_err(|e| {
                PluginError::from(e).context(format!("cannot read session {}", session.session_id))
            })
        };
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        let mut events = 0;
        let mut page = read(None)?;
        loop {
            for event in &page.snapshots {
                let line = line(session, event);
                gz.write_all(line.as_bytes())
                    .map_err(|e| PluginError::new(format!("cannot compress: {e}")))?;
                events += 1;
            }
            if !page.more {
                break;
            }
            page = read(Some(&page.cursor))?;
        }
        let cursor = page.cursor;
        let body = gz
            .finish()
            .map_err(|e| PluginError::new(format!("cannot compress: {e}")))?;
        let key = format!(
            "{}session_recordings/team_id/{}/session_id/{}/data/{}-{}.jsonl.gz",
            self.prefix,
            session.team_id,
            safe(&session.session_id),
            session.first_timestamp_ms,
            session.last_timestamp_ms
        );
        object_store::put(store, &key, &body)
            .map_err(|e| PluginError::from(e).context(format!("cannot write {key}")))?;
        recordings::record_archive(&Archive {
            session_id: session.session_id.clone(),
            store: store.to_owned(),
            key,
            first_timestamp_ms: session.first_timestamp_ms,
            last_timestamp_ms: session.last_timestamp_ms,
            events,
        })
        .map_err(|e| PluginError::from(e).context("cannot record the archive"))?;
        Ok(cursor)
    }
}

/// A session id as one key segment, injectively: ASCII letters, digits, `-` and `_` kept, any
/// other byte written `~XX` (hex), so no two sessions share a key and no segment is `.` or `..`.
fn safe(session_id: &str) -> String {
    let mut safe = String::with_capacity(session_id.len());
    for byte in session_id.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            safe.push(char::from(byte));
        } else {
            safe.push_str(&format!("~{byte:02X}"));
        }
    }
    if safe.is_empty() {
        "~".to_owned()
    } else {
        safe
    }
}

fn iso(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One archived event, in the shape `sluice recordings` prints; the properties are copied as
/// stored.
fn line(session: &Session, event: &recordings::Snapshot) -> String {
    let text = |t: &str| Value::from(t).to_string();
    format!(
        "{{\"uuid\":{},\"team_id\":{},\"session_id\":{},\"window_id\":{},\"distinct_id\":{},\"timestamp\":{},\"properties\":{}}}\n",
        text(&event.uuid),
        session.team_id,
        text(&session.session_id),
        event.window_id.as_deref().map_or("null".to_owned(), text),
        text(&event.distinct_id),
        text(&iso(event.timestamp_ms)),
        event.properties
    )
}

sluice_sdk::export_plugin!(Retention: scheduled, jobs);

#[cfg(test)]
mod tests;

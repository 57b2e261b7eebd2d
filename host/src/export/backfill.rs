//! `sluice exports backfill`: an export installation's stored events of a time range, sent again
//! as batches of their own beside the live cursor (see [`Backfill`]), from this process, with
//! progress; killed and started again, it goes on from its recorded state (the batch in flight
//! is sent again with the same id, so an object store holds each batch once); cancelled from
//! another terminal with `sluice exports backfill cancel`.
//!
//! Its definition and progress are kept in the data folder's `backfills` table (what
//! `sluice exports backfills` lists); its cursor and batches are in the export state, under
//! `<installation>#<name>`, where `sluice exports` shows them too.

use super::runner::{Backfill, Runner};
use crate::config::Config;
use crate::signal::Signal;
use crate::store;
use anyhow::{Context as _, bail};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Where backfills' progress is recorded.
const TABLE: &str = "backfills";
/// How often progress is read and cancellation looked for.
const POLL: Duration = Duration::from_millis(250);

/// A backfill as recorded, and its progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BackfillProgress {
    /// `<installation>#<name>`.
    pub key: String,
    /// The export installation.
    pub installation: String,
    /// Its name (in its batches' ids).
    pub name: String,
    /// Events from this time, epoch ms.
    pub from_ms: i64,
    /// Events before this time, epoch ms.
    pub to_ms: i64,
    /// Only events stored before this, epoch ms (when it began).
    pub stored_before_ms: i64,
    /// `running`, `done`, `cancelled` or `failed`.
    pub status: String,
    /// Events of the range stored in the embedded store (unknown on ClickHouse).
    pub total: Option<u64>,
    /// Events sent so far.
    pub exported: u64,
    /// When it began, epoch ms.
    pub started_at_ms: i64,
    /// When it was last recorded, epoch ms.
    pub updated_at_ms: i64,
}

/// Runs the backfill of `installation` for `from_ms..to_ms` (named `name`, or after the range)
/// until it is done or cancelled, calling `report` as it goes. Blocking.
pub fn run(
    config: &Config,
    installation: &str,
    range: (i64, i64),
    rate: Option<u64>,
    report: &mut dyn FnMut(&BackfillProgress),
) -> anyhow::Result<BackfillProgress> {
    let (from_ms, to_ms) = range;
    if from_ms >= to_ms {
        bail!("--from must be before --to");
    }
    let (_, _, deployment, background, backends) = crate::server::load(config.clone())?;
    let export = deployment
        .exports
        .iter()
        .find(|e| &*e.id == installation)
        .cloned()
        .with_context(|| {
            let known: Vec<&str> = deployment.exports.iter().map(|e| &*e.id).collect();
            format!(
                "{} has no export installation {installation} (exports: {})",
                config.path.display(),
                known.join(", ")
            )
        })?;
    let conn = store::open(&config.server.data_dir)?;
    let name = format!("{from_ms}-{to_ms}");
    let key = format!("{installation}#{name}");
    let mut progress = match load(&conn, &key)? {
        Some(recorded) if recorded.status == "running" || recorded.status == "failed" => recorded,
        Some(recorded) if recorded.status == "done" => {
            report(&recorded);
            return Ok(recorded);
        }
        _ => BackfillProgress {
            key: key.clone(),
            installation: installation.to_owned(),
            name: name.clone(),
            from_ms,
            to_ms,
            stored_before_ms: store::now_ms(),
            total: None,
            started_at_ms: store::now_ms(),
            ..BackfillProgress::default()
        },
    };
    progress.status = "running".into();
    if config.clickhouse.is_none() {
        progress.total = Some(conn.query_row(
            "SELECT COUNT(*) FROM events WHERE team_id = ?1 AND timestamp_ms >= ?2
             AND timestamp_ms < ?3 AND stored_at_ms < ?4",
            params![
                export.team_id as i64,
                from_ms,
                to_ms,
                progress.stored_before_ms
            ],
            |row| row.get::<_, i64>(0),
        )? as u64);
    }
    save(&conn, &progress)?;
    let backfill = Backfill {
        name,
        from_ms,
        to_ms,
        stored_before_ms: progress.stored_before_ms,
        rate,
    };
    let runner = Runner::new(
        export,
        Some(backfill),
        backends.export_state()?,
        backends.run_lock()?,
        backends.export_source(Arc::new(Signal::default()))?,
        &store::node_id(&config.server.data_dir)?,
    )?;
    let stop = AtomicBool::new(false);
    let outcome = std::thread::scope(|scope| {
        let running = scope.spawn(|| runner.run(&stop));
        let mut state = backends.export_state()?;
        loop {
            let finished = running.is_finished();
            if let Some(status) = state
                .recorded()?
                .into_iter()
                .find(|s| s.installation == key)
            {
                progress.exported = status.exported_events;
            }
            if load(&conn, &key)?.is_some_and(|r| r.status == "cancelled") {
                stop.store(true, Ordering::SeqCst);
                progress.status = "cancelled".into();
            }
            save(&conn, &progress)?;
            report(&progress);
            if finished {
                break;
            }
            std::thread::sleep(POLL);
        }
        let done = running
            .join()
            .map_err(|_| anyhow::anyhow!("the backfill runner panicked"))?;
        anyhow::Ok(done)
    });
    deployment.stop_runners();
    drop(deployment);
    background.join();
    let done = outcome?;
    if done {
        progress.status = "done".into();
    } else if progress.status != "cancelled" {
        progress.status = "failed".into();
    }
    save(&conn, &progress)?;
    report(&progress);
    Ok(progress)
}

/// Cancels the running backfills of `installation` (one of which a `sluice exports backfill`
/// is running: it stops after the batch in hand); returns how many.
pub fn cancel(config: &Config, installation: &str) -> anyhow::Result<usize> {
    let conn = crate::stored::open_existing(config)?;
    let mut cancelled = 0;
    for mut backfill in list(&conn)? {
        if backfill.installation == installation && backfill.status == "running" {
            backfill.status = "cancelled".into();
            save(&conn, &backfill)?;
            cancelled += 1;
        }
    }
    Ok(cancelled)
}

fn save(conn: &Connection, progress: &BackfillProgress) -> anyhow::Result<()> {
    let mut progress = progress.clone();
    progress.updated_at_ms = store::now_ms();
    store::progress::save(conn, TABLE, &progress.key, &progress)
}

fn load(conn: &Connection, key: &str) -> anyhow::Result<Option<BackfillProgress>> {
    store::progress::load(conn, TABLE, key)
}

/// Every backfill recorded in `conn`, the most recently active first.
pub fn list(conn: &Connection) -> anyhow::Result<Vec<BackfillProgress>> {
    store::progress::all(conn, TABLE)
}

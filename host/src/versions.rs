//! Plugin versions: every plugin file an installation has run, kept by content
//! (`<data_dir>/versions/<sha256>.wasm`) and listed per installation (`plugin_versions`), so
//! that `sluice rollback` can return an installation to the last version that was good, and a
//! version that trips its breaker soon after a reload can be rolled back by itself
//! (`auto_rollback = true`).

use crate::installations::Installed;
use crate::store::{self, StoreError};
use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The folder of the data directory versions are kept in.
pub const DIR: &str = "versions";

/// One version of an installation's plugin.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Version {
    /// `team-N/id`.
    pub installation: String,
    /// SHA-256 of the file, in hex.
    pub sha256: String,
    /// The kept copy.
    pub file: PathBuf,
    /// When it was first put in force, epoch ms.
    pub first_at_ms: i64,
    /// When it was last put in force, epoch ms.
    pub last_at_ms: i64,
    /// Why it is not to be returned to (rolled back from), if it is not.
    pub bad: Option<String>,
}

/// Keeps a copy of each plugin `deployment` runs and records it as in force now. Blocking.
pub fn record(data_dir: &Path, installed: &Installed) -> anyhow::Result<()> {
    record_plugins(data_dir, installed)
}

/// [`record`] for a deployment in force.
pub fn record_deployment(
    data_dir: &Path,
    deployment: &crate::deployment::Deployment,
) -> anyhow::Result<()> {
    record_plugins(
        data_dir,
        &Installed {
            chains: deployment.chains.clone(),
            exports: deployment.exports.clone(),
            tasks: deployment.tasks.clone(),
        },
    )
}

fn record_plugins(data_dir: &Path, installed: &Installed) -> anyhow::Result<()> {
    let dir = data_dir.join(DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut conn = store::open(data_dir)?;
    let now = store::now_ms();
    let plugins = installed
        .chains
        .all()
        .map(|i| (&i.id, &i.plugin))
        .chain(installed.exports.iter().map(|e| (&e.id, &e.plugin)))
        .chain(installed.tasks.iter().map(|t| (&t.id, &t.plugin)));
    let tx = conn.transaction()?;
    for (id, plugin) in plugins {
        let file = dir.join(format!("{}.wasm", plugin.hash));
        if !file.is_file() {
            let partial = file.with_extension("partial");
            std::fs::copy(&plugin.path, &partial)
                .and_then(|_| std::fs::rename(&partial, &file))
                .with_context(|| {
                    format!(
                        "cannot keep {} as {}",
                        plugin.path.display(),
                        file.display()
                    )
                })?;
        }
        tx.execute(
            "INSERT INTO plugin_versions (installation, sha256, file, first_at_ms, last_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (installation, sha256) DO UPDATE SET last_at_ms = ?4",
            params![&**id, plugin.hash, file.display().to_string(), now],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Every version of `installation`, newest in force first.
pub fn list(conn: &Connection, installation: &str) -> Result<Vec<Version>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT installation, sha256, file, first_at_ms, last_at_ms, bad FROM plugin_versions
         WHERE installation = ?1 ORDER BY last_at_ms DESC, first_at_ms DESC",
    )?;
    let versions = stmt
        .query_map([installation], |row| {
            Ok(Version {
                installation: row.get(0)?,
                sha256: row.get(1)?,
                file: PathBuf::from(row.get::<_, String>(2)?),
                first_at_ms: row.get(3)?,
                last_at_ms: row.get(4)?,
                bad: row.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(versions)
}

/// The version of `installation` with hash `sha256`, if it was ever in force.
pub fn find(
    conn: &Connection,
    installation: &str,
    sha256: &str,
) -> Result<Option<Version>, StoreError> {
    Ok(list(conn, installation)?
        .into_iter()
        .find(|v| v.sha256 == sha256))
}

/// The last good version of `installation` before `current`: the newest in force other than
/// it and not marked bad.
pub fn previous(
    conn: &Connection,
    installation: &str,
    current: &str,
) -> Result<Option<Version>, StoreError> {
    Ok(list(conn, installation)?
        .into_iter()
        .find(|v| v.sha256 != current && v.bad.is_none()))
}

/// Marks version `sha256` of `installation` as not to be returned to, for `reason`.
pub fn mark_bad(
    conn: &Connection,
    installation: &str,
    sha256: &str,
    reason: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE plugin_versions SET bad = ?3 WHERE installation = ?1 AND sha256 = ?2",
        params![installation, sha256, reason],
    )?;
    Ok(())
}

/// When version `sha256` of `installation` was first put in force, if ever.
pub fn first_in_force(
    conn: &Connection,
    installation: &str,
    sha256: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT first_at_ms FROM plugin_versions WHERE installation = ?1 AND sha256 = ?2",
            params![installation, sha256],
            |row| row.get(0),
        )
        .optional()?)
}

//! `sluice recordings`: stored recordings, and, for one session, what was archived of it.

use super::{Read, load, print_lines};
use crate::store::read::StoredRecording;
use crate::stored::Stored;
use anyhow::Context;
use flate2::read::GzDecoder;
use std::collections::HashSet;
use std::io::Read as _;
use std::time::Duration;

/// How long reading an archive may take.
const ARCHIVE_DEADLINE: Duration = Duration::from_secs(60);

/// Prints the newest `read.limit` recording events (of `session`, archived ones included).
pub(super) fn print(read: &Read, session: Option<&str>) -> anyhow::Result<()> {
    let config = load(&read.config)?;
    let stored = Stored::of(&config)?;
    let mut lines: Vec<StoredRecording> = Vec::new();
    if let Some(session) = session {
        let archives = stored.recording_archives(read.team, session)?;
        let stores = match archives.is_empty() {
            true => None,
            false => config
                .capabilities
                .object_stores
                .open(&config.server.data_dir)?,
        };
        for archive in archives {
            let stores = stores
                .as_deref()
                .context("session archived to an object store, but none is configured")?;
            let body = stores
                .read(&archive.store, &archive.key, ARCHIVE_DEADLINE)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .with_context(|| {
                    format!(
                        "archive {} is missing from store `{}`",
                        archive.key, archive.store
                    )
                })?;
            let mut text = String::new();
            GzDecoder::new(&body[..])
                .read_to_string(&mut text)
                .with_context(|| format!("archive {} is not gzip text", archive.key))?;
            for line in text.lines() {
                lines.push(
                    serde_json::from_str(line)
                        .with_context(|| format!("archive {} has a bad line", archive.key))?,
                );
            }
        }
    }
    // A session archived but not yet deleted (retention interrupted in between) is in both:
    // each event is printed once.
    let archived: HashSet<String> = lines.iter().map(|line| line.uuid.clone()).collect();
    lines.extend(
        stored
            .recordings(read.team, session, read.limit)?
            .into_iter()
            .filter(|line| !archived.contains(&line.uuid)),
    );
    let skip = lines.len().saturating_sub(read.limit);
    print_lines(lines.split_off(skip))
}

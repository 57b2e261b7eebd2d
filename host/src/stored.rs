//! What operators read of what a config stored (events, recordings, dead letters, plugin logs),
//! from the embedded database or ClickHouse: one place for the commands and the admin API.

use crate::clickhouse::{self, ClickHouse};
use crate::config::Config;
use crate::store;
use crate::store::dead_letters::{self, Letter, Selector};
use crate::store::logs::{self, LogQuery, PluginLog};
use crate::store::read::{RecordingArchive, StoredDeadLetter, StoredEvent, StoredRecording};
use anyhow::Context;
use std::path::PathBuf;

/// Where a config's events, recordings, dead letters and logs are stored.
pub enum Stored {
    /// The embedded database.
    Embedded(rusqlite::Connection),
    /// ClickHouse (`[clickhouse]`).
    ClickHouse(ClickHouse),
}

impl Stored {
    /// The store `config` names.
    pub fn of(config: &Config) -> anyhow::Result<Self> {
        Ok(match &config.clickhouse {
            Some(clickhouse) => Self::ClickHouse(ClickHouse::new(&clickhouse.settings())?),
            None => Self::Embedded(open_existing(config)?),
        })
    }

    /// The newest `limit` stored events (of `team`, if given), oldest first.
    pub fn events(&self, team: Option<u64>, limit: usize) -> anyhow::Result<Vec<StoredEvent>> {
        Ok(match self {
            Self::Embedded(conn) => store::read::recent_events(conn, team, limit)?,
            Self::ClickHouse(ch) => clickhouse::read::recent_events(ch, team, limit)?,
        })
    }

    /// The newest `limit` dead letters (of `team`, if given), oldest first.
    pub fn dead_letters(
        &self,
        team: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<Vec<StoredDeadLetter>> {
        Ok(match self {
            Self::Embedded(conn) => store::read::recent_dead_letters(conn, team, limit)?,
            Self::ClickHouse(ch) => clickhouse::read::recent_dead_letters(ch, team, limit)?,
        })
    }

    /// The newest `limit` recording events (of `team` and `session`, if given), oldest first.
    pub fn recordings(
        &self,
        team: Option<u64>,
        session: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<StoredRecording>> {
        Ok(match self {
            Self::Embedded(conn) => store::read::recent_recordings(conn, team, session, limit)?,
            Self::ClickHouse(ch) => clickhouse::read::recent_recordings(ch, team, session, limit)?,
        })
    }

    /// The archives of session `session` (of `team`, if given).
    pub fn recording_archives(
        &self,
        team: Option<u64>,
        session: &str,
    ) -> anyhow::Result<Vec<RecordingArchive>> {
        Ok(match self {
            Self::Embedded(conn) => store::read::recording_archives(conn, team, session)?,
            Self::ClickHouse(ch) => clickhouse::read::recording_archives(ch, team, session)?,
        })
    }

    /// The chains' dead letters `selector` names (at most
    /// [`dead_letters::MAX_PER_REQUEST`]).
    pub fn dead_letters_named(&self, selector: &Selector) -> anyhow::Result<Vec<Letter>> {
        Ok(match self {
            Self::Embedded(conn) => dead_letters::select(conn, selector)?,
            Self::ClickHouse(ch) => clickhouse::read::dead_letters_named(ch, selector)?,
        })
    }

    /// Removes the dead letters of `team` that `letters` are (once replayed, or discarded).
    pub fn remove_dead_letters(&self, team: u64, letters: &[Letter]) -> anyhow::Result<()> {
        match self {
            Self::Embedded(conn) => {
                dead_letters::remove(conn, team, letters)?;
            }
            Self::ClickHouse(ch) => clickhouse::read::remove_dead_letters(ch, team, letters)?,
        }
        Ok(())
    }

    /// The newest `limit` plugin log lines (of `team` and `installation`, if given), oldest
    /// first.
    pub fn logs(
        &self,
        team: Option<u64>,
        installation: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<PluginLog>> {
        Ok(match self {
            Self::Embedded(conn) => logs::read(
                conn,
                &LogQuery {
                    team,
                    installation,
                    after: None,
                    limit,
                },
            )?,
            Self::ClickHouse(ch) => clickhouse::read::recent_logs(ch, team, installation, limit)?,
        })
    }
}

/// The database of `config`, which `sluice serve` must have created.
pub fn open_existing(config: &Config) -> anyhow::Result<rusqlite::Connection> {
    let data_dir = existing_data_dir(config)?;
    store::open(&data_dir)
        .with_context(|| format!("cannot open the database in {}", data_dir.display()))
}

/// The data folder of `config`, if a server has made its database there.
pub fn existing_data_dir(config: &Config) -> anyhow::Result<PathBuf> {
    let db = config.server.data_dir.join(store::DB_FILE);
    anyhow::ensure!(
        db.is_file(),
        "no database at {} (has `sluice serve --config {}` run yet?)",
        db.display(),
        config.path.display()
    );
    Ok(config.server.data_dir.clone())
}

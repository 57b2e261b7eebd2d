//! `sluice logs`.

use super::{Read, print_lines};
use crate::store::logs::{LogQuery, LogStore, SqliteLogs};

/// Prints plugin log lines (of `installation`, if given), then, with `follow`, each new one.
pub(super) fn print(read: &Read, installation: Option<&str>, follow: bool) -> anyhow::Result<()> {
    let logs = SqliteLogs::open(&read.data_dir()?)?;
    let mut query = LogQuery {
        team: read.team,
        installation,
        after: None,
        limit: read.limit,
    };
    // Following starts after the newest line stored now, whatever `--limit` printed.
    let mut last = logs.last_id()?;
    let mut lines = logs.read(&query)?;
    if follow {
        eprintln!("following the lines stored from now on (Ctrl-C to stop)");
    }
    loop {
        last = lines.last().map_or(last, |line| line.id.max(last));
        print_lines(lines)?;
        if !follow {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        query.after = Some(last);
        query.limit = 10_000;
        lines = logs.read(&query)?;
    }
}

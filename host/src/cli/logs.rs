//! `sluice logs`.

use super::{Read, print_lines};
use crate::clickhouse;
use crate::store::logs::{LogQuery, SqliteLogs};
use crate::stored::Stored;

/// Prints plugin log lines (of `installation`, if given), then, with `follow`, each new one.
pub(super) fn print(read: &Read, installation: Option<&str>, follow: bool) -> anyhow::Result<()> {
    if let Stored::ClickHouse(ch) = read.stored()? {
        anyhow::ensure!(
            !follow,
            "--follow reads the embedded database; with [clickhouse], lines reach ClickHouse out of order (each loader batch at its own time), so following them is not supported: run without --follow"
        );
        let lines = clickhouse::read::recent_logs(&ch, read.team, installation, read.limit)?;
        return print_lines(lines);
    }
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

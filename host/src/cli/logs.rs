//! `sluice logs`.

use super::{Read, print_lines};
use crate::store;

/// Prints plugin log lines (of `installation`, if given), then, with `follow`, each new one.
pub(super) fn print(read: &Read, installation: Option<&str>, follow: bool) -> anyhow::Result<()> {
    let conn = read.open()?;
    // Following starts after the newest line stored now, whatever `--limit` printed.
    let mut last = store::logs::last_id(&conn)?;
    let mut lines = store::logs::read(&conn, read.team, installation, None, read.limit)?;
    loop {
        last = lines.last().map_or(last, |line| line.id.max(last));
        print_lines(lines)?;
        if !follow {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        lines = store::logs::read(&conn, read.team, installation, Some(last), 10_000)?;
    }
}

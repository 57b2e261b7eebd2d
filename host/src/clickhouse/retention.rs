//! Housekeeping on ClickHouse: plugin log lines (by age and size) and dead letters (by age) are
//! deleted with `ALTER TABLE … DELETE` (ClickHouse 18.16 has no TTL), awaited. A mutation
//! rewrites the parts it touches, so a pass sends one only when there is something to delete
//! past a cutoff rounded down to the hour, and the size cut only once the table is a tenth over
//! its cap: a few mutations an hour at most, whatever the traffic.

use super::{ClickHouse, ClickHouseError, ClickHouseSettings, Table};
use crate::config::RetentionConfig;
use crate::housekeeping::{DAY_MS, Prune, Pruned};
use std::time::Duration;

const HOUR_MS: i64 = 3_600_000;

/// How long a pass waits for one mutation to be applied.
const MUTATION_WAIT: Duration = Duration::from_secs(60);

/// What sluice keeps in ClickHouse for operators.
pub struct ClickHouseRetention {
    clickhouse: ClickHouse,
}

impl ClickHouseRetention {
    /// On the ClickHouse of `settings`.
    pub fn new(settings: &ClickHouseSettings) -> Result<Self, ClickHouseError> {
        Ok(Self {
            clickhouse: ClickHouse::new(settings)?,
        })
    }

    /// Rows of `table` matching `condition`.
    fn count(&self, table: Table, condition: &str) -> Result<usize, ClickHouseError> {
        #[derive(serde::Deserialize)]
        struct Count {
            n: usize,
        }
        let rows: Vec<Count> = self.clickhouse.select(&format!(
            "SELECT count() AS n FROM {}.{} WHERE {condition}",
            self.clickhouse.database(),
            table.name()
        ))?;
        Ok(rows.first().map_or(0, |c| c.n))
    }

    /// Deletes the rows of `table` whose `column` is below `cutoff`; how many there were.
    fn delete_before(
        &self,
        table: Table,
        column: &str,
        cutoff: i64,
    ) -> Result<usize, ClickHouseError> {
        let condition = format!("{column} < {cutoff}");
        let n = self.count(table, &condition)?;
        if n > 0 {
            self.clickhouse
                .delete_where(table.name(), &condition, MUTATION_WAIT)?;
        }
        Ok(n)
    }

    /// Deletes the oldest log lines once there are a tenth more than `max_lines`, down to
    /// `max_lines` (and the lines of the same millisecond as the last one kept); how many it deleted.
    fn cap_logs(&self, max_lines: u64) -> Result<usize, ClickHouseError> {
        let total = self.count(Table::Logs, "1")? as u64;
        if total <= max_lines + max_lines / 10 {
            return Ok(0);
        }
        #[derive(serde::Deserialize)]
        struct Cut {
            time_ms: i64,
        }
        let cut: Vec<Cut> = self.clickhouse.select(&format!(
            "SELECT time_ms FROM {}.{} ORDER BY time_ms DESC LIMIT 1 OFFSET {}",
            self.clickhouse.database(),
            Table::Logs.name(),
            max_lines.saturating_sub(1)
        ))?;
        match cut.first() {
            Some(cut) => self.delete_before(Table::Logs, "time_ms", cut.time_ms),
            None => Ok(0),
        }
    }
}

impl Prune for ClickHouseRetention {
    fn store(&self) -> &'static str {
        "clickhouse"
    }

    fn shared(&self) -> bool {
        true
    }

    fn prune(&self, retention: &RetentionConfig, now_ms: i64) -> Result<Pruned, String> {
        let before = |days: u64| (now_ms - days as i64 * DAY_MS) / HOUR_MS * HOUR_MS;
        let pruned = || -> Result<Pruned, ClickHouseError> {
            let by_age =
                self.delete_before(Table::Logs, "time_ms", before(retention.plugin_logs_days))?;
            let by_size = self.cap_logs(retention.plugin_logs_max_lines)?;
            let dead = self.delete_before(
                Table::DeadLetters,
                "created_at_ms",
                before(retention.dead_letters_days),
            )?;
            Ok(vec![
                ("plugin_logs", by_age + by_size),
                ("dead_letters", dead),
            ])
        };
        pruned().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::clickhouse_server::ClickHouseServer;
    use crate::clickhouse::rows::{DeadLetterRow, LogRow, with_position};
    use crate::store::now_ms;

    fn rows<T: serde::Serialize>(rows: &[T]) -> Vec<u8> {
        let mut out = Vec::new();
        for (offset, row) in rows.iter().enumerate() {
            let json = serde_json::to_vec(row).unwrap();
            out.extend(with_position(&json, 0, offset as i64).unwrap());
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn old_log_lines_and_dead_letters_go_the_newest_lines_stay_within_their_cap() {
        let server = ClickHouseServer::start();
        let settings = ClickHouseSettings {
            url: server.url.clone(),
            database: "retention_test".into(),
            user: "default".into(),
            password: None,
        };
        let clickhouse = ClickHouse::new(&settings).unwrap();
        clickhouse.create_tables().unwrap();
        let now = now_ms();
        let log = |n: i64, time_ms: i64| LogRow {
            id: format!("line-{n}"),
            installation: "team-1/p".into(),
            level: "info".into(),
            message: format!("line {n}"),
            time_ms,
        };
        let logs: Vec<LogRow> = (0..30)
            .map(|n| log(n, now - 10 * DAY_MS + n))
            .chain((30..60).map(|n| log(n, now - 60_000 + n)))
            .collect();
        clickhouse.insert(Table::Logs, &rows(&logs)).unwrap();
        let letter = |n: u8, created_at_ms: i64| DeadLetterRow {
            team_id: 1,
            installation: "team-1/p".into(),
            uuid: format!("u{n}"),
            event_base64: String::new(),
            error: "trap".into(),
            backtrace: None,
            created_at_ms,
        };
        let letters = [
            letter(1, now - 40 * DAY_MS),
            letter(2, now - 31 * DAY_MS),
            letter(3, now),
        ];
        clickhouse
            .insert(Table::DeadLetters, &rows(&letters))
            .unwrap();

        let retention = ClickHouseRetention::new(&settings).unwrap();
        let config = RetentionConfig {
            plugin_logs_max_lines: 20,
            ..RetentionConfig::default()
        };
        let pruned = retention.prune(&config, now).unwrap();
        assert_eq!(pruned, [("plugin_logs", 30 + 10), ("dead_letters", 2)]);
        #[derive(serde::Deserialize)]
        struct Left {
            id: String,
        }
        let left = |table: Table| -> Vec<String> {
            let column = if table == Table::Logs {
                "id"
            } else {
                "uuid AS id"
            };
            let mut ids: Vec<String> = clickhouse
                .select::<Left>(&format!(
                    "SELECT {column} FROM retention_test.{}",
                    table.name()
                ))
                .unwrap()
                .into_iter()
                .map(|l| l.id)
                .collect();
            ids.sort();
            ids
        };
        let newest: Vec<String> = {
            let mut ids: Vec<String> = (40..60).map(|n| format!("line-{n}")).collect();
            ids.sort();
            ids
        };
        assert_eq!(left(Table::Logs), newest, "the 20 newest lines");
        assert_eq!(left(Table::DeadLetters), ["u3"]);

        // Nothing past the cutoffs and the table within its cap: no mutation at all.
        #[derive(serde::Deserialize)]
        struct Mutations {
            n: u64,
        }
        let mutations = || {
            clickhouse
                .select::<Mutations>(
                    "SELECT count() AS n FROM system.mutations WHERE database = 'retention_test'",
                )
                .unwrap()[0]
                .n
        };
        let before = mutations();
        assert_eq!(before, 3, "one per cut");
        let again = retention.prune(&config, now).unwrap();
        assert_eq!(again, [("plugin_logs", 0), ("dead_letters", 0)]);
        assert_eq!(mutations(), before);
    }
}

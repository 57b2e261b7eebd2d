//! Progress records of long commands (`sluice import`, `sluice exports backfill`): one JSON
//! object per key, in a table of their own (`key`, `progress`), so that another command, the
//! admin API or a resumed run reads where they are.

use super::now_ms;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The tables progress records are kept in.
pub const TABLES: [&str; 2] = ["imports", "backfills"];

/// Records `value` under `key` in `table` (one of [`TABLES`]).
pub fn save<T: Serialize>(
    conn: &Connection,
    table: &str,
    key: &str,
    value: &T,
) -> anyhow::Result<()> {
    debug_assert!(TABLES.contains(&table));
    conn.execute(
        &format!(
            "INSERT INTO {table} (key, progress, updated_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET progress = ?2, updated_at_ms = ?3"
        ),
        params![key, serde_json::to_string(value)?, now_ms()],
    )?;
    Ok(())
}

/// The record under `key` in `table`.
pub fn load<T: DeserializeOwned>(
    conn: &Connection,
    table: &str,
    key: &str,
) -> anyhow::Result<Option<T>> {
    let text: Option<String> = conn
        .query_row(
            &format!("SELECT progress FROM {table} WHERE key = ?1"),
            [key],
            |row| row.get(0),
        )
        .optional()?;
    Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
}

/// Every record of `table`, the most recently updated first.
pub fn all<T: DeserializeOwned>(conn: &Connection, table: &str) -> anyhow::Result<Vec<T>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT progress FROM {table} ORDER BY updated_at_ms DESC"
    ))?;
    let records = stmt
        .query_map([], |row| row.get::<_, String>(0))?
        .map(|text| Ok(serde_json::from_str(&text?)?))
        .collect::<anyhow::Result<_>>()?;
    Ok(records)
}

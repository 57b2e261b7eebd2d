//! The table: created if missing with PostHog's schema and daily partitions on `timestamp`, or
//! given the columns it lacks.

use super::{BigQueryExport, api_error};
use sluice_sdk::{PluginError, Value, json};

/// PostHog's BigQuery schema: (name, type).
pub const FIELDS: [(&str, &str); 12] = [
    ("uuid", "STRING"),
    ("event", "STRING"),
    ("properties", "STRING"),
    ("elements", "STRING"),
    ("set", "STRING"),
    ("set_once", "STRING"),
    ("distinct_id", "STRING"),
    ("team_id", "INT64"),
    ("ip", "STRING"),
    ("site_url", "STRING"),
    ("timestamp", "TIMESTAMP"),
    ("bq_ingested_timestamp", "TIMESTAMP"),
];

fn field((name, kind): (&str, &str)) -> Value {
    json!({"name": name, "type": kind, "mode": "NULLABLE"})
}

/// Makes sure the table exists with every column of [`FIELDS`].
pub fn ensure(export: &mut BigQueryExport) -> Result<(), PluginError> {
    let url = format!("{}/{}", export.tables_url, export.table);
    let (status, table) = export.json("GET", &url, None)?;
    match status {
        200 => {
            let existing: Vec<Value> = table["schema"]["fields"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let has = |name: &str| existing.iter().any(|f| f["name"] == name);
            let missing: Vec<Value> = FIELDS
                .into_iter()
                .filter(|(name, _)| !has(name))
                .map(field)
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            let fields: Vec<Value> = existing.into_iter().chain(missing).collect();
            let body = json!({"schema": {"fields": fields}});
            let (status, answer) = export.json("PATCH", &url, Some(&body))?;
            if status == 200 {
                Ok(())
            } else {
                Err(api_error("adding columns to the table", status, &answer))
            }
        }
        404 => {
            let body = json!({
                "tableReference": {
                    "projectId": export.project,
                    "datasetId": export.dataset,
                    "tableId": export.table,
                },
                "schema": {"fields": FIELDS.into_iter().map(field).collect::<Vec<_>>()},
                "timePartitioning": {"type": "DAY", "field": "timestamp"},
            });
            let tables = export.tables_url.clone();
            match export.json("POST", &tables, Some(&body))? {
                // 409: created meanwhile by another installation.
                (200 | 409, _) => Ok(()),
                (status, answer) => Err(api_error("creating the table", status, &answer)),
            }
        }
        status => Err(api_error("reading the table", status, &table)),
    }
}

//! Rows and streaming inserts (`tabledata.insertAll`), within BigQuery's request limits, with
//! per-row errors handled row by row.

use super::{BigQueryExport, api_error};
use chrono::{DateTime, SecondsFormat};
use sluice_sdk::{Event, PluginError, Value, json};

/// Most rows in one request (BigQuery recommends 500).
pub const MAX_ROWS: usize = 500;
/// Most bytes in one request (BigQuery's limit is 10 MB).
pub const MAX_BYTES: usize = 9 * 1024 * 1024;
/// Rounds of re-sending rows that failed for a passing reason, within one call.
const ROUNDS: usize = 3;

fn iso(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The insertAll row of `event` (PostHog's columns), with `insertId` = `<team id>:<uuid>`: a
/// uuid is unique within a team only, and teams may share a table.
pub fn row(event: &Event<'_>, formed_at_ms: i64, elements_on_any_event: bool) -> Value {
    let ip = match event.property("$ip") {
        Some(Value::String(ip)) if !ip.is_empty() => Some(ip.clone()),
        _ => event.ip().map(str::to_owned),
    };
    let elements = match event.property("$elements") {
        Some(elements @ Value::Array(_))
            if elements_on_any_event || event.name() == "$autocapture" =>
        {
            elements.to_string()
        }
        _ => "[]".to_owned(),
    };
    json!({
        "insertId": format!("{}:{}", event.team_id(), event.uuid()),
        "json": {
            "uuid": event.uuid(),
            "event": event.name(),
            "properties": event.properties_json(),
            "elements": elements,
            "set": event.set_json().unwrap_or("{}"),
            "set_once": event.set_once_json().unwrap_or("{}"),
            "distinct_id": event.distinct_id(),
            "team_id": event.team_id(),
            "ip": ip,
            "site_url": "",
            "timestamp": iso(event.timestamp_ms()),
            "bq_ingested_timestamp": iso(formed_at_ms),
        }
    })
}

/// Splits `rows` into requests of at most [`MAX_ROWS`] rows and [`MAX_BYTES`] bytes.
pub fn requests(rows: Vec<Value>) -> Result<Vec<Vec<Value>>, PluginError> {
    let mut requests: Vec<Vec<Value>> = Vec::new();
    let mut bytes = 0;
    for row in rows {
        let size = row.to_string().len() + 1;
        if size > MAX_BYTES {
            return Err(PluginError::new(format!(
                "event {} is {size} bytes as a row, more than one request may carry",
                row["insertId"]
            )));
        }
        match requests.last_mut() {
            Some(last) if last.len() < MAX_ROWS && bytes + size <= MAX_BYTES => {
                bytes += size;
                last.push(row);
            }
            _ => {
                bytes = size;
                requests.push(vec![row]);
            }
        }
    }
    Ok(requests)
}

/// Streams `rows` into the table. Rows that fail for a passing reason are sent again, up to
/// [`ROUNDS`] times; rows BigQuery calls `invalid` fail the call for good.
pub fn insert_all(export: &mut BigQueryExport, rows: Vec<Value>) -> Result<(), PluginError> {
    let url = format!("{}/{}/insertAll", export.tables_url, export.table);
    let mut invalid: Vec<String> = Vec::new();
    for mut pending in requests(rows)? {
        for round in 1..=ROUNDS {
            let (status, answer) = export.json("POST", &url, Some(&json!({"rows": pending})))?;
            if status != 200 {
                return Err(api_error("streaming rows", status, &answer));
            }
            let errors = answer["insertErrors"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut retry = Vec::new();
            for error in &errors {
                let Some(row) = error["index"]
                    .as_u64()
                    .and_then(|i| pending.get(i as usize))
                else {
                    continue;
                };
                let reasons: Vec<&str> = error["errors"]
                    .as_array()
                    .map(|e| e.iter().filter_map(|e| e["reason"].as_str()).collect())
                    .unwrap_or_default();
                if reasons.contains(&"invalid") {
                    let message = error["errors"][0]["message"].as_str().unwrap_or("");
                    invalid.push(format!("{} ({message})", row["insertId"]));
                } else {
                    retry.push(row.clone());
                }
            }
            if retry.is_empty() {
                break;
            }
            if round == ROUNDS {
                return Err(PluginError::retryable(format!(
                    "{} rows were not inserted after {ROUNDS} rounds",
                    retry.len()
                )));
            }
            pending = retry;
        }
    }
    if invalid.is_empty() {
        Ok(())
    } else {
        Err(PluginError::new(format!(
            "BigQuery refused {} invalid rows: {}",
            invalid.len(),
            invalid.join(", ")
        )))
    }
}

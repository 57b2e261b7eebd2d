//! Exports stored events to a BigQuery table through the `http` capability, fixing what
//! PostHog's BigQuery plugin got wrong:
//!
//! - **No duplicates from retries.** Every row is streamed with `insertId` = `<team>:<uuid>`, so
//!   BigQuery drops a row it already has when a batch is sent again (after a retry or a crash);
//!   `bq_ingested_timestamp` is the time the batch was formed, so a re-sent row is identical,
//!   as de-duplication expects. (BigQuery de-duplicates on a best-effort basis, for about a
//!   minute: replaying a dead letter much later can still duplicate rows.)
//! - **Only the failed rows are retried.** `insertErrors` are read per row: rows that were not
//!   inserted for a passing reason are sent again (a few times within the call, then the whole
//!   batch is retried later by the host); rows BigQuery calls `invalid` make the batch fail for
//!   good, so the host dead-letters it for an operator to look at. 429, 5xx, and quota or rate
//!   limits are retryable.
//! - **Within BigQuery's limits.** Requests carry at most 500 rows and about 9 MB.
//! - **The table.** Created if missing with PostHog's schema, partitioned by day on `timestamp`;
//!   an existing table gets the columns it lacks.
//! - **Credentials.** The service-account key is a secret config value; the OAuth2 JWT bearer
//!   assertion is signed RS256 inside the plugin and the access token is kept until it expires.
//!   Endpoints are configurable (`api_base`, and the key's `token_uri`).

mod auth;
mod rows;
mod table;

use auth::{Auth, ServiceAccount};
use sluice_sdk::host::http::{self, Request, Response};
use sluice_sdk::{
    Config, ConfigField, ConfigType, Event, ExportBatch, Exporter, Manifest, Plugin, PluginError,
    Value,
};

/// The BigQuery export plugin.
#[derive(Debug)]
pub struct BigQueryExport {
    auth: Auth,
    tables_url: String,
    table: String,
    dataset: String,
    project: String,
    elements_on_any_event: bool,
    /// Whether the table is known to exist with every column.
    table_ready: bool,
}

impl Plugin for BigQueryExport {
    fn manifest() -> Manifest {
        Manifest::new(
            "bigquery-export",
            env!("CARGO_PKG_VERSION"),
            "Exports stored events to a BigQuery table (streaming inserts, insertId = team id and event uuid)",
        )
        .needs(&["http"])
        .config(vec![
            ConfigField::new(
                "key_json",
                ConfigType::Text,
                "The service account key (JSON) with BigQuery Data Editor on the dataset",
            )
            .required()
            .secret(),
            ConfigField::new(
                "project_id",
                ConfigType::Text,
                "The project of the dataset (default: the key's project)",
            )
            .with_default(""),
            ConfigField::new("dataset_id", ConfigType::Text, "The dataset").required(),
            ConfigField::new(
                "table_id",
                ConfigType::Text,
                "The table (created if missing)",
            )
            .required(),
            ConfigField::new(
                "export_elements_on_any_event",
                ConfigType::Boolean,
                "Export `elements` for every event, not only `$autocapture`",
            )
            .with_default(false),
            ConfigField::new("api_base", ConfigType::Text, "The BigQuery API endpoint")
                .with_default("https://bigquery.googleapis.com"),
        ])
    }

    fn setup(config: &Config) -> Result<Self, PluginError> {
        let account = ServiceAccount::parse(config.text("key_json")?)?;
        let project = match config.text("project_id")? {
            "" => account.project_id.clone(),
            given => given.to_owned(),
        };
        let dataset = config.text("dataset_id")?.to_owned();
        let api = config.text("api_base")?.trim_end_matches('/');
        Ok(Self {
            tables_url: format!("{api}/bigquery/v2/projects/{project}/datasets/{dataset}/tables"),
            table: config.text("table_id")?.to_owned(),
            elements_on_any_event: config.boolean("export_elements_on_any_event")?,
            auth: Auth::new(account),
            dataset,
            project,
            table_ready: false,
        })
    }
}

impl Exporter for BigQueryExport {
    fn export(&mut self, batch: &ExportBatch, events: &[Event<'_>]) -> Result<(), PluginError> {
        if !self.table_ready {
            table::ensure(self)?;
            self.table_ready = true;
        }
        let rows: Vec<Value> = events
            .iter()
            .map(|event| rows::row(event, batch.created_at_ms, self.elements_on_any_event))
            .collect();
        let result = rows::insert_all(self, rows);
        if result.is_err() {
            // The table may have been dropped or changed meanwhile: check it next time.
            self.table_ready = false;
        }
        result
    }
}

impl BigQueryExport {
    /// Sends `request` with the access token; a `401` refreshes the token once.
    fn send(&mut self, request: Request) -> Result<Response, PluginError> {
        for fresh in [false, true] {
            let token = self.auth.token(fresh)?;
            let response = http::fetch(
                &request
                    .clone()
                    .header("Authorization", format!("Bearer {token}"))
                    .header("Content-Type", "application/json"),
            )
            .map_err(|e| PluginError::from(e).context(format!("cannot reach {}", request.url)))?;
            if response.status != 401 || fresh {
                return Ok(response);
            }
        }
        unreachable!("the loop returns on its second round")
    }

    /// A JSON request to `url` and the decoded answer, or a plugin error saying whether it may
    /// pass.
    fn json(
        &mut self,
        method: &str,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), PluginError> {
        let request = Request {
            method: method.to_owned(),
            url: url.to_owned(),
            body: body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
            ..Request::default()
        };
        let response = self.send(request)?;
        let json = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        Ok((response.status, json))
    }
}

/// An error answer of the API as a plugin error: 429, 5xx, and quota or rate limits may pass;
/// anything else (a bad request, no permission) will not.
fn api_error(what: &str, status: u16, body: &Value) -> PluginError {
    let reason = body["error"]["errors"][0]["reason"].as_str().unwrap_or("");
    let message = body["error"]["message"].as_str().unwrap_or("");
    let text = format!("{what}: HTTP {status} {reason}: {message}");
    let passing = matches!(
        reason,
        "quotaExceeded" | "rateLimitExceeded" | "backendError" | "internalError"
    );
    if status == 429 || status >= 500 || passing {
        PluginError::retryable(text)
    } else {
        PluginError::new(text)
    }
}

sluice_sdk::export_plugin!(BigQueryExport: exporter);

#[cfg(test)]
mod tests;

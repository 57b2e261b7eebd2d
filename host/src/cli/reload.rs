//! `sluice reload`: asks the running server, through its admin API, to put a config in force.

use super::load;
use crate::admin;
use anyhow::Context;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// Longest a reload may take (it compiles and starts every changed plugin).
const RELOAD_DEADLINE: Duration = Duration::from_secs(600);

/// Asks the server using the data folder of `path` to load `path`; prints what changed, or
/// fails with the reasons nothing changed.
pub(super) fn run(path: &Path) -> anyhow::Result<()> {
    let config = load(path)?;
    let (url, token) = admin::client_settings(&config)?;
    let absolute = std::path::absolute(path)?;
    let response = reqwest::blocking::Client::builder()
        .timeout(RELOAD_DEADLINE)
        .build()?
        .post(format!("{url}/admin/v1/reload"))
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(json!({ "path": absolute }).to_string())
        .send()
        .with_context(|| {
            format!("no sluice server answers at {url} (is `sluice serve` running?)")
        })?;
    let status = response.status();
    let body: Value = serde_json::from_slice(&response.bytes()?)
        .with_context(|| format!("the server at {url} answered {status} without JSON"))?;
    if status.is_success() {
        println!("{}", body["changes"]);
        return Ok(());
    }
    let mut reasons = vec![
        body["detail"]
            .as_str()
            .unwrap_or("the reload was refused")
            .to_owned(),
    ];
    reasons.extend(body["problems"].as_array().into_iter().flatten().map(|p| {
        format!(
            "  {}: {}",
            p["key"].as_str().unwrap_or(""),
            p["reason"].as_str().unwrap_or("")
        )
    }));
    anyhow::bail!(
        "nothing changed ({status}, {}): {}",
        body["code"].as_str().unwrap_or("error"),
        reasons.join("\n")
    )
}

//! `/ready`: whether this node can do its roles' work now. Capture: its ingest takes events.
//! Worker and loader: they are caught up enough (their consumer lag is known and at most
//! `[kafka] ready_max_lag`). Loader: ClickHouse answers. `/health` only says the process lives.

use crate::clickhouse::{ClickHouse, ClickHouseSettings};
use crate::ingest::Append;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// What `/ready` checks on this node.
#[derive(Clone, Default)]
pub struct Readiness {
    /// The ingest capture appends to.
    pub append: Option<Arc<dyn Append>>,
    /// Consumer lags by role (`worker`, `loader`), -1 until measured.
    pub lags: Vec<(&'static str, Arc<AtomicI64>)>,
    /// The most lag that is still ready.
    pub max_lag: u64,
    /// The ClickHouse the loader inserts into.
    pub clickhouse: Option<ClickHouseSettings>,
}

impl Readiness {
    /// `200` with the queue depth and lags, or `503` with every reason it is not ready.
    pub async fn answer(self) -> Response {
        let checked = tokio::task::spawn_blocking(move || self.check()).await;
        let (reasons, body) =
            checked.unwrap_or_else(|_| (vec!["the readiness check panicked".into()], Map::new()));
        let mut body = body;
        if reasons.is_empty() {
            body.insert("status".into(), "ready".into());
            return axum::Json(Value::Object(body)).into_response();
        }
        body.insert("status".into(), "unavailable".into());
        body.insert("reason".into(), reasons.join("; ").into());
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(Value::Object(body)),
        )
            .into_response()
    }

    /// Why it is not ready (nothing when it is), and what it measured. Blocks for at most a
    /// few seconds.
    fn check(&self) -> (Vec<String>, Map<String, Value>) {
        let mut reasons = Vec::new();
        let mut body = Map::new();
        let depth = self.append.as_ref().map_or(0, |append| append.depth());
        body.insert("queue_depth".into(), depth.into());
        if let Some(Err(reason)) = self.append.as_ref().map(|append| append.reachable()) {
            reasons.push(reason);
        }
        let mut lags = Map::new();
        for (role, lag) in &self.lags {
            let lag = lag.load(Ordering::SeqCst);
            lags.insert((*role).into(), json!(lag));
            if lag < 0 {
                reasons.push(format!("the {role} has not measured its lag yet"));
            } else if lag as u64 > self.max_lag {
                reasons.push(format!(
                    "the {role} is {lag} messages behind (ready at {} or fewer)",
                    self.max_lag
                ));
            }
        }
        if !lags.is_empty() {
            body.insert("lag".into(), lags.into());
        }
        if let Some(settings) = &self.clickhouse
            && let Err(error) = ClickHouse::new(settings).and_then(|ch| ch.ping())
        {
            reasons.push(error.to_string());
        }
        (reasons, body)
    }
}

//! `/ready`: whether this node can do its roles' work now. Capture: its ingest takes events.
//! Worker and loader: they are caught up enough (their consumer lag is known and at most
//! `[kafka] ready_max_lag`). Loader: ClickHouse answers. Every node: the object stores its
//! plugins use answer (checked at most every [`STORES_EVERY`]). `/health` only says the
//! process lives.

use crate::capabilities::object_store::{Stores, Unreachable};
use crate::clickhouse::{ClickHouse, ClickHouseSettings};
use crate::ingest::Append;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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
    /// The object stores the plugins use.
    pub stores: Option<StoreCheck>,
}

/// How often `/ready` lists the object stores (at most).
pub const STORES_EVERY: Duration = Duration::from_secs(10);

/// How long `/ready` waits for a store to answer.
const STORE_ANSWERS_WITHIN: Duration = Duration::from_secs(2);

/// The object stores the plugins use, and their last check.
#[derive(Clone)]
pub struct StoreCheck {
    stores: Arc<Stores>,
    /// When they were last checked, and the unreachable ones with the reason.
    checked: Arc<Mutex<Option<(Instant, Unreachable)>>>,
}

impl StoreCheck {
    /// Checks of `stores`.
    pub fn new(stores: Arc<Stores>) -> Self {
        Self {
            stores,
            checked: Arc::default(),
        }
    }

    /// The unreachable stores with the reason, as checked within [`STORES_EVERY`].
    fn unreachable(&self) -> Unreachable {
        let mut checked = self.checked.lock().unwrap_or_else(PoisonError::into_inner);
        match &*checked {
            Some((at, unreachable)) if at.elapsed() < STORES_EVERY => unreachable.clone(),
            _ => {
                let unreachable = self.stores.unreachable(STORE_ANSWERS_WITHIN);
                *checked = Some((Instant::now(), unreachable.clone()));
                unreachable
            }
        }
    }
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
        if let Some(stores) = &self.stores {
            reasons.extend(
                stores
                    .unreachable()
                    .into_iter()
                    .map(|(name, why)| format!("object store `{name}` cannot be listed: {why}")),
            );
        }
        (reasons, body)
    }
}

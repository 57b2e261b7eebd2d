//! The PostHog-compatible capture API.
//!
//! A request is decoded ([`decode`]), split into events with its token found ([`normalize`]),
//! mapped to a team, encoded and appended to the durable queue. Only after the queue has
//! committed does the client get `200 {"status":1}`.

mod decode;
mod error;
mod normalize;
mod time;

pub use error::CaptureError;
pub use normalize::{NewEvent, RequestContext, normalize};

use crate::config::CaptureConfig;
use crate::queue::Queue;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::BodyExt;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Single-event paths (body limit: `max_event_body_bytes`).
const EVENT_PATHS: [&str; 5] = ["/e", "/capture", "/track", "/engage", "/i/v0/e"];
/// Bytes of an oversized body read and thrown away before giving up on the connection.
const MAX_DISCARD_BYTES: usize = 64 * 1024 * 1024;
/// Batch paths (body limit: `max_batch_body_bytes`).
const BATCH_PATHS: [&str; 1] = ["/batch"];

/// What capture handlers share.
pub struct CaptureState {
    teams: HashMap<String, u64>,
    queue: Queue,
    limits: CaptureConfig,
}

impl CaptureState {
    /// Capture for the given token → team map, appending to `queue`.
    pub fn new(teams: HashMap<String, u64>, queue: Queue, limits: CaptureConfig) -> Self {
        Self {
            teams,
            queue,
            limits,
        }
    }
}

/// The capture routes, each path with and without a trailing slash.
pub fn routes(state: Arc<CaptureState>) -> Router {
    let mut router = Router::new();
    for (paths, batch) in [(&EVENT_PATHS[..], false), (&BATCH_PATHS[..], true)] {
        for path in paths {
            let handler = post(
                move |state: State<Arc<CaptureState>>,
                      peer: ConnectInfo<SocketAddr>,
                      query: Query<CaptureQuery>,
                      headers: HeaderMap,
                      body: Body| capture(state, peer, query, headers, body, batch),
            );
            router = router
                .route(path, handler.clone())
                .route(&format!("{path}/"), handler);
        }
    }
    router.with_state(state)
}

/// Query parameters capture understands.
#[derive(Debug, Default, Deserialize)]
pub struct CaptureQuery {
    token: Option<String>,
    api_key: Option<String>,
    compression: Option<String>,
    #[serde(rename = "_")]
    sent_at: Option<String>,
}

async fn capture(
    State(state): State<Arc<CaptureState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<CaptureQuery>,
    headers: HeaderMap,
    body: Body,
    batch: bool,
) -> Response {
    match accept(&state, peer, query, &headers, body, batch).await {
        Ok(()) => axum::Json(serde_json::json!({ "status": 1 })).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn accept(
    state: &CaptureState,
    peer: SocketAddr,
    query: CaptureQuery,
    headers: &HeaderMap,
    body: Body,
    batch: bool,
) -> Result<(), CaptureError> {
    let limit = if batch {
        state.limits.max_batch_body_bytes
    } else {
        state.limits.max_event_body_bytes
    };
    let bytes = read_body(body, limit).await?;
    let encoding = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok());
    let payload = decode::decode_body(&bytes, query.compression.as_deref().or(encoding), limit)?;
    let ctx = RequestContext {
        now_ms: crate::store::now_ms(),
        query_token: query.token.or(query.api_key),
        query_sent_at: query.sent_at.as_deref().and_then(time::parse_epoch_digits),
        ip: Some(client_ip(peer, headers, state.limits.trust_forwarded_for)),
    };
    let normalized = normalize(payload, &ctx)?;
    let team_id = *state
        .teams
        .get(&normalized.token)
        .ok_or(CaptureError::UnknownToken)?;
    let count = normalized.events.len() as u64;
    let payload = normalize::encode(&normalized.events, team_id)?;
    state.queue.append(team_id, count, payload).await?;
    metrics::counter!("sluice_capture_events_total", "team" => team_id.to_string())
        .increment(count);
    Ok(())
}

/// Reads at most `limit` bytes of body. A larger body is read on and discarded (up to
/// [`MAX_DISCARD_BYTES`]) so that the client, still uploading, receives the `413` instead of a
/// reset connection; memory use stays bounded by `limit` either way.
async fn read_body(mut body: Body, limit: usize) -> Result<Vec<u8>, CaptureError> {
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| CaptureError::InvalidPayload(format!("cannot read the body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            kept.extend_from_slice(&data);
        } else if seen > limit.saturating_add(MAX_DISCARD_BYTES) {
            break;
        }
    }
    if seen > limit {
        return Err(CaptureError::PayloadTooLarge(limit));
    }
    Ok(kept)
}

fn client_ip(peer: SocketAddr, headers: &HeaderMap, trust_forwarded_for: bool) -> String {
    let forwarded = trust_forwarded_for
        .then(|| {
            headers
                .get("x-forwarded-for")?
                .to_str()
                .ok()?
                .split(',')
                .next()
                .map(str::trim)
        })
        .flatten()
        .filter(|ip| !ip.is_empty());
    forwarded.map_or_else(|| peer.ip().to_string(), str::to_owned)
}

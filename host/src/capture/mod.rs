//! The PostHog-compatible capture API.
//!
//! A request is decoded ([`decode`]), split into events with its token found ([`normalize`]),
//! mapped to a team, encoded and appended to the durable queue. Only after the queue has
//! committed does the client get `200 {"status":1}` (or `204` for `?beacon=1`).
//! [`v1`] serves the newer `POST /i/v1/analytics/events` with per-event results.

mod decode;
mod error;
mod lzstring;
mod normalize;
mod time;
mod v1;

pub use decode::{Decoded, Input, decode};
pub use error::CaptureError;
pub use normalize::{NewEvent, RequestContext, encode, normalize};

use crate::config::{CaptureConfig, Token};
use crate::ingest::Append;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on, post};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tower_http::cors::CorsLayer;

/// What a capture path is for; decides its body limit and how a single event is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// Single events or small batches (`max_event_body_bytes`).
    Event,
    /// Like `Event`, but a single event is a `$identify`.
    Engage,
    /// Server-side SDK batches (`max_batch_body_bytes`).
    Batch,
    /// Session recordings (`max_recording_body_bytes`).
    Recording,
}

const PATHS: [(&str, Endpoint); 7] = [
    ("/e", Endpoint::Event),
    ("/capture", Endpoint::Event),
    ("/track", Endpoint::Event),
    ("/engage", Endpoint::Engage),
    ("/i/v0/e", Endpoint::Event),
    ("/batch", Endpoint::Batch),
    ("/s", Endpoint::Recording),
];

/// Bytes of an oversized body read and thrown away before giving up on the connection.
const MAX_DISCARD_BYTES: usize = 64 * 1024 * 1024;

/// What capture handlers share.
pub struct CaptureState {
    teams: HashMap<Token, u64>,
    queue: Arc<dyn Append>,
    limits: CaptureConfig,
}

impl CaptureState {
    /// Capture for the given token → team map, appending to `queue`.
    pub fn new(teams: HashMap<Token, u64>, queue: Arc<dyn Append>, limits: CaptureConfig) -> Self {
        Self {
            teams,
            queue,
            limits,
        }
    }

    /// The team of a token.
    fn team(&self, token: &str) -> Result<u64, CaptureError> {
        self.teams
            .get(token)
            .copied()
            .ok_or(CaptureError::UnknownToken)
    }

    /// Encodes `events` for the team of `token` and appends them durably.
    async fn enqueue(&self, token: &str, events: &[NewEvent]) -> Result<(), CaptureError> {
        let team_id = self.team(token)?;
        let count = events.len() as u64;
        let payload = normalize::encode(events, team_id)?;
        self.queue.append(team_id, count, payload).await?;
        metrics::counter!("sluice_capture_events_total", "team" => team_id.to_string())
            .increment(count);
        Ok(())
    }
}

/// The capture routes: every path with and without a trailing slash, for GET, POST and OPTIONS,
/// with CORS that mirrors the request's origin and headers and allows credentials.
pub fn routes(state: Arc<CaptureState>) -> Router {
    let mut router = Router::new();
    for (path, endpoint) in PATHS {
        let handler = on(
            MethodFilter::GET.or(MethodFilter::POST),
            move |state: State<Arc<CaptureState>>,
                  peer: ConnectInfo<SocketAddr>,
                  query: Query<CaptureQuery>,
                  method: Method,
                  headers: HeaderMap,
                  body: Body| {
                capture(state, peer, query, method, headers, body, endpoint)
            },
        )
        .options(|| async { axum::Json(json!({ "status": 1 })) });
        router = router
            .route(path, handler.clone())
            .route(&format!("{path}/"), handler);
    }
    router
        .route(v1::PATH, post(v1::capture))
        .layer(CorsLayer::very_permissive())
        .with_state(state)
}

/// Query parameters capture understands.
#[derive(Debug, Default, Deserialize)]
pub struct CaptureQuery {
    token: Option<String>,
    api_key: Option<String>,
    compression: Option<String>,
    data: Option<String>,
    beacon: Option<String>,
    #[serde(rename = "_")]
    sent_at: Option<String>,
}

async fn capture(
    State(state): State<Arc<CaptureState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<CaptureQuery>,
    method: Method,
    headers: HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Response {
    let beacon = query.beacon.as_deref() == Some("1");
    match accept(
        &state,
        peer,
        query,
        method == Method::GET,
        &headers,
        body,
        endpoint,
    )
    .await
    {
        Ok(()) if beacon => StatusCode::NO_CONTENT.into_response(),
        Ok(()) => axum::Json(json!({ "status": 1 })).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn accept(
    state: &CaptureState,
    peer: SocketAddr,
    query: CaptureQuery,
    get: bool,
    headers: &HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Result<(), CaptureError> {
    let limit = match endpoint {
        Endpoint::Event | Endpoint::Engage => state.limits.max_event_body_bytes,
        Endpoint::Batch => state.limits.max_batch_body_bytes,
        Endpoint::Recording => state.limits.max_recording_body_bytes,
    };
    let bytes = read_body(body, limit).await?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let input = decode::Input {
        get,
        body: &bytes,
        content_type: header("content-type"),
        content_encoding: header("content-encoding"),
        query_data: query.data.as_deref(),
        query_compression: query.compression.as_deref(),
    };
    let decoded = decode::decode(&input, limit)?;
    let form_sent_at = decoded.form.sent_at.as_deref().and_then(|s| {
        time::parse_epoch_digits(s).or_else(|| time::parse_time(&Value::String(s.to_owned())))
    });
    let ctx = RequestContext {
        now_ms: crate::store::now_ms(),
        outer_token: query.token.or(query.api_key).or(decoded.form.token),
        outer_sent_at: query
            .sent_at
            .as_deref()
            .and_then(time::parse_epoch_digits)
            .or(form_sent_at),
        ip: Some(client_ip(peer, headers, state.limits.trust_forwarded_for)),
        engage: endpoint == Endpoint::Engage,
    };
    let normalized = normalize(decoded.payload, &ctx)?;
    state.enqueue(&normalized.token, &normalized.events).await
}

/// Reads at most `limit` bytes of body. A larger body is read on and discarded (up to
/// [`MAX_DISCARD_BYTES`]) so that the client, still uploading, receives the `413` instead of a
/// reset connection; memory use stays bounded by `limit` either way.
pub(crate) async fn read_body(mut body: Body, limit: usize) -> Result<Vec<u8>, CaptureError> {
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

pub(crate) fn client_ip(
    peer: SocketAddr,
    headers: &HeaderMap,
    trust_forwarded_for: bool,
) -> String {
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

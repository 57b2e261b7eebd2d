//! The PostHog-compatible capture API.
//!
//! A request is read within capture's memory [`budget`], decoded ([`decode`]) on a decoder
//! thread (never on the async threads that answer other requests), split into events with its
//! token found ([`normalize`]), mapped to a team, encoded and appended to the durable queue.
//! Only after the queue has committed does the client get `200 {"status":1}` (or `204` for
//! `?beacon=1`).
//! [`v1`] serves the newer `POST /i/v1/analytics/events` with per-event results.

mod budget;
mod decode;
mod error;
mod lzstring;
pub mod normalize;
pub mod time;
mod v1;

pub use decode::{Decoded, Input, decode};

use budget::{Budget, Reservation};
pub use error::CaptureError;
pub use normalize::{NewEvent, RequestContext, encode, normalize};

use crate::config::CaptureConfig;
use crate::deployment::Current;
use crate::ingest::{Append, Appended};
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on, post};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};
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
    deployment: Arc<Current>,
    queue: Arc<dyn Append>,
    limits: CaptureConfig,
    budget: Budget,
}

/// A request body read within the budget, with what decoding needs from the rest of the
/// request.
struct Received {
    bytes: Vec<u8>,
    held: Reservation,
    get: bool,
    content_type: Option<String>,
    content_encoding: Option<String>,
    query_data: Option<String>,
    query_compression: Option<String>,
}

impl Received {
    fn input(&self) -> decode::Input<'_> {
        decode::Input {
            get: self.get,
            body: &self.bytes,
            content_type: self.content_type.as_deref(),
            content_encoding: self.content_encoding.as_deref(),
            query_data: self.query_data.as_deref(),
            query_compression: self.query_compression.as_deref(),
        }
    }
}

impl CaptureState {
    /// Capture for the tokens of the deployment in force (read per request), appending to
    /// `queue`.
    pub fn new(deployment: Arc<Current>, queue: Arc<dyn Append>, limits: CaptureConfig) -> Self {
        let decoders = std::thread::available_parallelism().map_or(2, |n| n.get() * 2);
        Self {
            deployment,
            queue,
            budget: Budget::new(limits.max_in_flight_bytes, decoders),
            limits,
        }
    }

    /// Reads `body` (at most `limit` bytes) within the budget.
    async fn receive(&self, body: Body, limit: usize) -> Result<Received, CaptureError> {
        let mut held = self.budget.reservation();
        let bytes = read_body(body, limit, &mut held).await?;
        metrics::gauge!("sluice_capture_in_flight_bytes").set(self.budget.in_flight() as f64);
        Ok(Received {
            bytes,
            held,
            get: false,
            content_type: None,
            content_encoding: None,
            query_data: None,
            query_compression: None,
        })
    }

    /// Decodes `received` on a decoder thread: its JSON text, then (once what the text and the
    /// parsed payload, later the payload and its encoding, will hold is reserved: about twice
    /// the text, in place of the body) the payload, which `then` turns into events for the
    /// queue. Appends them, and answers what `then` made
    /// once the queue holds them.
    async fn decode_and_append<T: Send + 'static>(
        self: &Arc<Self>,
        mut received: Received,
        limit: usize,
        then: impl FnOnce(&CaptureState, Decoded) -> Result<(T, Option<Appended>), CaptureError>
        + Send
        + 'static,
    ) -> Result<T, CaptureError> {
        let decoder = self.budget.decoder().await?;
        let state = self.clone();
        let decoded = tokio::task::spawn_blocking(move || {
            let (text, form) = decode::decode_text(&received.input(), limit)?;
            received.held.grow(text.len().saturating_mul(2))?;
            received.held.release(received.bytes.len());
            received.bytes = Vec::new();
            let payload = decode::parse(&text)?;
            drop(text);
            let made = then(&state, Decoded { payload, form })?;
            Ok::<_, CaptureError>((made, received.held))
        })
        .await
        .map_err(|_| CaptureError::Internal)?;
        drop(decoder);
        let ((made, appended), held) = decoded?;
        if let Some(appended) = appended {
            let (team, events) = (appended.team_id, appended.events);
            // History being migrated is kept out of the live rates.
            let counter = if appended.historical {
                "sluice_capture_historical_events_total"
            } else {
                "sluice_capture_events_total"
            };
            self.queue.append(appended).await?;
            metrics::counter!(counter, "team" => team.to_string()).increment(events);
        }
        drop(held);
        metrics::gauge!("sluice_capture_in_flight_bytes").set(self.budget.in_flight() as f64);
        Ok(made)
    }

    /// The team of a token, in the deployment in force.
    fn team(&self, token: &str) -> Result<u64, CaptureError> {
        self.deployment
            .get()
            .teams
            .get(token)
            .copied()
            .ok_or(CaptureError::UnknownToken)
    }

    /// Encodes `events` for the team of `token`.
    /// Encodes `events` for the team of `token`; `historical` if the request said
    /// `historical_migration`.
    fn prepare(
        &self,
        token: &str,
        events: &[NewEvent],
        historical: bool,
    ) -> Result<Appended, CaptureError> {
        let team_id = self.team(token)?;
        Ok(Appended {
            team_id,
            token: token.to_owned(),
            events: events.len() as u64,
            payload: normalize::encode(events, team_id)?,
            historical,
        })
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
    state: &Arc<CaptureState>,
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
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let received = Received {
        get,
        content_type: header("content-type"),
        content_encoding: header("content-encoding"),
        query_data: query.data,
        query_compression: query.compression,
        ..state.receive(body, limit).await?
    };
    let outer_token = query.token.or(query.api_key);
    let query_sent_at = query.sent_at.as_deref().and_then(time::parse_epoch_digits);
    let ip = client_ip(peer, headers, state.limits.trust_forwarded_for);
    state
        .decode_and_append(received, limit, move |state, decoded| {
            let form_sent_at = decoded.form.sent_at.as_deref().and_then(|s| {
                time::parse_epoch_digits(s)
                    .or_else(|| time::parse_time(&Value::String(s.to_owned())))
            });
            let ctx = RequestContext {
                now_ms: crate::store::now_ms(),
                outer_token: outer_token.or(decoded.form.token),
                outer_sent_at: query_sent_at.or(form_sent_at),
                ip: Some(ip),
                engage: endpoint == Endpoint::Engage,
            };
            let normalized = normalize(decoded.payload, &ctx)?;
            Ok((
                (),
                Some(state.prepare(
                    &normalized.token,
                    &normalized.events,
                    normalized.historical,
                )?),
            ))
        })
        .await
}

/// Reads at most `limit` bytes of body, each byte kept reserved in `held`. A larger body is
/// read on and discarded (up to [`MAX_DISCARD_BYTES`]) so that the client, still uploading,
/// receives the `413` instead of a reset connection; memory use stays bounded by `limit` either
/// way. Past the budget, what the body held is given back and the rest is read and discarded the
/// same way, and the answer is [`CaptureError::Busy`].
async fn read_body(
    mut body: Body,
    limit: usize,
    held: &mut Reservation,
) -> Result<Vec<u8>, CaptureError> {
    let mut kept = Vec::new();
    let mut seen = 0usize;
    let mut busy = false;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| CaptureError::InvalidPayload(format!("cannot read the body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen <= limit && !busy {
            if held.grow(data.len()).is_ok() {
                kept.extend_from_slice(&data);
            } else {
                // Past the budget: give back what this body holds and read the rest without
                // keeping it, so the client reads the `503` instead of a reset connection.
                busy = true;
                held.release(kept.len());
                kept = Vec::new();
            }
        } else if seen > limit.saturating_add(MAX_DISCARD_BYTES) {
            break;
        }
    }
    if seen > limit {
        return Err(CaptureError::PayloadTooLarge(limit));
    }
    if busy {
        return Err(CaptureError::Busy);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::Services;
    use crate::config::Token;
    use crate::deployment::Deployment;
    use crate::ingest::{AppendError, Appending};
    use crate::installations::Installed;
    use std::collections::HashMap;

    /// An ingest that refuses every append with the same error.
    struct Refusing(AppendError);

    impl Append for Refusing {
        fn append(&self, _: Appended) -> Appending<'_> {
            let error = self.0.clone();
            Box::pin(async move { Err(error) })
        }

        fn depth(&self) -> u64 {
            0
        }
    }

    /// Posts one event over HTTP to capture on an ingest that answers `error`; returns the
    /// status, the `Retry-After` header and the body.
    async fn post_refused(error: AppendError) -> (u16, Option<String>, Value) {
        let teams = HashMap::from([(Token::parse("phc_one").unwrap(), 1)]);
        let deployment = Deployment::new(teams, Installed::default(), Services::detached());
        let state = CaptureState::new(
            Arc::new(Current::new(deployment)),
            Arc::new(Refusing(error)),
            CaptureConfig::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = routes(Arc::new(state)).into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let response = reqwest::Client::new()
            .post(format!("http://{addr}/batch"))
            .body(r#"{"api_key":"phc_one","batch":[{"event":"e","distinct_id":"u"}]}"#)
            .send()
            .await
            .unwrap();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap();
        (status, retry_after, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_full_or_failing_queue_answers_503_with_retry_after_and_a_stable_code() {
        for (error, code) in [
            (AppendError::Full(1_000_000), "queue_full"),
            (
                AppendError::Unavailable("disk I/O error".into()),
                "queue_unavailable",
            ),
        ] {
            let (status, retry_after, body) = post_refused(error).await;
            assert_eq!(status, 503, "{body}");
            assert!(
                retry_after.is_some_and(|s| s.parse::<u64>().is_ok()),
                "{code}"
            );
            assert_eq!(body["code"], code, "{body}");
        }
    }
}

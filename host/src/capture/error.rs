//! Capture errors and their HTTP responses: each variant maps to its status explicitly.

use crate::ingest::AppendError;
use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Seconds a client is asked to wait after a `503`.
const RETRY_AFTER_SECONDS: &str = "1";

/// Why a capture request was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CaptureError {
    /// The body (or its decompressed form) is larger than allowed.
    #[error("payload too large: more than {0} bytes")]
    PayloadTooLarge(usize),
    /// An event is larger than the ingest takes.
    #[error("{0}")]
    EventTooLarge(String),
    /// The body could not be read, decompressed or parsed.
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
    /// The payload holds no events.
    #[error("the batch is empty")]
    EmptyBatch,
    /// A batch item is not an event object.
    #[error("batch item {0} is not an event object")]
    InvalidEvent(usize),
    /// An event has no name.
    #[error("event {0} has no `event` name")]
    MissingEventName(usize),
    /// An event has no usable distinct id.
    #[error(
        "event {0} has no distinct id (`distinct_id`, `$distinct_id` or `properties.distinct_id`)"
    )]
    MissingDistinctId(usize),
    /// An event's `uuid` is not a UUID.
    #[error("event {0} has an invalid `uuid`")]
    InvalidUuid(usize),
    /// An event's `properties`, `$set` or `$set_once` is not an object.
    #[error("event {0}: `{1}` must be a JSON object")]
    InvalidProperties(usize, &'static str),
    /// A session-recording event has no `$session_id`.
    #[error("event {0} is a `$snapshot` without `properties.$session_id`")]
    MissingSessionId(usize),
    /// No project token was given.
    #[error("no project token (`api_key`, `token`, `$token` or `properties.token`)")]
    MissingToken,
    /// The token is malformed.
    #[error("the project token is not valid ({0})")]
    InvalidToken(&'static str),
    /// The token belongs to no team.
    #[error("unknown project token")]
    UnknownToken,
    /// Events of one request carry different tokens.
    #[error("events in one request carry different project tokens")]
    InconsistentToken,
    /// Decoding failed in a way it never should (a bug); the request was not taken.
    #[error("internal error while decoding the request")]
    Internal,
    /// Capture holds as many bytes in flight as it may; retry shortly.
    #[error("capture is busy with other requests, please retry")]
    Busy,
    /// The queue cannot take the events now.
    #[error("unable to store the events, please retry: {0}")]
    QueueFull(String),
    /// The queue failed to store the events durably.
    #[error("unable to store the events, please retry: {0}")]
    QueueUnavailable(String),
}

impl CaptureError {
    /// The HTTP status and stable machine-readable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            CaptureError::PayloadTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            CaptureError::EventTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "event_too_large"),
            CaptureError::InvalidPayload(_) => (StatusCode::BAD_REQUEST, "invalid_payload"),
            CaptureError::EmptyBatch => (StatusCode::BAD_REQUEST, "empty_batch"),
            CaptureError::InvalidEvent(_) => (StatusCode::BAD_REQUEST, "invalid_event"),
            CaptureError::MissingEventName(_) => (StatusCode::BAD_REQUEST, "missing_event_name"),
            CaptureError::MissingDistinctId(_) => (StatusCode::BAD_REQUEST, "missing_distinct_id"),
            CaptureError::InvalidUuid(_) => (StatusCode::BAD_REQUEST, "invalid_uuid"),
            CaptureError::InvalidProperties(..) => (StatusCode::BAD_REQUEST, "invalid_properties"),
            CaptureError::MissingSessionId(_) => (StatusCode::BAD_REQUEST, "missing_session_id"),
            CaptureError::MissingToken => (StatusCode::UNAUTHORIZED, "missing_token"),
            CaptureError::InvalidToken(_) => (StatusCode::UNAUTHORIZED, "invalid_token"),
            CaptureError::UnknownToken => (StatusCode::UNAUTHORIZED, "unknown_token"),
            CaptureError::InconsistentToken => (StatusCode::UNAUTHORIZED, "inconsistent_token"),
            CaptureError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            CaptureError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            CaptureError::QueueFull(_) => (StatusCode::SERVICE_UNAVAILABLE, "queue_full"),
            CaptureError::QueueUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable")
            }
        }
    }
}

impl From<AppendError> for CaptureError {
    fn from(error: AppendError) -> Self {
        match error {
            AppendError::Full(_) => CaptureError::QueueFull(error.to_string()),
            AppendError::Unavailable(_) => CaptureError::QueueUnavailable(error.to_string()),
            AppendError::TooLarge(_) => CaptureError::EventTooLarge(error.to_string()),
        }
    }
}

/// Logs a refused request, at most one line a second (with how many were refused since the last
/// line), so a flood of bad requests cannot flood the log; `sluice_capture_errors_total` counts
/// them all.
fn log_refusal(code: &str, detail: &str) {
    static LAST: Mutex<(Option<Instant>, u64)> = Mutex::new((None, 0));
    let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
    let now = Instant::now();
    if last
        .0
        .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
    {
        last.1 += 1;
        return;
    }
    let unlogged = std::mem::take(&mut last.1);
    last.0 = Some(now);
    drop(last);
    tracing::warn!(
        code,
        unlogged_since_last_line = unlogged,
        "capture refused a request: {detail}"
    );
}

impl IntoResponse for CaptureError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        metrics::counter!("sluice_capture_errors_total", "code" => code).increment(1);
        let detail = self.to_string();
        log_refusal(code, &detail);
        let body = Json(json!({ "code": code, "detail": detail }));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let retry_after = [(header::RETRY_AFTER, RETRY_AFTER_SECONDS)];
            return (status, retry_after, body).into_response();
        }
        (status, body).into_response()
    }
}

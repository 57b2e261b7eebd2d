//! `[capture]`: body limits and client addresses.

use serde::{Deserialize, Serialize};

/// `[capture]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Largest request body for single-event paths (`/e`, `/capture`, `/i/v0/e`...), in bytes,
    /// before and after decompression.
    pub max_event_body_bytes: usize,
    /// Largest request body for `/batch` and `/i/v1/analytics/events`, in bytes, before and
    /// after decompression.
    pub max_batch_body_bytes: usize,
    /// Largest request body for session recordings (`/s`), in bytes, before and after
    /// decompression.
    pub max_recording_body_bytes: usize,
    /// Take the client IP from the first `X-Forwarded-For` entry (only behind a trusted proxy).
    pub trust_forwarded_for: bool,
    /// Most bytes all requests in flight may hold together (bodies as they arrive, decoded
    /// text, parsed events, payloads waiting for the queue); a request past it is answered
    /// `503` with `Retry-After`.
    pub max_in_flight_bytes: usize,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            max_event_body_bytes: 2 * 1024 * 1024,
            max_batch_body_bytes: 20 * 1024 * 1024,
            max_recording_body_bytes: 25 * 1024 * 1024,
            trust_forwarded_for: false,
            max_in_flight_bytes: 256 * 1024 * 1024,
        }
    }
}

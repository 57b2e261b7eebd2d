//! `POST /i/v1/analytics/events`: the newer capture protocol (posthog-python's "v1" mode).
//!
//! The token comes as `Authorization: Bearer <token>`; the body is
//! `{"created_at", "batch": [...], "historical_migration"?}` (optionally gzip, deflate or zstd);
//! each event carries `uuid`, `options` (typed flags) and may carry `session_id`/`window_id`.
//! The response is per event, keyed by uuid: `{"results": {uuid: {"result": "ok"}}}`, or
//! `{"result": "drop", "details": ...}` for an event that cannot be accepted while the others
//! are. The event is mapped back to the legacy shape so that the rest of sluice sees one shape.

use super::{CaptureState, Received, RequestContext, client_ip, normalize, time};
use crate::capture::CaptureError;
use crate::ingest::Appended;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::net::SocketAddr;
use std::sync::Arc;

/// The route.
pub const PATH: &str = "/i/v1/analytics/events";

/// `options` fields and the legacy properties they stand for.
const OPTIONS: [(&str, &str); 4] = [
    ("cookieless_mode", "$cookieless_mode"),
    ("disable_skew_correction", "$ignore_sent_at"),
    ("product_tour_id", "$product_tour_id"),
    ("process_person_profile", "$process_person_profile"),
];

/// Top-level event fields and the legacy properties they stand for.
const TOP_LEVEL: [(&str, &str); 2] = [("session_id", "$session_id"), ("window_id", "$window_id")];

/// Handles one v1 request.
pub async fn capture(
    State(state): State<Arc<CaptureState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match accept(&state, peer, &headers, body).await {
        Ok(results) => axum::Json(json!({ "results": results })).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn accept(
    state: &Arc<CaptureState>,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Body,
) -> Result<Map<String, Value>, CaptureError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let token = header("authorization")
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or(CaptureError::MissingToken)?
        .to_owned();
    crate::config::Token::parse(&token).map_err(CaptureError::InvalidToken)?;
    state.team(&token)?;

    let limit = state.limits.max_batch_body_bytes;
    let received = Received {
        content_encoding: header("content-encoding").map(str::to_owned),
        ..state.receive(body, limit).await?
    };
    let sent_at = header("posthog-request-timestamp")
        .and_then(|t| time::parse_time(&Value::String(t.to_owned())));
    let sdk = header("posthog-sdk-info")
        .and_then(|info| info.split_once('/'))
        .map(|(lib, version)| (lib.to_owned(), version.to_owned()));
    let ctx = RequestContext {
        now_ms: crate::store::now_ms(),
        outer_token: Some(token.clone()),
        outer_sent_at: sent_at,
        ip: Some(client_ip(peer, headers, state.limits.trust_forwarded_for)),
        engage: false,
    };
    state
        .decode_and_append(received, limit, move |state, decoded| {
            let sdk = sdk
                .as_ref()
                .map(|(lib, version)| (lib.as_str(), version.as_str()));
            events(state, &token, decoded.payload, &ctx, sdk)
        })
        .await
}

/// The per-event results of a v1 payload, and its accepted events for the queue.
fn events(
    state: &CaptureState,
    token: &str,
    payload: Value,
    ctx: &RequestContext,
    sdk: Option<(&str, &str)>,
) -> Result<(Map<String, Value>, Option<Appended>), CaptureError> {
    let Value::Object(mut envelope) = payload else {
        return Err(CaptureError::InvalidPayload(
            "expected {\"batch\": [...]}".into(),
        ));
    };
    let Some(Value::Array(items)) = envelope.remove("batch") else {
        return Err(CaptureError::InvalidPayload(
            "`batch` must be an array".into(),
        ));
    };
    if items.is_empty() {
        return Err(CaptureError::EmptyBatch);
    }
    let historical = envelope.get("historical_migration") == Some(&Value::Bool(true));

    let mut results = Map::new();
    let mut accepted = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Value::Object(item) = item else {
            return Err(CaptureError::InvalidEvent(i));
        };
        // Results are keyed by uuid, so an event without one cannot be answered for.
        let Some(uuid) = item.get("uuid").and_then(Value::as_str).map(str::to_owned) else {
            return Err(CaptureError::InvalidUuid(i));
        };
        match normalize::event(i, legacy_shape(item, sdk), ctx, ctx.outer_sent_at) {
            Ok(event) => {
                results.insert(uuid, json!({ "result": "ok" }));
                accepted.push(event);
            }
            Err(error) => {
                results.insert(
                    uuid,
                    json!({ "result": "drop", "details": error.to_string() }),
                );
            }
        }
    }
    let prepared = if accepted.is_empty() {
        None
    } else {
        Some(state.prepare(token, &accepted, historical)?)
    };
    Ok((results, prepared))
}

/// Maps a v1 event to the legacy shape: `options` and `session_id`/`window_id` back into
/// properties, `properties.$set`/`$set_once` to the top level, `$lib`/`$lib_version` from the
/// `PostHog-Sdk-Info` header.
fn legacy_shape(mut item: Map<String, Value>, sdk: Option<(&str, &str)>) -> Map<String, Value> {
    let mut properties = match item.remove("properties") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(properties)) => properties,
        Some(other) => {
            // Left for the normalizer to refuse with its usual reason.
            item.insert("properties".into(), other);
            return item;
        }
    };
    for key in ["$set", "$set_once"] {
        if let Some(value) = properties.remove(key) {
            item.insert(key.into(), value);
        }
    }
    if let Some(Value::Object(options)) = item.remove("options") {
        for (option, property) in OPTIONS {
            if let Some(value) = options.get(option) {
                properties.insert(property.into(), value.clone());
            }
        }
    }
    for (field, property) in TOP_LEVEL {
        if let Some(value) = item.remove(field) {
            properties.insert(property.into(), value);
        }
    }
    if let Some((lib, version)) = sdk {
        properties.entry("$lib").or_insert_with(|| lib.into());
        properties
            .entry("$lib_version")
            .or_insert_with(|| version.into());
    }
    item.insert("properties".into(), Value::Object(properties));
    item
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_events_are_mapped_back_to_the_legacy_shape() {
        let item = json!({
            "event": "e", "uuid": "u", "distinct_id": "d", "timestamp": "2024-01-01T00:00:00Z",
            "session_id": "s1", "window_id": "w1",
            "options": {"disable_skew_correction": true, "process_person_profile": false},
            "properties": {"k": 1, "$set": {"a": 1}, "$set_once": {"b": 2}}
        });
        let Value::Object(item) = item else { panic!() };
        let legacy = legacy_shape(item, Some(("posthog-python", "7.91.1")));
        assert_eq!(
            Value::Object(legacy),
            json!({
                "event": "e", "uuid": "u", "distinct_id": "d", "timestamp": "2024-01-01T00:00:00Z",
                "$set": {"a": 1}, "$set_once": {"b": 2},
                "properties": {
                    "k": 1, "$ignore_sent_at": true, "$process_person_profile": false,
                    "$session_id": "s1", "$window_id": "w1",
                    "$lib": "posthog-python", "$lib_version": "7.91.1"
                }
            })
        );
    }
}

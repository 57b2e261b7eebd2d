//! From a decoded payload to events ready for the queue: shapes, token, ids, time.

use super::error::CaptureError;
use super::time::{self, TimeInputs};
use serde_json::{Map, Value};
use sluice_abi::wire::{BatchWriter, EventFields};
use uuid::Uuid;

/// Longest distinct id kept; longer ones are cut, as PostHog does.
pub const MAX_DISTINCT_ID_CHARS: usize = 200;

/// What the request itself says, apart from its JSON payload.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// Server receive time, epoch milliseconds.
    pub now_ms: i64,
    /// Token from outside the payload: query `token`/`api_key`, then form `api_key`/`token`.
    pub outer_token: Option<String>,
    /// `sent_at` from outside the payload: query `_`, then form `sent_at`.
    pub outer_sent_at: Option<i64>,
    /// Client IP.
    pub ip: Option<String>,
    /// `/engage`: a single event there is a `$identify`.
    pub engage: bool,
}

/// Events of one request, all of one token.
#[derive(Debug)]
pub struct Normalized {
    /// The project token.
    pub token: String,
    /// The events.
    pub events: Vec<NewEvent>,
    /// Whether the batch said `historical_migration: true` (history, not live traffic).
    pub historical: bool,
}

/// One event as capture stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Stable identity.
    pub uuid: Uuid,
    /// Event name.
    pub event: String,
    /// Distinct id.
    pub distinct_id: String,
    /// Event time, epoch milliseconds.
    pub timestamp_ms: i64,
    /// Client IP.
    pub ip: Option<String>,
    /// Properties JSON object text.
    pub properties: String,
    /// `$set` JSON object text.
    pub set: Option<String>,
    /// `$set_once` JSON object text.
    pub set_once: Option<String>,
}

impl NewEvent {
    /// The event's fields for `team_id`, ready to encode.
    pub fn fields(&self, team_id: u64) -> EventFields<'_> {
        EventFields {
            uuid: *self.uuid.as_bytes(),
            team_id,
            timestamp_ms: self.timestamp_ms,
            event: &self.event,
            distinct_id: &self.distinct_id,
            ip: self.ip.as_deref(),
            properties: &self.properties,
            set: self.set.as_deref(),
            set_once: self.set_once.as_deref(),
        }
    }
}

/// Encodes events of `team_id` as one queue payload (a batch in the wire encoding).
pub fn encode(events: &[NewEvent], team_id: u64) -> Result<Vec<u8>, CaptureError> {
    let bytes = events.iter().map(|e| e.properties.len() + 128).sum();
    let mut batch = BatchWriter::with_capacity(bytes);
    for event in events {
        batch
            .push(&event.fields(team_id))
            .map_err(|e| CaptureError::InvalidPayload(e.to_string()))?;
    }
    Ok(batch.finish())
}

/// Splits a payload into events and finds its token.
///
/// Shapes: one event object, a JSON array of events, or `{"batch": [...], "api_key", "sent_at"}`.
/// Token order (PostHog's): query `token`/`api_key`, then the batch's `api_key`/`token`, then each
/// event's `$token`, `token`, `api_key`, `properties.token`, which must all agree.
pub fn normalize(payload: Value, ctx: &RequestContext) -> Result<Normalized, CaptureError> {
    let (items, envelope) = match payload {
        Value::Array(items) => (items, Map::new()),
        Value::Object(mut object) => match object.remove("batch") {
            Some(Value::Array(items)) => (items, object),
            Some(_) => {
                return Err(CaptureError::InvalidPayload(
                    "`batch` must be an array".into(),
                ));
            }
            None => {
                if ctx.engage {
                    object.insert("event".into(), Value::String("$identify".into()));
                }
                (vec![Value::Object(object)], Map::new())
            }
        },
        _ => {
            return Err(CaptureError::InvalidPayload(
                "expected an event object or an array of events".into(),
            ));
        }
    };
    if items.is_empty() {
        return Err(CaptureError::EmptyBatch);
    }
    let items: Vec<Map<String, Value>> = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(object) if !object.is_empty() => Ok(object),
            _ => Err(CaptureError::InvalidEvent(i)),
        })
        .collect::<Result<_, _>>()?;

    let token = find_token(ctx, &envelope, &items)?;
    let historical = envelope.get("historical_migration") == Some(&Value::Bool(true));
    let batch_sent_at = envelope.get("sent_at").and_then(time::parse_time);
    let events = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| event(i, item, ctx, ctx.outer_sent_at.or(batch_sent_at)))
        .collect::<Result<_, _>>()?;
    Ok(Normalized {
        token,
        events,
        historical,
    })
}

fn find_token(
    ctx: &RequestContext,
    envelope: &Map<String, Value>,
    items: &[Map<String, Value>],
) -> Result<String, CaptureError> {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let outer = ctx
        .outer_token
        .clone()
        .or_else(|| text(envelope.get("api_key")))
        .or_else(|| text(envelope.get("token")));
    let token = match outer {
        Some(token) => token,
        None => {
            let mut found: Option<String> = None;
            for item in items {
                let properties = item.get("properties").and_then(Value::as_object);
                let token = text(item.get("$token"))
                    .or_else(|| text(item.get("token")))
                    .or_else(|| text(item.get("api_key")))
                    .or_else(|| text(properties.and_then(|p| p.get("token"))));
                match (&found, token) {
                    (_, None) => {}
                    (None, Some(token)) => found = Some(token),
                    (Some(first), Some(token)) if *first != token => {
                        return Err(CaptureError::InconsistentToken);
                    }
                    (Some(_), Some(_)) => {}
                }
            }
            found.ok_or(CaptureError::MissingToken)?
        }
    };
    crate::config::Token::parse(&token).map_err(CaptureError::InvalidToken)?;
    Ok(token)
}

/// Normalizes event `i` of a request: name, distinct id, uuid, properties, `$set`/`$set_once`,
/// and time (`sent_at` is the request's, used when the event has none of its own).
pub fn event(
    i: usize,
    mut item: Map<String, Value>,
    ctx: &RequestContext,
    sent_at: Option<i64>,
) -> Result<NewEvent, CaptureError> {
    let name = match item.remove("event") {
        Some(Value::String(name)) if !name.trim().is_empty() => name,
        _ => return Err(CaptureError::MissingEventName(i)),
    };
    let properties = match item.remove("properties") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(properties)) => properties,
        Some(_) => return Err(CaptureError::InvalidProperties(i, "properties")),
    };
    let has_session =
        matches!(properties.get("$session_id"), Some(Value::String(id)) if !id.is_empty());
    if name == crate::store::SNAPSHOT_EVENT && !has_session {
        return Err(CaptureError::MissingSessionId(i));
    }
    let distinct_id = [
        item.get("$distinct_id"),
        properties.get("distinct_id"),
        item.get("distinct_id"),
    ]
    .into_iter()
    .flatten()
    .find_map(distinct_id_text)
    .ok_or(CaptureError::MissingDistinctId(i))?;
    let uuid = match item.get("uuid") {
        None | Some(Value::Null) => Uuid::now_v7(),
        Some(Value::String(text)) => {
            Uuid::parse_str(text).map_err(|_| CaptureError::InvalidUuid(i))?
        }
        Some(_) => return Err(CaptureError::InvalidUuid(i)),
    };
    let object_text = |key: &'static str| match item.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value @ Value::Object(_)) => Ok(Some(value.to_string())),
        Some(_) => Err(CaptureError::InvalidProperties(i, key)),
    };
    let set = object_text("$set")?;
    let set_once = object_text("$set_once")?;
    let inputs = TimeInputs {
        timestamp: item.get("timestamp").and_then(time::parse_time),
        sent_at: item.get("sent_at").and_then(time::parse_time).or(sent_at),
        offset: item.get("offset").and_then(Value::as_i64),
        ignore_sent_at: properties.get("$ignore_sent_at") == Some(&Value::Bool(true)),
    };
    Ok(NewEvent {
        uuid,
        event: name,
        distinct_id,
        timestamp_ms: time::event_time(ctx.now_ms, inputs),
        ip: ctx.ip.clone(),
        properties: Value::Object(properties).to_string(),
        set,
        set_once,
    })
}

/// A distinct id as text, as PostHog's capture makes it: strings as they are, numbers and
/// booleans stringified, NUL characters replaced by U+FFFD, cut to 200 chars (counted in
/// `sluice_capture_distinct_ids_truncated_total`); blank or structured values do not count.
fn distinct_id_text(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.replace('\0', "\u{FFFD}"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    if text.trim().is_empty() {
        return None;
    }
    if text.len() <= MAX_DISTINCT_ID_CHARS || text.chars().count() <= MAX_DISTINCT_ID_CHARS {
        return Some(text);
    }
    metrics::counter!("sluice_capture_distinct_ids_truncated_total").increment(1);
    Some(text.chars().take(MAX_DISTINCT_ID_CHARS).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> RequestContext {
        RequestContext {
            now_ms: 1_700_000_000_000,
            ip: Some("10.0.0.1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_server_sdk_batch_is_split_and_its_token_found() {
        let payload = json!({
            "api_key": "phc_x",
            "sent_at": "2023-11-14T22:13:20Z",
            "batch": [
                {"event": "a", "distinct_id": "u1", "properties": {"k": 1}, "timestamp": "2023-11-14T22:13:19Z"},
                {"event": "b", "properties": {"distinct_id": 42}, "$set": {"plan": "pro"}}
            ]
        });
        let normalized = normalize(payload, &ctx()).unwrap();
        assert_eq!(normalized.token, "phc_x");
        let [a, b] = &normalized.events[..] else {
            panic!()
        };
        assert_eq!(a.distinct_id, "u1");
        assert_eq!(
            a.timestamp_ms,
            1_700_000_000_000 - 1_000,
            "skew-corrected against sent_at"
        );
        assert_eq!(a.properties, r#"{"k":1}"#);
        assert_eq!(b.distinct_id, "42");
        assert_eq!(b.set.as_deref(), Some(r#"{"plan":"pro"}"#));
        assert_eq!(b.ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(a.uuid.get_version_num(), 7);
    }

    #[test]
    fn client_uuids_are_kept_and_invalid_ones_refused() {
        let id = "0190d2f5-6bd4-7c3e-9a51-2b1f0e4c8d77";
        let payload = json!({"event": "e", "distinct_id": "u", "uuid": id, "token": "phc_x"});
        assert_eq!(
            normalize(payload, &ctx()).unwrap().events[0]
                .uuid
                .to_string(),
            id
        );
        let payload = json!({"event": "e", "distinct_id": "u", "uuid": "nope", "token": "phc_x"});
        assert_eq!(
            normalize(payload, &ctx()).unwrap_err(),
            CaptureError::InvalidUuid(0)
        );
    }

    #[test]
    fn tokens_follow_posthog_order_and_must_agree() {
        let two = json!([
            {"event": "e", "distinct_id": "u", "properties": {"token": "phc_a"}},
            {"event": "e", "distinct_id": "u", "$token": "phc_b"}
        ]);
        assert_eq!(
            normalize(two.clone(), &ctx()).unwrap_err(),
            CaptureError::InconsistentToken
        );
        let query = RequestContext {
            outer_token: Some("phc_q".into()),
            ..ctx()
        };
        assert_eq!(normalize(two, &query).unwrap().token, "phc_q");
        let none = json!({"event": "e", "distinct_id": "u"});
        assert_eq!(
            normalize(none, &ctx()).unwrap_err(),
            CaptureError::MissingToken
        );
        let personal = json!({"event": "e", "distinct_id": "u", "api_key": "phx_secret"});
        assert_eq!(
            normalize(personal, &ctx()).unwrap_err(),
            CaptureError::InvalidToken("personal_api_key")
        );
    }

    #[test]
    fn bad_events_are_refused_with_their_index() {
        let cases = [
            (json!([]), CaptureError::EmptyBatch),
            (
                json!([{"event": "e", "distinct_id": "u", "token": "phc_x"}, null]),
                CaptureError::InvalidEvent(1),
            ),
            (
                json!({"distinct_id": "u", "token": "phc_x"}),
                CaptureError::MissingEventName(0),
            ),
            (
                json!({"event": "e", "distinct_id": "  ", "token": "phc_x"}),
                CaptureError::MissingDistinctId(0),
            ),
            (
                json!({"event": "e", "distinct_id": "u", "properties": [1], "token": "phc_x"}),
                CaptureError::InvalidProperties(0, "properties"),
            ),
            (
                json!("text"),
                CaptureError::InvalidPayload(
                    "expected an event object or an array of events".into(),
                ),
            ),
        ];
        for (payload, expected) in cases {
            assert_eq!(
                normalize(payload.clone(), &ctx()).unwrap_err(),
                expected,
                "{payload}"
            );
        }
    }

    #[test]
    fn a_single_event_on_engage_becomes_identify() {
        let engage = RequestContext {
            engage: true,
            ..ctx()
        };
        let payload = json!({"distinct_id": "u", "token": "phc_x", "$set": {"email": "a@b.c"}});
        let event = &normalize(payload, &engage).unwrap().events[0];
        assert_eq!(event.event, "$identify");
        assert_eq!(event.set.as_deref(), Some(r#"{"email":"a@b.c"}"#));
    }

    #[test]
    fn long_distinct_ids_are_cut_to_200_chars() {
        let long = "é".repeat(300);
        let payload = json!({"event": "e", "distinct_id": long, "token": "phc_x"});
        assert_eq!(
            normalize(payload, &ctx()).unwrap().events[0]
                .distinct_id
                .chars()
                .count(),
            200
        );
    }
}

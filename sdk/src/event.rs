//! Events as a plugin sees them: a borrowed, lazily decoded [`Event`] and an owned [`EventBuf`].

use crate::{Edit, PluginError};
use serde_json::{Map, Value};
use sluice_abi::object::{self, Entries};
use sluice_abi::patch::Applied;
use sluice_abi::wire::{EventFields, Field, RawEvent};
use std::cell::OnceCell;

/// One event of the batch being processed, borrowed from the host's buffer.
///
/// Reading a field costs only that field: text is validated when read, a single property is
/// found without parsing the others ([`Event::property`]), and the whole `properties` object is
/// parsed only if asked for. Edits made by earlier plugins of the chain are already visible.
#[derive(Debug)]
pub struct Event<'a> {
    raw: RawEvent<'a>,
    applied: OnceCell<Option<Applied>>,
    /// The properties text as sent, validated once.
    sent_properties: OnceCell<&'a str>,
    /// Whether the properties text has escapes (a key could be written escaped).
    escaped: OnceCell<bool>,
    properties: OnceCell<Result<Map<String, Value>, PluginError>>,
}

impl<'a> Event<'a> {
    pub(crate) fn new(raw: RawEvent<'a>) -> Self {
        Self {
            raw,
            applied: OnceCell::new(),
            sent_properties: OnceCell::new(),
            escaped: OnceCell::new(),
            properties: OnceCell::new(),
        }
    }

    fn text(&self, field: Field) -> Option<&'a str> {
        // The host validates events before sending them; a failure here is a host bug.
        self.raw
            .text(field)
            .unwrap_or_else(|e| panic!("sluice host sent a malformed event: {e}"))
    }

    /// The properties and IP with earlier plugins' edits applied, if there are any.
    fn applied(&self) -> Option<&Applied> {
        self.applied
            .get_or_init(|| {
                self.raw
                    .applied()
                    .unwrap_or_else(|e| panic!("sluice host sent a malformed patch: {e}"))
            })
            .as_ref()
    }

    /// The event's UUID in its 16-byte form.
    pub fn uuid_bytes(&self) -> [u8; 16] {
        self.raw.uuid()
    }

    /// The event's UUID as hyphenated lowercase text.
    pub fn uuid(&self) -> String {
        format_uuid(self.raw.uuid())
    }

    /// The team the event belongs to.
    pub fn team_id(&self) -> u64 {
        self.raw.team_id()
    }

    /// When it happened, in epoch milliseconds.
    pub fn timestamp_ms(&self) -> i64 {
        self.raw.timestamp_ms()
    }

    /// The event name, e.g. `$pageview`.
    pub fn name(&self) -> &'a str {
        self.text(Field::Event).unwrap_or_default()
    }

    /// The distinct id of whoever did it.
    pub fn distinct_id(&self) -> &'a str {
        self.text(Field::DistinctId).unwrap_or_default()
    }

    /// The client's IP address, when known.
    pub fn ip(&self) -> Option<&str> {
        match self.applied() {
            Some(applied) => applied.ip.as_deref(),
            None => self.text(Field::Ip),
        }
    }

    /// The properties as JSON text, without parsing them.
    pub fn properties_json(&self) -> &str {
        match self.applied() {
            Some(applied) => &applied.properties,
            None => self
                .sent_properties
                .get_or_init(|| self.text(Field::Properties).unwrap_or("{}")),
        }
    }

    /// One property as JSON text, found without parsing the others (nor building a tree); `None`
    /// if absent.
    pub fn property_json(&self, key: &str) -> Option<&str> {
        let text = self.properties_json();
        let escaped = *self.escaped.get_or_init(|| text.contains('\\'));
        if !escaped && !object::mentions(text, key) {
            return None;
        }
        Entries::parse(text.as_bytes()).ok()?.get(key.as_bytes())
    }

    /// One property, or `None` if absent.
    pub fn property(&self, key: &str) -> Option<Value> {
        serde_json::from_str(self.property_json(key)?).ok()
    }

    /// The properties, parsed on first call.
    pub fn properties(&self) -> Result<&Map<String, Value>, PluginError> {
        self.properties
            .get_or_init(|| parse_object(self.properties_json(), "properties"))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The `$set` person properties as JSON text.
    pub fn set_json(&self) -> Option<&'a str> {
        self.text(Field::Set)
    }

    /// The `$set_once` person properties as JSON text.
    pub fn set_once_json(&self) -> Option<&'a str> {
        self.text(Field::SetOnce)
    }

    /// Edits to return as [`crate::Outcome::Edit`]: cheaper than a replacement, which copies
    /// the whole event back.
    pub fn edit(&self) -> Edit {
        Edit::with_capacity(1024)
    }

    /// An owned, editable copy, to return as [`crate::Outcome::Replace`].
    pub fn to_buf(&self) -> Result<EventBuf, PluginError> {
        let object = |json: Option<&str>, what| json.map(|j| parse_object(j, what)).transpose();
        Ok(EventBuf {
            uuid: self.uuid_bytes(),
            team_id: self.team_id(),
            timestamp_ms: self.timestamp_ms(),
            event: self.name().to_owned(),
            distinct_id: self.distinct_id().to_owned(),
            ip: self.ip().map(str::to_owned),
            properties: self.properties()?.clone(),
            set: object(self.set_json(), "$set")?,
            set_once: object(self.set_once_json(), "$set_once")?,
        })
    }
}

/// An owned event a plugin can edit and return. The host restores `uuid` and `team_id` if they
/// are changed, and records that as a plugin error.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBuf {
    /// UUID bytes.
    pub uuid: [u8; 16],
    /// Team id.
    pub team_id: u64,
    /// Event time in epoch milliseconds.
    pub timestamp_ms: i64,
    /// Event name.
    pub event: String,
    /// Distinct id.
    pub distinct_id: String,
    /// Client IP.
    pub ip: Option<String>,
    /// Properties.
    pub properties: Map<String, Value>,
    /// `$set` person properties.
    pub set: Option<Map<String, Value>>,
    /// `$set_once` person properties.
    pub set_once: Option<Map<String, Value>>,
}

impl EventBuf {
    /// An owned copy of `fields`.
    #[cfg(not(target_family = "wasm"))]
    pub(crate) fn from_fields(fields: &EventFields<'_>) -> Result<Self, PluginError> {
        let object = |json: Option<&str>, what| json.map(|j| parse_object(j, what)).transpose();
        Ok(Self {
            uuid: fields.uuid,
            team_id: fields.team_id,
            timestamp_ms: fields.timestamp_ms,
            event: fields.event.to_owned(),
            distinct_id: fields.distinct_id.to_owned(),
            ip: fields.ip.map(str::to_owned),
            properties: parse_object(fields.properties, "properties")?,
            set: object(fields.set, "$set")?,
            set_once: object(fields.set_once, "$set_once")?,
        })
    }

    /// Sets one property, returning `self` for chaining.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// Encodes the event for the host (with its length prefix), without a patch.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), PluginError> {
        // Serialized in place: cloning into a `Value` first would copy the whole tree.
        let to_text = |map: &Map<String, Value>| serde_json::to_string(map).unwrap_or_default();
        let properties = to_text(&self.properties);
        let set = self.set.as_ref().map(to_text);
        let set_once = self.set_once.as_ref().map(to_text);
        EventFields {
            uuid: self.uuid,
            team_id: self.team_id,
            timestamp_ms: self.timestamp_ms,
            event: &self.event,
            distinct_id: &self.distinct_id,
            ip: self.ip.as_deref(),
            properties: &properties,
            set: set.as_deref(),
            set_once: set_once.as_deref(),
        }
        .encode_into(out)
        .map_err(|e| PluginError::new(e.to_string()))
    }
}

fn parse_object(json: &str, what: &str) -> Result<Map<String, Value>, PluginError> {
    match serde_json::from_str(json) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(PluginError::new(format!("{what} is not a JSON object"))),
        Err(e) => Err(PluginError::new(format!("{what} is not valid JSON: {e}"))),
    }
}

/// Formats UUID bytes as hyphenated lowercase hex.
pub(crate) fn format_uuid(bytes: [u8; 16]) -> String {
    let mut out = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_abi::wire::parse_encoded;

    fn encoded(properties: &str) -> Vec<u8> {
        EventFields {
            uuid: [1; 16],
            team_id: 1,
            timestamp_ms: 0,
            event: "e",
            distinct_id: "u",
            ip: None,
            properties,
            set: None,
            set_once: None,
        }
        .encode()
        .unwrap()
    }

    #[test]
    fn one_property_is_found_however_it_is_written() {
        let escaped = encoded(r#"{"\u0024ip":"1.2.3.4","note":"a\nb","n":{"$ip":2}}"#);
        let event = Event::new(parse_encoded(&escaped).unwrap());
        assert_eq!(event.property("$ip"), Some(json!("1.2.3.4")));
        assert_eq!(event.property_json("n"), Some(r#"{"$ip":2}"#));
        assert_eq!(event.property("missing"), None);
        let plain = encoded(r#"{"a":1,"n":{"$ip":2}}"#);
        let event = Event::new(parse_encoded(&plain).unwrap());
        assert_eq!(
            event.property("$ip"),
            None,
            "a nested key is not a property"
        );
        assert_eq!(event.property("a"), Some(json!(1)));
    }
}

//! The batch encoding used by the `transform` interface.
//!
//! All integers are little-endian. A batch is `u32 count` followed by `count` events; an event is
//! `u32 body_len` followed by its body:
//!
//! ```text
//! uuid [16] | team_id u64 | timestamp_ms i64 | 7 × u32 field lengths | field bytes
//! ```
//!
//! The six text fields, in order, are `event`, `distinct_id`, `ip`, `properties`, `set`,
//! `set_once`; the seventh is the event's `patch` (the edits earlier plugins made, not applied
//! yet: [`crate::patch`]). An absent optional field has length `u32::MAX` and no bytes.
//! Outcomes are `u32 count` followed by one tagged outcome per input event: `0` keep, `1` drop
//! (`u32 len`, reason), `2` replace (an encoded event), `3` error (`u8 retryable`, `u32 len`,
//! message), `4` patch (`u32 len`, a patch).
//!
//! Decoding never trusts its input: every length is bounds-checked and text is validated as UTF-8
//! when it is read, so a reader only pays for the fields it looks at.

use crate::patch::{self, Applied, PatchError};
use thiserror::Error;

/// Bytes of an event body before its fields: envelope, then the text fields' and the patch's
/// lengths.
const FIXED_LEN: usize = PATCH_LEN_AT + 4;
const FIELD_COUNT: usize = 6;
const PATCH_LEN_AT: usize = 32 + FIELD_COUNT * 4;
const ABSENT: u32 = u32::MAX;

const TAG_KEEP: u8 = 0;
const TAG_DROP: u8 = 1;
const TAG_REPLACE: u8 = 2;
const TAG_ERROR: u8 = 3;
const TAG_PATCH: u8 = 4;

/// Why bytes could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// The input ended in the middle of an item.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A text field is not valid UTF-8.
    #[error("field `{0}` is not valid UTF-8")]
    NotUtf8(&'static str),
    /// A required field was marked absent.
    #[error("required field `{0}` is absent")]
    MissingField(&'static str),
    /// An outcome tag is not one of the known ones.
    #[error("unknown outcome tag {0}")]
    UnknownTag(u8),
    /// Bytes were left over after the declared number of items.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// The number of outcomes differs from the number of events sent.
    #[error("expected {expected} outcomes, got {actual}")]
    CountMismatch {
        /// Events in the batch.
        expected: usize,
        /// Outcomes returned.
        actual: usize,
    },
    /// A field is longer than the encoding can express.
    #[error("field `{0}` is longer than 4 GiB")]
    TooLong(&'static str),
    /// The event's patch is malformed or cannot be applied.
    #[error(transparent)]
    Patch(#[from] PatchError),
}

/// The text fields of an event, in encoding order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Field {
    /// Event name.
    Event = 0,
    /// Distinct id.
    DistinctId = 1,
    /// Client IP (optional).
    Ip = 2,
    /// Properties JSON object.
    Properties = 3,
    /// `$set` JSON object (optional).
    Set = 4,
    /// `$set_once` JSON object (optional).
    SetOnce = 5,
}

impl Field {
    const ALL: [Field; FIELD_COUNT] = [
        Field::Event,
        Field::DistinctId,
        Field::Ip,
        Field::Properties,
        Field::Set,
        Field::SetOnce,
    ];

    /// The field's name in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Field::Event => "event",
            Field::DistinctId => "distinct_id",
            Field::Ip => "ip",
            Field::Properties => "properties",
            Field::Set => "set",
            Field::SetOnce => "set_once",
        }
    }

    fn optional(self) -> bool {
        matches!(self, Field::Ip | Field::Set | Field::SetOnce)
    }
}

/// All fields of an event, borrowed; what an encoder needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFields<'a> {
    /// UUID bytes (RFC 4122 byte order).
    pub uuid: [u8; 16],
    /// Team id.
    pub team_id: u64,
    /// Event time in epoch milliseconds.
    pub timestamp_ms: i64,
    /// Event name.
    pub event: &'a str,
    /// Distinct id.
    pub distinct_id: &'a str,
    /// Client IP.
    pub ip: Option<&'a str>,
    /// Properties JSON object text.
    pub properties: &'a str,
    /// `$set` JSON object text.
    pub set: Option<&'a str>,
    /// `$set_once` JSON object text.
    pub set_once: Option<&'a str>,
}

impl<'a> EventFields<'a> {
    /// Appends this event (length prefix and body) to `out`, without a patch.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        self.encode_with_patch(None, out)
    }

    /// Appends this event with `patch` (edits not applied yet) to `out`.
    pub fn encode_with_patch(
        &self,
        patch: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        let texts = [
            Some(self.event),
            Some(self.distinct_id),
            self.ip,
            Some(self.properties),
            self.set,
            self.set_once,
        ];
        let mut body_len = FIXED_LEN + patch.map_or(0, <[u8]>::len);
        for (field, text) in Field::ALL.iter().zip(texts) {
            let len = text.map_or(0, str::len);
            if len >= ABSENT as usize {
                return Err(WireError::TooLong(field.name()));
            }
            body_len += len;
        }
        if patch.is_some_and(|p| p.len() >= ABSENT as usize) {
            return Err(WireError::TooLong("patch"));
        }
        let body_len = u32::try_from(body_len).map_err(|_| WireError::TooLong("event"))?;
        out.reserve(4 + body_len as usize);
        out.extend_from_slice(&body_len.to_le_bytes());
        out.extend_from_slice(&self.uuid);
        out.extend_from_slice(&self.team_id.to_le_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_le_bytes());
        for text in texts {
            // Lengths were checked above, so the casts cannot truncate.
            let len = text.map_or(ABSENT, |t| t.len() as u32);
            out.extend_from_slice(&len.to_le_bytes());
        }
        out.extend_from_slice(&patch.map_or(ABSENT, |p| p.len() as u32).to_le_bytes());
        for text in texts.into_iter().flatten() {
            out.extend_from_slice(text.as_bytes());
        }
        out.extend_from_slice(patch.unwrap_or_default());
        Ok(())
    }

    /// Encodes this event alone (length prefix and body).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }
}

/// An encoded event whose layout has been checked but whose text has not been validated yet.
#[derive(Debug, Clone, Copy)]
pub struct RawEvent<'a> {
    body: &'a [u8],
    offsets: [(u32, u32); FIELD_COUNT],
    patch: Option<&'a [u8]>,
}

impl<'a> RawEvent<'a> {
    /// Checks the layout of one event body (without its length prefix).
    pub fn parse(body: &'a [u8]) -> Result<Self, WireError> {
        if body.len() < FIXED_LEN {
            return Err(WireError::Truncated("event header"));
        }
        let mut offsets = [(0, ABSENT); FIELD_COUNT];
        let mut at = FIXED_LEN;
        for (i, field) in Field::ALL.iter().enumerate() {
            let len = read_u32(body, 32 + 4 * i);
            if len == ABSENT {
                if !field.optional() {
                    return Err(WireError::MissingField(field.name()));
                }
                continue;
            }
            let end = at
                .checked_add(len as usize)
                .filter(|end| *end <= body.len())
                .ok_or(WireError::Truncated(field.name()))?;
            offsets[i] = (at as u32, len);
            at = end;
        }
        let patch = match read_u32(body, PATCH_LEN_AT) {
            ABSENT => None,
            len => {
                let end = at
                    .checked_add(len as usize)
                    .filter(|end| *end <= body.len())
                    .ok_or(WireError::Truncated("patch"))?;
                let patch = &body[at..end];
                at = end;
                Some(patch)
            }
        };
        if at != body.len() {
            return Err(WireError::Trailing(body.len() - at));
        }
        Ok(Self {
            body,
            offsets,
            patch,
        })
    }

    /// The edits earlier plugins made and that are not applied yet, if any.
    pub fn patch(&self) -> Option<&'a [u8]> {
        self.patch
    }

    /// The properties and IP with the patch applied; `None` when there is no patch.
    pub fn applied(&self) -> Result<Option<Applied>, WireError> {
        match self.patch {
            None => Ok(None),
            Some(_) => self.apply_to(&self.fields()?),
        }
    }

    /// The patch, if any, applied to `fields` (this event's).
    fn apply_to(&self, fields: &EventFields<'_>) -> Result<Option<Applied>, WireError> {
        let Some(patch) = self.patch else {
            return Ok(None);
        };
        Ok(Some(patch::apply(
            fields.properties,
            fields.ip,
            fields.set,
            fields.set_once,
            patch,
        )?))
    }

    /// Calls `f` with every field as it is stored: the patch, if any, applied.
    pub fn with_patch_applied<R>(
        &self,
        f: impl FnOnce(&EventFields<'_>) -> R,
    ) -> Result<R, WireError> {
        let fields = self.fields()?;
        Ok(match self.apply_to(&fields)? {
            None => f(&fields),
            Some(applied) => f(&EventFields {
                properties: &applied.properties,
                ip: applied.ip.as_deref(),
                ..fields
            }),
        })
    }

    /// The whole body, for copying the event unchanged.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// UUID bytes.
    pub fn uuid(&self) -> [u8; 16] {
        let mut uuid = [0; 16];
        uuid.copy_from_slice(&self.body[..16]);
        uuid
    }

    /// Team id.
    pub fn team_id(&self) -> u64 {
        u64::from_le_bytes(array8(self.body, 16))
    }

    /// Event time in epoch milliseconds.
    pub fn timestamp_ms(&self) -> i64 {
        i64::from_le_bytes(array8(self.body, 24))
    }

    /// One text field, validated as UTF-8 now; `None` when an optional field is absent.
    pub fn text(&self, field: Field) -> Result<Option<&'a str>, WireError> {
        let (start, len) = self.offsets[field as usize];
        if len == ABSENT {
            return Ok(None);
        }
        let bytes = &self.body[start as usize..(start + len) as usize];
        std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| WireError::NotUtf8(field.name()))
    }

    /// The length in bytes of a text field (0 if absent), without validating it.
    pub fn text_len(&self, field: Field) -> usize {
        match self.offsets[field as usize] {
            (_, ABSENT) => 0,
            (_, len) => len as usize,
        }
    }

    /// A required text field (absent required fields were rejected by [`RawEvent::parse`]).
    pub fn required_text(&self, field: Field) -> Result<&'a str, WireError> {
        self.text(field)?
            .ok_or(WireError::MissingField(field.name()))
    }

    /// Validates every field and returns them.
    pub fn fields(&self) -> Result<EventFields<'a>, WireError> {
        Ok(EventFields {
            uuid: self.uuid(),
            team_id: self.team_id(),
            timestamp_ms: self.timestamp_ms(),
            event: self.required_text(Field::Event)?,
            distinct_id: self.required_text(Field::DistinctId)?,
            ip: self.text(Field::Ip)?,
            properties: self.required_text(Field::Properties)?,
            set: self.text(Field::Set)?,
            set_once: self.text(Field::SetOnce)?,
        })
    }
}

/// The encoded event (length prefix included) with `ops` (a checked patch) added after its
/// patch. Only the patch is rewritten: the fields are copied as they are.
pub fn append_patch(encoded: &[u8], ops: &[u8]) -> Result<Vec<u8>, WireError> {
    let raw = parse_encoded(encoded)?;
    let fields_end = 4 + raw.body.len() - raw.patch().map_or(0, <[u8]>::len);
    let mut out = Vec::with_capacity(encoded.len() + ops.len());
    out.extend_from_slice(&encoded[..fields_end]);
    patch::merge_into(&mut out, raw.patch(), ops);
    let body_len = u32::try_from(out.len() - 4).map_err(|_| WireError::TooLong("event"))?;
    let patch_len =
        u32::try_from(out.len() - fields_end).map_err(|_| WireError::TooLong("patch"))?;
    out[..4].copy_from_slice(&body_len.to_le_bytes());
    let slot = 4 + PATCH_LEN_AT;
    out[slot..slot + 4].copy_from_slice(&patch_len.to_le_bytes());
    Ok(out)
}

/// Overwrites the uuid and team id of an encoded event (length prefix included) in place.
///
/// The host uses this to restore the envelope fields a plugin is not allowed to change.
pub fn restore_envelope(encoded: &mut [u8], uuid: [u8; 16], team_id: u64) {
    encoded[4..20].copy_from_slice(&uuid);
    encoded[20..28].copy_from_slice(&team_id.to_le_bytes());
}

/// Builds a batch from events.
#[derive(Debug)]
pub struct BatchWriter {
    buf: Vec<u8>,
    count: u32,
}

impl Default for BatchWriter {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl BatchWriter {
    /// A writer whose buffer starts with room for `bytes` bytes of events.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(4 + bytes);
        buf.extend_from_slice(&0u32.to_le_bytes());
        Self { buf, count: 0 }
    }

    /// Appends an already encoded event (length prefix included).
    pub fn push_encoded(&mut self, encoded: &[u8]) {
        self.buf.extend_from_slice(encoded);
        self.count += 1;
    }

    /// Encodes and appends an event.
    pub fn push(&mut self, event: &EventFields<'_>) -> Result<(), WireError> {
        event.encode_into(&mut self.buf)?;
        self.count += 1;
        Ok(())
    }

    /// Number of events so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no event was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The finished batch.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf[..4].copy_from_slice(&self.count.to_le_bytes());
        self.buf
    }
}

/// Reads the events of a batch one by one.
#[derive(Debug)]
pub struct BatchReader<'a> {
    rest: &'a [u8],
    remaining: u32,
}

impl<'a> BatchReader<'a> {
    /// Starts reading a batch.
    pub fn new(batch: &'a [u8]) -> Result<Self, WireError> {
        let remaining = take_u32(&mut &batch[..], "batch header")?;
        Ok(Self {
            rest: &batch[4..],
            remaining,
        })
    }

    /// Number of events not read yet.
    pub fn remaining(&self) -> usize {
        self.remaining as usize
    }
}

impl<'a> Iterator for BatchReader<'a> {
    type Item = Result<RawEvent<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return (!self.rest.is_empty()).then_some(Err(WireError::Trailing(self.rest.len())));
        }
        self.remaining -= 1;
        let item = take_event(&mut self.rest).and_then(RawEvent::parse);
        if item.is_err() {
            self.remaining = 0;
            self.rest = &[];
        }
        Some(item)
    }
}

/// What a plugin decided for one event.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// The event continues unchanged.
    Keep,
    /// The event is dropped, with a reason for metrics and logs.
    Drop(&'a str),
    /// The event continues as this new version; the slice is the encoded event with its prefix.
    Replace(&'a [u8]),
    /// Processing this event failed.
    Error {
        /// What went wrong.
        message: &'a str,
        /// Whether trying again later may succeed.
        retryable: bool,
    },
    /// The event continues with these edits ([`crate::patch`], not checked yet).
    Patch(&'a [u8]),
}

/// Builds the outcome list a plugin returns.
#[derive(Debug)]
pub struct OutcomeWriter {
    buf: Vec<u8>,
    count: u32,
}

impl Default for OutcomeWriter {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl OutcomeWriter {
    /// A writer with room for `outcomes` one-byte outcomes.
    pub fn with_capacity(outcomes: usize) -> Self {
        let mut buf = Vec::with_capacity(4 + outcomes);
        buf.extend_from_slice(&0u32.to_le_bytes());
        Self { buf, count: 0 }
    }

    /// The event continues unchanged.
    pub fn keep(&mut self) {
        self.buf.push(TAG_KEEP);
        self.count += 1;
    }

    /// The event is dropped.
    pub fn drop_event(&mut self, reason: &str) {
        self.buf.push(TAG_DROP);
        push_text(&mut self.buf, reason);
        self.count += 1;
    }

    /// The event continues as `event`.
    pub fn replace(&mut self, event: &EventFields<'_>) -> Result<(), WireError> {
        self.buf.push(TAG_REPLACE);
        event.encode_into(&mut self.buf)?;
        self.count += 1;
        Ok(())
    }

    /// The event continues as an already encoded event (length prefix included).
    pub fn replace_encoded(&mut self, encoded: &[u8]) {
        self.buf.push(TAG_REPLACE);
        self.buf.extend_from_slice(encoded);
        self.count += 1;
    }

    /// The event continues with the edits of `patch`.
    pub fn patch(&mut self, patch: &[u8]) {
        self.buf.push(TAG_PATCH);
        push_bytes(&mut self.buf, patch);
        self.count += 1;
    }

    /// Processing the event failed.
    pub fn error(&mut self, message: &str, retryable: bool) {
        self.buf.push(TAG_ERROR);
        self.buf.push(u8::from(retryable));
        push_text(&mut self.buf, message);
        self.count += 1;
    }

    /// The finished outcome list.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf[..4].copy_from_slice(&self.count.to_le_bytes());
        self.buf
    }
}

/// Decodes an outcome list, checking that it has exactly `expected` outcomes.
pub fn read_outcomes(bytes: &[u8], expected: usize) -> Result<Vec<Outcome<'_>>, WireError> {
    let mut rest = bytes;
    let count = take_u32(&mut rest, "outcome header")? as usize;
    if count != expected {
        return Err(WireError::CountMismatch {
            expected,
            actual: count,
        });
    }
    let mut outcomes = Vec::with_capacity(count);
    for _ in 0..count {
        let (&tag, tail) = rest.split_first().ok_or(WireError::Truncated("outcome"))?;
        rest = tail;
        outcomes.push(match tag {
            TAG_KEEP => Outcome::Keep,
            TAG_DROP => Outcome::Drop(take_text(&mut rest, "drop reason")?),
            TAG_REPLACE => {
                let start = rest;
                let body = take_event(&mut rest)?;
                RawEvent::parse(body)?;
                Outcome::Replace(&start[..4 + body.len()])
            }
            TAG_PATCH => Outcome::Patch(take_bytes(&mut rest, "patch")?),
            TAG_ERROR => {
                let (&retryable, tail) = rest.split_first().ok_or(WireError::Truncated("error"))?;
                rest = tail;
                Outcome::Error {
                    retryable: retryable != 0,
                    message: take_text(&mut rest, "error message")?,
                }
            }
            other => return Err(WireError::UnknownTag(other)),
        });
    }
    if !rest.is_empty() {
        return Err(WireError::Trailing(rest.len()));
    }
    Ok(outcomes)
}

/// Parses one encoded event that carries its length prefix.
pub fn parse_encoded(encoded: &[u8]) -> Result<RawEvent<'_>, WireError> {
    let mut rest = encoded;
    let body = take_event(&mut rest)?;
    if !rest.is_empty() {
        return Err(WireError::Trailing(rest.len()));
    }
    RawEvent::parse(body)
}

fn push_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(bytes);
}

fn push_text(buf: &mut Vec<u8>, text: &str) {
    // Reasons and messages are capped far below 4 GiB by truncating at a char boundary.
    let mut end = text.len().min(u32::MAX as usize - 1);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    buf.extend_from_slice(&(end as u32).to_le_bytes());
    buf.extend_from_slice(&text.as_bytes()[..end]);
}

fn take_u32(rest: &mut &[u8], what: &'static str) -> Result<u32, WireError> {
    if rest.len() < 4 {
        return Err(WireError::Truncated(what));
    }
    let value = read_u32(rest, 0);
    *rest = &rest[4..];
    Ok(value)
}

fn take_bytes<'a>(rest: &mut &'a [u8], what: &'static str) -> Result<&'a [u8], WireError> {
    let len = take_u32(rest, what)? as usize;
    if rest.len() < len {
        return Err(WireError::Truncated(what));
    }
    let (bytes, tail) = rest.split_at(len);
    *rest = tail;
    Ok(bytes)
}

fn take_event<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], WireError> {
    take_bytes(rest, "event")
}

fn take_text<'a>(rest: &mut &'a [u8], what: &'static str) -> Result<&'a str, WireError> {
    std::str::from_utf8(take_bytes(rest, what)?).map_err(|_| WireError::NotUtf8(what))
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn array8(bytes: &[u8], at: usize) -> [u8; 8] {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    word
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> EventFields<'_> {
        EventFields {
            uuid: [7; 16],
            team_id: 42,
            timestamp_ms: 1_700_000_000_123,
            event: name,
            distinct_id: "user-1",
            ip: None,
            properties: r#"{"a":1}"#,
            set: Some("{}"),
            set_once: None,
        }
    }

    #[test]
    fn batch_round_trips_every_field() {
        let mut writer = BatchWriter::default();
        writer.push(&sample("$pageview")).unwrap();
        let encoded = sample("signup").encode().unwrap();
        writer.push_encoded(&encoded);
        let batch = writer.finish();

        let events: Vec<_> = BatchReader::new(&batch)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].fields().unwrap(), sample("$pageview"));
        assert_eq!(events[1].fields().unwrap(), sample("signup"));
        assert_eq!(events[1].team_id(), 42);
        assert_eq!(events[1].text(Field::Ip).unwrap(), None);
    }

    #[test]
    fn outcomes_round_trip_and_count_is_checked() {
        let mut writer = OutcomeWriter::default();
        writer.keep();
        writer.drop_event("sampled out");
        writer.replace(&sample("renamed")).unwrap();
        writer.error("boom", true);
        let bytes = writer.finish();

        let outcomes = read_outcomes(&bytes, 4).unwrap();
        assert!(matches!(outcomes[0], Outcome::Keep));
        assert!(matches!(outcomes[1], Outcome::Drop("sampled out")));
        let Outcome::Replace(encoded) = outcomes[2] else {
            panic!("expected replace")
        };
        assert_eq!(
            parse_encoded(encoded).unwrap().fields().unwrap(),
            sample("renamed")
        );
        assert!(matches!(
            outcomes[3],
            Outcome::Error {
                message: "boom",
                retryable: true
            }
        ));
        assert_eq!(
            read_outcomes(&bytes, 3).unwrap_err(),
            WireError::CountMismatch {
                expected: 3,
                actual: 4
            }
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let mut writer = OutcomeWriter::default();
        writer.replace(&sample("x")).unwrap();
        writer.error("e", false);
        let bytes = writer.finish();
        for cut in 0..bytes.len() {
            assert!(read_outcomes(&bytes[..cut], 2).is_err(), "cut at {cut}");
        }
        let mut batch = BatchWriter::default();
        batch.push(&sample("y")).unwrap();
        let batch = batch.finish();
        for cut in 0..batch.len() {
            let all_ok = BatchReader::new(&batch[..cut])
                .map(|r| r.collect::<Result<Vec<_>, _>>().is_ok_and(|v| v.len() == 1))
                .unwrap_or(false);
            assert!(!all_ok, "cut at {cut}");
        }
    }

    #[test]
    fn invalid_utf8_and_missing_required_fields_are_rejected() {
        let mut encoded = sample("ev").encode().unwrap();
        let at = 4 + FIXED_LEN; // first byte of the event name
        encoded[at] = 0xff;
        let raw = parse_encoded(&encoded).unwrap();
        assert_eq!(raw.fields().unwrap_err(), WireError::NotUtf8("event"));

        let mut encoded = sample("ev").encode().unwrap();
        let name_len_at = 4 + 32;
        encoded[name_len_at..name_len_at + 4].copy_from_slice(&ABSENT.to_le_bytes());
        assert!(parse_encoded(&encoded).is_err());
    }

    #[test]
    fn patches_travel_with_the_event_and_apply_when_read() {
        use crate::patch::{Mode, PatchWriter, Target};
        let mut first = PatchWriter::default();
        first.push_json(Target::Properties, Mode::Set, "b", "2");
        let mut second = PatchWriter::default();
        second.push_json(Target::Properties, Mode::Set, "a", "3");
        second.push_json(Target::Ip, Mode::Set, "", r#""9.9.9.9""#);
        let encoded = sample("ev").encode().unwrap();
        let once = append_patch(&encoded, &first.finish()).unwrap();
        let twice = append_patch(&once, &second.finish()).unwrap();
        let raw = parse_encoded(&twice).unwrap();
        assert_eq!(
            raw.fields().unwrap(),
            sample("ev"),
            "the fields are as sent"
        );
        let applied = raw.applied().unwrap().unwrap();
        assert_eq!(applied.properties, r#"{"a":3,"b":2}"#);
        assert_eq!(applied.ip.as_deref(), Some("9.9.9.9"));
        let stored = raw
            .with_patch_applied(|f| (f.properties.to_owned(), f.event.to_owned()))
            .unwrap();
        assert_eq!(stored, (r#"{"a":3,"b":2}"#.to_owned(), "ev".to_owned()));
        assert_eq!(parse_encoded(&encoded).unwrap().applied().unwrap(), None);

        let mut writer = OutcomeWriter::default();
        writer.patch(raw.patch().unwrap());
        let bytes = writer.finish();
        let outcomes = read_outcomes(&bytes, 1).unwrap();
        assert!(matches!(outcomes[0], Outcome::Patch(p) if p == raw.patch().unwrap()));
        for cut in 0..twice.len() {
            assert!(parse_encoded(&twice[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn restore_envelope_overwrites_uuid_and_team() {
        let mut encoded = sample("ev").encode().unwrap();
        restore_envelope(&mut encoded, [9; 16], 7);
        let raw = parse_encoded(&encoded).unwrap();
        assert_eq!(raw.uuid(), [9; 16]);
        assert_eq!(raw.team_id(), 7);
        assert_eq!(raw.required_text(Field::Event).unwrap(), "ev");
    }
}

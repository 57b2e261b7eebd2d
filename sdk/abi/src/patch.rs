//! Patches: the edits a plugin made to an event, sent back instead of the whole event, applied
//! by the host natively when the event is stored (and by the SDK when a later plugin reads it).
//!
//! An op edits one key of one target, in order:
//!
//! | target | what it edits |
//! |---|---|
//! | `properties` | a key of the event's properties |
//! | `set` | a key of `properties.$set` (person properties to set) |
//! | `set_once` | a key of `properties.$set_once` (person properties to set once) |
//! | `ip` | the event's IP address (no key; the value is a JSON string) |
//!
//! Modes: `set` (the value is JSON text), `set_if_absent` (only if the key is not there yet:
//! for `set` / `set_once`, "there" also counts the event's top-level `$set` / `$set_once`, so the
//! producer's value wins), `remove`. An op on `set` or `set_once` makes `properties.$set` (or
//! `$set_once`) an object first: created if absent, replaced if it is not an object. Ops apply
//! one after the other, so a later op sees what earlier ones did, across plugins.
//!
//! Encoding (little-endian): `count:u32`, then per op `target:u8 mode:u8 key_len:u32 key
//! value_len:u32 value`, with `value_len = 0xFFFFFFFF` (no value) for `remove`.

use crate::object::{self, Entries};
use std::borrow::Cow;
use thiserror::Error;

/// Longest key an op may name, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

const NO_VALUE: u32 = u32::MAX;
const SET_KEY: &str = "$set";
const SET_ONCE_KEY: &str = "$set_once";

/// What an op edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A key of the properties.
    Properties = 0,
    /// A key of `properties.$set`.
    Set = 1,
    /// A key of `properties.$set_once`.
    SetOnce = 2,
    /// The event's IP address.
    Ip = 3,
}

/// How an op edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sets the value.
    Set = 0,
    /// Sets the value unless the key is there (the producer's value wins).
    SetIfAbsent = 1,
    /// Removes the key.
    Remove = 2,
}

/// One edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op<'a> {
    /// What it edits.
    pub target: Target,
    /// How.
    pub mode: Mode,
    /// The key (empty for [`Target::Ip`]).
    pub key: &'a str,
    /// The value as JSON text; none for [`Mode::Remove`].
    pub value: Option<&'a str>,
}

/// Why a patch was refused or could not be applied.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum PatchError {
    /// The bytes end in the middle of an op.
    #[error("truncated patch")]
    Truncated,
    /// Bytes were left after the declared ops.
    #[error("{0} bytes after the last op of the patch")]
    Trailing(usize),
    /// An unknown target byte.
    #[error("unknown patch target {0}")]
    Target(u8),
    /// An unknown mode byte.
    #[error("unknown patch mode {0}")]
    Mode(u8),
    /// A key that is not UTF-8, empty, too long, or given for the IP.
    #[error("patch op has a bad key: {0}")]
    Key(String),
    /// A value that is missing, present on a remove, or not exactly one JSON value.
    #[error("patch op for `{key}` has a bad value: {why}")]
    Value {
        /// The op's key.
        key: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The event's properties are not a JSON object.
    #[error("the event's properties are not a JSON object")]
    NotObject,
}

/// Builds a patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchWriter {
    /// The encoded patch so far, its count kept up to date.
    buf: Vec<u8>,
}

impl Default for PatchWriter {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl PatchWriter {
    /// An empty patch with room for `bytes` bytes of ops.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(4 + bytes);
        buf.extend_from_slice(&[0; 4]);
        Self { buf }
    }

    /// Appends an op whose value `write_value` writes as JSON text (not called for
    /// [`Mode::Remove`]).
    pub fn push(
        &mut self,
        target: Target,
        mode: Mode,
        key: &str,
        write_value: impl FnOnce(&mut Vec<u8>),
    ) {
        self.buf.push(target as u8);
        self.buf.push(mode as u8);
        self.buf
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(key.as_bytes());
        let at = self.buf.len();
        self.buf.extend_from_slice(&NO_VALUE.to_le_bytes());
        if mode != Mode::Remove {
            write_value(&mut self.buf);
            let len = (self.buf.len() - at - 4) as u32;
            self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
        let count = self.len() as u32 + 1;
        self.buf[..4].copy_from_slice(&count.to_le_bytes());
    }

    /// Appends an op with a value already in JSON text.
    pub fn push_json(&mut self, target: Target, mode: Mode, key: &str, json: &str) {
        self.push(target, mode, key, |out| {
            out.extend_from_slice(json.as_bytes())
        });
    }

    /// Appends a [`Mode::Remove`] op.
    pub fn remove(&mut self, target: Target, key: &str) {
        self.push(target, Mode::Remove, key, |_| {});
    }

    /// Number of ops.
    pub fn len(&self) -> usize {
        u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize
    }

    /// Whether there is no op.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The encoded patch.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The encoded patch, owned.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// One op as bytes, its layout checked, its text not.
#[derive(Debug, Clone, Copy)]
struct RawOp<'a> {
    target: Target,
    mode: Mode,
    key: &'a [u8],
    value: Option<&'a [u8]>,
}

/// The ops of `patch` one by one, their layout checked (not their text); then an error for
/// bytes left over.
fn raw_ops(patch: &[u8]) -> impl Iterator<Item = Result<RawOp<'_>, PatchError>> {
    let mut rest = patch;
    let mut remaining = take_u32(&mut rest);
    std::iter::from_fn(move || {
        let left = match &mut remaining {
            Ok(left) => left,
            Err(error) => {
                let error = error.clone();
                remaining = Ok(0);
                rest = &[];
                return Some(Err(error));
            }
        };
        if *left == 0 {
            let trailing = rest.len();
            rest = &[];
            return (trailing > 0).then_some(Err(PatchError::Trailing(trailing)));
        }
        *left -= 1;
        let op = raw_op(&mut rest);
        if op.is_err() {
            remaining = Ok(0);
            rest = &[];
        }
        Some(op)
    })
}

fn raw_op<'a>(rest: &mut &'a [u8]) -> Result<RawOp<'a>, PatchError> {
    let [target, mode] = *take(rest, 2)? else {
        return Err(PatchError::Truncated);
    };
    let target = match target {
        0 => Target::Properties,
        1 => Target::Set,
        2 => Target::SetOnce,
        3 => Target::Ip,
        other => return Err(PatchError::Target(other)),
    };
    let mode = match mode {
        0 => Mode::Set,
        1 => Mode::SetIfAbsent,
        2 => Mode::Remove,
        other => return Err(PatchError::Mode(other)),
    };
    let key_len = take_u32(rest)? as usize;
    let key = take(rest, key_len)?;
    let value = match take_u32(rest)? {
        NO_VALUE => None,
        len => Some(take(rest, len as usize)?),
    };
    Ok(RawOp {
        target,
        mode,
        key,
        value,
    })
}

/// Decodes the ops of `patch`, checking its layout and that its text is UTF-8.
pub fn ops(patch: &[u8]) -> Result<Vec<Op<'_>>, PatchError> {
    raw_ops(patch)
        .map(|op| {
            let op = op?;
            let key =
                std::str::from_utf8(op.key).map_err(|_| PatchError::Key("not UTF-8".into()))?;
            let value =
                op.value
                    .map(std::str::from_utf8)
                    .transpose()
                    .map_err(|_| PatchError::Value {
                        key: key.to_owned(),
                        why: "not UTF-8",
                    })?;
            Ok(Op {
                target: op.target,
                mode: op.mode,
                key,
                value,
            })
        })
        .collect()
}

/// Checks a patch a plugin returned: its layout, keys (UTF-8, 1 to [`MAX_KEY_BYTES`] bytes,
/// none for the IP), and values (one JSON value per set op, a JSON string for the IP, none for
/// removes). Returns the number of ops.
pub fn check(patch: &[u8]) -> Result<usize, PatchError> {
    let mut count = 0;
    for op in raw_ops(patch) {
        let op = op?;
        count += 1;
        let key = std::str::from_utf8(op.key).map_err(|_| PatchError::Key("not UTF-8".into()))?;
        let bad_value = |why| PatchError::Value {
            key: key.to_owned(),
            why,
        };
        match op.target {
            Target::Ip if !key.is_empty() => {
                return Err(PatchError::Key("an IP op has no key".into()));
            }
            Target::Ip => {}
            _ if key.is_empty() || key.len() > MAX_KEY_BYTES => {
                return Err(PatchError::Key(format!(
                    "keys are 1 to {MAX_KEY_BYTES} bytes, got {}",
                    key.len()
                )));
            }
            _ => {}
        }
        match (op.mode, op.value) {
            (Mode::Remove, None) => {}
            (Mode::Remove, Some(_)) => return Err(bad_value("a remove has no value")),
            (_, None) => return Err(bad_value("a set needs a value")),
            (_, Some(value)) if op.target == Target::Ip => {
                if serde_json::from_slice::<String>(value).is_err() {
                    return Err(bad_value("the IP must be a JSON string"));
                }
            }
            (_, Some(value)) => {
                if !object::is_json(value) {
                    return Err(bad_value("not exactly one JSON value"));
                }
            }
        }
    }
    Ok(count)
}

/// `first` (if any) followed by the ops of `then`, as one patch. Both must have been checked.
pub fn merge(first: Option<&[u8]>, then: &[u8]) -> Vec<u8> {
    let mut merged = Vec::with_capacity(first.map_or(0, <[u8]>::len) + then.len());
    merge_into(&mut merged, first, then);
    merged
}

/// Appends [`merge`]`(first, then)` to `out`.
pub fn merge_into(out: &mut Vec<u8>, first: Option<&[u8]>, then: &[u8]) {
    let count = |p: &[u8]| {
        p.get(..4)
            .map_or(0, |c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    };
    let first = first.unwrap_or_default();
    out.extend_from_slice(&(count(first) + count(then)).to_le_bytes());
    out.extend_from_slice(first.get(4..).unwrap_or_default());
    out.extend_from_slice(then.get(4..).unwrap_or_default());
}

/// The fields a patch changes, with the patch applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The properties JSON object text.
    pub properties: String,
    /// The IP address.
    pub ip: Option<String>,
}

/// Applies `patch` (checked) to an event's `properties` and `ip`; `set` and `set_once` are its
/// top-level person properties (read, never changed: a key there counts as present for
/// `set_if_absent`). Untouched properties keep their text and their order; new keys come after
/// them, in the order they were first set.
pub fn apply(
    properties: &str,
    ip: Option<&str>,
    set: Option<&str>,
    set_once: Option<&str>,
    patch: &[u8],
) -> Result<Applied, PatchError> {
    let mut props = Object::of(properties.as_bytes()).ok_or(PatchError::NotObject)?;
    let mut people = [
        Person::new(SET_KEY, set),
        Person::new(SET_ONCE_KEY, set_once),
    ];
    let mut ip = ip.map(Cow::Borrowed);
    for op in raw_ops(patch) {
        let op = op?;
        let key = Key::new(op.key);
        match op.target {
            Target::Properties => {
                if let Some(person) = people.iter_mut().find(|p| p.key.is(&key)) {
                    // The person object is replaced as a whole: edits made to it are gone.
                    person.object = None;
                }
                let present = op.mode == Mode::SetIfAbsent && props.present(&key);
                props.apply(op.mode, key, op.value, present);
            }
            Target::Set | Target::SetOnce => {
                let person = &mut people[usize::from(op.target == Target::SetOnce)];
                if person.object.is_none() {
                    person.object = Some(Object::parse(props.current(&person.key)));
                }
                let in_object = person.object.as_ref().is_some_and(|o| o.present(&key));
                let present =
                    op.mode == Mode::SetIfAbsent && (in_object || person.top_level_has(&key));
                if let Some(object) = person.object.as_mut() {
                    object.apply(op.mode, key, op.value, present);
                }
            }
            Target::Ip => match (op.mode, op.value) {
                (Mode::Remove, _) => ip = None,
                (Mode::SetIfAbsent, _) if ip.is_some() => {}
                (_, Some(value)) => {
                    ip = Some(Cow::Owned(serde_json::from_slice(value).map_err(|_| {
                        PatchError::Value {
                            key: "ip".into(),
                            why: "the IP must be a JSON string",
                        }
                    })?));
                }
                (_, None) => {}
            },
        }
    }
    // A person object that was edited, or made an object, replaces its property.
    let nested: Vec<(Key<'_>, &Object<'_>)> = people
        .iter()
        .filter_map(|person| {
            let object = person.object.as_ref()?;
            (object.changed() || !object.was_object).then_some((person.key, object))
        })
        .collect();
    let mut text = Vec::with_capacity(properties.len() + patch.len());
    props.write(&mut text, &nested);
    Ok(Applied {
        // Only UTF-8 is written: keys and values of checked patches, and the event's own text.
        properties: String::from_utf8(text).map_err(|_| PatchError::Value {
            key: "properties".into(),
            why: "not UTF-8",
        })?,
        ip: ip.map(Cow::into_owned),
    })
}

/// A key with a fingerprint of its length and its first and last bytes, so that looking keys
/// up compares one word before comparing bytes.
#[derive(Debug, Clone, Copy)]
struct Key<'a> {
    print: u64,
    bytes: &'a [u8],
}

impl<'a> Key<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        let word = |part: &[u8]| {
            let mut word = [0u8; 8];
            word[..part.len()].copy_from_slice(part);
            u64::from_le_bytes(word)
        };
        let n = bytes.len().min(8);
        let head = word(&bytes[..n]);
        let tail = word(&bytes[bytes.len() - n..]);
        let print =
            (head ^ tail.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ bytes.len() as u64;
        Self { print, bytes }
    }

    fn is(&self, other: &Key<'_>) -> bool {
        self.print == other.print && self.bytes == other.bytes
    }
}

/// One edit of an object: the key and its new value (`None`: removed).
#[derive(Debug)]
struct Edit<'a> {
    key: Key<'a>,
    value: Option<&'a [u8]>,
}

/// One JSON object being edited: its entries as they were, and the edits.
#[derive(Debug, Default)]
struct Object<'a> {
    base: Entries<'a>,
    base_prints: Vec<u64>,
    was_object: bool,
    edits: Vec<Edit<'a>>,
}

impl<'a> Object<'a> {
    /// The object `text` holds, or `None` if it is not an object.
    fn of(text: &'a [u8]) -> Option<Self> {
        let base = Entries::parse(text).ok()?;
        let base_prints = base
            .iter()
            .map(|(k, _)| Key::new(k.as_bytes()).print)
            .collect();
        Some(Self {
            base,
            base_prints,
            was_object: true,
            edits: Vec::new(),
        })
    }

    /// The object `text` holds; empty if there is no text or it is not an object.
    fn parse(text: Option<&'a [u8]>) -> Self {
        text.and_then(Self::of).unwrap_or_default()
    }

    fn edit_of(&self, key: &Key<'_>) -> Option<usize> {
        self.edits.iter().position(|edit| edit.key.is(key))
    }

    /// The index of the last base entry named `key`.
    fn base_of(&self, key: &Key<'_>) -> Option<usize> {
        (0..self.base_prints.len()).rev().find(|&i| {
            self.base_prints[i] == key.print
                && self.base.key(i).is_some_and(|k| k.as_bytes() == key.bytes)
        })
    }

    /// The value of `key` now, as JSON text.
    fn current(&self, key: &Key<'_>) -> Option<&'a [u8]> {
        match self.edit_of(key) {
            Some(at) => self.edits[at].value,
            None => self
                .base_of(key)
                .and_then(|i| self.base.value(i))
                .map(str::as_bytes),
        }
    }

    fn present(&self, key: &Key<'_>) -> bool {
        self.current(key).is_some()
    }

    fn changed(&self) -> bool {
        !self.edits.is_empty()
    }

    fn apply(&mut self, mode: Mode, key: Key<'a>, value: Option<&'a [u8]>, present: bool) {
        let value = match mode {
            Mode::SetIfAbsent if present => return,
            Mode::Set | Mode::SetIfAbsent => value,
            Mode::Remove => None,
        };
        match self.edit_of(&key) {
            Some(at) => self.edits[at].value = value,
            None => {
                if self.edits.is_empty() {
                    self.edits.reserve(16);
                }
                self.edits.push(Edit { key, value });
            }
        }
    }

    /// Writes the object with its edits, and the `nested` objects in place of those keys'
    /// values: entries in place (edited ones with their new value, removed ones left out, a
    /// repeated edited key once), then the new keys in the order they were first edited.
    fn write(&self, out: &mut Vec<u8>, nested: &[(Key<'_>, &Object<'_>)]) {
        out.push(b'{');
        let opened = out.len();
        let separate = |out: &mut Vec<u8>| {
            if out.len() > opened {
                out.push(b',');
            }
        };
        let entry = |out: &mut Vec<u8>, key: &[u8]| {
            separate(out);
            object::write_string(out, key);
            out.push(b':');
        };
        let mut done = vec![false; self.edits.len()];
        let mut nested_done = vec![false; nested.len()];
        for (i, (key, value)) in self.base.iter().enumerate() {
            let key = Key {
                print: self.base_prints[i],
                bytes: key.as_bytes(),
            };
            if let Some(at) = nested.iter().position(|(k, _)| k.is(&key)) {
                if !nested_done[at] {
                    nested_done[at] = true;
                    entry(out, key.bytes);
                    nested[at].1.write(out, &[]);
                }
                continue;
            }
            match self.edit_of(&key) {
                None => match self.base.raw(i) {
                    // Untouched: copied as it is, key and all.
                    Some(raw) => {
                        separate(out);
                        out.extend_from_slice(raw);
                    }
                    None => {
                        entry(out, key.bytes);
                        out.extend_from_slice(value.as_bytes());
                    }
                },
                Some(at) if done[at] => {}
                Some(at) => {
                    done[at] = true;
                    if let Some(edited) = self.edits[at].value {
                        entry(out, key.bytes);
                        out.extend_from_slice(edited);
                    }
                }
            }
        }
        for (at, edit) in self.edits.iter().enumerate() {
            if done[at] {
                continue;
            }
            if let Some(at) = nested.iter().position(|(k, _)| k.is(&edit.key)) {
                if !nested_done[at] {
                    nested_done[at] = true;
                    entry(out, edit.key.bytes);
                    nested[at].1.write(out, &[]);
                }
            } else if let Some(value) = edit.value {
                entry(out, edit.key.bytes);
                out.extend_from_slice(value);
            }
        }
        for (at, (key, object)) in nested.iter().enumerate() {
            if !nested_done[at] {
                entry(out, key.bytes);
                object.write(out, &[]);
            }
        }
        out.push(b'}');
    }
}

/// `properties.$set` or `properties.$set_once`, and the event's top-level object of the same
/// name, which only counts for presence.
struct Person<'a> {
    key: Key<'static>,
    top_level: Option<&'a str>,
    top_level_keys: Option<Object<'a>>,
    object: Option<Object<'a>>,
}

impl<'a> Person<'a> {
    fn new(key: &'static str, top_level: Option<&'a str>) -> Self {
        Self {
            key: Key::new(key.as_bytes()),
            top_level,
            top_level_keys: None,
            object: None,
        }
    }

    fn top_level_has(&mut self, key: &Key<'_>) -> bool {
        let Some(text) = self.top_level else {
            return false;
        };
        self.top_level_keys
            .get_or_insert_with(|| Object::parse(Some(text.as_bytes())))
            .base_of(key)
            .is_some()
    }
}

fn take<'a>(rest: &mut &'a [u8], len: usize) -> Result<&'a [u8], PatchError> {
    if rest.len() < len {
        return Err(PatchError::Truncated);
    }
    let (bytes, tail) = rest.split_at(len);
    *rest = tail;
    Ok(bytes)
}

fn take_u32(rest: &mut &[u8]) -> Result<u32, PatchError> {
    let bytes = take(rest, 4)?;
    Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

#[cfg(test)]
mod tests;

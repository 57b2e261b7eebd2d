//! JSON objects read one level deep: the keys of an object and the raw text of each value,
//! without building a tree (serde_json's borrowed [`RawValue`]s), and keys written back as JSON
//! strings. Patches ([`crate::patch`]) are applied with these, and plugins look up single
//! properties with them.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// The entries of one JSON object, in text order, borrowed from its text.
#[derive(Debug, Default)]
pub struct Entries<'a> {
    text: &'a [u8],
    entries: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Entries<'a> {
    /// Reads the top level of `text`, which must be one JSON object (strings in it are checked
    /// to be UTF-8).
    pub fn parse(text: &'a [u8]) -> Result<Self, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(text);
        let entries = de.deserialize_map(EntriesVisitor)?;
        de.end()?;
        Ok(Self { text, entries })
    }

    /// Entry `i` as it is in the text: from its key's opening quote to the end of its value.
    pub fn raw(&self, i: usize) -> Option<&'a [u8]> {
        // Values are borrowed from the text, so their place in it is their address's offset.
        let offset = |value: &RawValue| value.get().as_ptr() as usize - self.text.as_ptr() as usize;
        let value = self.entries.get(i)?.1;
        let end = offset(value) + value.get().len();
        let after = match i.checked_sub(1).and_then(|p| self.entries.get(p)) {
            Some((_, previous)) => offset(previous) + previous.get().len(),
            None => 0,
        };
        let start = after + self.text.get(after..)?.iter().position(|&b| b == b'"')?;
        self.text.get(start..end)
    }

    /// The raw text of the value under `key` (the last one, if the key repeats, as parsers
    /// keep it).
    pub fn get(&self, key: &[u8]) -> Option<&'a str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k.as_bytes() == key)
            .map(|(_, v)| v.get())
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.entries.iter().any(|(k, _)| k.as_bytes() == key)
    }

    /// The entries: each key (unescaped) and the raw text of its value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &'a str)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v.get()))
    }

    /// The key (unescaped) of entry `i`.
    pub fn key(&self, i: usize) -> Option<&str> {
        self.entries.get(i).map(|(k, _)| k.as_ref())
    }

    /// The raw text of the value of entry `i`.
    pub fn value(&self, i: usize) -> Option<&'a str> {
        self.entries.get(i).map(|(_, v)| v.get())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the object is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Whether `"key"` (exactly these bytes, in quotes) is anywhere in `text`. For text without
/// escapes, `false` means `key` is not a key of it at any depth.
pub fn mentions(text: &str, key: &str) -> bool {
    let Some(first) = key.chars().next() else {
        return true;
    };
    let bytes = text.as_bytes();
    // `str::find` with a char skips ahead a word at a time.
    let mut from = 0;
    while let Some(found) = text[from..].find(first) {
        let at = from + found;
        if at > 0
            && bytes[at - 1] == b'"'
            && bytes[at..].starts_with(key.as_bytes())
            && bytes.get(at + key.len()) == Some(&b'"')
        {
            return true;
        }
        from = at + first.len_utf8();
    }
    false
}

/// Writes `text` (UTF-8) as a JSON string (quoted and escaped) to `out`.
pub fn write_string(out: &mut Vec<u8>, text: &[u8]) {
    // Without an early exit the check vectorises; nearly every key needs no escaping.
    let plain = !text.iter().fold(false, |seen, &b| {
        seen | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    out.push(b'"');
    if plain {
        out.extend_from_slice(text);
    } else {
        for &byte in text {
            match byte {
                b'"' => out.extend_from_slice(br#"\""#),
                b'\\' => out.extend_from_slice(br"\\"),
                b'\n' => out.extend_from_slice(br"\n"),
                b'\r' => out.extend_from_slice(br"\r"),
                b'\t' => out.extend_from_slice(br"\t"),
                0..=0x1f => out.extend_from_slice(format!("\\u{byte:04x}").as_bytes()),
                _ => out.push(byte),
            }
        }
    }
    out.push(b'"');
}

/// Whether `text` is exactly one JSON value (in UTF-8).
pub fn is_json(text: &[u8]) -> bool {
    (text.is_ascii() || std::str::from_utf8(text).is_ok())
        && (simple_json(text) || serde_json::from_slice::<de::IgnoredAny>(text).is_ok())
}

/// The common short values, recognised without a parser: literals, plain decimal numbers and
/// strings without escapes or control characters.
fn simple_json(text: &[u8]) -> bool {
    match text {
        b"null" | b"true" | b"false" => true,
        [b'"', inner @ .., b'"'] => inner.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\'),
        bytes @ [b'-' | b'0'..=b'9', ..] => plain_number(bytes),
        _ => false,
    }
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?` (exponents go to the parser).
fn plain_number(bytes: &[u8]) -> bool {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let (int, frac) = match digits.iter().position(|&b| b == b'.') {
        Some(dot) => (&digits[..dot], Some(&digits[dot + 1..])),
        None => (digits, None),
    };
    let int_ok = match int {
        [b'0'] => true,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    int_ok && frac.is_none_or(|f| !f.is_empty() && f.iter().all(u8::is_ascii_digit))
}

struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Vec<(Cow<'de, str>, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(16));
        while let Some(key) = map.next_key::<Key<'de>>()? {
            entries.push((key.0, map.next_value::<&RawValue>()?));
        }
        Ok(entries)
    }
}

/// A key, borrowed from the text unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_order_raw_values_and_unescape_keys() {
        let text = r#" {"a": 1, "b\u0041": {"x": [1, "}"]}, "a": "last"} "#;
        let entries = Entries::parse(text.as_bytes()).unwrap();
        let all: Vec<(&str, &str)> = entries.iter().collect();
        assert_eq!(
            all,
            [("a", "1"), ("bA", r#"{"x": [1, "}"]}"#), ("a", r#""last""#)]
        );
        assert_eq!(entries.get(b"a"), Some(r#""last""#));
        assert_eq!(entries.get(b"bA"), Some(r#"{"x": [1, "}"]}"#));
        assert!(!entries.contains(b"x"), "nested keys are not top-level");
        assert_eq!(entries.raw(0), Some(&b"\"a\": 1"[..]));
        assert_eq!(entries.raw(1), Some(&br#""b\u0041": {"x": [1, "}"]}"#[..]));
        assert_eq!(entries.raw(2), Some(&br#""a": "last""#[..]));
        assert_eq!(entries.raw(3), None);
        assert!(Entries::parse(b"[1]").is_err());
        assert!(Entries::parse(br#"{"a":1} x"#).is_err());
        assert!(Entries::parse(br#"{"a":}"#).is_err());
        assert!(Entries::parse(b"{\"\xff\":1}").is_err(), "not UTF-8");
    }

    #[test]
    fn a_key_is_mentioned_only_in_quotes() {
        let text = r#"{"$ip":"1.2.3.4","nested":{"$geoip_disable":true}}"#;
        assert!(mentions(text, "$ip"));
        assert!(mentions(text, "$geoip_disable"), "nested: look");
        assert!(!mentions(text, "$ip_x"));
        assert!(!mentions(r#"{"x":"$ip is a value"}"#, "$ip"));
        assert!(
            !mentions(r#"{"\u0024ip":1}"#, "$ip"),
            "escaped: the caller looks"
        );
    }

    #[test]
    fn strings_are_written_escaped_and_values_checked() {
        let mut out = Vec::new();
        write_string(&mut out, "plain é".as_bytes());
        write_string(&mut out, b"quote \" and \\ and \n \x01");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#""plain é""quote \" and \\ and \n \u0001""#
        );
        for good in [
            "null",
            "true",
            "0",
            "-12.5",
            "1e3",
            r#""a""#,
            r#""\u00e9""#,
            "[1,{}]",
            " 1 ",
        ] {
            assert!(is_json(good.as_bytes()), "{good}");
        }
        for bad in [
            "", "nul", "01", "1.", "-", r#""a"#, "\"a\nb\"", "[1,]", "1 2", "{",
        ] {
            assert!(!is_json(bad.as_bytes()), "{bad}");
        }
        for bad in [&b"\"\xff\""[..], b"\"a\xc3\""] {
            assert!(!is_json(bad), "not UTF-8");
        }
    }
}

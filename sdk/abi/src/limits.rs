//! Errors and caps of the host capabilities, shared so that the host and the SDK's native test
//! harness refuse exactly the same requests.

use std::fmt;

/// Longest storage or cache key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value `storage` keeps under one key, in bytes.
pub const MAX_STORAGE_VALUE_BYTES: usize = 64 * 1024;
/// Most keys one installation may keep in `storage`.
pub const MAX_STORAGE_KEYS: usize = 10_000;
/// Most keys one `storage.list-keys` call returns.
pub const MAX_LIST_KEYS: u32 = 1_000;
/// Largest value `cache` keeps under one key (or one list element), in bytes.
pub const MAX_CACHE_VALUE_BYTES: usize = 1024 * 1024;
/// Most elements of one cache list.
pub const MAX_CACHE_LIST_LEN: usize = 10_000;
/// Most values one `cache.list-push` call adds.
pub const MAX_CACHE_PUSH: usize = 1_000;
/// Most bytes (keys and values) one cache namespace holds.
pub const MAX_CACHE_NAMESPACE_BYTES: usize = 64 * 1024 * 1024;

/// Longest object key (or listing prefix), in bytes.
pub const MAX_OBJECT_KEY_BYTES: usize = 1024;
/// Most objects one `object-store.list` call returns.
pub const MAX_LIST_OBJECTS: u32 = 1_000;
/// Default cap of one object's size, in bytes (an operator can change it per store).
pub const DEFAULT_MAX_OBJECT_BYTES: usize = 64 * 1024 * 1024;

/// Largest job payload, in bytes.
pub const MAX_JOB_PAYLOAD_BYTES: usize = 64 * 1024;
/// Longest job name, in bytes.
pub const MAX_JOB_NAME_BYTES: usize = 128;
/// Log lines one plugin call may record; the rest are counted and reported in one line.
pub const MAX_LOG_LINES_PER_CALL: u32 = 100;
/// Longest log line kept, in bytes; longer lines are cut at a char boundary.
pub const MAX_LOG_LINE_BYTES: usize = 4096;

/// What kind of failure a host capability reports (the WIT `host-error-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed.
    Invalid,
    /// A key, value, request or response exceeds its cap.
    TooLarge,
    /// Grants or policy forbid the request.
    Refused,
    /// The backing service is missing or failing.
    Unavailable,
    /// The request did not finish in time.
    Timeout,
}

/// A failed request to a host capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// Details.
    pub message: String,
}

impl HostError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ErrorKind::Invalid => "invalid",
            ErrorKind::TooLarge => "too large",
            ErrorKind::Refused => "refused",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
        };
        write!(f, "{kind}: {}", self.message)
    }
}

impl std::error::Error for HostError {}

/// Checks a storage or cache key: 1 to [`MAX_KEY_BYTES`] bytes.
pub fn check_key(key: &str) -> Result<(), HostError> {
    if key.is_empty() {
        return Err(HostError::new(ErrorKind::Invalid, "key is empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(HostError::new(
            ErrorKind::TooLarge,
            format!("key of {} bytes (cap {MAX_KEY_BYTES})", key.len()),
        ));
    }
    Ok(())
}

/// Checks an object key (`prefix = false`) or a listing prefix (`prefix = true`): a relative
/// path of at most [`MAX_OBJECT_KEY_BYTES`] bytes, without a leading `/`, `.` or `..` segments,
/// empty segments (a prefix may end with `/` and may be empty), backslashes or control
/// characters.
pub fn check_object_key(key: &str, prefix: bool) -> Result<(), HostError> {
    let invalid = |why: &str| {
        Err(HostError::new(
            ErrorKind::Invalid,
            format!("key {key:?} {why}"),
        ))
    };
    if key.len() > MAX_OBJECT_KEY_BYTES {
        return Err(HostError::new(
            ErrorKind::TooLarge,
            format!("key of {} bytes (cap {MAX_OBJECT_KEY_BYTES})", key.len()),
        ));
    }
    if key.is_empty() {
        return if prefix { Ok(()) } else { invalid("is empty") };
    }
    if key.starts_with('/') {
        return invalid("is absolute");
    }
    if key.chars().any(|c| c == '\\' || c.is_control()) {
        return invalid("has a backslash or a control character");
    }
    let path = if prefix {
        key.strip_suffix('/').unwrap_or(key)
    } else {
        key
    };
    if path
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return invalid("has an empty, `.` or `..` segment");
    }
    Ok(())
}

/// Checks a job before it is queued: a name of letters, digits, `-`, `_`, `.` or `:` (at most
/// [`MAX_JOB_NAME_BYTES`]) and a JSON payload of at most [`MAX_JOB_PAYLOAD_BYTES`].
pub fn check_job(name: &str, payload: &str) -> Result<(), HostError> {
    let plain = !name.is_empty()
        && name.len() <= MAX_JOB_NAME_BYTES
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if !plain {
        return Err(HostError::new(
            ErrorKind::Invalid,
            format!(
                "job name {name:?} must be 1 to {MAX_JOB_NAME_BYTES} letters, digits, `-`, `_`, `.` or `:`"
            ),
        ));
    }
    check_value(payload.as_bytes(), MAX_JOB_PAYLOAD_BYTES)?;
    serde_json::from_str::<serde_json::Value>(payload)
        .map(drop)
        .map_err(|e| HostError::new(ErrorKind::Invalid, format!("job payload is not JSON: {e}")))
}

/// Checks a value against `cap` bytes.
pub fn check_value(value: &[u8], cap: usize) -> Result<(), HostError> {
    if value.len() > cap {
        return Err(HostError::new(
            ErrorKind::TooLarge,
            format!("value of {} bytes (cap {cap})", value.len()),
        ));
    }
    Ok(())
}

/// Checks one cache list push: at most [`MAX_CACHE_PUSH`] values of at most
/// [`MAX_CACHE_VALUE_BYTES`] each.
pub fn check_push(values: &[Vec<u8>]) -> Result<(), HostError> {
    if values.len() > MAX_CACHE_PUSH {
        return Err(HostError::new(
            ErrorKind::TooLarge,
            format!("{} values in one push (cap {MAX_CACHE_PUSH})", values.len()),
        ));
    }
    values
        .iter()
        .try_for_each(|value| check_value(value, MAX_CACHE_VALUE_BYTES))
}

/// Adds `by` to the decimal integer `current` (absent counts as 0), as `storage.increment` and
/// `cache.increment` do.
pub fn add_to_integer(current: Option<&[u8]>, by: i64) -> Result<i64, HostError> {
    let value = match current {
        None => 0,
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse::<i64>().ok())
            .ok_or_else(|| HostError::new(ErrorKind::Invalid, "value is not an integer"))?,
    };
    value
        .checked_add(by)
        .ok_or_else(|| HostError::new(ErrorKind::Invalid, "increment overflows a 64-bit integer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_values_and_integers_are_checked() {
        assert_eq!(check_key("").unwrap_err().kind, ErrorKind::Invalid);
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert_eq!(
            check_key(&"k".repeat(MAX_KEY_BYTES + 1)).unwrap_err().kind,
            ErrorKind::TooLarge
        );
        assert_eq!(
            check_value(&[0; 11], 10).unwrap_err().kind,
            ErrorKind::TooLarge
        );
        assert_eq!(add_to_integer(None, 5), Ok(5));
        assert_eq!(add_to_integer(Some(b"-7"), 2), Ok(-5));
        assert_eq!(
            add_to_integer(Some(b"seven"), 1).unwrap_err().kind,
            ErrorKind::Invalid
        );
        assert!(add_to_integer(Some(i64::MAX.to_string().as_bytes()), 1).is_err());
    }

    #[test]
    fn object_keys_are_relative_paths() {
        for key in ["a", "a/b.jsonl.gz", "2024-01-02/x-1.parquet", "é/ü"] {
            assert!(check_object_key(key, false).is_ok(), "{key}");
        }
        for key in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "a//b",
            "a/",
            "./a",
            "a\\b",
            "a\nb",
        ] {
            assert_eq!(
                check_object_key(key, false).unwrap_err().kind,
                ErrorKind::Invalid,
                "{key:?}"
            );
        }
        for prefix in ["", "exports/", "exports/2024"] {
            assert!(check_object_key(prefix, true).is_ok(), "{prefix}");
        }
        assert!(check_object_key("../", true).is_err());
        assert_eq!(
            check_object_key(&"k".repeat(1025), false).unwrap_err().kind,
            ErrorKind::TooLarge
        );
    }
}

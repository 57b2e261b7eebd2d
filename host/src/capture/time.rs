//! Event time: PostHog's rules for `timestamp`, `sent_at`, `offset` and clock skew.

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde_json::Value;

/// Events further in the future than this are clamped to `now`.
pub const MAX_FUTURE_MS: i64 = 23 * 3600 * 1000;

/// Parses a time given as an ISO 8601 / RFC 3339 string or as epoch milliseconds.
pub fn parse_time(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => parse_time_text(s.trim()),
        _ => None,
    }
}

fn parse_time_text(text: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_millis());
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    if let Ok(t) = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Some(t.timestamp_millis());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
}

/// Parses posthog-js's `_` query parameter: epoch seconds, or milliseconds when longer than 11
/// digits.
pub fn parse_epoch_digits(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: i64 = text.parse().ok()?;
    Some(if text.len() > 11 {
        value
    } else {
        value.checked_mul(1000)?
    })
}

/// The inputs to an event's time.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeInputs {
    /// The event's `timestamp`, parsed (`None` if absent or invalid).
    pub timestamp: Option<i64>,
    /// When the client sent the request.
    pub sent_at: Option<i64>,
    /// The event's `offset` (milliseconds before `now`).
    pub offset: Option<i64>,
    /// `properties.$ignore_sent_at`.
    pub ignore_sent_at: bool,
}

/// The event's time, in epoch milliseconds:
/// `timestamp` corrected for clock skew (`now + timestamp - sent_at`) when `sent_at` is known,
/// else `timestamp`; else `now - offset`; else `now`. Anything more than 23 hours ahead of `now`
/// becomes `now`.
pub fn event_time(now: i64, inputs: TimeInputs) -> i64 {
    let time = match (inputs.timestamp, inputs.sent_at, inputs.offset) {
        (Some(ts), Some(sent), _) if !inputs.ignore_sent_at => {
            now.saturating_add(ts.saturating_sub(sent))
        }
        (Some(ts), _, _) => ts,
        (None, _, Some(offset)) => now.saturating_sub(offset),
        (None, _, None) => now,
    };
    // Years outside 0..=9999 cannot be stored as ISO 8601 text.
    let valid = DateTime::from_timestamp_millis(time)
        .is_some_and(|t| (0..=9999).contains(&chrono::Datelike::year(&t)));
    if !valid || time > now.saturating_add(MAX_FUTURE_MS) {
        now
    } else {
        time
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn timestamps_parse_in_every_common_form() {
        let expected = 1_699_999_000_000;
        for text in [
            "2023-11-14T21:56:40Z",
            "2023-11-14T21:56:40.000+00:00",
            "2023-11-14T22:56:40+01:00",
            "2023-11-14T21:56:40",
            "2023-11-14 21:56:40.000",
        ] {
            assert_eq!(parse_time(&json!(text)), Some(expected), "{text}");
        }
        assert_eq!(parse_time(&json!(expected)), Some(expected));
        assert_eq!(parse_time(&json!("yesterday")), None);
    }

    #[test]
    fn sent_at_digits_are_seconds_or_milliseconds() {
        assert_eq!(parse_epoch_digits("1700000000"), Some(NOW));
        assert_eq!(parse_epoch_digits("1700000000000"), Some(NOW));
        assert_eq!(parse_epoch_digits("17e9"), None);
    }

    #[test]
    fn skew_is_corrected_unless_ignored() {
        // The client clock is one hour ahead; the event happened 5 s before sending.
        let inputs = TimeInputs {
            timestamp: Some(NOW + 3_600_000 - 5_000),
            sent_at: Some(NOW + 3_600_000),
            ..Default::default()
        };
        assert_eq!(event_time(NOW, inputs), NOW - 5_000);
        let ignored = TimeInputs {
            ignore_sent_at: true,
            ..inputs
        };
        assert_eq!(event_time(NOW, ignored), NOW + 3_600_000 - 5_000);
    }

    #[test]
    fn offset_applies_without_timestamp_and_now_is_the_fallback() {
        let offset = TimeInputs {
            offset: Some(2_000),
            ..Default::default()
        };
        assert_eq!(event_time(NOW, offset), NOW - 2_000);
        assert_eq!(event_time(NOW, TimeInputs::default()), NOW);
    }

    #[test]
    fn far_future_is_clamped_to_now() {
        let near = TimeInputs {
            timestamp: Some(NOW + MAX_FUTURE_MS - 1),
            ..Default::default()
        };
        assert_eq!(event_time(NOW, near), NOW + MAX_FUTURE_MS - 1);
        let far = TimeInputs {
            timestamp: Some(NOW + MAX_FUTURE_MS + 1),
            ..Default::default()
        };
        assert_eq!(event_time(NOW, far), NOW);
    }
}

//! What the event benchmarks send.

use serde_json::{Value, json};

/// The properties of event `i`: those of a browser `$pageview` (the peer's `mkEvent` has the
/// same).
pub fn properties(i: usize) -> Value {
    json!({
        "$current_url": format!("https://example.com/products/{}", i % 500),
        "$browser": "Chrome", "$os": "Mac OS X", "$lib": "web", "$lib_version": "1.434.18",
        "$screen_width": 1920, "plan": "pro", "value": 12.5,
    })
}

//! What the event benchmarks send.

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use std::io::Write;

/// The properties of event `i`: those of a browser `$pageview` (the peer's `mkEvent` has the
/// same).
pub fn properties(i: usize) -> Value {
    json!({
        "$current_url": format!("https://example.com/products/{}", i % 500),
        "$browser": "Chrome", "$os": "Mac OS X", "$lib": "web", "$lib_version": "1.434.18",
        "$screen_width": 1920, "plan": "pro", "value": 12.5,
    })
}

/// A gzip `/batch` body of `batch` for the benchmarks' team (`phc_bench`).
pub fn gzip_batch(batch: Vec<Value>) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(
        json!({"api_key": "phc_bench", "batch": batch})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    gz.finish().unwrap()
}

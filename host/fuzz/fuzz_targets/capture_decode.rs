//! Fuzzes the capture path from raw request parts to encoded events:
//! `cargo +nightly fuzz run capture_decode` (from `host/`).
//!
//! The first byte picks how the request arrives (method, content type, compression hint); the
//! rest is the body. Whatever the input, decoding must return a result (never panic, never grow
//! past its cap), and every event it accepts must encode and decode back unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::capture::{Input, RequestContext, decode, encode, normalize};
use sluice_abi::wire::BatchReader;

const HINTS: [Option<&str>; 8] = [
    None,
    Some("gzip"),
    Some("gzip-js"),
    Some("deflate"),
    Some("zstd"),
    Some("lz64"),
    Some("base64"),
    Some("unknown"),
];
const LIMIT: usize = 256 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let text = std::str::from_utf8(body).ok();
    let input = Input {
        get: selector & 0x80 != 0 && text.is_some(),
        body,
        content_type: (selector & 0x40 != 0).then_some("application/x-www-form-urlencoded"),
        content_encoding: (selector & 0x20 != 0).then_some("gzip"),
        query_data: text.filter(|_| selector & 0x80 != 0),
        query_compression: HINTS[usize::from(selector & 0x07)],
    };
    let Ok(decoded) = decode(&input, LIMIT) else { return };
    let ctx = RequestContext {
        now_ms: 1_700_000_000_000,
        outer_token: (selector & 0x10 != 0).then(|| "phc_fuzz".to_owned()),
        engage: selector & 0x08 != 0,
        ..RequestContext::default()
    };
    let Ok(normalized) = normalize(decoded.payload, &ctx) else { return };
    let batch = encode(&normalized.events, 1).expect("accepted events always encode");
    let decoded: Vec<_> = BatchReader::new(&batch)
        .expect("a batch sluice wrote is readable")
        .map(|raw| raw.and_then(|r| r.fields()).map(|f| f.event.to_owned()))
        .collect::<Result<_, _>>()
        .expect("every event sluice wrote decodes");
    let names: Vec<_> = normalized.events.iter().map(|e| e.event.clone()).collect();
    assert_eq!(decoded, names);
});

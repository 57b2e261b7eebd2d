//! Request bodies to JSON: decompression (size-capped) and parsing.

use super::error::CaptureError;
use flate2::read::GzDecoder;
use serde_json::Value;
use std::io::Read;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Decodes a body to JSON. `compression` is the `compression` query parameter or, failing that,
/// the `Content-Encoding` header. Gzip is also recognised by its magic bytes whatever the hint.
/// The decompressed size is capped at `limit` bytes.
pub fn decode_body(
    body: &[u8],
    compression: Option<&str>,
    limit: usize,
) -> Result<Value, CaptureError> {
    let hinted_gzip = matches!(
        compression.map(str::to_ascii_lowercase).as_deref(),
        Some("gzip" | "gzip-js")
    );
    let decompressed;
    let json = if hinted_gzip || body.starts_with(&GZIP_MAGIC) {
        decompressed = gunzip(body, limit)?;
        &decompressed[..]
    } else {
        body
    };
    serde_json::from_slice(json)
        .map_err(|e| CaptureError::InvalidPayload(format!("body is not valid JSON: {e}")))
}

/// Decompresses gzip, refusing output larger than `limit` bytes (no zip bombs).
pub fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, CaptureError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    GzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| CaptureError::InvalidPayload(format!("body is not valid gzip: {e}")))?;
    if out.len() > limit {
        return Err(CaptureError::PayloadTooLarge(limit));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn plain_hinted_and_sniffed_gzip_all_decode() {
        let body = br#"{"event":"e"}"#;
        assert_eq!(decode_body(body, None, 1000).unwrap()["event"], "e");
        assert_eq!(
            decode_body(&gzip(body), Some("gzip-js"), 1000).unwrap()["event"],
            "e"
        );
        assert_eq!(decode_body(&gzip(body), None, 1000).unwrap()["event"], "e");
    }

    #[test]
    fn a_compression_bomb_is_refused_as_too_large() {
        let bomb = gzip(&vec![b' '; 10 * 1024 * 1024]);
        assert!(bomb.len() < 64 * 1024);
        assert_eq!(
            decode_body(&bomb, None, 1024 * 1024).unwrap_err(),
            CaptureError::PayloadTooLarge(1024 * 1024)
        );
    }

    #[test]
    fn garbage_is_an_invalid_payload() {
        assert!(matches!(
            decode_body(b"{nope", None, 100),
            Err(CaptureError::InvalidPayload(_))
        ));
        assert!(matches!(
            decode_body(&[0x1f, 0x8b, 0, 1], None, 100),
            Err(CaptureError::InvalidPayload(_))
        ));
    }
}

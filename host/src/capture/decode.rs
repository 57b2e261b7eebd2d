//! Request bodies to JSON, as PostHog accepts them.
//!
//! 1. Where the data is: the raw body (JSON, `text/plain` or no content type), the form field
//!    `data` (`application/x-www-form-urlencoded`), or the query parameter `data` (GET).
//! 2. How it is compressed: query `compression`, else form `compression`, else the
//!    `Content-Encoding` header: `gzip`/`gzip-js`, `deflate`, `zstd`, `lz64`/`lz-string`,
//!    `base64`/`b64`. Gzip is also recognised by its magic bytes whatever the hint says.
//! 3. Data that still is not JSON is tried as (lenient) base64, as PostHog does for beacons.
//!
//! Every decompression is capped at `limit` bytes of output, so a bomb is refused with `413`.

use super::error::CaptureError;
use super::lzstring::{self, LzError};
use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use flate2::read::{DeflateDecoder, GzDecoder, ZlibDecoder};
use serde_json::Value;
use std::io::Read;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// What a request carries, apart from its path.
#[derive(Debug, Default, Clone, Copy)]
pub struct Input<'a> {
    /// Whether it is a GET (data in the query).
    pub get: bool,
    /// The body.
    pub body: &'a [u8],
    /// The `Content-Type` header.
    pub content_type: Option<&'a str>,
    /// The `Content-Encoding` header.
    pub content_encoding: Option<&'a str>,
    /// Query `data`.
    pub query_data: Option<&'a str>,
    /// Query `compression`.
    pub query_compression: Option<&'a str>,
}

/// Fields of a form body that matter besides `data`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FormFields {
    /// `api_key`, else `token`.
    pub token: Option<String>,
    /// `sent_at`.
    pub sent_at: Option<String>,
}

/// A decoded request.
#[derive(Debug)]
pub struct Decoded {
    /// The JSON payload.
    pub payload: Value,
    /// Form fields, when the body was a form.
    pub form: FormFields,
}

/// Decodes a request to JSON, with every decompressed size capped at `limit` bytes.
pub fn decode(input: &Input<'_>, limit: usize) -> Result<Decoded, CaptureError> {
    let (text, form) = decode_text(input, limit)?;
    Ok(Decoded {
        payload: parse(&text)?,
        form,
    })
}

/// Parses decoded JSON text.
pub fn parse(text: &[u8]) -> Result<Value, CaptureError> {
    serde_json::from_slice(text)
        .map_err(|e| CaptureError::InvalidPayload(format!("body is not valid JSON: {e}")))
}

/// Finds and decompresses a request's JSON text (not parsed yet), with every decompressed size
/// capped at `limit` bytes.
pub fn decode_text(input: &Input<'_>, limit: usize) -> Result<(Vec<u8>, FormFields), CaptureError> {
    // A JSON or gzip body is never a meaningful form: `curl -d '{...}'` labels JSON as a form,
    // and `curl --data-binary @events.gz -H 'Content-Encoding: gzip'` labels gzip as one (PostHog
    // sniffs gzip whatever the content type says).
    let gzip = input.body.starts_with(&GZIP_MAGIC)
        || input
            .content_encoding
            .is_some_and(|e| e.trim().eq_ignore_ascii_case("gzip"));
    let is_form = !input.get
        && !gzip
        && !looks_like_json(input.body)
        && input.content_type.is_some_and(|t| {
            t.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    let mut form = FormFields::default();
    let mut form_compression = None;
    let data: Vec<u8> = if input.get {
        input
            .query_data
            .ok_or_else(|| missing("no `data` query parameter"))?
            .as_bytes()
            .to_vec()
    } else if is_form {
        let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(input.body)
            .map_err(|e| CaptureError::InvalidPayload(format!("form body is not valid: {e}")))?;
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        form.token = field("api_key").or_else(|| field("token"));
        form.sent_at = field("sent_at");
        form_compression = field("compression");
        field("data")
            .ok_or_else(|| missing("form has no `data` field"))?
            .into_bytes()
    } else {
        input.body.to_vec()
    };
    let hint = input
        .query_compression
        .map(str::to_owned)
        .or(form_compression)
        .or_else(|| input.content_encoding.map(str::to_owned))
        .map(|h| h.trim().to_ascii_lowercase());
    Ok((decompress(data, hint.as_deref(), limit)?, form))
}

fn missing(what: &str) -> CaptureError {
    CaptureError::InvalidPayload(what.to_owned())
}

fn decompress(data: Vec<u8>, hint: Option<&str>, limit: usize) -> Result<Vec<u8>, CaptureError> {
    if data.starts_with(&GZIP_MAGIC) {
        return gunzip(&data, limit);
    }
    let data = match hint {
        Some("gzip" | "gzip-js") => gunzip(&data, limit)?,
        Some("deflate") => inflate(&data, limit)?,
        Some("zstd") => capped(zstd::stream::read::Decoder::new(&data[..]), limit, "zstd")?,
        Some("lz64" | "lz-string") => lz64(&data, limit)?,
        Some("base64" | "b64") => base64_lenient(&data)
            .ok_or_else(|| CaptureError::InvalidPayload("body is not valid base64".into()))?,
        _ => data,
    };
    if looks_like_json(&data) {
        return Ok(data);
    }
    // Beacons and some SDKs send base64 without saying so (possibly of gzip).
    match base64_lenient(&data) {
        Some(decoded) if decoded.starts_with(&GZIP_MAGIC) => gunzip(&decoded, limit),
        Some(decoded) if looks_like_json(&decoded) => Ok(decoded),
        _ => Ok(data),
    }
}

fn looks_like_json(data: &[u8]) -> bool {
    matches!(
        data.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

/// Decompresses gzip, refusing output larger than `limit` bytes (no zip bombs).
pub fn gunzip(data: &[u8], limit: usize) -> Result<Vec<u8>, CaptureError> {
    capped(Ok(GzDecoder::new(data)), limit, "gzip")
}

fn inflate(data: &[u8], limit: usize) -> Result<Vec<u8>, CaptureError> {
    // `deflate` means zlib-wrapped deflate (RFC 1950); accept raw deflate too.
    capped(Ok(ZlibDecoder::new(data)), limit, "deflate").or_else(|error| match error {
        CaptureError::PayloadTooLarge(_) => Err(error),
        _ => capped(Ok(DeflateDecoder::new(data)), limit, "deflate"),
    })
}

fn capped<R: Read>(
    reader: std::io::Result<R>,
    limit: usize,
    format: &str,
) -> Result<Vec<u8>, CaptureError> {
    let invalid = |e: std::io::Error| {
        CaptureError::InvalidPayload(format!("body is not valid {format}: {e}"))
    };
    let mut out = Vec::new();
    reader
        .map_err(invalid)?
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(invalid)?;
    if out.len() > limit {
        return Err(CaptureError::PayloadTooLarge(limit));
    }
    Ok(out)
}

fn lz64(data: &[u8], limit: usize) -> Result<Vec<u8>, CaptureError> {
    let invalid = || CaptureError::InvalidPayload("body is not valid lz64".into());
    let text = std::str::from_utf8(data)
        .map_err(|_| invalid())?
        .replace(' ', "+");
    // UTF-16 units become at most 3 UTF-8 bytes each.
    let units = lzstring::decompress_from_base64(&text, limit).map_err(|e| match e {
        LzError::TooLarge => CaptureError::PayloadTooLarge(limit),
        LzError::Invalid => invalid(),
    })?;
    let text = String::from_utf16(&units).map_err(|_| invalid())?;
    if text.len() > limit {
        return Err(CaptureError::PayloadTooLarge(limit));
    }
    Ok(text.into_bytes())
}

/// Base64 as PostHog reads it: spaces are `+` (form decoding turned them into spaces), padding
/// optional, line breaks ignored, standard or URL-safe alphabet.
fn base64_lenient(data: &[u8]) -> Option<Vec<u8>> {
    let cleaned: Vec<u8> = data
        .iter()
        .filter(|b| !matches!(b, b'\n' | b'\r' | b'\t'))
        .map(|b| if *b == b' ' { b'+' } else { *b })
        .collect();
    let end = cleaned
        .iter()
        .rposition(|b| *b != b'=')
        .map_or(0, |i| i + 1);
    let config = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    [alphabet::STANDARD, alphabet::URL_SAFE]
        .iter()
        .find_map(|alphabet| {
            GeneralPurpose::new(alphabet, config)
                .decode(&cleaned[..end])
                .ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::{GzEncoder, ZlibEncoder};
    use std::io::Write;

    const EVENT: &str = r#"{"event":"e","distinct_id":"u"}"#;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn body(body: &[u8]) -> Input<'_> {
        Input {
            body,
            ..Input::default()
        }
    }

    fn event_of(input: &Input<'_>) -> Value {
        decode(input, 1 << 20).unwrap().payload["event"].clone()
    }

    #[test]
    fn plain_hinted_and_sniffed_gzip_all_decode() {
        assert_eq!(event_of(&body(EVENT.as_bytes())), "e");
        let gz = gzip(EVENT.as_bytes());
        assert_eq!(
            event_of(&Input {
                query_compression: Some("gzip-js"),
                ..body(&gz)
            }),
            "e"
        );
        assert_eq!(event_of(&body(&gz)), "e");
        assert_eq!(
            event_of(&Input {
                content_encoding: Some("GZIP"),
                ..body(&gz)
            }),
            "e"
        );
    }

    #[test]
    fn deflate_zstd_and_lz64_decode() {
        let mut zlib = ZlibEncoder::new(Vec::new(), Compression::default());
        zlib.write_all(EVENT.as_bytes()).unwrap();
        let zlib = zlib.finish().unwrap();
        assert_eq!(
            event_of(&Input {
                content_encoding: Some("deflate"),
                ..body(&zlib)
            }),
            "e"
        );
        let zstd = zstd::encode_all(EVENT.as_bytes(), 3).unwrap();
        assert_eq!(
            event_of(&Input {
                content_encoding: Some("zstd"),
                ..body(&zstd)
            }),
            "e"
        );
        let lz = lz_str::compress_to_base64(EVENT);
        assert_eq!(
            event_of(&Input {
                query_compression: Some("lz64"),
                ..body(lz.as_bytes())
            }),
            "e"
        );
    }

    #[test]
    fn forms_and_get_queries_carry_data_token_and_sent_at() {
        let encoded = base64::engine::general_purpose::STANDARD.encode(EVENT);
        let form = serde_urlencoded::to_string([
            ("data", encoded.as_str()),
            ("api_key", "phc_f"),
            ("sent_at", "1700000000"),
        ])
        .unwrap();
        let input = Input {
            content_type: Some("application/x-www-form-urlencoded"),
            ..body(form.as_bytes())
        };
        let decoded = decode(&input, 1 << 20).unwrap();
        assert_eq!(decoded.payload["event"], "e");
        assert_eq!(
            decoded.form,
            FormFields {
                token: Some("phc_f".into()),
                sent_at: Some("1700000000".into())
            }
        );

        let curl = Input {
            content_type: Some("application/x-www-form-urlencoded"),
            ..body(EVENT.as_bytes())
        };
        assert_eq!(
            event_of(&curl),
            "e",
            "JSON labelled as a form is read as JSON"
        );
        let gz = gzip(EVENT.as_bytes());
        for content_encoding in [Some("gzip"), None] {
            let curl_gzip = Input {
                content_type: Some("application/x-www-form-urlencoded"),
                content_encoding,
                ..body(&gz)
            };
            assert_eq!(event_of(&curl_gzip), "e", "gzip labelled as a form");
        }

        let get = Input {
            get: true,
            query_data: Some(EVENT),
            ..Input::default()
        };
        assert_eq!(event_of(&get), "e");
        let get = Input {
            get: true,
            query_data: Some(&encoded),
            ..Input::default()
        };
        assert_eq!(event_of(&get), "e");
    }

    #[test]
    fn base64_is_lenient_about_padding_spaces_and_alphabet() {
        // This text has a `+` or `/` in standard base64, so the alphabet and spaces matter.
        let text = r#"{"event":"e>>?"}"#;
        let standard = base64::engine::general_purpose::STANDARD.encode(text);
        assert!(
            standard.contains('+') || standard.contains('/'),
            "{standard}"
        );
        let spaced = standard.replace('+', " ");
        let unpadded = standard.trim_end_matches('=').to_owned();
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        for variant in [
            standard.clone(),
            spaced,
            unpadded,
            url_safe,
            format!("{standard}=="),
        ] {
            let input = Input {
                query_compression: Some("base64"),
                ..body(variant.as_bytes())
            };
            assert_eq!(
                decode(&input, 1 << 20).unwrap().payload["event"],
                "e>>?",
                "{variant}"
            );
        }
    }

    #[test]
    fn every_kind_of_bomb_is_refused_as_too_large() {
        let big = vec![b' '; 3 << 19];
        let gz = gzip(&big);
        let zstd = zstd::encode_all(&big[..], 3).unwrap();
        // LZ-String's reference compressor is slow on long runs, so this bomb is smaller.
        let lz = lz_str::compress_to_base64(&"a".repeat(200_000));
        let cases: [(&[u8], Option<&str>, usize); 3] = [
            (&gz, None, 1 << 20),
            (&zstd, Some("zstd"), 1 << 20),
            (lz.as_bytes(), Some("lz64"), 64 << 10),
        ];
        for (data, hint, limit) in cases {
            assert!(
                data.len() < 16 * 1024,
                "{hint:?} input is small: {}",
                data.len()
            );
            let input = Input {
                query_compression: hint,
                ..body(data)
            };
            assert_eq!(
                decode(&input, limit).unwrap_err(),
                CaptureError::PayloadTooLarge(limit),
                "{hint:?}"
            );
        }
    }

    #[test]
    fn garbage_is_an_invalid_payload() {
        for (data, hint) in [
            (&b"{nope"[..], None),
            (&[0x1f, 0x8b, 0, 1][..], None),
            (b"%%%", Some("lz64")),
            (b"xx", Some("zstd")),
        ] {
            let input = Input {
                query_compression: hint,
                ..body(data)
            };
            assert!(
                matches!(decode(&input, 100), Err(CaptureError::InvalidPayload(_))),
                "{data:?}"
            );
        }
    }
}

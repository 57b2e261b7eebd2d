//! LZ-String `compressToBase64` decoding, as sent by older posthog-js (`compression=lz64`).
//!
//! Written here rather than taken from a crate because decoding must be bounded: LZ-String's
//! dictionary lets a small input expand quadratically, and the available decoder keeps every
//! dictionary entry as its own vector with no output limit. Here every dictionary entry is a
//! range of the output already produced, so memory is linear in the output, which is capped.

/// Why a body could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LzError {
    /// Not valid LZ-String data.
    Invalid,
    /// The output would exceed the cap.
    TooLarge,
}

const KEY: &[u8; 65] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";

/// Reads the bit stream: 6 bits per input character, lowest bit of each code first.
struct Bits<I> {
    chars: I,
    value: u16,
    position: u16,
}

impl<I: Iterator<Item = u16>> Bits<I> {
    fn read(&mut self, count: u8) -> Result<u32, LzError> {
        let mut result = 0;
        for bit in 0..count {
            if self.value & self.position != 0 {
                result |= 1 << bit;
            }
            self.position >>= 1;
            if self.position == 0 {
                self.position = 32;
                self.value = self.chars.next().ok_or(LzError::Invalid)?;
            }
        }
        Ok(result)
    }
}

/// Decodes `input` (LZ-String base64 alphabet; characters outside it are skipped, as the
/// reference decoder does) into UTF-16 code units, at most `max_units` of them.
pub fn decompress_from_base64(input: &str, max_units: usize) -> Result<Vec<u16>, LzError> {
    let mut chars = input
        .bytes()
        .filter_map(|b| KEY.iter().position(|k| *k == b).map(|i| i as u16));
    let Some(first) = chars.next() else {
        return Ok(Vec::new());
    };
    let mut bits = Bits {
        chars,
        value: first,
        position: 32,
    };
    let mut out: Vec<u16> = Vec::new();
    // Codes 0, 1 and 2 are control codes; entries from 3 on are ranges of `out`.
    let mut dictionary: Vec<(usize, usize)> = vec![(0, 0); 3];

    let mut w = match bits.read(2)? {
        0 => literal(&mut bits, &mut out, &mut dictionary, 8, max_units)?,
        1 => literal(&mut bits, &mut out, &mut dictionary, 16, max_units)?,
        2 => return Ok(out),
        _ => return Err(LzError::Invalid),
    };
    let mut num_bits: u8 = 3;
    let mut enlarge_in: u64 = 4;
    loop {
        let code = bits.read(num_bits)? as usize;
        let literal_entry = match code {
            0 | 1 => {
                let width = if code == 0 { 8 } else { 16 };
                let entry = literal(&mut bits, &mut out, &mut dictionary, width, max_units)?;
                enlarge_in -= 1;
                Some(entry)
            }
            2 => return Ok(out),
            _ => None,
        };
        if enlarge_in == 0 {
            enlarge_in = 1 << num_bits;
            num_bits = next_width(num_bits)?;
        }
        let entry = match literal_entry {
            // A literal is already in `out`, right after `w`.
            Some(entry) => entry,
            None if code < dictionary.len() => {
                let (start, len) = dictionary[code];
                copy_within(&mut out, start, len, max_units)?
            }
            None if code == dictionary.len() => {
                // The entry being defined right now: `w` followed by its own first unit.
                let (start, len) = w;
                let new_start = out.len();
                copy_within(&mut out, start, len, max_units)?;
                copy_within(&mut out, start, 1, max_units)?;
                (new_start, len + 1)
            }
            None => return Err(LzError::Invalid),
        };
        // `w` is immediately followed in `out` by `entry`, so `w + entry[0]` is a range too.
        dictionary.push((w.0, w.1 + 1));
        enlarge_in -= 1;
        w = entry;
        if enlarge_in == 0 {
            enlarge_in = 1 << num_bits;
            num_bits = next_width(num_bits)?;
        }
    }
}

fn literal<I: Iterator<Item = u16>>(
    bits: &mut Bits<I>,
    out: &mut Vec<u16>,
    dictionary: &mut Vec<(usize, usize)>,
    width: u8,
    max_units: usize,
) -> Result<(usize, usize), LzError> {
    let unit = bits.read(width)? as u16;
    if out.len() >= max_units {
        return Err(LzError::TooLarge);
    }
    out.push(unit);
    dictionary.push((out.len() - 1, 1));
    Ok((out.len() - 1, 1))
}

fn copy_within(
    out: &mut Vec<u16>,
    start: usize,
    len: usize,
    max_units: usize,
) -> Result<(usize, usize), LzError> {
    if out.len().saturating_add(len) > max_units {
        return Err(LzError::TooLarge);
    }
    let new_start = out.len();
    out.extend_from_within(start..start + len);
    Ok((new_start, len))
}

fn next_width(num_bits: u8) -> Result<u8, LzError> {
    if num_bits >= 31 {
        Err(LzError::Invalid)
    } else {
        Ok(num_bits + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) {
        let compressed = lz_str::compress_to_base64(text);
        let units = decompress_from_base64(&compressed, 1 << 20).unwrap();
        assert_eq!(String::from_utf16(&units).unwrap(), text);
    }

    #[test]
    fn decodes_what_the_reference_compressor_produces() {
        round_trip("");
        round_trip("a");
        round_trip(r#"[{"event":"$pageview","properties":{"distinct_id":"abc","$lib":"web"}}]"#);
        round_trip(&"abcabcabcabd".repeat(500));
        round_trip("ünïcødé 😀 and more ünïcødé 😀");
        let varied: String = (0..5000)
            .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
            .collect();
        round_trip(&varied);
    }

    #[test]
    fn output_is_capped() {
        let compressed = lz_str::compress_to_base64(&"a".repeat(100_000));
        assert!(
            compressed.len() < 2_000,
            "the input is small: {}",
            compressed.len()
        );
        assert_eq!(
            decompress_from_base64(&compressed, 50_000),
            Err(LzError::TooLarge)
        );
        assert_eq!(
            decompress_from_base64(&compressed, 100_000).unwrap().len(),
            100_000
        );
    }

    #[test]
    fn garbage_is_invalid_not_a_panic() {
        for input in ["////", "AAAA", "zzzzzzzz", "N4Ig", "+/+/+/+/+/+/+/+/+/+/"] {
            let _ = decompress_from_base64(input, 1000);
        }
    }
}

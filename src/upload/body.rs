//! The `PutTraceSegments` request body, written straight from the received document bytes:
//! `{"TraceSegmentDocuments":["<doc>",...]}` with each document JSON-string escaped.
//!
//! Documents are never parsed. Escaping follows the Go daemon's JSON encoder where it changes
//! content: each byte that is not part of valid UTF-8 becomes U+FFFD, one per byte.

const PREFIX: &[u8] = br#"{"TraceSegmentDocuments":["#;
const SUFFIX: &[u8] = b"]}";

/// Builds the request body for `documents`.
pub fn put_trace_segments_body<'a>(documents: impl Iterator<Item = &'a [u8]> + Clone) -> Vec<u8> {
    // Escaping rarely grows a document by more than its quotes; reserve for the common case.
    let estimate: usize = documents.clone().map(|d| d.len() + d.len() / 8 + 3).sum();
    let mut body = Vec::with_capacity(PREFIX.len() + estimate + SUFFIX.len());
    body.extend_from_slice(PREFIX);
    for (index, document) in documents.enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.push(b'"');
        escape_json_string_into(&mut body, document);
        body.push(b'"');
    }
    body.extend_from_slice(SUFFIX);
    body
}

/// Appends `bytes` escaped as the inside of a JSON string.
pub fn escape_json_string_into(out: &mut Vec<u8>, bytes: &[u8]) {
    // Segment documents are nearly always valid UTF-8: check once with std's fast validator
    // and only fall back to chunk-by-chunk handling for the rare invalid document.
    if std::str::from_utf8(bytes).is_ok() {
        escape_valid_utf8(out, bytes);
        return;
    }
    for chunk in bytes.utf8_chunks() {
        escape_valid_utf8(out, chunk.valid().as_bytes());
        for _ in chunk.invalid() {
            out.extend_from_slice(br"\ufffd");
        }
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const LOWS: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `word` that is zero, exactly (no borrow between bytes, so no
/// false positives next to a real match).
fn zero_bytes(word: u64) -> u64 {
    !(((word & LOWS) + LOWS) | word) & HIGHS
}

/// The high bit of each byte of `word` that is a control character, `"` or `\\`.
fn bytes_needing_escape(word: u64) -> u64 {
    // `(b & 0x7f) + 0x60` reaches 0x80 exactly when the low seven bits are >= 0x20; OR-ing the
    // byte itself keeps bytes >= 0x80 (UTF-8 lead and continuation bytes) out.
    let below_space = !(((word & LOWS) + ONES * 0x60) | word) & HIGHS;
    let quote = zero_bytes(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_bytes(word ^ (ONES * u64::from(b'\\')));
    below_space | quote | backslash
}

fn escape_valid_utf8(out: &mut Vec<u8>, text: &[u8]) {
    out.reserve(text.len() + text.len() / 8);
    let mut run_start = 0;
    let mut words = text.chunks_exact(8);
    let mut word_start = 0;
    // Whole words: jump from one byte needing escape to the next through the word's mask, so
    // the cost follows the number of quotes, not the number of bytes.
    for word in words.by_ref() {
        let mut mask =
            bytes_needing_escape(u64::from_le_bytes(word.try_into().expect("eight bytes")));
        while mask != 0 {
            let at = word_start + (mask.trailing_zeros() / 8) as usize;
            run_start = escape_at(out, text, run_start, at);
            mask &= mask - 1;
        }
        word_start += 8;
    }
    for (offset, &byte) in words.remainder().iter().enumerate() {
        if byte < 0x20 || byte == b'"' || byte == b'\\' {
            run_start = escape_at(out, text, run_start, word_start + offset);
        }
    }
    out.extend_from_slice(&text[run_start..]);
}

/// Appends the run of `text` from `run_start` to `at` and the escape of `text[at]` (a control
/// character, `"` or `\\`); returns where the next run starts.
///
/// A quote or backslash is escaped by a backslash alone, the byte itself starting the next
/// run: one copy per quote instead of two, and documents have a quote every 10-25 bytes.
#[inline(always)]
fn escape_at(out: &mut Vec<u8>, text: &[u8], run_start: usize, at: usize) -> usize {
    out.extend_from_slice(&text[run_start..at]);
    match text[at] {
        b'"' | b'\\' => {
            out.push(b'\\');
            at
        }
        control => {
            push_control_escape(out, control);
            at + 1
        }
    }
}

/// Appends the JSON escape of the control character `byte`.
fn push_control_escape(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match byte {
        b'\n' => out.extend_from_slice(br"\n"),
        b'\r' => out.extend_from_slice(br"\r"),
        b'\t' => out.extend_from_slice(br"\t"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(byte >> 4)],
            HEX[usize::from(byte & 0xf)],
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(body: &[u8]) -> Vec<String> {
        let value: serde_json::Value = serde_json::from_slice(body).expect("valid JSON");
        value["TraceSegmentDocuments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn documents_round_trip_through_a_json_decoder() {
        let docs: [&[u8]; 4] = [
            br#"{"id":"a","name":"svc \"x\" \\ y"}"#,
            b"{\"multi\":\n\"line\"}\r\t",
            "{\"unicode\":\"h\u{e9}llo \u{1F600}\"}".as_bytes(),
            b"\x00\x1f\x7f",
        ];
        let body = put_trace_segments_body(docs.iter().copied());
        let expected: Vec<String> = docs
            .iter()
            .map(|d| String::from_utf8(d.to_vec()).unwrap())
            .collect();
        assert_eq!(decoded(&body), expected);
    }

    #[test]
    fn invalid_utf8_becomes_one_replacement_character_per_byte() {
        // A lone continuation byte, a truncated 3-byte sequence, an encoded surrogate.
        let body = put_trace_segments_body([&b"a\x80b\xe2\x82c\xed\xa0\x80"[..]].into_iter());
        assert_eq!(
            decoded(&body),
            vec!["a\u{fffd}b\u{fffd}\u{fffd}c\u{fffd}\u{fffd}\u{fffd}"]
        );
    }

    #[test]
    fn the_word_scan_agrees_with_a_byte_by_byte_escape_for_every_byte_value() {
        fn reference(bytes: &[u8]) -> Vec<u8> {
            serde_json::to_vec(std::str::from_utf8(bytes).unwrap()).unwrap()
        }
        // Every byte value at every position of a word, among clean ASCII and multi-byte text.
        for value in 0u8..0x80 {
            let base = "abcdefgh\u{e9}ijklmnopqrs";
            for position in (0..=base.len()).filter(|&p| base.is_char_boundary(p)) {
                let mut text = base.as_bytes().to_vec();
                text.insert(position, value);
                let mut out = vec![b'"'];
                escape_json_string_into(&mut out, &text);
                out.push(b'"');
                let decoded: String = serde_json::from_slice(&out).unwrap();
                assert_eq!(
                    decoded.as_bytes(),
                    &text[..],
                    "byte {value:#x} at {position}"
                );
                if !matches!(value, 0x08 | 0x0c | 0x7f) {
                    assert_eq!(out, reference(&text), "byte {value:#x} at {position}");
                }
            }
        }
    }

    #[test]
    fn dense_escapes_in_every_word_position_round_trip() {
        // Words holding several characters to escape, at every alignment and length, so the
        // per-word mask walks more than one match and the tail loop sees every position.
        let alphabet = [
            "a",
            "\"",
            "\\",
            "\n",
            "\u{1}",
            "\u{e9}",
            "\u{1F600}",
            "\t",
            "z",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for length in 0..64 {
            for _ in 0..20 {
                let text: String = (0..length)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        alphabet[(state % alphabet.len() as u64) as usize]
                    })
                    .collect();
                let body = put_trace_segments_body([text.as_bytes()].into_iter());
                assert_eq!(decoded(&body), vec![text.clone()], "{text:?}");
            }
        }
    }

    #[test]
    fn the_body_has_the_put_trace_segments_shape() {
        assert_eq!(
            put_trace_segments_body(std::iter::empty()),
            br#"{"TraceSegmentDocuments":[]}"#
        );
        assert_eq!(
            put_trace_segments_body([&b"{}"[..], b"x"].into_iter()),
            br#"{"TraceSegmentDocuments":["{}","x"]}"#
        );
        let mut out = Vec::new();
        escape_json_string_into(&mut out, b"\x01");
        assert_eq!(out, br"\u0001");
    }
}

//! The segment wire format: splitting a datagram into header and document, and the Go
//! daemon's exact header acceptance rules.
//!
//! A datagram is `<header>\n<document>`. The header must decode, with Go `encoding/json`
//! semantics, into `{format, version}` with `format` equal to `json` (case-insensitively) and
//! `version` the integer 1. The document is never parsed: it is forwarded byte for byte.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// The largest datagram the daemon reads (the Go daemon's 64 KiB receive buffer).
pub const MAX_DATAGRAM_BYTES: usize = 64 * 1024;

/// The header every X-Ray SDK sends; checked byte for byte before any JSON decoding.
const CANONICAL_HEADER: &[u8] = br#"{"format":"json","version":1}"#;

/// Why a datagram or record was refused at ingest. The names are metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// No `\n` separates a header from a document.
    MissingHeader,
    /// The header is not JSON, or does not say format `json` and version 1.
    InvalidHeader,
    /// The header is followed by nothing.
    EmptyBody,
    /// Longer than [`MAX_DATAGRAM_BYTES`].
    TooLarge,
}

impl Rejection {
    /// Every ingest rejection, for pre-registering metric handles.
    pub const ALL: [Rejection; 4] = [
        Rejection::MissingHeader,
        Rejection::InvalidHeader,
        Rejection::EmptyBody,
        Rejection::TooLarge,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::MissingHeader => "missing_header",
            Rejection::InvalidHeader => "invalid_header",
            Rejection::EmptyBody => "empty_body",
            Rejection::TooLarge => "too_large",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Splits a datagram at its first `\n` and checks the header; returns the document bytes.
///
/// Checks run in the Go daemon's order: a missing separator and an empty document are both
/// refused before the header is decoded (the Go daemon logs them as "Missing header or
/// segment"); we keep the two apart because operators want to know which one it was.
pub fn split_datagram(datagram: &[u8]) -> Result<&[u8], Rejection> {
    if datagram.len() > MAX_DATAGRAM_BYTES {
        return Err(Rejection::TooLarge);
    }
    let Some(newline) = datagram.iter().position(|&b| b == b'\n') else {
        return Err(Rejection::MissingHeader);
    };
    let (header, body) = (&datagram[..newline], &datagram[newline + 1..]);
    if body.is_empty() {
        return Err(Rejection::EmptyBody);
    }
    if header_is_valid(header) {
        Ok(body)
    } else {
        Err(Rejection::InvalidHeader)
    }
}

/// True if `header` is what the Go daemon accepts: a complete JSON value that decodes into
/// format `json` (any case) and version 1.
pub fn header_is_valid(header: &[u8]) -> bool {
    if header == CANONICAL_HEADER {
        return true;
    }
    let mut deserializer = serde_json::Deserializer::from_slice(header);
    let Ok(decoded) = deserializer.deserialize_any(HeaderVisitor) else {
        return false;
    };
    // Trailing bytes other than JSON whitespace make the whole header invalid, as in Go.
    if deserializer.end().is_err() {
        return false;
    }
    decoded
        .format
        .is_some_and(|format| fold_eq(&format, "json"))
        && decoded.version == Some(1)
}

/// The two header fields, as Go's decoder leaves them in a struct that starts zeroed.
#[derive(Default)]
struct DecodedHeader<'a> {
    format: Option<Cow<'a, str>>,
    version: Option<i64>,
}

/// One header value, classified by what Go's decoder would do with it.
enum HeaderValue<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    /// `null` leaves a Go field unchanged.
    Null,
    /// A type mismatch: Go skips the value and keeps the field's previous content.
    Mismatch,
}

struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = DecodedHeader<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut header = DecodedHeader::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            // Go matches field names case-insensitively and lets the last duplicate win.
            if fold_eq(&key, "format") {
                match map.next_value::<HeaderValue<'de>>()? {
                    HeaderValue::Str(s) => header.format = Some(s),
                    HeaderValue::Int(_) | HeaderValue::Null | HeaderValue::Mismatch => {}
                }
            } else if fold_eq(&key, "version") {
                match map.next_value::<HeaderValue<'de>>()? {
                    HeaderValue::Int(n) => header.version = Some(n),
                    HeaderValue::Str(_) | HeaderValue::Null | HeaderValue::Mismatch => {}
                }
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(header)
    }

    // Any JSON value that is not an object decodes (in Go, with an ignored error) to the
    // zero header, which is invalid.
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(DecodedHeader::default())
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(DecodedHeader::default())
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(DecodedHeader::default())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(DecodedHeader::default())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(DecodedHeader::default())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(DecodedHeader::default())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(DecodedHeader::default())
    }
}

impl<'de> de::Deserialize<'de> for HeaderValue<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(HeaderValueVisitor)
    }
}

struct HeaderValueVisitor;

impl<'de> Visitor<'de> for HeaderValueVisitor {
    type Value = HeaderValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(HeaderValue::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(HeaderValue::Str(Cow::Owned(s.to_owned())))
    }
    // Go's int field accepts only integer literals that fit in 64 bits; `1.0` and `1e0` are
    // type mismatches there, and serde_json reports them as floats.
    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(HeaderValue::Int(n))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(n).map_or(HeaderValue::Mismatch, HeaderValue::Int))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(HeaderValue::Mismatch)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(HeaderValue::Mismatch)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(HeaderValue::Null)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(HeaderValue::Mismatch)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(HeaderValue::Mismatch)
    }
}

/// Case-insensitive comparison against an ASCII lower-case `target`, with Go's simple case
/// folding: besides ASCII, `ſ` (U+017F) folds to `s` and the Kelvin sign (U+212A) to `k`.
fn fold_eq(candidate: &str, target: &str) -> bool {
    let mut target = target.bytes();
    for c in candidate.chars() {
        let folded = match c {
            '\u{017F}' => 's',
            '\u{212A}' => 'k',
            c => c.to_ascii_lowercase(),
        };
        if target.next() != Some(folded as u8) || !folded.is_ascii() {
            return false;
        }
    }
    target.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header acceptance table: every rule of the Go daemon's reference §3.3.
    #[test]
    fn header_acceptance_table() {
        let cases: &[(&str, bool)] = &[
            (r#"{"format":"json","version":1}"#, true),
            (r#"{"format": "json", "version": 1}"#, true),
            ("  {\"format\":\"json\",\"version\":1}  ", true),
            ("{\"format\":\"json\",\"version\":1}\r", true),
            ("{\n\"format\":\"json\",\t\"version\":1}", true),
            (r#"{"version":1,"format":"json"}"#, true),
            (r#"{"FORMAT":"json","VERSION":1}"#, true),
            (r#"{"Format":"JSON","Version":1}"#, true),
            (r#"{"format":"jSoN","version":1}"#, true),
            (r#"{"format":"js\u006fn","version":1}"#, true),
            (r#"{"format":"json","version":1,"extra":[1,{"a":2}]}"#, true),
            (r#"{"format":"xml","format":"json","version":1}"#, true),
            (r#"{"format":"json","format":5,"version":1}"#, true),
            (r#"{"format":"json","version":1,"version":null}"#, true),
            ("{\"format\":\"j\u{017F}on\",\"ver\u{017F}ion\":1}", true),
            (r#"{"format":"json","version":2}"#, false),
            (r#"{"format":"xml","version":1}"#, false),
            (r#"{"format":"json","version":"1"}"#, false),
            (r#"{"format":"json","version":1.0}"#, false),
            (r#"{"format":"json","version":1e0}"#, false),
            (r#"{"format":"json","version":true}"#, false),
            (r#"{"format":"json","version":null}"#, false),
            (r#"{"format":"json"}"#, false),
            (r#"{"version":1}"#, false),
            (r#"{"format":"json","version":1}x"#, false),
            (r#"{"format":"json","version":1}{}"#, false),
            ("\u{feff}{\"format\":\"json\",\"version\":1}", false),
            (r#"{"format":"json","version":1"#, false),
            (r#"{"format":"json ","version":1}"#, false),
            (r#"{"format":"json","version":18446744073709551617}"#, false),
            (r#"{"format":"json","version":1,"format":"xml"}"#, false),
            (r#"[{"format":"json","version":1}]"#, false),
            ("null", false),
            ("", false),
            ("json", false),
        ];
        for (header, expected) in cases {
            assert_eq!(
                header_is_valid(header.as_bytes()),
                *expected,
                "header {header:?}"
            );
        }
    }

    #[test]
    fn split_returns_the_document_after_the_first_newline_byte_for_byte() {
        let datagram = b"{\"format\":\"json\",\"version\":1}\n{\"a\":\n\"b\"}\xff\n";
        assert_eq!(split_datagram(datagram), Ok(&b"{\"a\":\n\"b\"}\xff\n"[..]));
    }

    #[test]
    fn split_rejections_name_the_reason() {
        let header = r#"{"format":"json","version":1}"#;
        assert_eq!(
            split_datagram(header.as_bytes()),
            Err(Rejection::MissingHeader)
        );
        assert_eq!(
            split_datagram(format!("{header}\n").as_bytes()),
            Err(Rejection::EmptyBody)
        );
        assert_eq!(split_datagram(b"{}\n{}"), Err(Rejection::InvalidHeader));
        assert_eq!(split_datagram(b"\n{}"), Err(Rejection::InvalidHeader));
        let mut huge = format!("{header}\n").into_bytes();
        huge.resize(MAX_DATAGRAM_BYTES + 1, b'x');
        assert_eq!(split_datagram(&huge), Err(Rejection::TooLarge));
        huge.truncate(MAX_DATAGRAM_BYTES);
        assert!(split_datagram(&huge).is_ok());
    }

    #[test]
    fn every_captured_sdk_datagram_is_accepted() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/sdk-datagrams");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            panic!("fixtures missing at {}", dir.display());
        };
        let mut seen = 0;
        for entry in entries {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let body = split_datagram(&bytes).expect("fixture accepted");
            assert_eq!(
                body,
                &bytes[bytes.iter().position(|&b| b == b'\n').unwrap() + 1..]
            );
            seen += 1;
        }
        assert!(seen >= 5);
    }
}

//! `segment::split_datagram` on arbitrary bytes: never panics, and what it returns agrees with
//! the wire format (the document is everything after the first `\n`, never empty; oversized
//! datagrams are refused whole; a canonical header is always accepted).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xray_daemon::segment::{header_is_valid, split_datagram, Rejection, MAX_DATAGRAM_BYTES};

const CANONICAL: &[u8] = br#"{"format":"json","version":1}"#;

fuzz_target!(|data: &[u8]| {
    check(data);
    // The same bytes behind the SDKs' header: the document must come back byte for byte.
    let mut framed = CANONICAL.to_vec();
    framed.push(b'\n');
    framed.extend_from_slice(data);
    match split_datagram(&framed) {
        Ok(body) => assert_eq!(body, data),
        Err(Rejection::EmptyBody) => assert!(data.is_empty()),
        Err(Rejection::TooLarge) => assert!(framed.len() > MAX_DATAGRAM_BYTES),
        Err(other) => panic!("canonical header refused: {other:?}"),
    }
});

fn check(data: &[u8]) {
    let result = split_datagram(data);
    if data.len() > MAX_DATAGRAM_BYTES {
        assert_eq!(result, Err(Rejection::TooLarge));
        return;
    }
    let newline = data.iter().position(|&b| b == b'\n');
    match (result, newline) {
        (Err(Rejection::MissingHeader), None) => {}
        (Err(Rejection::EmptyBody), Some(at)) => assert_eq!(at + 1, data.len()),
        (Err(Rejection::InvalidHeader), Some(at)) => {
            assert!(at + 1 < data.len());
            assert!(!header_is_valid(&data[..at]));
        }
        (Ok(body), Some(at)) => {
            assert!(!body.is_empty());
            assert_eq!(body, &data[at + 1..]);
            assert!(header_is_valid(&data[..at]));
        }
        (result, newline) => panic!("{result:?} for a datagram with newline at {newline:?}"),
    }
}

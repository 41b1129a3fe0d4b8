//! The TCP segment stream reader (`ingest::tcp::read_line` + `RecordFramer`) on arbitrary
//! streams, line limits and read-buffer sizes, against a model: lines are the `\n`-separated
//! pieces, those over the limit are reported as too long (and the reader resumes after them),
//! and records are header/document line pairs.
#![no_main]

use std::future::Future;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use tokio::io::BufReader;
use xray_daemon::ingest::tcp::{read_line, Line, Record, RecordFramer};
use xray_daemon::segment::{header_is_valid, Rejection};

#[derive(Debug, PartialEq)]
enum Expected {
    Complete(Vec<u8>),
    TooLong,
}

fuzz_target!(|data: &[u8]| {
    let [limit, capacity, stream @ ..] = data else {
        return;
    };
    let limit = usize::from(*limit % 96);
    let capacity = usize::from(*capacity % 32) + 1;
    let lines = ready(async {
        let mut reader = BufReader::with_capacity(capacity, stream);
        let mut line = Vec::new();
        let mut lines = Vec::new();
        // Never more lines than the stream has bytes (plus the end).
        for _ in 0..=stream.len() {
            match read_line(&mut reader, &mut line, limit).await.unwrap() {
                None => return lines,
                Some(true) => lines.push(Expected::Complete(line.clone())),
                Some(false) => lines.push(Expected::TooLong),
            }
        }
        panic!(
            "read_line did not reach the end of a {} byte stream",
            stream.len()
        );
    });

    let mut pieces: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
    if stream.is_empty() || stream.ends_with(b"\n") {
        pieces.pop(); // No line after the last newline.
    }
    let expected: Vec<Expected> = pieces
        .iter()
        .map(|piece| {
            if piece.len() <= limit {
                Expected::Complete(piece.to_vec())
            } else {
                Expected::TooLong
            }
        })
        .collect();
    assert_eq!(lines, expected);

    let mut framer = RecordFramer::default();
    let mut pending_header: Option<&Expected> = None;
    for line in &lines {
        let fed = match line {
            Expected::Complete(bytes) => Line::Complete(bytes),
            Expected::TooLong => Line::TooLong,
        };
        let record = framer.line(fed);
        let Some(header) = pending_header.take() else {
            assert_eq!(record, None, "a header line completes no record");
            pending_header = Some(line);
            continue;
        };
        let model = match (header, line) {
            (Expected::TooLong, _) => Record::Rejected(Rejection::TooLarge),
            (Expected::Complete(h), _) if !header_is_valid(h) => {
                Record::Rejected(Rejection::InvalidHeader)
            }
            (_, Expected::TooLong) => Record::Rejected(Rejection::TooLarge),
            (_, Expected::Complete(d)) if d.is_empty() => Record::Rejected(Rejection::EmptyBody),
            (_, Expected::Complete(d)) => Record::Document(d),
        };
        assert_eq!(record, Some(model));
    }
    assert_eq!(framer.incomplete(), pending_header.is_some());
});

/// Runs a future that never waits (reading from a slice is always ready).
fn ready<T>(future: impl Future<Output = T>) -> T {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("reading from a slice waited"),
    }
}

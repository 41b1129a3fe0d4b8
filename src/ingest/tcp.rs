//! Segment ingest over TCP, for clients that cannot afford UDP loss: a stream of
//! `{"format":"json","version":1}\n<document>\n` records, validated like datagrams and
//! admitted with backpressure (the reader waits for budget instead of dropping).
//!
//! Framing is by line pairs: a header line, then a document line. A bad header costs its own
//! record only; the connection's later records are still read.

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{Admission, Arrival, SegmentSender};
use crate::segment::{self, Rejection, MAX_DATAGRAM_BYTES};

/// One line of the stream, as far as framing cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    /// A line within the size limit, without its `\n`.
    Complete(&'a [u8]),
    /// A line longer than the limit (its bytes were discarded).
    TooLong,
}

/// What one record turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// A valid record's document, byte for byte.
    Document(&'a [u8]),
    /// A refused record.
    Rejected(Rejection),
}

/// Pairs header lines with document lines.
#[derive(Debug, Default)]
pub struct RecordFramer {
    /// After a header line: whether it was valid (`None` while expecting a header).
    header: Option<Result<(), Rejection>>,
}

impl RecordFramer {
    /// Feeds one line; returns a record when this line completed one.
    pub fn line<'a>(&mut self, line: Line<'a>) -> Option<Record<'a>> {
        let Some(header) = self.header.take() else {
            self.header = Some(match line {
                Line::Complete(header) if segment::header_is_valid(header) => Ok(()),
                Line::Complete(_) => Err(Rejection::InvalidHeader),
                Line::TooLong => Err(Rejection::TooLarge),
            });
            return None;
        };
        Some(match (header, line) {
            (Err(rejection), _) => Record::Rejected(rejection),
            (Ok(()), Line::TooLong) => Record::Rejected(Rejection::TooLarge),
            (Ok(()), Line::Complete([])) => Record::Rejected(Rejection::EmptyBody),
            (Ok(()), Line::Complete(document)) => Record::Document(document),
        })
    }

    /// Whether the stream ended in the middle of a record (header without document).
    pub fn incomplete(&self) -> bool {
        self.header.is_some()
    }
}

/// Reads one line of at most `limit` bytes into `line` (without the `\n`). Longer lines are
/// consumed and reported as too long; `Ok(None)` at the end of the stream.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    limit: usize,
) -> io::Result<Option<bool>> {
    line.clear();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok((!line.is_empty() || too_long).then_some(!too_long));
        }
        let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
            Some(end) => (&available[..end], Some(end + 1)),
            None => (available, None),
        };
        if !too_long && line.len() + chunk.len() <= limit {
            line.extend_from_slice(chunk);
        } else {
            too_long = true;
            line.clear();
        }
        let consumed = found.unwrap_or(available.len());
        reader.consume(consumed);
        if found.is_some() {
            return Ok(Some(!too_long));
        }
    }
}

/// Reads records from `stream` until it closes or `stop` fires.
pub async fn serve(
    stream: TcpStream,
    admission: Admission,
    segments: SegmentSender,
    stop: CancellationToken,
) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown".into(), |a| a.to_string());
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut framer = RecordFramer::default();
    let mut line = Vec::new();
    loop {
        let read = tokio::select! {
            read = read_line(&mut reader, &mut line, MAX_DATAGRAM_BYTES) => read,
            () = stop.cancelled() => break,
        };
        let line_kind = match read {
            Ok(Some(true)) => Line::Complete(&line),
            Ok(Some(false)) => Line::TooLong,
            Ok(None) => break,
            Err(error) => {
                tracing::debug!("TCP segment stream from {peer} failed: {error}");
                break;
            }
        };
        match framer.line(line_kind) {
            None => {}
            Some(Record::Rejected(rejection)) => admission.reject(rejection, line.len()),
            Some(Record::Document(document)) => {
                let admitted = tokio::select! {
                    admitted = admission.admit_document(document) => admitted,
                    () = stop.cancelled() => {
                        admission.dropped_at_shutdown(document.len());
                        break;
                    }
                };
                if let Some(segment) = admitted {
                    if segments.send(Arrival::now(vec![segment])).is_err() {
                        break;
                    }
                }
            }
        }
    }
    if framer.incomplete() {
        admission.reject(Rejection::EmptyBody, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &[u8] = br#"{"format":"json","version":1}"#;

    #[test]
    fn records_are_header_and_document_line_pairs() {
        let mut framer = RecordFramer::default();
        assert_eq!(framer.line(Line::Complete(HEADER)), None);
        assert_eq!(
            framer.line(Line::Complete(b"{\"id\":\"a\"}")),
            Some(Record::Document(b"{\"id\":\"a\"}"))
        );
        assert_eq!(
            framer.line(Line::Complete(b"{\"format\":\"xml\",\"version\":1}")),
            None
        );
        assert_eq!(
            framer.line(Line::Complete(b"{\"id\":\"b\"}")),
            Some(Record::Rejected(Rejection::InvalidHeader))
        );
        assert_eq!(
            framer.line(Line::Complete(HEADER)),
            None,
            "the next record is read normally"
        );
        assert_eq!(
            framer.line(Line::Complete(b"")),
            Some(Record::Rejected(Rejection::EmptyBody))
        );
        assert_eq!(framer.line(Line::Complete(HEADER)), None);
        assert_eq!(
            framer.line(Line::TooLong),
            Some(Record::Rejected(Rejection::TooLarge))
        );
        assert_eq!(framer.line(Line::TooLong), None, "an oversized header line");
        assert_eq!(
            framer.line(Line::Complete(b"{}")),
            Some(Record::Rejected(Rejection::TooLarge))
        );
        assert!(!framer.incomplete());
        framer.line(Line::Complete(HEADER));
        assert!(framer.incomplete());
    }

    #[test]
    fn a_crlf_header_is_accepted_and_the_document_kept_byte_for_byte() {
        let mut framer = RecordFramer::default();
        framer.line(Line::Complete(b"{\"format\":\"json\",\"version\":1}\r"));
        assert_eq!(
            framer.line(Line::Complete(b"{}\r")),
            Some(Record::Document(b"{}\r"))
        );
    }

    #[tokio::test]
    async fn lines_over_the_limit_are_discarded_and_reading_resumes() {
        let input = [
            &b"short\n"[..],
            &[b'x'; 100],
            b"\nnext\nlast-without-newline",
        ]
        .concat();
        let mut reader = BufReader::with_capacity(16, &input[..]);
        let mut line = Vec::new();
        assert_eq!(
            read_line(&mut reader, &mut line, 50).await.unwrap(),
            Some(true)
        );
        assert_eq!(line, b"short");
        assert_eq!(
            read_line(&mut reader, &mut line, 50).await.unwrap(),
            Some(false)
        );
        assert_eq!(
            read_line(&mut reader, &mut line, 50).await.unwrap(),
            Some(true)
        );
        assert_eq!(line, b"next");
        assert_eq!(
            read_line(&mut reader, &mut line, 50).await.unwrap(),
            Some(true)
        );
        assert_eq!(line, b"last-without-newline");
        assert_eq!(read_line(&mut reader, &mut line, 50).await.unwrap(), None);
    }
}

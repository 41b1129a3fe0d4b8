//! The offline sink: each segment document is written as one JSON line to a file or stdout,
//! so the daemon does something useful with no AWS account.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::Mutex;

use super::retry::Failure;
use super::SendFailure;

/// Writes documents as JSON lines.
pub struct LocalSink {
    target: String,
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for LocalSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSink")
            .field("target", &self.target)
            .finish()
    }
}

impl LocalSink {
    /// Opens `target` for appending; `-` is stdout.
    pub fn open(target: &str) -> io::Result<Self> {
        let out: Box<dyn Write + Send> = if target == "-" {
            Box::new(io::stdout())
        } else {
            Box::new(OpenOptions::new().create(true).append(true).open(target)?)
        };
        Ok(LocalSink {
            target: target.to_owned(),
            out: Mutex::new(out),
        })
    }

    /// Where the documents go.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Writes one line per document.
    pub fn send(&self, documents: &[&[u8]]) -> Result<(), SendFailure> {
        let mut buffer = Vec::with_capacity(documents.iter().map(|d| d.len() + 1).sum());
        for document in documents {
            append_json_line(&mut buffer, document);
        }
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        out.write_all(&buffer)
            .and_then(|()| out.flush())
            .map_err(|e| SendFailure {
                failure: Failure::Other,
                message: format!("writing to local sink {}: {e}", self.target),
            })
    }
}

/// Appends `document` as one line. A raw CR or LF cannot occur inside a JSON string, so in a
/// JSON document they are whitespace and become spaces; everything else is kept byte for byte.
fn append_json_line(out: &mut Vec<u8>, document: &[u8]) {
    out.extend(
        document
            .iter()
            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
    );
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_printed_documents_become_one_equal_line() {
        let mut out = Vec::new();
        append_json_line(&mut out, b"{\r\n  \"id\": \"a\\nb\"\n}");
        assert_eq!(out, b"{    \"id\": \"a\\nb\" }\n");
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["id"], "a\nb");
    }

    #[test]
    fn documents_are_appended_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segments.jsonl");
        let sink = LocalSink::open(path.to_str().unwrap()).unwrap();
        sink.send(&[b"{\"a\":1}", b"{\"b\":2}"]).unwrap();
        sink.send(&[b"{\"c\":3}"]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n");
    }
}

//! `xray healthcheck`: probes the admin server's `/readyz` for images without a shell or curl.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Only `http://host:port/path` URLs are supported.
    #[error("unsupported URL {0:?}: expected http://host:port/path")]
    BadUrl(String),
    /// The server could not be reached or answered garbage.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The status line could not be read.
    #[error("malformed HTTP response")]
    Malformed,
}

/// Splits `http://host:port/path` into `host:port` and `/path`.
pub fn split_url(url: &str) -> Result<(&str, &str), ProbeError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ProbeError::BadUrl(url.to_owned()))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    if authority.is_empty() || !authority.contains(':') {
        return Err(ProbeError::BadUrl(url.to_owned()));
    }
    Ok((authority, path))
}

/// GETs `url` and returns the HTTP status code.
pub fn probe(url: &str, timeout: Duration) -> Result<u16, ProbeError> {
    let (authority, path) = split_url(url)?;
    let address = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| ProbeError::BadUrl(url.to_owned()))?;
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let len = stream.read(&mut head)?;
    parse_status(&head[..len]).ok_or(ProbeError::Malformed)
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head).ok()?;
    let mut parts = line.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_status_lines_parse() {
        assert_eq!(
            split_url("http://127.0.0.1:2100/readyz").unwrap(),
            ("127.0.0.1:2100", "/readyz")
        );
        assert_eq!(split_url("http://[::1]:2100").unwrap(), ("[::1]:2100", "/"));
        assert!(split_url("https://x:1/").is_err());
        assert!(split_url("http://nohostport/").is_err());
        assert_eq!(
            parse_status(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status(b"garbage"), None);
    }

    #[test]
    fn probing_a_closed_port_fails() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(probe(
            &format!("http://127.0.0.1:{port}/readyz"),
            Duration::from_secs(1)
        )
        .is_err());
    }
}

//! The UDP listener: binding (dual-stack wildcards, receive buffer size) and the receive loop
//! that drains the socket and hands admitted segments to the batcher.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Admission, Segment};
use crate::segment::MAX_DATAGRAM_BYTES;

/// Datagrams handled per wake-up before the loop yields, so a flood cannot starve the admin
/// server or the batcher that share the runtime.
const DATAGRAMS_PER_YIELD: usize = 64;

/// A failure to bind a listen address, worded like the Go daemon's (`listen udp ...`).
#[derive(Debug, thiserror::Error)]
#[error("listen {network} {address}: {reason}")]
pub struct BindError {
    network: &'static str,
    address: String,
    reason: String,
}

impl BindError {
    /// A bind error for `network` (`udp`/`tcp`) at `address`.
    pub fn new(network: &'static str, address: &str, reason: impl std::fmt::Display) -> Self {
        BindError {
            network,
            address: address.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// Where to bind: a wildcard host means every IPv4 and IPv6 address, as in the Go daemon
/// (its "udp" network turns `0.0.0.0:2000` and `:2000` into one dual-stack socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindTarget {
    /// `:port`, `0.0.0.0:port` or `[::]:port`.
    AnyAddress(u16),
    /// One specific address.
    Exact(SocketAddr),
}

/// Parses a Go-style listen address (`host:port`, `:port`, `[v6]:port`, names resolved).
pub fn parse_listen_address(address: &str) -> io::Result<BindTarget> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_owned());
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| invalid("missing port in address"))?;
    let port: u16 = port.parse().map_err(|_| invalid("invalid port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host == "0.0.0.0" || host == "::" {
        return Ok(BindTarget::AnyAddress(port));
    }
    (host, port)
        .to_socket_addrs()?
        .next()
        .map(BindTarget::Exact)
        .ok_or_else(|| invalid("no address found for host"))
}

/// Binds a UDP socket for `address` with the requested receive buffer.
pub fn bind(address: &str, receive_buffer_bytes: usize) -> Result<UdpSocket, BindError> {
    let bind_error = |e: io::Error| BindError::new("udp", address, format!("bind: {}", describe(&e)));
    let socket = match parse_listen_address(address).map_err(bind_error)? {
        BindTarget::Exact(addr) => new_socket(addr, false),
        BindTarget::AnyAddress(port) => {
            new_socket(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), true).or_else(|_| {
                // No IPv6 on this host: serve IPv4 alone.
                new_socket(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), false)
            })
        }
    }
    .map_err(bind_error)?;
    if let Err(e) = socket.set_recv_buffer_size(receive_buffer_bytes) {
        tracing::warn!("Could not set the UDP receive buffer to {receive_buffer_bytes} bytes: {e}");
    }
    let std_socket: std::net::UdpSocket = socket.into();
    UdpSocket::from_std(std_socket).map_err(bind_error)
}

fn new_socket(addr: SocketAddr, dual_stack: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// An OS error as Go prints it: "address already in use", without Rust's "(os error 98)".
pub fn describe(error: &io::Error) -> String {
    let text = error.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(chars).collect()
    })
}

/// The effective receive buffer size the kernel granted (Linux reports double the request).
pub fn receive_buffer_size(socket: &UdpSocket) -> Option<usize> {
    socket2::SockRef::from(socket).recv_buffer_size().ok()
}

/// Receives datagrams until `cancel` fires, sending admitted segments to `segments`.
pub async fn receive(
    socket: Arc<UdpSocket>,
    admission: Admission,
    segments: mpsc::UnboundedSender<Segment>,
    cancel: CancellationToken,
) {
    // One extra byte tells a datagram over the limit from one exactly at it.
    let mut buffer = vec![0u8; MAX_DATAGRAM_BYTES + 1];
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            ready = socket.readable() => if let Err(e) = ready {
                tracing::error!("daemon: socket: err: {e}");
                return;
            },
        }
        for _ in 0..DATAGRAMS_PER_YIELD {
            match socket.try_recv_from(&mut buffer) {
                Ok((0, _)) => {} // The Go daemon ignores empty datagrams entirely.
                Ok((len, _peer)) => {
                    if let Ok(segment) = admission.admit_datagram(&buffer[..len]) {
                        if segments.send(segment).is_err() {
                            return; // The pipeline is gone: shutting down.
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::error!("daemon: socket: err: {e}");
                    break;
                }
            }
        }
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_like_go() {
        assert_eq!(parse_listen_address(":2000").unwrap(), BindTarget::AnyAddress(2000));
        assert_eq!(parse_listen_address("0.0.0.0:2000").unwrap(), BindTarget::AnyAddress(2000));
        assert_eq!(parse_listen_address("[::]:2000").unwrap(), BindTarget::AnyAddress(2000));
        assert_eq!(
            parse_listen_address("127.0.0.1:2000").unwrap(),
            BindTarget::Exact("127.0.0.1:2000".parse().unwrap())
        );
        assert_eq!(
            parse_listen_address("[::1]:2000").unwrap(),
            BindTarget::Exact("[::1]:2000".parse().unwrap())
        );
        assert!(parse_listen_address("127.0.0.1").is_err());
        assert!(parse_listen_address("127.0.0.1:http").is_err());
    }

    #[tokio::test]
    async fn a_wildcard_bind_receives_ipv4_and_ipv6() {
        let socket = bind("0.0.0.0:0", 1 << 20).unwrap();
        let port = socket.local_addr().unwrap().port();
        let mut buf = [0u8; 16];
        for target in ["127.0.0.1", "::1"] {
            let Ok(sender) = std::net::UdpSocket::bind((target, 0)) else {
                continue; // No IPv6 loopback here.
            };
            sender.send_to(b"hello", (target, port)).unwrap();
            let (len, _) = socket.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..len], b"hello");
        }
    }

    #[test]
    fn a_busy_port_gives_the_go_message() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let first = bind("127.0.0.1:0", 65536).unwrap();
        let address = first.local_addr().unwrap().to_string();
        let error = bind(&address, 65536).unwrap_err();
        assert_eq!(error.to_string(), format!("listen udp {address}: bind: address already in use"));
    }
}

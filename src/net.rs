//! Listen addresses as the Go daemon reads them (`host:port`, `:port`, `[v6]:port`), and
//! binding them: a wildcard host gives one dual-stack socket, as Go's "udp"/"tcp" networks do.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use socket2::{Domain, Protocol, Socket, Type};

/// A failure to bind a listen address, worded like the Go daemon's (`listen udp ...`).
#[derive(Debug, thiserror::Error)]
#[error("listen {network} {address}: bind: {reason}")]
pub struct BindError {
    network: &'static str,
    address: String,
    reason: String,
}

impl BindError {
    /// A failure of `network` at `address`.
    pub fn new(network: Network, address: &str, error: &io::Error) -> Self {
        BindError {
            network: match network {
                Network::Udp => "udp",
                Network::Tcp => "tcp",
            },
            address: address.to_owned(),
            reason: describe(error),
        }
    }
}

/// Where to bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindTarget {
    /// `:port`, `0.0.0.0:port` or `[::]:port`: every IPv4 and IPv6 address.
    AnyAddress(u16),
    /// One specific address.
    Exact(SocketAddr),
}

/// The transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// Datagrams.
    Udp,
    /// Streams.
    Tcp,
}

/// Parses a Go-style listen address; host names are resolved.
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

/// Binds `address` for `network` (non-blocking; TCP sockets are listening).
pub fn bind(address: &str, network: Network) -> Result<Socket, BindError> {
    let error = |e: io::Error| BindError::new(network, address, &e);
    match parse_listen_address(address).map_err(error)? {
        BindTarget::Exact(addr) => new_socket(addr, network, false),
        BindTarget::AnyAddress(port) => new_socket(
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            network,
            true,
        )
        // No IPv6 on this host: serve IPv4 alone.
        .or_else(|_| {
            new_socket(
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                network,
                false,
            )
        }),
    }
    .map_err(error)
}

/// Binds a TCP listener for `address`.
pub fn bind_tcp(address: &str) -> Result<std::net::TcpListener, BindError> {
    bind(address, Network::Tcp).map(Into::into)
}

fn new_socket(addr: SocketAddr, network: Network, dual_stack: bool) -> io::Result<Socket> {
    let (kind, protocol) = match network {
        Network::Udp => (Type::DGRAM, Protocol::UDP),
        Network::Tcp => (Type::STREAM, Protocol::TCP),
    };
    let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    if network == Network::Tcp {
        // Like Go's listeners: a restarted daemon can rebind while old connections linger.
        socket.set_reuse_address(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    if network == Network::Tcp {
        socket.listen(1024)?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_like_go() {
        assert_eq!(
            parse_listen_address(":2000").unwrap(),
            BindTarget::AnyAddress(2000)
        );
        assert_eq!(
            parse_listen_address("0.0.0.0:2000").unwrap(),
            BindTarget::AnyAddress(2000)
        );
        assert_eq!(
            parse_listen_address("[::]:2000").unwrap(),
            BindTarget::AnyAddress(2000)
        );
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

    #[test]
    fn a_busy_port_gives_the_go_message() {
        let first = bind("127.0.0.1:0", Network::Udp).unwrap();
        let address = first.local_addr().unwrap().as_socket().unwrap().to_string();
        let error = bind(&address, Network::Udp).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("listen udp {address}: bind: address already in use")
        );
    }

    #[test]
    fn a_wildcard_tcp_listener_accepts_ipv4_and_ipv6() {
        let listener = bind_tcp("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        for host in ["127.0.0.1", "::1"] {
            if let Ok(stream) = std::net::TcpStream::connect((host, port)) {
                drop(stream);
            } else {
                assert_eq!(host, "::1", "IPv4 must always work");
            }
        }
    }
}

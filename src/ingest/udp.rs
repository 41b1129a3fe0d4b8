//! The UDP listener: binding (dual-stack wildcards, receive buffer size) and the receive loop
//! that drains the socket and hands admitted segments to the batcher.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Admission, SegmentSender};
use crate::net::{self, BindError, Network};
use crate::segment::MAX_DATAGRAM_BYTES;

/// Datagrams handled per wake-up before the loop yields, so a flood cannot starve the admin
/// server or the batcher that share the runtime.
const DATAGRAMS_PER_YIELD: usize = 256;

/// Binds a UDP socket for `address` with the requested receive buffer.
pub fn bind(address: &str, receive_buffer_bytes: usize) -> Result<UdpSocket, BindError> {
    let socket = net::bind(address, Network::Udp)?;
    set_receive_buffer(&socket, receive_buffer_bytes);
    let std_socket: std::net::UdpSocket = socket.into();
    UdpSocket::from_std(std_socket).map_err(|e| BindError::new(Network::Udp, address, &e))
}

/// Requests a receive buffer size; the kernel may clamp it (`net.core.rmem_max`).
pub fn set_receive_buffer(socket: &socket2::Socket, receive_buffer_bytes: usize) {
    if let Err(e) = socket.set_recv_buffer_size(receive_buffer_bytes) {
        tracing::warn!("Could not set the UDP receive buffer to {receive_buffer_bytes} bytes: {e}");
    }
}

/// The effective receive buffer size the kernel granted (Linux reports double the request).
pub fn receive_buffer_size(socket: &UdpSocket) -> Option<usize> {
    socket2::SockRef::from(socket).recv_buffer_size().ok()
}

/// A bound UDP socket and the tasks receiving from it.
pub struct UdpListener {
    socket: Arc<UdpSocket>,
    stop: CancellationToken,
    receivers: JoinSet<()>,
}

impl UdpListener {
    /// Starts `workers` receive tasks on `socket`; they stop when `stop` fires, after
    /// draining what the kernel already queued.
    pub fn start(
        socket: UdpSocket,
        workers: usize,
        admission: &Admission,
        segments: &SegmentSender,
        stop: CancellationToken,
    ) -> Self {
        let socket = Arc::new(socket);
        let mut receivers = JoinSet::new();
        for _ in 0..workers.max(1) {
            receivers.spawn(receive(
                Arc::clone(&socket),
                admission.clone(),
                segments.clone(),
                stop.clone(),
            ));
        }
        UdpListener {
            socket,
            stop,
            receivers,
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The socket, e.g. to change its receive buffer.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Stops receiving (after a final drain) and waits for the receive tasks.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.receivers.join_next().await.is_some() {}
    }

    /// Keeps receiving for `linger` (senders still using the old address), then stops. Used
    /// when a reload moves the listener: the new socket is already bound and serving.
    pub async fn retire(self, linger: Duration) {
        let _ = tokio::time::timeout(linger, self.stop.cancelled()).await;
        self.stop().await;
    }
}

/// Receives datagrams until `cancel` fires, sending admitted segments to `segments`.
async fn receive(
    socket: Arc<UdpSocket>,
    admission: Admission,
    segments: SegmentSender,
    cancel: CancellationToken,
) {
    // One extra byte tells a datagram over the limit from one exactly at it.
    let mut buffer = vec![0u8; MAX_DATAGRAM_BYTES + 1];
    loop {
        let stopping = tokio::select! {
            biased;
            () = cancel.cancelled() => true,
            ready = socket.readable() => {
                if let Err(e) = ready {
                    tracing::error!("daemon: socket: err: {e}");
                    return;
                }
                false
            }
        };
        // When stopping, drain everything the kernel already holds: those datagrams were
        // accepted by the OS on our behalf.
        let limit = if stopping {
            usize::MAX
        } else {
            DATAGRAMS_PER_YIELD
        };
        if !drain(&socket, &mut buffer, &admission, &segments, limit) || stopping {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// Receives up to `limit` queued datagrams; false when the pipeline is gone.
fn drain(
    socket: &UdpSocket,
    buffer: &mut [u8],
    admission: &Admission,
    segments: &SegmentSender,
    limit: usize,
) -> bool {
    let mut admitted = Vec::new();
    let mut received_any = false;
    for _ in 0..limit {
        match socket.try_recv_from(buffer) {
            Ok((0, _)) => {} // The Go daemon ignores empty datagrams entirely.
            Ok((len, _peer)) => {
                received_any = true;
                if let Ok(segment) = admission.admit_datagram(&buffer[..len]) {
                    admitted.push(segment);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                tracing::error!("daemon: socket: err: {e}");
                break;
            }
        }
    }
    if received_any {
        admission.note_activity();
    }
    admitted.is_empty() || segments.send(admitted).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

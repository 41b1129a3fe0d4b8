//! The UDP listener: binding (dual-stack wildcards, receive buffer size) and the receive loop
//! that drains the socket and hands admitted segments to the batcher.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Admission, Segment, SegmentSender};
use crate::net::{self, BindError, Network};
use crate::segment::MAX_DATAGRAM_BYTES;

/// Datagrams handled per wake-up before the loop yields, so a flood cannot starve the admin
/// server or the batcher that share the runtime.
const DATAGRAMS_PER_YIELD: usize = 256;

/// After a round that emptied the socket, the pause before looking again. Without it, at
/// 20,000 datagrams/s the receive task wakes (and parks a worker thread) for nearly every
/// datagram, which cost more CPU than everything else per segment together; with it each
/// wake-up takes what arrived meanwhile (about 20 datagrams at that rate). Tokio rounds timers
/// up to its next millisecond tick, so this pauses until that tick: 0 to 1 ms, at most a
/// thousand wake-ups a second. The kernel buffer holds thousands of datagrams.
const COALESCE_PAUSE: Duration = Duration::from_micros(100);

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
    let mut buffers = ReceiveBuffers::new();
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
        let mut admitted = Vec::new();
        let received = drain(&socket, &mut buffers, &admission, &mut admitted, limit);
        // One message per round: the batcher wakes once per round, not per datagram.
        if !admitted.is_empty() && segments.send(admitted).is_err() {
            return; // The pipeline is gone.
        }
        if stopping {
            return;
        }
        if received == 0 {
            continue;
        }
        if received < limit {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = tokio::time::sleep(COALESCE_PAUSE) => {}
            }
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// Receives up to `limit` queued datagrams into `admitted` and returns how many it took.
fn drain(
    socket: &UdpSocket,
    buffers: &mut ReceiveBuffers,
    admission: &Admission,
    admitted: &mut Vec<Segment>,
    limit: usize,
) -> usize {
    let mut received = 0;
    let mut received_any = false;
    while received < limit {
        match buffers.receive(socket) {
            Ok(count) => {
                received += count;
                for datagram in buffers.datagrams() {
                    // The Go daemon ignores empty datagrams entirely.
                    if datagram.is_empty() {
                        continue;
                    }
                    received_any = true;
                    if let Ok(segment) = admission.admit_datagram(datagram) {
                        admitted.push(segment);
                    }
                }
                if count < RECEIVE_SLOTS {
                    break; // The queue is empty.
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
    received
}

/// Datagrams taken from the kernel per system call.
const RECEIVE_SLOTS: usize = 16;
/// One extra byte tells a datagram over the limit from one exactly at it.
const SLOT_BYTES: usize = MAX_DATAGRAM_BYTES + 1;

/// Receive slots for one task: one allocation of [`RECEIVE_SLOTS`] maximum-size datagrams.
/// The pages of a slot become resident only as far as datagrams have filled it, so small
/// segments keep this at a few pages per slot.
struct ReceiveBuffers {
    bytes: Vec<u8>,
    lengths: Vec<usize>,
}

impl ReceiveBuffers {
    fn new() -> Self {
        ReceiveBuffers {
            bytes: vec![0; RECEIVE_SLOTS * SLOT_BYTES],
            lengths: Vec::with_capacity(RECEIVE_SLOTS),
        }
    }

    /// The datagrams of the last successful [`ReceiveBuffers::receive`].
    fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        self.bytes
            .chunks(SLOT_BYTES)
            .zip(&self.lengths)
            .map(|(slot, &len)| &slot[..len])
    }

    /// Takes up to [`RECEIVE_SLOTS`] queued datagrams in one `recvmmsg` call, without waiting.
    #[cfg(target_os = "linux")]
    fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders};
        use std::io::IoSliceMut;
        use std::os::fd::AsRawFd;

        let ReceiveBuffers { bytes, lengths } = self;
        lengths.clear();
        socket.try_io(tokio::io::Interest::READABLE, || {
            let mut slots: Vec<[IoSliceMut<'_>; 1]> = bytes
                .chunks_mut(SLOT_BYTES)
                .map(|slot| [IoSliceMut::new(slot)])
                .collect();
            // Built per call: the headers hold raw pointers, which would make the receive
            // task's future unsendable if kept across an await.
            let mut headers = MultiHeaders::<()>::preallocate(RECEIVE_SLOTS, None);
            let results = recvmmsg(
                socket.as_raw_fd(),
                &mut headers,
                slots.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(io::Error::from)?;
            lengths.extend(results.map(|message| message.bytes));
            Ok(lengths.len())
        })
    }

    /// Takes up to [`RECEIVE_SLOTS`] queued datagrams one call each (no `recvmmsg` here).
    #[cfg(not(target_os = "linux"))]
    fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.lengths.clear();
        for slot in self.bytes.chunks_mut(SLOT_BYTES) {
            match socket.try_recv_from(slot) {
                Ok((len, _peer)) => self.lengths.push(len),
                Err(e) if self.lengths.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        Ok(self.lengths.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batched_receives_return_every_queued_datagram_whole_and_in_order() {
        let socket = bind("127.0.0.1:0", 1 << 22).unwrap();
        let target = socket.local_addr().unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // More datagrams than slots, with the largest IPv4 datagram and an empty one among them.
        let sizes = [0, 1, 65_507, 100, 8_000, 1].repeat(7);
        let sent: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| (0..size).map(|b| (b + i) as u8).collect())
            .collect();
        for datagram in &sent {
            sender.send_to(datagram, target).unwrap();
        }
        let mut buffers = ReceiveBuffers::new();
        let mut received = Vec::new();
        let mut calls = 0;
        while received.len() < sent.len() {
            socket.readable().await.unwrap();
            match buffers.receive(&socket) {
                Ok(count) => {
                    assert!(count <= RECEIVE_SLOTS);
                    received.extend(buffers.datagrams().map(<[u8]>::to_vec));
                    calls += 1;
                }
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
        }
        assert_eq!(received, sent);
        assert!(
            calls < sent.len(),
            "{calls} calls for {} datagrams",
            sent.len()
        );
        assert_eq!(
            buffers.receive(&socket).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
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
}

//! The UDP listener: binding (dual-stack wildcards, receive buffer size) and the receive loop,
//! on a thread of its own, that drains the socket and hands admitted segments to the batcher.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::kernel_drops::{self, KernelDrops};
use super::{Admission, Arrival, Segment, SegmentSender};
use crate::batch::{MAX_BATCH_SEGMENTS, MAX_BATCH_WAIT};
use crate::net::{self, BindError, Network};
use crate::segment::MAX_DATAGRAM_BYTES;

/// Datagrams taken from the socket per round at most, so that a flood still reaches the
/// batcher in steady portions and a stop is noticed.
const DATAGRAMS_PER_ROUND: usize = 256;

/// The shortest pause after a round that emptied the socket (or failed). Without pauses, at
/// 20,000 datagrams/s the loop would wake for nearly every datagram, which cost more CPU than
/// everything else per segment together; at high rates each round takes what arrived
/// meanwhile (a hundred datagrams at 100,000/s): at most a thousand such rounds a second.
const MIN_PAUSE: Duration = Duration::from_millis(1);

/// The longest pause. Pauses are sized to let a whole batch gather (2.75 ms at 20,000/s, a
/// tenth more than it takes; 10 ms at 5,000/s), so that a round usually completes one: each
/// hand-over wakes an upload thread, which costs more than the rest of a round in a VM.
/// Bounded so that a sudden flood fills under a third of what the default 4 MB buffer holds
/// at 100,000/s (about 35 ms).
const MAX_PAUSE: Duration = Duration::from_millis(10);

/// How long the idle loop waits for a datagram before it looks whether it should stop.
const STOP_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// Binds a UDP socket for `address` with the requested receive buffer.
pub fn bind(address: &str, receive_buffer_bytes: usize) -> Result<UdpSocket, BindError> {
    let socket = net::bind(address, Network::Udp)?;
    set_receive_buffer(&socket, receive_buffer_bytes);
    Ok(socket.into())
}

/// Requests a receive buffer size, and warns when the kernel grants less: it caps requests at
/// `net.core.rmem_max` without failing them (208 KiB on older kernels and many node images:
/// about 2 ms of datagrams at 100,000/s).
pub fn set_receive_buffer(socket: &socket2::Socket, receive_buffer_bytes: usize) {
    if let Err(e) = socket.set_recv_buffer_size(receive_buffer_bytes) {
        tracing::warn!("Could not set the UDP receive buffer to {receive_buffer_bytes} bytes: {e}");
        return;
    }
    let granted = socket.recv_buffer_size().ok().map(granted_size);
    if let Some(granted) = granted.filter(|&granted| granted < receive_buffer_bytes) {
        let cap = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .map(|text| format!(" ({} bytes here)", text.trim()))
            .unwrap_or_default();
        tracing::warn!(
            "The UDP receive buffer is {granted} bytes, less than the {receive_buffer_bytes} \
             requested: the kernel caps it at net.core.rmem_max{cap}. Bursts it cannot hold \
             are dropped by the kernel (counted in xray_udp_kernel_drops_total); raise \
             net.core.rmem_max on the node to get the whole buffer."
        );
    }
}

/// The receive buffer the kernel granted, from the size it reports: Linux reports twice the
/// size granted (the other half allows for its own bookkeeping).
fn granted_size(reported: usize) -> usize {
    if cfg!(target_os = "linux") {
        reported / 2
    } else {
        reported
    }
}

/// The receive buffer size the kernel granted (capped at `net.core.rmem_max`).
pub fn granted_receive_buffer(socket: &UdpSocket) -> Option<usize> {
    socket2::SockRef::from(socket)
        .recv_buffer_size()
        .ok()
        .map(granted_size)
}

/// A bound UDP socket and the thread receiving from it.
///
/// The receive loop has a thread of its own, blocking in the kernel: as a task on the shared
/// runtime it queued behind upload work and its timer was only looked at between tasks, so
/// on a busy machine it could miss the socket for the 30-odd milliseconds the kernel buffer
/// lasts at 100,000 datagrams/s. A thread that sleeps most of the time is woken promptly.
pub struct UdpListener {
    /// The receiving socket's descriptor, duplicated: its address and buffer size.
    socket: UdpSocket,
    stop: CancellationToken,
    stopped: oneshot::Receiver<()>,
}

impl UdpListener {
    /// Binds `address` (dual-stack wildcards, the requested receive buffer) and starts
    /// receiving from it on a thread of its own.
    pub fn bind(
        address: &str,
        receive_buffer_bytes: usize,
        admission: &Admission,
        segments: &SegmentSender,
        stop: CancellationToken,
    ) -> Result<Self, BindError> {
        let socket = bind(address, receive_buffer_bytes)?;
        UdpListener::start(socket, admission, segments, stop)
            .map_err(|e| BindError::new(Network::Udp, address, &e))
    }

    /// Starts receiving from `socket` on a new thread, and counting the datagrams the kernel
    /// drops at it on another ([`kernel_drops::count`]); receiving stops within the stop-check
    /// interval (200 ms) of `stop` firing, after draining what the kernel already queued, or
    /// of the listener being dropped.
    pub fn start(
        socket: UdpSocket,
        admission: &Admission,
        segments: &SegmentSender,
        stop: CancellationToken,
    ) -> io::Result<Self> {
        let control = socket.try_clone()?;
        let (stopped_tx, stopped) = oneshot::channel();
        let datagrams_read = Arc::new(AtomicU64::new(0));
        // Dropped when the receive loop ends, which tells the drop counter to read once more.
        let (receiving, receive_ended) = std::sync::mpsc::channel::<()>();
        let counter = match KernelDrops::of(&socket) {
            Ok(drops) => {
                let (admission, datagrams_read) = (admission.clone(), Arc::clone(&datagrams_read));
                Some(
                    std::thread::Builder::new()
                        .name("xray-udp-drops".into())
                        .spawn(move || {
                            kernel_drops::count(drops, &admission, &datagrams_read, &receive_ended);
                        })?,
                )
            }
            Err(e) => {
                tracing::info!("Datagrams the kernel drops at the UDP socket are not counted: {e}");
                None
            }
        };
        let (admission, segments, cancel) = (admission.clone(), segments.clone(), stop.clone());
        std::thread::Builder::new()
            .name("xray-udp".into())
            .spawn(move || {
                receive(&socket, &admission, &segments, &datagrams_read, &cancel);
                drop(receiving);
                // The last count is in before `stop` returns (and the socket is closed).
                if let Some(counter) = counter {
                    let _ = counter.join();
                }
                let _ = stopped_tx.send(());
            })?;
        Ok(UdpListener {
            socket: control,
            stop,
            stopped,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The socket, e.g. to change its receive buffer.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Stops receiving (after a final drain) and waits for the receive loop to end.
    pub async fn stop(mut self) {
        self.stop.cancel();
        // An error means the thread is gone without saying so: nothing left to wait for.
        let _ = (&mut self.stopped).await;
    }

    /// Keeps receiving for `linger` (senders still using the old address), then stops. Used
    /// when a reload moves the listener: the new socket is already bound and serving.
    pub async fn retire(self, linger: Duration) {
        let _ = tokio::time::timeout(linger, self.stop.cancelled()).await;
        self.stop().await;
    }
}

impl Drop for UdpListener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Receives datagrams until `cancel` fires, sending admitted segments to `segments` and
/// adding the number taken from the socket to `datagrams_read`.
fn receive(
    socket: &UdpSocket,
    admission: &Admission,
    segments: &SegmentSender,
    datagrams_read: &AtomicU64,
    cancel: &CancellationToken,
) {
    let mut buffers = ReceiveBuffers::new();
    let mut held: Vec<Segment> = Vec::new();
    let mut held_since = Instant::now();
    let mut last_round = Instant::now();
    let mut rate = ArrivalRate::default();
    loop {
        let stopping = cancel.is_cancelled();
        // When stopping, drain everything the kernel already holds: those datagrams were
        // accepted by the OS on our behalf.
        let limit = if stopping {
            usize::MAX
        } else {
            DATAGRAMS_PER_ROUND
        };
        let round_started = Instant::now();
        if held.is_empty() {
            held_since = round_started;
        }
        let (received, receive_failed) = drain(socket, &mut buffers, admission, &mut held, limit);
        if received > 0 {
            datagrams_read.fetch_add(received as u64, Ordering::Relaxed);
        }
        let count = hand_over_count(held.len(), held_since.elapsed(), stopping);
        if count > 0 {
            let rest = held.split_off(count);
            let arrival = Arrival {
                segments: std::mem::replace(&mut held, rest),
                received_at: held_since,
            };
            if let Err(unsent) = segments.send(arrival) {
                // The batcher is gone (only after a failure elsewhere): count what is lost.
                for segment in unsent.0.segments.iter().chain(&held) {
                    admission.dropped_at_shutdown(segment.document().len());
                }
                return;
            }
            held_since = round_started;
        }
        if stopping {
            return;
        }
        rate.observe(received, round_started - last_round);
        last_round = round_started;
        let round = Round {
            received,
            receive_failed,
            limit,
            rate,
            held: held.len(),
            held_for: held_since.elapsed(),
        };
        match round.pause() {
            Pause::None => {}
            Pause::Sleep(pause) => std::thread::sleep(pause),
            Pause::UntilReadable(timeout) => {
                if let Err(e) = wait_readable(socket, timeout) {
                    // Keep listening: giving up would leave a daemon that reports ready and
                    // receives nothing. The next round reads without waiting for readiness.
                    tracing::error!("daemon: socket: err: {e}");
                    std::thread::sleep(MIN_PAUSE);
                }
            }
        }
    }
}

/// How many of the `held` segments (the oldest received `held_for` ago) go to the batcher
/// now: whole batches as soon as there are any, so that it can send each at once; all of
/// them once the oldest has waited [`MAX_BATCH_WAIT`] (the batcher's wait counts from
/// reception, so it sends them at once), or to stop.
fn hand_over_count(held: usize, held_for: Duration, stopping: bool) -> usize {
    if stopping || held_for >= MAX_BATCH_WAIT {
        held
    } else {
        held / MAX_BATCH_SEGMENTS * MAX_BATCH_SEGMENTS
    }
}

/// What the receive loop does between two rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    /// The socket may hold more: receive again at once.
    None,
    /// Let datagrams gather in the kernel's buffer.
    Sleep(Duration),
    /// Wait until a datagram is queued, at most this long.
    UntilReadable(Duration),
}

/// A finished round of the receive loop, as the pause after it sees it.
#[derive(Debug, Clone, Copy)]
struct Round {
    /// Datagrams taken from the socket.
    received: usize,
    /// Whether receiving failed (other than finding the socket empty).
    receive_failed: bool,
    /// The most the round could take.
    limit: usize,
    /// The arrival rate, this round included.
    rate: ArrivalRate,
    /// Segments still held after the hand-over.
    held: usize,
    /// How long ago the oldest held segment was received.
    held_for: Duration,
}

impl Round {
    /// Sleeps about as long as the rest of the batch takes to arrive at the recent rate
    /// ([`ArrivalRate`]), within [`MIN_PAUSE`] and [`MAX_PAUSE`]; below one datagram per
    /// [`MAX_PAUSE`], waits for the next datagram instead. Never past the held segments' due
    /// time, nor longer than [`STOP_CHECK_INTERVAL`] without looking whether to stop.
    fn pause(&self) -> Pause {
        if self.received >= self.limit {
            return Pause::None;
        }
        if self.receive_failed {
            // Readiness would not wait while the failing datagrams are queued.
            return Pause::Sleep(MIN_PAUSE);
        }
        let due_in = if self.held == 0 {
            STOP_CHECK_INTERVAL
        } else {
            MAX_BATCH_WAIT
                .saturating_sub(self.held_for)
                .min(STOP_CHECK_INTERVAL)
        };
        let per_sec = self.rate.per_sec();
        if self.received == 0 || per_sec * MAX_PAUSE.as_secs_f64() < 1.0 {
            return Pause::UntilReadable(due_in);
        }
        let needed = MAX_BATCH_SEGMENTS - self.held % MAX_BATCH_SEGMENTS;
        // A tenth to spare, so that one round usually completes the batch: falling short by
        // a datagram or two costs another wake-up.
        let fill_secs = needed as f64 * 1.1 / per_sec;
        let pause = Duration::from_secs_f64(fill_secs.min(MAX_PAUSE.as_secs_f64()));
        Pause::Sleep(pause.max(MIN_PAUSE).min(due_in))
    }
}

/// Datagrams per second over the last few rounds, the latest weighing most: a round that
/// caught a sender's lull must not stretch the next pause to the longest (and the latency
/// of everything arriving meanwhile with it).
#[derive(Debug, Default, Clone, Copy)]
struct ArrivalRate {
    datagrams: f64,
    secs: f64,
}

impl ArrivalRate {
    /// Adds a round that received `received` datagrams `interval` after the one before;
    /// each earlier round counts half as much as the one after it.
    fn observe(&mut self, received: usize, interval: Duration) {
        self.datagrams = self.datagrams / 2.0 + received as f64;
        self.secs = self.secs / 2.0 + interval.as_secs_f64();
    }

    fn per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.datagrams / self.secs
        } else {
            0.0
        }
    }
}

/// Blocks until a datagram is queued (true) or `timeout` passed (false; rounded up to a
/// millisecond).
fn wait_readable(socket: &UdpSocket, timeout: Duration) -> io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;

    let millis = timeout.as_nanos().div_ceil(1_000_000);
    let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(ready) => Ok(ready > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Receives up to `limit` queued datagrams into `admitted`; returns how many it took and
/// whether receiving failed.
fn drain(
    socket: &UdpSocket,
    buffers: &mut ReceiveBuffers,
    admission: &Admission,
    admitted: &mut Vec<Segment>,
    limit: usize,
) -> (usize, bool) {
    let mut received = 0;
    let mut received_any = false;
    let mut failed = false;
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
                failed = true;
                break;
            }
        }
    }
    if received_any {
        admission.note_activity();
    }
    (received, failed)
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
    /// `recvmmsg`'s message headers, allocated once rather than per call.
    #[cfg(target_os = "linux")]
    headers: nix::sys::socket::MultiHeaders<()>,
}

impl ReceiveBuffers {
    fn new() -> Self {
        ReceiveBuffers {
            bytes: vec![0; RECEIVE_SLOTS * SLOT_BYTES],
            lengths: Vec::with_capacity(RECEIVE_SLOTS),
            #[cfg(target_os = "linux")]
            headers: nix::sys::socket::MultiHeaders::preallocate(RECEIVE_SLOTS, None),
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
        use nix::sys::socket::{recvmmsg, MsgFlags};
        use std::io::IoSliceMut;
        use std::os::fd::AsRawFd;

        let ReceiveBuffers {
            bytes,
            lengths,
            headers,
        } = self;
        lengths.clear();
        let mut chunks = bytes.chunks_mut(SLOT_BYTES);
        let mut slots: [[IoSliceMut<'_>; 1]; RECEIVE_SLOTS] =
            std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
        let results = recvmmsg(
            socket.as_raw_fd(),
            headers,
            slots.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(io::Error::from)?;
        lengths.extend(results.map(|message| message.bytes));
        Ok(lengths.len())
    }

    /// Takes up to [`RECEIVE_SLOTS`] queued datagrams one call each (no `recvmmsg` here).
    #[cfg(all(unix, not(target_os = "linux")))]
    fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        use nix::sys::socket::{recv, MsgFlags};
        use std::os::fd::AsRawFd;

        self.lengths.clear();
        for slot in self.bytes.chunks_mut(SLOT_BYTES) {
            match recv(socket.as_raw_fd(), slot, MsgFlags::MSG_DONTWAIT) {
                Ok(len) => self.lengths.push(len),
                Err(e) if self.lengths.is_empty() => return Err(e.into()),
                Err(_) => break,
            }
        }
        Ok(self.lengths.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn the_granted_buffer_is_half_what_linux_reports_and_capped_at_rmem_max() {
        assert_eq!(granted_size(8 << 20), 4 << 20);
        // The cap, where this network namespace shows it.
        let Some(cap) = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|text| text.trim().parse::<usize>().ok())
            .filter(|&cap| cap < i32::MAX as usize / 4)
        else {
            return;
        };
        let socket = bind("127.0.0.1:0", 2 * cap).unwrap();
        assert_eq!(granted_receive_buffer(&socket), Some(cap), "capped");
        let socket = bind("127.0.0.1:0", cap / 2).unwrap();
        assert_eq!(granted_receive_buffer(&socket), Some(cap / 2), "granted");
    }

    /// A bound socket that blocks up to two seconds for a datagram.
    fn blocking_socket(address: &str) -> UdpSocket {
        let socket = bind(address, 1 << 22).unwrap();
        socket.set_nonblocking(false).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        socket
    }

    #[test]
    fn batched_receives_return_every_queued_datagram_whole_and_in_order() {
        let socket = blocking_socket("127.0.0.1:0");
        let target = socket.local_addr().unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
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
            assert!(
                wait_readable(&socket, Duration::from_secs(2)).unwrap(),
                "{} received",
                received.len()
            );
            let count = buffers.receive(&socket).unwrap();
            assert!((1..=RECEIVE_SLOTS).contains(&count));
            received.extend(buffers.datagrams().map(<[u8]>::to_vec));
            calls += 1;
        }
        assert_eq!(received, sent);
        assert!(
            calls < sent.len(),
            "{calls} calls for {} datagrams",
            sent.len()
        );
        // Never waits, even on a blocking socket.
        assert_eq!(
            buffers.receive(&socket).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn a_wildcard_bind_receives_ipv4_and_ipv6() {
        let socket = blocking_socket("0.0.0.0:0");
        let port = socket.local_addr().unwrap().port();
        let mut buf = [0u8; 16];
        for target in ["127.0.0.1", "::1"] {
            let Ok(sender) = UdpSocket::bind((target, 0)) else {
                continue; // No IPv6 loopback here.
            };
            sender.send_to(b"hello", (target, port)).unwrap();
            let (len, _) = socket.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..len], b"hello");
        }
    }

    #[test]
    fn segments_are_handed_over_in_whole_batches_or_when_due() {
        let young = MAX_BATCH_WAIT / 2;
        assert_eq!(
            hand_over_count(0, MAX_BATCH_WAIT, true),
            0,
            "nothing to hand over"
        );
        assert_eq!(hand_over_count(MAX_BATCH_SEGMENTS - 1, young, false), 0);
        assert_eq!(
            hand_over_count(MAX_BATCH_SEGMENTS, Duration::ZERO, false),
            50
        );
        assert_eq!(
            hand_over_count(2 * MAX_BATCH_SEGMENTS + 7, young, false),
            100
        );
        assert_eq!(hand_over_count(7, MAX_BATCH_WAIT, false), 7);
        assert_eq!(
            hand_over_count(57, Duration::ZERO, true),
            57,
            "stopping: all"
        );
    }

    /// A round after a long steady spell of `received` datagrams every `interval_ms`.
    fn round(received: usize, interval_ms: u64, held: usize, held_for_ms: u64) -> Round {
        let mut rate = ArrivalRate::default();
        for _ in 0..64 {
            rate.observe(received, Duration::from_millis(interval_ms));
        }
        Round {
            received,
            receive_failed: false,
            limit: DATAGRAMS_PER_ROUND,
            rate,
            held,
            held_for: Duration::from_millis(held_for_ms),
        }
    }

    #[test]
    fn pauses_last_about_as_long_as_the_rest_of_the_batch_takes_to_arrive() {
        let sleep_ms = |r: Round| match r.pause() {
            Pause::Sleep(pause) => pause.as_secs_f64() * 1e3,
            other => panic!("{other:?}"),
        };
        // 20,000/s (20 a millisecond): 30 more take 1.5 ms, with a tenth to spare.
        let ms = sleep_ms(round(20, 1, 20, 1));
        assert!((1.6..1.7).contains(&ms), "{ms}");
        // 5,000/s with nothing held: a whole batch, 10 ms, is also the longest pause.
        assert_eq!(sleep_ms(round(10, 2, 0, 0)), 10.0);
        // 100,000/s: at least a millisecond, whatever is missing.
        assert_eq!(sleep_ms(round(100, 1, 49, 1)), 1.0);
        // 1,000/s: 50 take 50 ms, so the longest pause.
        assert_eq!(sleep_ms(round(1, 1, 0, 0)), 10.0);
        // Never past the held segments' due time.
        let ms = sleep_ms(round(20, 1, 20, 999));
        assert!((1.0..1.01).contains(&ms), "{ms}");
    }

    #[test]
    fn one_round_in_a_senders_lull_does_not_stretch_the_pause() {
        // Steady at 20,000/s (55 every 2.75 ms), then a round that found only 5 in 1 ms:
        // alone, that round would say 5,000/s and a 10 ms pause.
        let mut lull = round(55, 3, 5, 1);
        lull.received = 5;
        lull.rate.observe(5, Duration::from_millis(1));
        match lull.pause() {
            Pause::Sleep(pause) => assert!(pause < Duration::from_millis(4), "{pause:?}"),
            other => panic!("{other:?}"),
        }
        // A rate that really fell is followed within a few rounds.
        for _ in 0..8 {
            lull.rate.observe(1, Duration::from_millis(10));
        }
        assert_eq!(lull.pause(), Pause::Sleep(MAX_PAUSE));
    }

    #[test]
    fn a_full_round_goes_on_and_a_trickle_waits_for_the_next_datagram() {
        assert_eq!(round(DATAGRAMS_PER_ROUND, 1, 6, 1).pause(), Pause::None);
        let failed = Round {
            receive_failed: true,
            ..round(0, 200, 0, 0)
        };
        assert_eq!(failed.pause(), Pause::Sleep(MIN_PAUSE), "no busy loop");
        assert_eq!(
            round(0, 200, 0, 0).pause(),
            Pause::UntilReadable(STOP_CHECK_INTERVAL),
            "idle"
        );
        // Under one datagram per longest pause: sleeping would not gather a batch sooner.
        assert_eq!(
            round(1, 50, 1, 0).pause(),
            Pause::UntilReadable(STOP_CHECK_INTERVAL)
        );
        assert_eq!(
            round(1, 50, 3, 900).pause(),
            Pause::UntilReadable(Duration::from_millis(100)),
            "due in 100 ms"
        );
    }

    #[test]
    fn a_stop_hands_over_everything_already_queued() {
        let (admission, _metrics) = super::super::tests::admission(1 << 20);
        let (segments, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let socket = blocking_socket("127.0.0.1:0");
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..500 {
            let datagram = format!("{{\"format\":\"json\",\"version\":1}}\n{{\"id\":{i}}}");
            sender
                .send_to(datagram.as_bytes(), socket.local_addr().unwrap())
                .unwrap();
        }
        let stopped = CancellationToken::new();
        stopped.cancel();
        // Already stopped: no waiting, one final drain of all 500 (more than a round's
        // limit and a batch), handed over before returning.
        receive(&socket, &admission, &segments, &AtomicU64::new(0), &stopped);
        let mut count = 0;
        while let Ok(arrival) = receiver.try_recv() {
            count += arrival.segments.len();
        }
        assert_eq!(count, 500);
    }

    async fn next(receiver: &mut super::super::SegmentReceiver) -> Arrival {
        tokio::time::timeout(Duration::from_secs(5), receiver.recv())
            .await
            .expect("a hand-over within 5 s")
            .unwrap()
    }

    #[tokio::test]
    async fn the_listener_holds_partial_batches_until_due_and_loses_none_at_a_stop() {
        let (admission, _metrics) = super::super::tests::admission(1 << 20);
        let (segments, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let listener =
            UdpListener::bind("127.0.0.1:0", 1 << 22, &admission, &segments, stop.clone()).unwrap();
        let target = listener.local_addr().unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let datagram =
            |i: usize| format!("{{\"format\":\"json\",\"version\":1}}\n{{\"id\":\"{i}\"}}");
        let document = |s: &Segment| String::from_utf8(s.document().to_vec()).unwrap();

        // A lone segment is held for a batch until it is due, and says when it came.
        let sent_at = std::time::Instant::now();
        sender.send_to(datagram(0).as_bytes(), target).unwrap();
        let first = next(&mut receiver).await;
        assert!(first.received_at.elapsed() >= MAX_BATCH_WAIT);
        assert!(sent_at.elapsed() < MAX_BATCH_WAIT + Duration::from_millis(1500));
        assert!(first.received_at < sent_at + MAX_BATCH_WAIT / 2);
        let ids: Vec<String> = first.segments.iter().map(document).collect();
        assert_eq!(ids, ["{\"id\":\"0\"}"]);

        // Whole batches leave without waiting for the rest.
        for i in 1..=120 {
            sender.send_to(datagram(i).as_bytes(), target).unwrap();
        }
        let batch = next(&mut receiver).await;
        assert!(
            batch.segments.len() % MAX_BATCH_SEGMENTS == 0,
            "{}",
            batch.segments.len()
        );
        let mut ids: Vec<String> = batch.segments.iter().map(document).collect();

        // Queued just before the stop: the final drain takes all of them.
        for i in 121..=500 {
            sender.send_to(datagram(i).as_bytes(), target).unwrap();
        }
        let started = std::time::Instant::now();
        listener.stop().await;
        assert!(started.elapsed() < STOP_CHECK_INTERVAL + Duration::from_secs(1));
        while let Ok(arrival) = receiver.try_recv() {
            ids.extend(arrival.segments.iter().map(document));
        }
        let expected: Vec<String> = (1..=500).map(|i| format!("{{\"id\":\"{i}\"}}")).collect();
        assert_eq!(ids, expected);
    }
}

//! Datagrams the kernel dropped at the UDP socket, nearly always because its receive buffer
//! was full. They never reach the daemon, so the socket's own drop count (the `drops` column
//! of `/proc/net/udp` or `/proc/net/udp6`, the counter `SO_RXQ_OVFL` reports) is the only
//! place they can be counted from.

use std::io;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::Admission;

/// How often the count is read, at most, and only after datagrams arrived.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The shortest time between two warnings; drops in between are summed into the next one.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Why a socket's drop count cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DropCountError {
    /// Only Linux keeps the table this is read from.
    #[error("only Linux reports a socket's drops in /proc/net/udp")]
    NotLinux,
    /// The descriptor's `/proc/self/fd` link, which names the socket's inode.
    #[error("reading /proc/self/fd/{fd}: {source}")]
    Descriptor {
        /// The socket's descriptor.
        fd: i32,
        /// Why it could not be read.
        source: io::Error,
    },
    /// The link does not name a socket (`socket:[12345]`).
    #[error("/proc/self/fd/{fd} is {link:?}, not a socket")]
    NotASocket {
        /// The socket's descriptor.
        fd: i32,
        /// What the link said.
        link: String,
    },
    /// The socket's address, which says which table lists it.
    #[error("the socket's address: {0}")]
    Address(io::Error),
    /// The duplicate descriptor that keeps the socket listed until the last read.
    #[error("duplicating the socket: {0}")]
    Duplicate(io::Error),
    /// The table could not be read.
    #[error("reading {table}: {source}")]
    Table {
        /// `/proc/net/udp` or `/proc/net/udp6`.
        table: &'static str,
        /// Why it could not be read.
        source: io::Error,
    },
    /// The table has no row for the socket.
    #[error("socket inode {inode} is not in {table}")]
    NotInTable {
        /// `/proc/net/udp` or `/proc/net/udp6`.
        table: &'static str,
        /// The socket's inode.
        inode: u64,
    },
}

/// One socket's drop count as the kernel keeps it.
#[derive(Debug)]
pub struct KernelDrops {
    table: &'static str,
    inode: u64,
    /// The socket, duplicated, so that it stays in the table for the last read after the
    /// receive loop has closed its own descriptor.
    _socket: UdpSocket,
    /// The count at the last read. The kernel's counter is 32 bits and wraps.
    seen: u32,
}

impl KernelDrops {
    /// Finds `socket` in the kernel's table of UDP sockets (`/proc/net/udp6` for IPv6 and
    /// dual-stack sockets, which count IPv4 datagrams there too).
    pub fn of(socket: &UdpSocket) -> Result<Self, DropCountError> {
        let table = if socket
            .local_addr()
            .map_err(DropCountError::Address)?
            .is_ipv4()
        {
            "/proc/net/udp"
        } else {
            "/proc/net/udp6"
        };
        let mut drops = KernelDrops {
            table,
            inode: socket_inode(socket)?,
            _socket: socket.try_clone().map_err(DropCountError::Duplicate)?,
            seen: 0,
        };
        drops.seen = drops.read()?;
        Ok(drops)
    }

    /// The datagrams dropped since the last call (or since [`KernelDrops::of`]).
    fn new_drops(&mut self) -> Result<u64, DropCountError> {
        let total = self.read()?;
        let new = dropped_between(self.seen, total);
        self.seen = total;
        Ok(new)
    }

    fn read(&self) -> Result<u32, DropCountError> {
        let table =
            std::fs::read_to_string(self.table).map_err(|source| DropCountError::Table {
                table: self.table,
                source,
            })?;
        drops_in_table(&table, self.inode).ok_or(DropCountError::NotInTable {
            table: self.table,
            inode: self.inode,
        })
    }
}

/// Drops between two reads of the kernel's 32-bit counter, which wraps.
fn dropped_between(earlier: u32, later: u32) -> u64 {
    u64::from(later.wrapping_sub(earlier))
}

/// The socket's inode number, which names it in the kernel's tables.
#[cfg(target_os = "linux")]
fn socket_inode(socket: &UdpSocket) -> Result<u64, DropCountError> {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map_err(|source| DropCountError::Descriptor { fd, source })?;
    let link = link.to_string_lossy();
    parse_socket_link(&link).ok_or_else(|| DropCountError::NotASocket {
        fd,
        link: link.into_owned(),
    })
}

#[cfg(not(target_os = "linux"))]
fn socket_inode(_socket: &UdpSocket) -> Result<u64, DropCountError> {
    Err(DropCountError::NotLinux)
}

/// The inode in a socket descriptor's link text, `socket:[12345]`.
fn parse_socket_link(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The `drops` column of the row for `inode` in a `/proc/net/udp{,6}` table.
fn drops_in_table(table: &str, inode: u64) -> Option<u32> {
    // sl local remote st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
    const INODE: usize = 9;
    table.lines().skip(1).find_map(|row| {
        let mut fields = row.split_whitespace();
        if fields.nth(INODE)?.parse::<u64>().ok()? != inode {
            return None;
        }
        fields.last()?.parse().ok()
    })
}

/// Counts `drops` into `admission` until `receive_ended` says the receive loop has ended,
/// then reads once more. `datagrams_read` is what the receive loop took from the socket (empty
/// datagrams too): drops only happen while datagrams arrive, so an idle daemon reads nothing.
///
/// On a thread of its own: the table lists every UDP socket of the network namespace (a
/// host's, for pods on the host network), and reading hundreds of rows takes about a
/// millisecond, which the receive loop cannot spare at high rates.
pub fn count(
    mut drops: KernelDrops,
    admission: &Admission,
    datagrams_read: &AtomicU64,
    receive_ended: &mpsc::Receiver<()>,
) {
    let mut warnings = WarningBudget::default();
    let mut read_at_last_count = datagrams_read.load(Ordering::Relaxed);
    loop {
        let ended = !matches!(
            receive_ended.recv_timeout(POLL_INTERVAL),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        let read = datagrams_read.load(Ordering::Relaxed);
        if ended || read != read_at_last_count {
            read_at_last_count = read;
            match drops.new_drops() {
                Ok(new) => {
                    admission.kernel_dropped(new);
                    if let Some(total) = warnings.add(new, Instant::now()) {
                        warn_about(total);
                    }
                }
                Err(e) => tracing::debug!("Could not read the UDP socket's kernel drop count: {e}"),
            }
        }
        if ended {
            // What the interval held back, so that the log has every drop.
            if let Some(total) = warnings.take() {
                warn_about(total);
            }
            return;
        }
    }
}

fn warn_about(drops: u64) {
    tracing::warn!(
        "The kernel dropped {drops} more UDP datagrams at the socket, nearly always because \
         its receive buffer was full (xray_udp_kernel_drops_total counts them all; this \
         warning comes at most every {} seconds). Raise Socket.ReceiveBufferBytes \
         (--receive-buffer-bytes), and the node's net.core.rmem_max, which caps it.",
        WARN_INTERVAL.as_secs()
    );
}

/// At most one warning per [`WARN_INTERVAL`], carrying every drop since the last one.
#[derive(Debug, Default, Clone, Copy)]
struct WarningBudget {
    unreported: u64,
    last_warned: Option<Instant>,
}

impl WarningBudget {
    /// Adds `new` drops at `now`; returns the drops to warn about now, if any.
    fn add(&mut self, new: u64, now: Instant) -> Option<u64> {
        self.unreported += new;
        let quiet_long_enough = self
            .last_warned
            .is_none_or(|last| now.duration_since(last) >= WARN_INTERVAL);
        if !quiet_long_enough {
            return None;
        }
        let warned = self.take();
        if warned.is_some() {
            self.last_warned = Some(now);
        }
        warned
    }

    /// The drops not warned about yet, if any.
    fn take(&mut self) -> Option<u64> {
        Some(std::mem::take(&mut self.unreported)).filter(|&drops| drops > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP_TABLE: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops             
  318: 0100007F:07D0 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4150261 2 0000000000000000 0             
  765: 00000000:D48F 00000000:0000 07 00000000:00011B00 00:00000000 00000000     0        0 4151380 2 0000000000000000 4294967295
 1024: 0100007F:9A2B 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 7 2 0000000000000000 17
";

    const UDP6_TABLE: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  318: 00000000000000000000000000000000:07D0 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4150262 2 0000000000000000 3
";

    #[test]
    fn the_drops_column_of_the_sockets_row_is_read_from_both_tables() {
        assert_eq!(drops_in_table(UDP_TABLE, 4150261), Some(0));
        assert_eq!(drops_in_table(UDP_TABLE, 4151380), Some(u32::MAX));
        // An inode that is a prefix or a suffix of another's is not confused with it.
        assert_eq!(drops_in_table(UDP_TABLE, 7), Some(17));
        assert_eq!(drops_in_table(UDP_TABLE, 415026), None);
        assert_eq!(drops_in_table(UDP6_TABLE, 4150262), Some(3));
        assert_eq!(drops_in_table("", 7), None);
        assert_eq!(drops_in_table("header\n  1: truncated row 7\n", 7), None);
    }

    #[test]
    fn the_inode_is_read_from_the_descriptors_link() {
        assert_eq!(parse_socket_link("socket:[4150261]"), Some(4150261));
        assert_eq!(parse_socket_link("pipe:[4150261]"), None);
        assert_eq!(parse_socket_link("socket:[]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
    }

    #[test]
    fn warnings_come_at_most_every_ten_seconds_and_carry_every_drop() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut budget = WarningBudget::default();
        assert_eq!(budget.add(0, at(0)), None, "no drops, no warning");
        assert_eq!(budget.add(5, at(1)), Some(5));
        assert_eq!(budget.add(7, at(2)), None);
        assert_eq!(budget.add(0, at(5)), None);
        assert_eq!(budget.add(1, at(10)), None);
        assert_eq!(budget.add(0, at(11)), Some(8));
        assert_eq!(budget.add(0, at(30)), None);
        assert_eq!(budget.add(2, at(31)), Some(2));
        assert_eq!(budget.add(4, at(32)), None);
        assert_eq!(budget.take(), Some(4), "held back, handed over at the end");
        assert_eq!(budget.take(), None);
    }

    #[test]
    fn the_count_survives_the_kernels_counter_wrapping_and_failed_reads() {
        assert_eq!(dropped_between(7, 7), 0);
        assert_eq!(dropped_between(7, 10), 3);
        assert_eq!(dropped_between(u32::MAX - 1, 3), 5);
        let mut drops = KernelDrops {
            table: "/nonexistent",
            inode: 1,
            _socket: UdpSocket::bind("127.0.0.1:0").unwrap(),
            seen: 9,
        };
        assert!(matches!(
            drops.new_drops(),
            Err(DropCountError::Table { .. })
        ));
        assert_eq!(drops.seen, 9, "a failed read changes nothing");
    }

    /// A socket with the kernel's smallest receive buffer, sent `count` datagrams of 1,000
    /// bytes from 127.0.0.1: far more than it holds.
    #[cfg(target_os = "linux")]
    fn overflow(receiver: &UdpSocket, count: usize) {
        socket2::SockRef::from(receiver)
            .set_recv_buffer_size(1)
            .unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = receiver.local_addr().unwrap().port();
        for _ in 0..count {
            sender.send_to(&[b'x'; 1000], ("127.0.0.1", port)).unwrap();
        }
    }

    /// Reads what `receiver` holds and the drops at it until they add up to `sent` (delivery
    /// on loopback may finish after `send_to` returned), or two seconds passed.
    #[cfg(target_os = "linux")]
    fn queued_and_dropped(receiver: &UdpSocket, drops: &mut KernelDrops, sent: u64) -> (u64, u64) {
        receiver.set_nonblocking(true).unwrap();
        let (mut queued, mut dropped) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(2);
        while queued + dropped < sent && Instant::now() < deadline {
            while receiver.recv(&mut [0u8; 2048]).is_ok() {
                queued += 1;
            }
            dropped += drops.new_drops().unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        (queued, dropped)
    }

    /// Every datagram sent is either queued or in the kernel's count, for an IPv4 socket and
    /// for an IPv6 one receiving IPv4 datagrams (listed in the other table).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_receive_buffer_is_counted_datagram_for_datagram() {
        let sockets = [
            Some(UdpSocket::bind("127.0.0.1:0").unwrap()),
            UdpSocket::bind("[::ffff:127.0.0.1]:0").ok(),
        ];
        for receiver in sockets.iter().flatten() {
            let mut drops = KernelDrops::of(receiver).unwrap();
            assert_eq!(drops.new_drops().unwrap(), 0);
            overflow(receiver, 200);
            let (queued, dropped) = queued_and_dropped(receiver, &mut drops, 200);
            assert!(
                dropped > 0 && queued > 0,
                "queued {queued}, dropped {dropped}"
            );
            assert_eq!(queued + dropped, 200, "{:?}", receiver.local_addr());
            assert_eq!(drops.new_drops().unwrap(), 0, "counted once");
        }
    }

    /// The counting thread reads after datagrams were read from the socket, and once more
    /// when receiving ends.
    #[cfg(target_os = "linux")]
    #[test]
    fn drops_are_counted_while_datagrams_arrive_and_when_receiving_ends() {
        let (admission, metrics) = crate::ingest::tests::admission(1 << 20);
        let counted = || metrics.total("xray_udp_kernel_drops_total");
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let drops = KernelDrops::of(&receiver).unwrap();
        let datagrams_read = std::sync::Arc::new(AtomicU64::new(0));
        let (receiving, receive_ended) = mpsc::channel::<()>();
        let counter = {
            let (admission, datagrams_read) = (admission.clone(), datagrams_read.clone());
            std::thread::spawn(move || count(drops, &admission, &datagrams_read, &receive_ended))
        };
        overflow(&receiver, 100);
        std::thread::sleep(POLL_INTERVAL + Duration::from_millis(300));
        assert_eq!(
            counted(),
            0,
            "nothing read from the socket: the count is not read"
        );
        datagrams_read.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + 3 * POLL_INTERVAL;
        while counted() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let first = counted();
        assert!(first > 0, "read within a poll interval of a datagram");
        overflow(&receiver, 100);
        // Loopback delivery may finish after `send_to` returned.
        std::thread::sleep(Duration::from_millis(200));
        drop(receiving);
        counter.join().unwrap();
        assert!(counted() > first, "read once more at the end");
        receiver.set_nonblocking(true).unwrap();
        let mut queued = 0;
        while receiver.recv(&mut [0u8; 2048]).is_ok() {
            queued += 1;
        }
        assert_eq!(counted() + queued, 200);
    }
}

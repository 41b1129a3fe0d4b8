//! Ingest: turning received bytes into admitted [`Segment`]s. The admission decision
//! (validate, then charge the budget) is shared by every transport; `udp` owns the socket.

pub mod kernel_drops;
pub mod tcp;
pub mod udp;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::admin::StatusBoard;
use crate::budget::{BudgetPermit, MemoryBudget};
use crate::metrics::IngestCounters;
use crate::segment::{self, Rejection};
use std::sync::Arc;

/// Where admitted segments go: UDP sends whole batches (a partial one when it is due or at
/// a stop), so the batcher wakes once per batch, not per segment; TCP sends each segment.
pub type SegmentSender = tokio::sync::mpsc::UnboundedSender<Arrival>;
/// The batcher's end of [`SegmentSender`].
pub type SegmentReceiver = tokio::sync::mpsc::UnboundedReceiver<Arrival>;

/// Segments handed to the batcher together, and when the first of them was received: a
/// partial batch's one-second wait counts from there, not from the hand-over.
#[derive(Debug)]
pub struct Arrival {
    /// The segments, in the order received.
    pub segments: Vec<Segment>,
    /// When the first of them was received (UDP: when the receive round that read it began;
    /// it may have waited in the kernel for up to a pause before).
    pub received_at: std::time::Instant,
}

impl Arrival {
    /// Segments received just now.
    pub fn now(segments: Vec<Segment>) -> Self {
        Arrival {
            segments,
            received_at: std::time::Instant::now(),
        }
    }
}

/// An accepted segment document and its share of the memory budget.
#[derive(Debug)]
pub struct Segment {
    document: Box<[u8]>,
    _permit: BudgetPermit,
}

impl Segment {
    /// The document bytes exactly as received after the header line.
    pub fn document(&self) -> &[u8] {
        &self.document
    }
}

/// Why received bytes did not become a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Invalid input, counted in `xray_segments_rejected_total`.
    Rejected(Rejection),
    /// Valid, but the budget is full: counted as `dropped{reason="buffer_full"}`.
    BufferFull,
}

/// Validates received bytes and charges the budget; counts every outcome.
#[derive(Clone)]
pub struct Admission {
    budget: Arc<MemoryBudget>,
    counters: IngestCounters,
    status: Arc<StatusBoard>,
    warnings: Arc<WarnLimiter>,
}

impl Admission {
    /// Admission into `budget`, counting into `counters`, noting arrivals on `status`.
    pub fn new(
        budget: Arc<MemoryBudget>,
        counters: IngestCounters,
        status: Arc<StatusBoard>,
    ) -> Self {
        Admission {
            budget,
            counters,
            status,
            warnings: Arc::new(WarnLimiter::default()),
        }
    }

    /// Segments arrived (called once per receive round, not per datagram).
    pub fn note_activity(&self) {
        self.status.received_now();
    }

    /// Admits one datagram (`<header>\n<document>`): the document is copied once, into an
    /// allocation of exactly its size, and charged to the budget.
    pub fn admit_datagram(&self, datagram: &[u8]) -> Result<Segment, Refusal> {
        self.counters.received.inc();
        self.counters.received_bytes.inc_by(datagram.len() as u64);
        let refusal = match segment::split_datagram(datagram) {
            Ok(document) => match self.budget.try_admit(document.len()) {
                Some(permit) => {
                    return Ok(Segment {
                        document: document.into(),
                        _permit: permit,
                    })
                }
                None => Refusal::BufferFull,
            },
            Err(rejection) => Refusal::Rejected(rejection),
        };
        self.refused(refusal, datagram);
        Err(refusal)
    }

    /// Counts a record refused by stream framing (TCP ingest), of `bytes` bytes.
    pub fn reject(&self, rejection: Rejection, bytes: usize) {
        self.counters.received.inc();
        self.counters.received_bytes.inc_by(bytes as u64);
        self.refused(Refusal::Rejected(rejection), &[]);
    }

    /// Admits an already framed, valid document, waiting for budget rather than dropping it
    /// (TCP ingest: the sender is slowed down instead). `None` only if it can never fit.
    pub async fn admit_document(&self, document: &[u8]) -> Option<Segment> {
        self.counters.received.inc();
        self.counters.received_bytes.inc_by(document.len() as u64);
        let Some(permit) = self.budget.admit(document.len()).await else {
            self.refused(Refusal::BufferFull, document);
            return None;
        };
        self.note_activity();
        Some(Segment {
            document: document.into(),
            _permit: permit,
        })
    }

    /// Counts datagrams the kernel dropped at the socket before the daemon could receive them.
    pub fn kernel_dropped(&self, datagrams: u64) {
        self.counters.kernel_drops.inc_by(datagrams);
    }

    /// Counts a received document that shutdown stopped from being admitted.
    pub fn dropped_at_shutdown(&self, _bytes: usize) {
        self.counters.dropped_shutdown.inc();
    }

    fn refused(&self, refusal: Refusal, datagram: &[u8]) {
        let description = match refusal {
            Refusal::Rejected(rejection) => {
                self.counters.rejected(rejection).inc();
                rejection.as_str()
            }
            Refusal::BufferFull => {
                self.counters.dropped_buffer_full.inc();
                "buffer_full"
            }
        };
        // Customer payloads stay out of default-level logs (the Go daemon printed them at
        // Warn); a bounded, escaped prefix is available at debug.
        tracing::debug!(
            "Refused segment ({description}): {}",
            datagram
                .iter()
                .take(64)
                .flat_map(|b| std::ascii::escape_default(*b))
                .map(char::from)
                .collect::<String>()
        );
        if let Some(suppressed) = self.warnings.should_log() {
            match refusal {
                Refusal::BufferFull => tracing::warn!(
                    "Segment dropped. Consider increasing memory limit ({suppressed} more refused since the last warning)"
                ),
                Refusal::Rejected(_) => tracing::warn!(
                    "Invalid segment refused: {description} ({} bytes; {suppressed} more refused since the last warning)",
                    datagram.len()
                ),
            }
        }
    }
}

/// At most one warning per interval, so a junk flood cannot flood the log; the number of
/// refusals in between is reported with the next warning (the metrics count every one).
#[derive(Debug, Default)]
struct WarnLimiter {
    last_logged_secs: AtomicU64,
    suppressed: AtomicU64,
}

impl WarnLimiter {
    const INTERVAL_SECS: u64 = 10;

    fn should_log(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_logged_secs.load(Ordering::Relaxed);
        if now >= last + Self::INTERVAL_SECS
            && self
                .last_logged_secs
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, Transport};

    pub(super) fn admission(limit: usize) -> (Admission, Metrics) {
        let budget = MemoryBudget::new(limit);
        let metrics = Metrics::new(prometheus::Registry::new(), Arc::clone(&budget)).unwrap();
        (
            Admission::new(
                budget,
                metrics.ingest(Transport::Udp),
                Arc::new(StatusBoard::new()),
            ),
            metrics,
        )
    }

    #[test]
    fn every_datagram_is_counted_once_by_outcome() {
        let (admission, metrics) = admission(2 * 1024);
        let valid = b"{\"format\":\"json\",\"version\":1}\n{\"id\":\"1\"}";
        let held = admission.admit_datagram(valid).expect("admitted");
        assert_eq!(held.document(), b"{\"id\":\"1\"}");
        assert_eq!(
            admission.admit_datagram(b"junk").map(|_| ()),
            Err(Refusal::Rejected(Rejection::MissingHeader))
        );
        let big = [&valid[..], &[b' '; 3000]].concat();
        assert_eq!(
            admission.admit_datagram(&big).map(|_| ()),
            Err(Refusal::BufferFull)
        );
        let text = metrics.encode_text();
        assert!(
            text.contains(r#"xray_segments_received_total{transport="udp"} 3"#),
            "{text}"
        );
        assert!(text.contains(r#"xray_segments_rejected_total{reason="missing_header"} 1"#));
        assert!(text.contains(r#"xray_segments_dropped_total{reason="buffer_full"} 1"#));
        assert!(text.contains("xray_buffer_segments 1"));
    }

    #[test]
    fn warnings_are_rate_limited_and_report_what_they_suppressed() {
        let limiter = WarnLimiter::default();
        assert_eq!(limiter.should_log(), Some(0));
        assert_eq!(limiter.should_log(), None);
        assert_eq!(limiter.should_log(), None);
        limiter.last_logged_secs.store(0, Ordering::Relaxed);
        assert_eq!(limiter.should_log(), Some(2));
    }
}

//! The pure core of telemetry: backend error buckets, one record per interval cut from the
//! counter totals, and the bounded queue records wait in until `PutTelemetryRecords` takes them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::metrics::{DropReason, Metrics};
use crate::upload::retry::Failure;

/// Records held at most; the oldest goes first (the Go daemon's channel capacity).
pub const QUEUE_CAPACITY: usize = 30;

/// Records per `PutTelemetryRecords` call (the API's limit).
pub const RECORDS_PER_CALL: usize = 10;

/// The `BackendConnectionErrors` bucket a failure is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorBucket {
    /// `TimeoutCount`.
    Timeout,
    /// `ConnectionRefusedCount`.
    ConnectionRefused,
    /// `HTTPCode4XXCount` (throttling included).
    Http4xx,
    /// `HTTPCode5XXCount`.
    Http5xx,
    /// `UnknownHostCount`.
    UnknownHost,
    /// `OtherCount`.
    Other,
}

impl ErrorBucket {
    const ALL: [ErrorBucket; 6] = [
        ErrorBucket::Timeout,
        ErrorBucket::ConnectionRefused,
        ErrorBucket::Http4xx,
        ErrorBucket::Http5xx,
        ErrorBucket::UnknownHost,
        ErrorBucket::Other,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// Where a failed X-Ray call is counted, or `None` when it is not a connection error at all
/// (a call that succeeded with unprocessed segments). Throttling is a 4xx, as in the Go
/// daemon 3.3; broken connections other than a refusal or a failed lookup are `Other`.
pub fn error_bucket(failure: &Failure) -> Option<ErrorBucket> {
    Some(match failure {
        Failure::Http { status, .. } => match status {
            400..=499 => ErrorBucket::Http4xx,
            500..=599 => ErrorBucket::Http5xx,
            _ => ErrorBucket::Other,
        },
        Failure::Timeout => ErrorBucket::Timeout,
        Failure::ConnectionRefused => ErrorBucket::ConnectionRefused,
        Failure::UnknownHost => ErrorBucket::UnknownHost,
        Failure::Connection | Failure::Other => ErrorBucket::Other,
        Failure::Unprocessed => return None,
    })
}

/// `BackendConnectionErrors` of one record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    /// `TimeoutCount`.
    pub timeout: u64,
    /// `ConnectionRefusedCount`.
    pub connection_refused: u64,
    /// `HTTPCode4XXCount`.
    pub http_4xx: u64,
    /// `HTTPCode5XXCount`.
    pub http_5xx: u64,
    /// `UnknownHostCount`.
    pub unknown_host: u64,
    /// `OtherCount`.
    pub other: u64,
}

/// Failed X-Ray calls since the last record, shared by the uploader (every failed
/// `PutTraceSegments` attempt) and the telemetry reporter (its own failed calls).
#[derive(Debug, Default)]
pub struct BackendErrors {
    counts: [AtomicU64; 6],
}

impl BackendErrors {
    /// Counts one failed call in its bucket (nothing for [`Failure::Unprocessed`]).
    pub fn record(&self, failure: &Failure) {
        if let Some(bucket) = error_bucket(failure) {
            self.counts[bucket.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts since the last take, resetting them to zero.
    pub fn take(&self) -> ErrorCounts {
        let [timeout, connection_refused, http_4xx, http_5xx, unknown_host, other] =
            ErrorBucket::ALL.map(|bucket| self.counts[bucket.index()].swap(0, Ordering::Relaxed));
        ErrorCounts {
            timeout,
            connection_refused,
            http_4xx,
            http_5xx,
            unknown_host,
            other,
        }
    }
}

/// The cumulative segment counters a record is the difference of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// `xray_segments_received_total`, all transports.
    pub received: u64,
    /// `xray_segments_sent_total`.
    pub sent: u64,
    /// `xray_segments_dropped_total{reason="buffer_full"}`.
    pub spillover: u64,
    /// `xray_segments_rejected_total`, ingest and backend reasons.
    pub rejected: u64,
}

impl Totals {
    /// Reads the totals now.
    ///
    /// Spillover is only `buffer_full`: in X-Ray's model it is the "the daemon could not
    /// keep up, give it more buffer" signal (the Go daemon counts exhausted buffers and
    /// dropped backlog there). Segments lost to failed uploads (`retries_exhausted`,
    /// `expired`) are already reported as BackendConnectionErrors, and `shutdown` drops
    /// happen after the last record; the Prometheus metric keeps every reason apart.
    pub fn read(metrics: &Metrics) -> Totals {
        Totals {
            received: metrics.total("xray_segments_received_total"),
            sent: metrics.segments_sent.get(),
            spillover: metrics.dropped(DropReason::BufferFull).get(),
            rejected: metrics.total("xray_segments_rejected_total"),
        }
    }
}

/// One `TelemetryRecord`: what happened between two cuts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryRecord {
    /// The cut-off time (end of the interval).
    pub timestamp: SystemTime,
    /// `SegmentsReceivedCount`.
    pub segments_received: u64,
    /// `SegmentsSentCount`.
    pub segments_sent: u64,
    /// `SegmentsSpilloverCount`.
    pub segments_spillover: u64,
    /// `SegmentsRejectedCount`.
    pub segments_rejected: u64,
    /// `BackendConnectionErrors`.
    pub backend_errors: ErrorCounts,
}

/// What one cut did, so the loop can log it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// A record was queued.
    Queued,
    /// A record was queued and the oldest one dropped to make room.
    QueuedDroppingOldest,
    /// No segment has ever arrived, so nothing was queued (the Go daemon's gate, issue #39).
    Skipped,
}

/// Turns counter totals into per-interval records and holds them until they are delivered.
#[derive(Debug, Default)]
pub struct Reporter {
    last: Totals,
    queue: VecDeque<TelemetryRecord>,
}

impl Reporter {
    /// A reporter whose first record counts from zero (the counters' start).
    pub fn new() -> Self {
        Reporter::default()
    }

    /// Ends the interval at `now`: the record is `totals` minus the totals at the last cut,
    /// plus the backend `errors` taken for it. Nothing is queued until a segment has ever
    /// been received; the interval still ends, as the Go daemon swaps its record regardless.
    pub fn cut(&mut self, totals: Totals, errors: ErrorCounts, now: SystemTime) -> Cut {
        let last = std::mem::replace(&mut self.last, totals);
        if totals.received == 0 {
            return Cut::Skipped;
        }
        // Saturating: a counter can only go back if the registry was replaced.
        let record = TelemetryRecord {
            timestamp: now,
            segments_received: totals.received.saturating_sub(last.received),
            segments_sent: totals.sent.saturating_sub(last.sent),
            segments_spillover: totals.spillover.saturating_sub(last.spillover),
            segments_rejected: totals.rejected.saturating_sub(last.rejected),
            backend_errors: errors,
        };
        let truncated = self.queue.len() >= QUEUE_CAPACITY;
        if truncated {
            self.queue.pop_front();
        }
        self.queue.push_back(record);
        if truncated {
            Cut::QueuedDroppingOldest
        } else {
            Cut::Queued
        }
    }

    /// The next call's records: the oldest, at most [`RECORDS_PER_CALL`]. They stay queued
    /// until [`Reporter::delivered`], so a failed or interrupted call leaves that chunk and
    /// every later record in place, in order (the Go daemon's re-queue).
    pub fn next_chunk(&self) -> Vec<TelemetryRecord> {
        self.queue.iter().take(RECORDS_PER_CALL).cloned().collect()
    }

    /// Removes the `count` oldest records, which a call has taken care of.
    pub fn delivered(&mut self, count: usize) {
        self.queue.drain(..count.min(self.queue.len()));
    }

    /// Records held.
    pub fn held(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn totals(received: u64, sent: u64, spillover: u64, rejected: u64) -> Totals {
        Totals {
            received,
            sent,
            spillover,
            rejected,
        }
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn failures_land_in_their_bucket() {
        let http = |status, code: Option<&str>| Failure::Http {
            status,
            code: code.map(str::to_owned),
        };
        for (failure, bucket) in [
            (
                http(400, Some("ThrottlingException")),
                Some(ErrorBucket::Http4xx),
            ),
            (
                http(429, Some("TooManyRequestsException")),
                Some(ErrorBucket::Http4xx),
            ),
            (
                http(403, Some("AccessDeniedException")),
                Some(ErrorBucket::Http4xx),
            ),
            (http(500, None), Some(ErrorBucket::Http5xx)),
            (
                http(503, Some("ServiceUnavailable")),
                Some(ErrorBucket::Http5xx),
            ),
            (http(302, None), Some(ErrorBucket::Other)),
            (Failure::Timeout, Some(ErrorBucket::Timeout)),
            (
                Failure::ConnectionRefused,
                Some(ErrorBucket::ConnectionRefused),
            ),
            (Failure::UnknownHost, Some(ErrorBucket::UnknownHost)),
            (Failure::Connection, Some(ErrorBucket::Other)),
            (Failure::Other, Some(ErrorBucket::Other)),
            (Failure::Unprocessed, None),
        ] {
            assert_eq!(error_bucket(&failure), bucket, "{failure:?}");
        }
    }

    #[test]
    fn backend_errors_are_taken_and_reset() {
        let errors = BackendErrors::default();
        errors.record(&Failure::Timeout);
        errors.record(&Failure::Timeout);
        errors.record(&Failure::Http {
            status: 400,
            code: Some("ThrottlingException".into()),
        });
        errors.record(&Failure::Http {
            status: 502,
            code: None,
        });
        errors.record(&Failure::ConnectionRefused);
        errors.record(&Failure::UnknownHost);
        errors.record(&Failure::Connection);
        errors.record(&Failure::Unprocessed);
        assert_eq!(
            errors.take(),
            ErrorCounts {
                timeout: 2,
                connection_refused: 1,
                http_4xx: 1,
                http_5xx: 1,
                unknown_host: 1,
                other: 1,
            }
        );
        assert_eq!(errors.take(), ErrorCounts::default());
    }

    #[test]
    fn records_are_deltas_between_cuts() {
        let mut reporter = Reporter::new();
        let errors = ErrorCounts {
            http_5xx: 2,
            ..ErrorCounts::default()
        };
        assert_eq!(
            reporter.cut(totals(10, 7, 1, 2), errors, at(60)),
            Cut::Queued
        );
        assert_eq!(
            reporter.cut(totals(15, 12, 1, 3), ErrorCounts::default(), at(120)),
            Cut::Queued
        );
        let records = reporter.next_chunk();
        assert_eq!(
            records[0],
            TelemetryRecord {
                timestamp: at(60),
                segments_received: 10,
                segments_sent: 7,
                segments_spillover: 1,
                segments_rejected: 2,
                backend_errors: errors,
            }
        );
        assert_eq!(
            records[1],
            TelemetryRecord {
                timestamp: at(120),
                segments_received: 5,
                segments_sent: 5,
                segments_spillover: 0,
                segments_rejected: 1,
                backend_errors: ErrorCounts::default(),
            }
        );
    }

    #[test]
    fn a_quiet_minute_after_the_first_segment_is_a_zero_record() {
        let mut reporter = Reporter::new();
        reporter.cut(totals(1, 1, 0, 0), ErrorCounts::default(), at(60));
        assert_eq!(
            reporter.cut(totals(1, 1, 0, 0), ErrorCounts::default(), at(120)),
            Cut::Queued
        );
        let quiet = &reporter.next_chunk()[1];
        assert_eq!(
            (quiet.segments_received, quiet.segments_sent),
            (0, 0),
            "{quiet:?}"
        );
    }

    #[test]
    fn nothing_is_queued_before_the_first_segment() {
        let mut reporter = Reporter::new();
        let errors = ErrorCounts {
            other: 1,
            ..ErrorCounts::default()
        };
        assert_eq!(
            reporter.cut(totals(0, 0, 0, 0), errors, at(60)),
            Cut::Skipped
        );
        assert_eq!(reporter.held(), 0);
        assert_eq!(
            reporter.cut(totals(3, 0, 0, 0), ErrorCounts::default(), at(120)),
            Cut::Queued
        );
        let record = &reporter.next_chunk()[0];
        assert_eq!(record.segments_received, 3);
        assert_eq!(record.backend_errors, ErrorCounts::default());
    }

    #[test]
    fn the_queue_keeps_the_newest_thirty() {
        let mut reporter = Reporter::new();
        let cuts: Vec<Cut> = (1..=35)
            .map(|n| reporter.cut(totals(n, 0, 0, 0), ErrorCounts::default(), at(n)))
            .collect();
        assert!(cuts[..30].iter().all(|c| *c == Cut::Queued));
        assert!(cuts[30..].iter().all(|c| *c == Cut::QueuedDroppingOldest));
        assert_eq!(reporter.held(), QUEUE_CAPACITY);
        assert_eq!(reporter.next_chunk()[0].timestamp, at(6));
    }

    #[test]
    fn calls_take_ten_records_oldest_first() {
        let mut reporter = Reporter::new();
        for n in 1..=25 {
            reporter.cut(totals(n, 0, 0, 0), ErrorCounts::default(), at(n));
        }
        let mut calls = Vec::new();
        while reporter.held() > 0 {
            let chunk = reporter.next_chunk();
            calls.push(chunk.iter().map(|r| r.timestamp).collect::<Vec<_>>());
            reporter.delivered(chunk.len());
        }
        assert_eq!(calls.len(), 3);
        assert_eq!(
            calls.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        assert_eq!(calls[1][0], at(11));
    }

    #[test]
    fn a_failed_chunk_and_the_rest_stay_queued_in_order() {
        let mut reporter = Reporter::new();
        for n in 1..=25 {
            reporter.cut(totals(n, 0, 0, 0), ErrorCounts::default(), at(n));
        }
        let first = reporter.next_chunk();
        reporter.delivered(first.len());
        // The second call fails: nothing is marked delivered.
        let failed = reporter.next_chunk();
        assert_eq!(reporter.held(), 15);
        reporter.cut(totals(26, 0, 0, 0), ErrorCounts::default(), at(26));
        assert_eq!(reporter.next_chunk(), failed);
        let timestamps: Vec<SystemTime> = std::iter::from_fn(|| {
            let chunk = reporter.next_chunk();
            reporter.delivered(chunk.len());
            (!chunk.is_empty()).then_some(chunk)
        })
        .flatten()
        .map(|r| r.timestamp)
        .collect();
        assert_eq!(timestamps, (11..=26).map(at).collect::<Vec<_>>());
    }
}

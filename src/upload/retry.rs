//! What to do after an upload attempt fails: classify the failure, and decide between a
//! retry after a backoff and giving up. Pure functions; the caller supplies time and chance.

use std::time::Duration;

use crate::metrics::{DropReason, UploadOutcome};

/// The shape of a failed attempt, as far as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// X-Ray answered with an HTTP status and possibly an error code.
    Http {
        /// The HTTP status.
        status: u16,
        /// The AWS error code (`ThrottlingException`, ...), if the body had one.
        code: Option<String>,
    },
    /// No response in time.
    Timeout,
    /// The endpoint refused the connection.
    ConnectionRefused,
    /// The endpoint's name did not resolve.
    UnknownHost,
    /// The connection could not be made or broke otherwise.
    Connection,
    /// Anything else (credentials unavailable, a malformed response, ...).
    Other,
    /// The call succeeded but X-Ray asked for some segments again (retryable unprocessed).
    Unprocessed,
}

/// Error codes X-Ray and the AWS SDKs use for throttling.
const THROTTLING_CODES: [&str; 5] = [
    "ThrottlingException",
    "ThrottledException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
];

impl Failure {
    /// The `xray_upload_requests_total` outcome for this failure.
    pub fn outcome(&self) -> UploadOutcome {
        match self {
            Failure::Http { status, code } => {
                if *status == 429
                    || code
                        .as_deref()
                        .is_some_and(|c| THROTTLING_CODES.contains(&c))
                {
                    UploadOutcome::Throttled
                } else if *status >= 500 {
                    UploadOutcome::Http5xx
                } else if *status >= 400 {
                    UploadOutcome::Http4xx
                } else {
                    UploadOutcome::Other
                }
            }
            Failure::Timeout => UploadOutcome::Timeout,
            Failure::ConnectionRefused | Failure::UnknownHost | Failure::Connection => {
                UploadOutcome::Connection
            }
            Failure::Other => UploadOutcome::Other,
            Failure::Unprocessed => UploadOutcome::Ok,
        }
    }

    /// Whether sending the same batch again can succeed. Client errors other than
    /// throttling and request timeouts cannot; everything transient can.
    pub fn is_retryable(&self) -> bool {
        match self {
            Failure::Unprocessed | Failure::Http { status: 408, .. } => true,
            _ => self.outcome() != UploadOutcome::Http4xx,
        }
    }
}

/// Classifies a transport failure from its error chain: refused connections and failed name
/// lookups are told apart because X-Ray telemetry counts them separately.
pub fn connection_failure(error: &(dyn std::error::Error + 'static)) -> Failure {
    let mut source = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return Failure::ConnectionRefused;
            }
        }
        let text = cause.to_string();
        if text.contains("dns error") || text.contains("failed to lookup address") {
            return Failure::UnknownHost;
        }
        source = cause.source();
    }
    Failure::Connection
}

/// Whether an unprocessed-segment error code is worth sending again.
pub fn unprocessed_is_retryable(error_code: Option<&str>) -> bool {
    error_code.is_some_and(|code| {
        let code = code.to_ascii_lowercase();
        ["throttl", "internal", "unavailable", "timeout", "limit"]
            .iter()
            .any(|transient| code.contains(transient))
    })
}

/// Exponential backoff with full jitter, bounded by the age of the batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The backoff ceiling of the first retry.
    pub base: Duration,
    /// The largest backoff.
    pub cap: Duration,
    /// How long after its first attempt a batch may still be retried.
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(30),
            max_age: Duration::from_secs(300),
        }
    }
}

/// The decision after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    /// Try again after this long.
    RetryAfter(Duration),
    /// Give up; the segments are dropped for this reason.
    GiveUp(DropReason),
}

impl RetryPolicy {
    /// Decides what follows failed attempt number `attempt` (1-based), `age` after the
    /// batch's first attempt; `chance` is uniform in `[0, 1)`.
    pub fn next(&self, failure: &Failure, attempt: u32, age: Duration, chance: f64) -> Next {
        if !failure.is_retryable() {
            return Next::GiveUp(DropReason::RetriesExhausted);
        }
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.cap);
        let delay = ceiling.mul_f64(chance.clamp(0.0, 1.0));
        if age + delay > self.max_age {
            Next::GiveUp(DropReason::Expired)
        } else {
            Next::RetryAfter(delay)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, code: Option<&str>) -> Failure {
        Failure::Http {
            status,
            code: code.map(str::to_owned),
        }
    }

    #[test]
    fn failures_are_classified_like_the_telemetry_buckets() {
        let table = [
            (
                http(400, Some("ThrottlingException")),
                UploadOutcome::Throttled,
                true,
            ),
            (http(429, None), UploadOutcome::Throttled, true),
            (
                http(503, Some("ServiceUnavailable")),
                UploadOutcome::Http5xx,
                true,
            ),
            (http(500, None), UploadOutcome::Http5xx, true),
            (
                http(400, Some("InvalidRequestException")),
                UploadOutcome::Http4xx,
                false,
            ),
            (
                http(403, Some("AccessDeniedException")),
                UploadOutcome::Http4xx,
                false,
            ),
            (http(408, None), UploadOutcome::Http4xx, true),
            (Failure::Timeout, UploadOutcome::Timeout, true),
            (Failure::Connection, UploadOutcome::Connection, true),
            (Failure::ConnectionRefused, UploadOutcome::Connection, true),
            (Failure::UnknownHost, UploadOutcome::Connection, true),
            (Failure::Other, UploadOutcome::Other, true),
        ];
        for (failure, outcome, retryable) in table {
            assert_eq!(failure.outcome(), outcome, "{failure:?}");
            assert_eq!(failure.is_retryable(), retryable, "{failure:?}");
        }
    }

    #[test]
    fn backoff_grows_exponentially_with_full_jitter_up_to_the_cap() {
        let policy = RetryPolicy::default();
        let at = |attempt, chance| policy.next(&Failure::Timeout, attempt, Duration::ZERO, chance);
        assert_eq!(
            at(1, 0.999_999),
            Next::RetryAfter(Duration::from_millis(100).mul_f64(0.999_999))
        );
        assert_eq!(at(3, 0.5), Next::RetryAfter(Duration::from_millis(200)));
        assert_eq!(at(1, 0.0), Next::RetryAfter(Duration::ZERO));
        assert_eq!(at(30, 1.0), Next::RetryAfter(Duration::from_secs(30)));
    }

    #[test]
    fn giving_up_names_the_reason() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.next(&http(403, None), 1, Duration::ZERO, 0.5),
            Next::GiveUp(DropReason::RetriesExhausted)
        );
        assert_eq!(
            policy.next(&Failure::Timeout, 12, Duration::from_secs(299), 0.9),
            Next::GiveUp(DropReason::Expired)
        );
    }

    #[test]
    fn connection_failures_are_told_apart_by_their_cause() {
        #[derive(Debug, thiserror::Error)]
        #[error("dispatch failure")]
        struct Wrapper(#[source] Box<dyn std::error::Error + Send + Sync>);
        let refused = Wrapper(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(connection_failure(&refused), Failure::ConnectionRefused);
        let dns = Wrapper("dns error: failed to lookup address information".into());
        assert_eq!(connection_failure(&dns), Failure::UnknownHost);
        let reset = Wrapper(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(connection_failure(&reset), Failure::Connection);
    }

    #[test]
    fn transient_unprocessed_codes_are_retried() {
        assert!(unprocessed_is_retryable(Some("ThrottledException")));
        assert!(unprocessed_is_retryable(Some("InternalFailure")));
        assert!(!unprocessed_is_retryable(Some("ParseError")));
        assert!(!unprocessed_is_retryable(None));
    }
}

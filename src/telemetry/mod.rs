//! The daemon's own X-Ray telemetry: a `PutTelemetryRecords` record every interval once a
//! segment has arrived, held (up to 30) until delivered ten per call, and a last one at stop.
//!
//! [`record`] decides (pure: deltas, gating, the queue, error buckets), [`identity`] resolves
//! the request fields once at start, [`send`] makes the call; [`run`] is the thin loop.
//! Unlike the Go daemon 3.6, BackendConnectionErrors are really filled: the uploader and
//! this loop both count every failed call into one shared [`BackendErrors`].

pub mod identity;
pub mod record;
pub mod send;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use identity::{resolve_identity, TelemetryIdentity};
pub use record::{
    error_bucket, BackendErrors, Cut, ErrorBucket, ErrorCounts, Reporter, TelemetryRecord, Totals,
};
pub use send::{Deliver, Delivered, SinkDelivery};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::upload::Sink;

/// The production interval (the Go daemon's `dataCutoffIntervalSecs`).
pub const INTERVAL: Duration = Duration::from_secs(60);

/// How long the reporter may take once stopped (finishing a call in flight, cutting the final
/// record, sending what it holds); what is not delivered by then is lost.
pub const FINAL_SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether telemetry runs at all (`DisableTelemetry` / `--disable-telemetry` turns it off).
pub fn enabled(config: &Config) -> bool {
    !config.disable_telemetry
}

/// Reports through the current `sink` until `stop`, cutting a record every `interval`
/// (re-armed after each send, as in the Go daemon); on stop, cuts a final record and sends
/// what it holds, all within [`FINAL_SEND_TIMEOUT`]. `errors` is the shared backend error
/// count.
pub async fn run(
    identity: TelemetryIdentity,
    metrics: Metrics,
    errors: Arc<BackendErrors>,
    sink: watch::Receiver<Arc<Sink>>,
    interval: Duration,
    stop: CancellationToken,
) {
    run_with(
        SinkDelivery::new(sink, identity),
        metrics,
        errors,
        interval,
        stop,
    )
    .await;
}

/// [`run`] with any delivery.
pub async fn run_with<D: Deliver>(
    deliver: D,
    metrics: Metrics,
    errors: Arc<BackendErrors>,
    interval: Duration,
    stop: CancellationToken,
) {
    tracing::debug!("Telemetry initiated");
    let sent = &metrics.telemetry_records_sent;
    let mut reporter = Reporter::new();
    let deadline = loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.cancelled() => break Instant::now() + FINAL_SEND_TIMEOUT,
        }
        cut(&mut reporter, &metrics, &errors, SystemTime::now());
        let flushing = flush(&mut reporter, &deliver, &errors, sent);
        tokio::pin!(flushing);
        tokio::select! {
            () = &mut flushing => {}
            () = stop.cancelled() => {
                // Finish the call in flight rather than drop it: X-Ray may already have its
                // records, which would then be sent again with the final one.
                let deadline = Instant::now() + FINAL_SEND_TIMEOUT;
                let _ = tokio::time::timeout_at(deadline, flushing).await;
                break deadline;
            }
        }
    };
    cut(&mut reporter, &metrics, &errors, SystemTime::now());
    // Past the deadline a call in flight was just dropped; starting another could send its
    // records twice.
    if Instant::now() < deadline {
        let _ =
            tokio::time::timeout_at(deadline, flush(&mut reporter, &deliver, &errors, sent)).await;
    }
    if reporter.held() > 0 {
        tracing::debug!(
            "Telemetry stopped with {} record(s) not sent",
            reporter.held()
        );
    }
    tracing::debug!("telemetry: done!");
}

fn cut(reporter: &mut Reporter, metrics: &Metrics, errors: &BackendErrors, now: SystemTime) {
    match reporter.cut(Totals::read(metrics), errors.take(), now) {
        Cut::Queued => {}
        Cut::QueuedDroppingOldest => tracing::debug!("Telemetry Buffers truncated"),
        Cut::Skipped => tracing::debug!("Skipped telemetry data as no segments found"),
    }
}

/// Sends everything held, ten per call, stopping at the first failure (which is counted
/// like any other failed X-Ray call); what is left waits for the next interval.
async fn flush<D: Deliver>(
    reporter: &mut Reporter,
    deliver: &D,
    errors: &BackendErrors,
    sent: &IntCounter,
) {
    loop {
        let chunk = reporter.next_chunk();
        if chunk.is_empty() {
            return;
        }
        let count = chunk.len();
        match deliver.deliver(&chunk).await {
            Ok(Delivered::Sent) => {
                sent.inc_by(count as u64);
                tracing::debug!("Send {count} telemetry record(s)");
            }
            Ok(Delivered::Discarded) => {
                tracing::debug!("Discarded {count} telemetry record(s): segments go to the local sink, not X-Ray");
            }
            Err(error) => {
                errors.record(&error.failure);
                tracing::debug!(
                    "Failed to send telemetry {count} record(s). Re-queue records. {}",
                    error.message
                );
                return;
            }
        }
        reporter.delivered(count);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use prometheus::Registry;

    use super::*;
    use crate::budget::MemoryBudget;
    use crate::metrics::Transport;
    use crate::upload::retry::Failure;
    use crate::upload::SendFailure;

    /// Records every successful call as it starts (as X-Ray would receive it); answers from
    /// a script, then succeeds, each call taking `latency`.
    #[derive(Clone, Default)]
    struct FakeDelivery {
        calls: Arc<Mutex<Vec<Vec<TelemetryRecord>>>>,
        script: Arc<Mutex<VecDeque<Failure>>>,
        latency: Duration,
    }

    impl FakeDelivery {
        fn failing(failures: impl IntoIterator<Item = Failure>) -> Self {
            let fake = FakeDelivery::default();
            fake.script.lock().unwrap().extend(failures);
            fake
        }

        fn calls(&self) -> Vec<Vec<TelemetryRecord>> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Deliver for FakeDelivery {
        fn deliver(
            &self,
            records: &[TelemetryRecord],
        ) -> impl std::future::Future<Output = Result<Delivered, SendFailure>> + Send {
            let result = match self.script.lock().unwrap().pop_front() {
                Some(failure) => Err(SendFailure {
                    failure,
                    message: "scripted".into(),
                }),
                None => {
                    self.calls.lock().unwrap().push(records.to_vec());
                    Ok(Delivered::Sent)
                }
            };
            let latency = self.latency;
            async move {
                tokio::time::sleep(latency).await;
                result
            }
        }
    }

    fn metrics() -> Metrics {
        Metrics::new(Registry::new(), MemoryBudget::new(1 << 20)).unwrap()
    }

    fn start(
        deliver: &FakeDelivery,
        metrics: &Metrics,
        errors: &Arc<BackendErrors>,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_with(
            deliver.clone(),
            metrics.clone(),
            Arc::clone(errors),
            INTERVAL,
            stop.clone(),
        ));
        (stop, task)
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_each_interval_once_segments_arrive() {
        let (deliver, metrics) = (FakeDelivery::default(), metrics());
        let errors = Arc::new(BackendErrors::default());
        let (stop, task) = start(&deliver, &metrics, &errors);
        tokio::time::sleep(INTERVAL * 2 + Duration::from_secs(1)).await;
        assert!(
            deliver.calls().is_empty(),
            "nothing before the first segment"
        );

        metrics.ingest(Transport::Udp).received.inc_by(4);
        metrics.segments_sent.inc_by(3);
        errors.record(&Failure::Timeout);
        tokio::time::sleep(INTERVAL).await;
        tokio::time::sleep(INTERVAL).await;
        let calls = deliver.calls();
        assert_eq!(calls.len(), 2, "{calls:?}");
        let (first, second) = (&calls[0][0], &calls[1][0]);
        assert_eq!((first.segments_received, first.segments_sent), (4, 3));
        assert_eq!(first.backend_errors.timeout, 1);
        assert_eq!((second.segments_received, second.segments_sent), (0, 0));
        assert_eq!(metrics.telemetry_records_sent.get(), 2);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_call_is_counted_and_its_records_sent_next_time() {
        let deliver = FakeDelivery::failing([Failure::Http {
            status: 400,
            code: Some("ThrottledException".into()),
        }]);
        let metrics = metrics();
        let errors = Arc::new(BackendErrors::default());
        metrics.ingest(Transport::Udp).received.inc();
        let (stop, task) = start(&deliver, &metrics, &errors);
        tokio::time::sleep(INTERVAL + Duration::from_secs(1)).await;
        assert!(deliver.calls().is_empty());
        tokio::time::sleep(INTERVAL).await;
        let calls = deliver.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].len(), 2, "the re-queued record and the new one");
        assert_eq!(calls[0][0].segments_received, 1);
        assert_eq!(calls[0][0].backend_errors.http_4xx, 0);
        assert_eq!(calls[0][1].backend_errors.http_4xx, 1);
        assert_eq!(metrics.telemetry_records_sent.get(), 2);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_sends_a_final_record() {
        let (deliver, metrics) = (FakeDelivery::default(), metrics());
        let errors = Arc::new(BackendErrors::default());
        let (stop, task) = start(&deliver, &metrics, &errors);
        metrics.ingest(Transport::Udp).received.inc_by(2);
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.cancel();
        task.await.unwrap();
        let calls = deliver.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].len(), 1);
        assert_eq!(calls[0][0].segments_received, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_mid_call_finishes_it_instead_of_sending_its_records_twice() {
        let deliver = FakeDelivery {
            latency: Duration::from_millis(500),
            ..FakeDelivery::default()
        };
        let metrics = metrics();
        let errors = Arc::new(BackendErrors::default());
        metrics.ingest(Transport::Udp).received.inc();
        let (stop, task) = start(&deliver, &metrics, &errors);
        tokio::time::sleep(INTERVAL + Duration::from_millis(100)).await;
        assert_eq!(deliver.calls().len(), 1, "the first call is in flight");
        stop.cancel();
        task.await.unwrap();
        let calls = deliver.calls();
        assert_eq!(
            calls.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1, 1],
            "the interval's record, then only the final one: {calls:?}"
        );
        assert_eq!(metrics.telemetry_records_sent.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_before_any_segment_sends_nothing() {
        let (deliver, metrics) = (FakeDelivery::default(), metrics());
        let errors = Arc::new(BackendErrors::default());
        let (stop, task) = start(&deliver, &metrics, &errors);
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.cancel();
        task.await.unwrap();
        assert!(deliver.calls().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn thirty_held_records_go_out_in_three_calls() {
        // Every call fails for 34 intervals: 34 records cut, the newest 30 kept.
        let deliver = FakeDelivery::failing(std::iter::repeat_n(Failure::Timeout, 34));
        let metrics = metrics();
        let errors = Arc::new(BackendErrors::default());
        metrics.ingest(Transport::Udp).received.inc();
        let (stop, task) = start(&deliver, &metrics, &errors);
        tokio::time::sleep(INTERVAL * 34 + Duration::from_secs(1)).await;
        assert!(deliver.calls().is_empty());
        stop.cancel();
        task.await.unwrap();
        let calls = deliver.calls();
        assert_eq!(
            calls.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![10, 10, 10]
        );
        // 35 records were cut (34 intervals and the final one); the oldest five were
        // dropped. Each kept record carries the one timeout of the call before its cut.
        let timeouts: u64 = calls
            .iter()
            .flatten()
            .map(|r| r.backend_errors.timeout)
            .sum();
        assert_eq!(timeouts, 30);
    }
}

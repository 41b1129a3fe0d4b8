//! The send side of the pipeline: batching admitted segments, uploading batches with at most
//! `Concurrency` in flight, retrying failures inside the budget, and counting every outcome.

pub mod body;
pub mod local;
pub mod retry;
pub mod xray;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::StatusBoard;
use crate::batch::{Batcher, MAX_BATCH_SEGMENTS, MAX_BATCH_WAIT};
use crate::ingest::{Segment, SegmentReceiver};
use crate::metrics::{DropReason, Metrics, UploadOutcome};
use crate::telemetry::BackendErrors;
use local::LocalSink;
use retry::{Failure, Next, RetryPolicy};
use xray::XraySink;

/// Where batches go.
#[derive(Debug)]
pub enum Sink {
    /// X-Ray `PutTraceSegments`.
    Xray(XraySink),
    /// JSON lines on disk or stdout.
    Local(LocalSink),
}

impl Sink {
    async fn send(&self, documents: &[&[u8]]) -> Result<Vec<Unprocessed>, SendFailure> {
        match self {
            Sink::Xray(sink) => sink.send(documents).await,
            Sink::Local(sink) => sink.send(documents).map(|()| Vec::new()),
        }
    }
}

/// A segment X-Ray did not accept, as reported in `UnprocessedTraceSegments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unprocessed {
    /// The segment id, when X-Ray could read it.
    pub id: Option<String>,
    /// X-Ray's error code.
    pub error_code: Option<String>,
    /// X-Ray's message.
    pub message: Option<String>,
}

/// A failed attempt: its classification and a printable description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFailure {
    /// What kind of failure, for the retry decision.
    pub failure: Failure,
    /// The error with its causes.
    pub message: String,
}

/// The number of upload slots, changeable while uploads run (config reload).
#[derive(Debug)]
pub struct Concurrency {
    slots: Arc<Semaphore>,
    current: std::sync::Mutex<usize>,
}

impl Concurrency {
    /// `slots` upload slots (at least one).
    pub fn new(slots: usize) -> Arc<Self> {
        let slots = slots.max(1);
        Arc::new(Concurrency {
            slots: Arc::new(Semaphore::new(slots)),
            current: std::sync::Mutex::new(slots),
        })
    }

    /// Changes the number of slots. Growing takes effect at once; shrinking takes slots
    /// out of service as the uploads holding them finish.
    pub fn set(&self, slots: usize) {
        let slots = slots.max(1);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if slots > *current {
            self.slots.add_permits(slots - *current);
        } else if slots < *current {
            let surplus = u32::try_from(*current - slots).unwrap_or(u32::MAX);
            let semaphore = Arc::clone(&self.slots);
            tokio::spawn(async move {
                if let Ok(permits) = semaphore.acquire_many_owned(surplus).await {
                    permits.forget();
                }
            });
        }
        *current = slots;
    }

    /// The configured number of slots.
    pub fn get(&self) -> usize {
        *self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs batches through the current sink.
#[derive(Clone)]
pub struct Uploader {
    sink: watch::Receiver<Arc<Sink>>,
    concurrency: Arc<Concurrency>,
    policy: watch::Receiver<RetryPolicy>,
    metrics: Metrics,
    status: Arc<StatusBoard>,
    backend_errors: Arc<BackendErrors>,
    abort: CancellationToken,
    /// Fired by every successful call: batches waiting out a backoff retry at once. After an
    /// outage every upload slot may be sleeping in backoff (up to the 30 s cap); the first
    /// batch to get through proves the backend is back, so the others need not wait.
    recovered: Arc<Notify>,
}

impl Uploader {
    /// An uploader sending to whatever `sink` holds at each attempt (reload swaps it), with
    /// at most `concurrency` batches in flight. When `abort` fires (the shutdown deadline),
    /// every segment still held is dropped and counted as `dropped{reason="shutdown"}`.
    pub fn new(
        sink: watch::Receiver<Arc<Sink>>,
        concurrency: Arc<Concurrency>,
        policy: watch::Receiver<RetryPolicy>,
        metrics: Metrics,
        status: Arc<StatusBoard>,
        backend_errors: Arc<BackendErrors>,
        abort: CancellationToken,
    ) -> Self {
        Uploader {
            sink,
            concurrency,
            policy,
            metrics,
            status,
            backend_errors,
            abort,
            recovered: Arc::new(Notify::new()),
        }
    }

    fn drop_at_shutdown(&self, segments: usize) {
        self.metrics
            .dropped(DropReason::Shutdown)
            .inc_by(segments as u64);
    }

    /// Batches segments until the channel closes, then flushes and waits for every upload.
    pub async fn run(self, mut segments: SegmentReceiver) {
        let mut batcher = Batcher::new(MAX_BATCH_SEGMENTS, MAX_BATCH_WAIT);
        let uploads = TaskTracker::new();
        let mut received = Vec::with_capacity(MAX_BATCH_SEGMENTS);
        loop {
            let deadline = batcher.deadline();
            let expired = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                count = segments.recv_many(&mut received, MAX_BATCH_SEGMENTS) => {
                    if count == 0 {
                        break;
                    }
                    for arrival in received.drain(..) {
                        let received_at = Instant::from_std(arrival.received_at);
                        for segment in arrival.segments {
                            if let Some(batch) = batcher.push(segment, received_at) {
                                self.dispatch(batch, &uploads).await;
                            }
                        }
                    }
                }
                () = expired => if let Some(batch) = batcher.poll_expired(Instant::now()) {
                    self.dispatch(batch, &uploads).await;
                },
                () = self.abort.cancelled() => {
                    segments.close();
                    let mut left = batcher.flush().map_or(0, |batch| batch.len());
                    while let Ok(arrival) = segments.try_recv() {
                        left += arrival.segments.len();
                    }
                    self.drop_at_shutdown(left);
                    break;
                }
            }
        }
        if let Some(batch) = batcher.flush() {
            self.dispatch(batch, &uploads).await;
        }
        uploads.close();
        uploads.wait().await;
    }

    /// Waits for an upload slot, then uploads `batch` in its own task. Waiting here is the
    /// backpressure: segments keep queueing (inside the budget) and later batches fill up.
    async fn dispatch(&self, batch: Vec<Segment>, uploads: &TaskTracker) {
        let slot = tokio::select! {
            slot = Arc::clone(&self.concurrency.slots).acquire_owned() => slot,
            () = self.abort.cancelled() => {
                self.drop_at_shutdown(batch.len());
                return;
            }
        };
        let Ok(slot) = slot else {
            return;
        };
        let uploader = self.clone();
        uploads.spawn(async move { uploader.deliver(batch, slot).await });
    }

    async fn deliver(self, mut pending: Vec<Segment>, _slot: OwnedSemaphorePermit) {
        let metrics = &self.metrics;
        metrics.upload_in_flight_batches.inc();
        let first_attempt = Instant::now();
        for attempt in 1u32.. {
            let sink = Arc::clone(&*self.sink.borrow());
            let documents: Vec<&[u8]> = pending.iter().map(Segment::document).collect();
            let started = Instant::now();
            let result = tokio::select! {
                result = sink.send(&documents) => result,
                () = self.abort.cancelled() => {
                    self.drop_at_shutdown(pending.len());
                    break;
                }
            };
            let elapsed = started.elapsed();
            metrics
                .upload_duration_seconds
                .observe(elapsed.as_secs_f64());
            let failure = match result {
                Ok(unprocessed) => {
                    self.recovered.notify_waiters();
                    metrics.upload_request(UploadOutcome::Ok).inc();
                    self.status.upload_succeeded();
                    metrics.batch_segments.observe(documents.len() as f64);
                    drop(documents);
                    pending = self.settle(pending, &unprocessed, elapsed);
                    if pending.is_empty() {
                        break;
                    }
                    Failure::Unprocessed
                }
                Err(error) => {
                    metrics.upload_request(error.failure.outcome()).inc();
                    tracing::error!("Sending segment batch failed with: {}", error.message);
                    self.status.upload_failed(&error.message);
                    self.backend_errors.record(&error.failure);
                    error.failure
                }
            };
            let policy = *self.policy.borrow();
            match policy.next(&failure, attempt, first_attempt.elapsed(), fastrand::f64()) {
                Next::RetryAfter(delay) => {
                    tracing::debug!(
                        "Retrying batch of {} segments in {:.3} seconds (attempt {attempt})",
                        pending.len(),
                        delay.as_secs_f64()
                    );
                    let aborted = tokio::select! {
                        () = self.abort.cancelled() => true,
                        () = tokio::time::sleep(delay) => false,
                        () = self.recovered.notified() => false,
                    };
                    if aborted {
                        self.drop_at_shutdown(pending.len());
                        break;
                    }
                }
                Next::GiveUp(reason) => {
                    metrics.dropped(reason).inc_by(pending.len() as u64);
                    tracing::error!(
                        "Dropped batch of {} segments after {attempt} attempts ({})",
                        pending.len(),
                        reason.as_str()
                    );
                    break;
                }
            }
        }
        metrics.upload_in_flight_batches.dec();
    }

    /// Counts a successful call's segments as sent, rejected or to be retried, logs like the
    /// Go daemon, and returns the segments to send again.
    fn settle(
        &self,
        batch: Vec<Segment>,
        unprocessed: &[Unprocessed],
        elapsed: Duration,
    ) -> Vec<Segment> {
        let metrics = &self.metrics;
        let seconds = elapsed.as_secs_f64();
        if unprocessed.is_empty() {
            metrics.segments_sent.inc_by(batch.len() as u64);
            tracing::info!(
                "Successfully sent batch of {} segments ({seconds:.3} seconds)",
                batch.len()
            );
            return Vec::new();
        }
        tracing::info!(
            "Sent batch of {} segments but had {} Unprocessed segments ({seconds:.3} seconds)",
            batch.len(),
            unprocessed.len()
        );
        let decision = decide_unprocessed(&batch, unprocessed);
        for (entry, retry) in unprocessed.iter().zip(&decision.entry_retried) {
            metrics.unprocessed(*retry).inc();
            if !retry {
                tracing::error!(
                    "Unprocessed segment {}: {} {}",
                    entry.id.as_deref().unwrap_or("<no id>"),
                    entry.error_code.as_deref().unwrap_or("<no code>"),
                    entry.message.as_deref().unwrap_or("")
                );
            }
        }
        metrics.backend_rejected().inc_by(decision.rejected as u64);
        metrics
            .segments_sent
            .inc_by((batch.len() - decision.retry.len() - decision.rejected) as u64);
        let mut retry_indices = decision.retry;
        retry_indices.sort_unstable();
        batch
            .into_iter()
            .enumerate()
            .filter(|(index, _)| retry_indices.binary_search(index).is_ok())
            .map(|(_, segment)| segment)
            .collect()
    }
}

/// What to do with the unprocessed entries of a batch.
#[derive(Debug, PartialEq, Eq)]
struct UnprocessedDecision {
    /// Indices into the batch to send again.
    retry: Vec<usize>,
    /// Segments X-Ray refused for good (never more than the batch holds).
    rejected: usize,
    /// For each unprocessed entry, whether it is being retried.
    entry_retried: Vec<bool>,
}

/// Maps unprocessed entries to batch segments by id. A retryable entry whose segment is found
/// is retried; anything else (non-retryable, no id, an id not in the batch) is rejected.
fn decide_unprocessed<D: AsRef<[u8]>>(
    batch: &[D],
    unprocessed: &[Unprocessed],
) -> UnprocessedDecision {
    // Parsing documents is only needed here, on the rare batch with unprocessed segments.
    let by_id: HashMap<String, usize> = batch
        .iter()
        .enumerate()
        .filter_map(|(index, d)| document_id(d.as_ref()).map(|id| (id, index)))
        .collect();
    let mut retry = Vec::new();
    let mut entry_retried = Vec::with_capacity(unprocessed.len());
    for entry in unprocessed {
        let target = entry
            .id
            .as_ref()
            .and_then(|id| by_id.get(id))
            .filter(|index| !retry.contains(*index));
        let retried = match target {
            Some(&index) if retry::unprocessed_is_retryable(entry.error_code.as_deref()) => {
                retry.push(index);
                true
            }
            _ => false,
        };
        entry_retried.push(retried);
    }
    let rejected = (unprocessed.len() - retry.len()).min(batch.len() - retry.len());
    UnprocessedDecision {
        retry,
        rejected,
        entry_retried,
    }
}

/// The top-level `id` of a segment document, if it is JSON with one.
fn document_id(document: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Ids {
        id: Option<String>,
    }
    serde_json::from_slice::<Ids>(document).ok()?.id
}

impl AsRef<[u8]> for Segment {
    fn as_ref(&self) -> &[u8] {
        self.document()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: Option<&str>, code: &str) -> Unprocessed {
        Unprocessed {
            id: id.map(str::to_owned),
            error_code: Some(code.to_owned()),
            message: None,
        }
    }

    #[test]
    fn unprocessed_entries_are_retried_or_rejected_by_code_and_id() {
        let batch = [
            r#"{"id":"a","trace_id":"1"}"#,
            r#"{"id":"b"}"#,
            r#"{"id":"c"}"#,
            "not json",
        ];
        let decision = decide_unprocessed(
            &batch,
            &[
                entry(Some("b"), "ThrottledException"),
                entry(Some("c"), "InvalidSegment"),
                entry(None, "ParseError"),
                entry(Some("zzz"), "InternalFailure"),
            ],
        );
        assert_eq!(decision.retry, vec![1]);
        assert_eq!(decision.rejected, 3);
        assert_eq!(decision.entry_retried, vec![true, false, false, false]);
    }

    #[test]
    fn duplicate_or_excess_entries_never_count_more_than_the_batch() {
        let batch = [r#"{"id":"a"}"#];
        let decision = decide_unprocessed(
            &batch,
            &[
                entry(Some("a"), "ThrottledException"),
                entry(Some("a"), "ThrottledException"),
            ],
        );
        assert_eq!(decision.retry, vec![0]);
        assert_eq!(decision.rejected, 0);
    }

    #[test]
    fn document_ids_are_read_from_the_top_level_only() {
        assert_eq!(
            document_id(br#"{"name":"x","id":"abc","subsegments":[{"id":"z"}]}"#),
            Some("abc".into())
        );
        assert_eq!(document_id(b"{\"subsegments\":[{\"id\":\"z\"}]}"), None);
        assert_eq!(document_id(b"garbage"), None);
    }
}

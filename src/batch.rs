//! Batch formation: when a group of segments is ready to upload. A pure state machine; the
//! caller passes the current time in and owns the timer.
//!
//! A batch leaves when it holds `max_segments` (50, the `PutTraceSegments` limit) or when its
//! oldest segment has waited `max_wait` (1 s), so no segment waits longer than that here.

use std::time::Duration;

use tokio::time::Instant;

/// The most documents one `PutTraceSegments` call accepts.
pub const MAX_BATCH_SEGMENTS: usize = 50;

/// How long a partial batch may wait for more segments (the Go daemon's idle flush).
pub const MAX_BATCH_WAIT: Duration = Duration::from_secs(1);

/// Groups items into batches by count and age.
#[derive(Debug)]
pub struct Batcher<T> {
    max_items: usize,
    max_wait: Duration,
    pending: Vec<T>,
    oldest_at: Option<Instant>,
}

impl<T> Batcher<T> {
    /// A batcher that emits at `max_items` or after `max_wait`.
    pub fn new(max_items: usize, max_wait: Duration) -> Self {
        assert!(max_items > 0, "a batch holds at least one item");
        Batcher {
            max_items,
            max_wait,
            pending: Vec::with_capacity(max_items),
            oldest_at: None,
        }
    }

    /// Adds an item that arrived at `arrived_at`; returns a batch if this one filled it.
    /// Items may arrive out of order (a receive thread holds its own for a while): the
    /// batch's age is that of its oldest item.
    pub fn push(&mut self, item: T, arrived_at: Instant) -> Option<Vec<T>> {
        self.oldest_at = Some(self.oldest_at.map_or(arrived_at, |o| o.min(arrived_at)));
        self.pending.push(item);
        (self.pending.len() >= self.max_items).then(|| self.take())
    }

    /// When the pending partial batch must leave, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.oldest_at.map(|oldest| oldest + self.max_wait)
    }

    /// Returns the pending batch if its deadline has passed at `now`.
    pub fn poll_expired(&mut self, now: Instant) -> Option<Vec<T>> {
        self.deadline()
            .is_some_and(|deadline| now >= deadline)
            .then(|| self.take())
    }

    /// Returns whatever is pending (end of input).
    pub fn flush(&mut self) -> Option<Vec<T>> {
        (!self.pending.is_empty()).then(|| self.take())
    }

    /// Items waiting in the partial batch.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    fn take(&mut self) -> Vec<T> {
        self.oldest_at = None;
        std::mem::replace(&mut self.pending, Vec::with_capacity(self.max_items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batcher() -> Batcher<u32> {
        Batcher::new(3, Duration::from_secs(1))
    }

    #[test]
    fn a_full_batch_leaves_at_once() {
        let (mut b, t0) = (batcher(), Instant::now());
        assert_eq!(b.push(1, t0), None);
        assert_eq!(b.push(2, t0), None);
        assert_eq!(b.push(3, t0), Some(vec![1, 2, 3]));
        assert_eq!(b.deadline(), None);
        assert_eq!(b.flush(), None);
    }

    #[test]
    fn a_partial_batch_leaves_one_wait_after_its_oldest_item() {
        let (mut b, t0) = (batcher(), Instant::now());
        b.push(1, t0);
        b.push(2, t0 + Duration::from_millis(900));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(b.poll_expired(t0 + Duration::from_millis(999)), None);
        assert_eq!(
            b.poll_expired(t0 + Duration::from_secs(1)),
            Some(vec![1, 2])
        );
        assert_eq!(b.poll_expired(t0 + Duration::from_secs(5)), None);
    }

    #[test]
    fn the_age_clock_restarts_with_the_next_batch() {
        let (mut b, t0) = (batcher(), Instant::now());
        b.push(1, t0);
        b.push(2, t0);
        b.push(3, t0);
        let t1 = t0 + Duration::from_secs(3);
        b.push(4, t1);
        assert_eq!(b.deadline(), Some(t1 + Duration::from_secs(1)));
    }

    #[test]
    fn an_older_item_arriving_later_brings_the_deadline_forward() {
        let (mut b, t0) = (batcher(), Instant::now());
        b.push(1, t0 + Duration::from_millis(500));
        b.push(2, t0);
        assert_eq!(b.deadline(), Some(t0 + Duration::from_secs(1)));
        let mut b = batcher();
        b.push(1, t0);
        b.push(2, t0 + Duration::from_millis(500));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn flush_returns_the_remainder() {
        let (mut b, t0) = (batcher(), Instant::now());
        b.push(7, t0);
        assert_eq!(b.pending_len(), 1);
        assert_eq!(b.flush(), Some(vec![7]));
        assert_eq!(b.pending_len(), 0);
    }
}

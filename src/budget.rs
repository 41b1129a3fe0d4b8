//! The one memory budget: every segment byte the daemon holds (queued, batched, in flight or
//! awaiting retry) is charged here through a [`BudgetPermit`] that travels with the segment.
//!
//! Admission is all-or-nothing and lock-free; releasing happens when the permit is dropped,
//! so a segment can never be forgotten by the accounting, whichever way it leaves.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Per-segment bookkeeping the budget charges on top of the document bytes: the segment's
/// queue slot, batch slot and allocator overhead. Charging it keeps a flood of tiny datagrams
/// inside the budget too.
pub const SEGMENT_OVERHEAD_BYTES: usize = 64;

/// The smallest budget, as in the Go daemon (`-m` below 3 is refused).
pub const MIN_BUDGET_MB: u64 = 3;

const MIB: u64 = 1024 * 1024;

/// A byte budget shared by ingest, batching and upload.
#[derive(Debug)]
pub struct MemoryBudget {
    limit_bytes: AtomicUsize,
    used_bytes: AtomicUsize,
    held_segments: AtomicUsize,
    /// Wakes admissions waiting for room (TCP ingest applies backpressure instead of dropping).
    released: tokio::sync::Notify,
    waiters: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit_bytes`.
    pub fn new(limit_bytes: usize) -> Arc<Self> {
        Arc::new(MemoryBudget {
            limit_bytes: AtomicUsize::new(limit_bytes),
            used_bytes: AtomicUsize::new(0),
            held_segments: AtomicUsize::new(0),
            released: tokio::sync::Notify::new(),
            waiters: AtomicUsize::new(0),
        })
    }

    /// Charges a segment of `document_bytes`; `None` when the budget cannot hold it.
    pub fn try_admit(self: &Arc<Self>, document_bytes: usize) -> Option<BudgetPermit> {
        let charge = document_bytes + SEGMENT_OVERHEAD_BYTES;
        let limit = self.limit_bytes.load(Ordering::Relaxed);
        self.used_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(charge).filter(|&total| total <= limit)
            })
            .ok()?;
        self.held_segments.fetch_add(1, Ordering::Relaxed);
        Some(BudgetPermit {
            budget: Arc::clone(self),
            charge,
        })
    }

    /// Charges a segment of `document_bytes`, waiting for room when the budget is full;
    /// `None` only if the segment could never fit.
    pub async fn admit(self: &Arc<Self>, document_bytes: usize) -> Option<BudgetPermit> {
        loop {
            if document_bytes + SEGMENT_OVERHEAD_BYTES > self.limit_bytes() {
                return None;
            }
            let released = self.released.notified();
            tokio::pin!(released);
            // Register before re-checking, so a release between the check and the wait
            // cannot be missed.
            released.as_mut().enable();
            if let Some(permit) = self.try_admit(document_bytes) {
                return Some(permit);
            }
            self.waiters.fetch_add(1, Ordering::SeqCst);
            released.await;
            self.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Changes the limit (config reload). Segments already held stay; a smaller limit only
    /// refuses new ones until enough have left.
    pub fn set_limit_bytes(&self, limit_bytes: usize) {
        self.limit_bytes.store(limit_bytes, Ordering::Relaxed);
        self.released.notify_waiters();
    }

    /// The configured limit.
    pub fn limit_bytes(&self) -> usize {
        self.limit_bytes.load(Ordering::Relaxed)
    }

    /// Bytes currently charged.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes.load(Ordering::Relaxed)
    }

    /// Segments currently held anywhere in the daemon.
    pub fn held_segments(&self) -> usize {
        self.held_segments.load(Ordering::Relaxed)
    }
}

/// A segment's share of the budget, released on drop.
#[derive(Debug)]
pub struct BudgetPermit {
    budget: Arc<MemoryBudget>,
    charge: usize,
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.budget
            .used_bytes
            .fetch_sub(self.charge, Ordering::AcqRel);
        self.budget.held_segments.fetch_sub(1, Ordering::Relaxed);
        // Waking is only needed (and only paid for) while a TCP sender waits.
        if self.budget.waiters.load(Ordering::SeqCst) > 0 {
            self.budget.released.notify_waiters();
        }
    }
}

/// The budget in MiB when `-m` is unset: 1% of the container's memory limit if it has one,
/// else of the host's RAM, and never below [`MIN_BUDGET_MB`].
///
/// The Go daemon uses host RAM only, which on a Kubernetes node sizes every pod's buffer
/// from the node (aws-xray-daemon#11).
pub fn auto_budget_mb(cgroup_limit_bytes: Option<u64>, host_ram_bytes: u64) -> u64 {
    let basis = cgroup_limit_bytes.map_or(host_ram_bytes, |limit| limit.min(host_ram_bytes));
    (basis / 100 / MIB).max(MIN_BUDGET_MB)
}

/// Parses a cgroup memory limit file: v2 `memory.max` (`max` = unlimited) or v1
/// `memory.limit_in_bytes` (a huge number = unlimited).
pub fn parse_cgroup_limit(contents: &str) -> Option<u64> {
    let value = contents.trim();
    if value == "max" {
        return None;
    }
    // cgroup v1 reports "unlimited" as a page-rounded i64::MAX.
    value.parse::<u64>().ok().filter(|&n| n < (1 << 62))
}

/// Parses `MemTotal` from `/proc/meminfo`, in bytes.
pub fn parse_meminfo_total(contents: &str) -> Option<u64> {
    let line = contents.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Reads this process's memory limit and the host RAM, and applies [`auto_budget_mb`].
pub fn detect_auto_budget_mb() -> u64 {
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| std::fs::read_to_string(path).ok())
    .and_then(|contents| parse_cgroup_limit(&contents));
    let host = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|contents| parse_meminfo_total(&contents))
        .unwrap_or(0);
    auto_budget_mb(cgroup, host)
}

/// Converts a budget in MiB to bytes.
pub fn mb_to_bytes(mb: u64) -> usize {
    usize::try_from(mb.saturating_mul(MIB)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_charges_overhead_and_refuses_past_the_limit() {
        let budget = MemoryBudget::new(1000);
        let a = budget.try_admit(400).expect("fits");
        assert_eq!(budget.used_bytes(), 400 + SEGMENT_OVERHEAD_BYTES);
        let b = budget.try_admit(400).expect("fits");
        assert!(budget.try_admit(100).is_none(), "928 + 164 > 1000");
        assert_eq!(budget.held_segments(), 2);
        drop(a);
        assert_eq!(budget.used_bytes(), 400 + SEGMENT_OVERHEAD_BYTES);
        assert!(budget.try_admit(100).is_some());
        drop(b);
        assert_eq!((budget.used_bytes(), budget.held_segments()), (0, 0));
    }

    #[test]
    fn a_segment_exactly_filling_the_budget_is_admitted() {
        let budget = MemoryBudget::new(100 + SEGMENT_OVERHEAD_BYTES);
        assert!(budget.try_admit(100).is_some());
        assert!(budget.try_admit(101).is_none());
    }

    #[test]
    fn shrinking_the_limit_keeps_held_segments_and_refuses_new_ones() {
        let budget = MemoryBudget::new(10_000);
        let held = budget.try_admit(5_000).unwrap();
        budget.set_limit_bytes(1_000);
        assert!(budget.try_admit(10).is_none());
        drop(held);
        assert!(budget.try_admit(10).is_some());
    }

    #[test]
    fn concurrent_admissions_never_exceed_the_limit() {
        let budget = MemoryBudget::new(64 * 1024);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = Arc::clone(&budget);
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for _ in 0..10_000 {
                        if let Some(p) = budget.try_admit(100) {
                            assert!(budget.used_bytes() <= budget.limit_bytes());
                            held.push(p);
                        }
                        if held.len() > 50 {
                            held.clear();
                        }
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(budget.used_bytes(), 0);
    }

    #[tokio::test]
    async fn waiting_admission_resumes_when_room_is_released() {
        let budget = MemoryBudget::new(1000);
        let held = budget.try_admit(800).unwrap();
        let waiting = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { budget.admit(500).await.is_some() }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "no room yet: it waits instead of dropping"
        );
        drop(held);
        assert!(waiting.await.unwrap());
        assert!(
            budget.admit(2000).await.is_none(),
            "larger than the whole budget"
        );
    }

    #[test]
    fn auto_size_prefers_the_cgroup_limit_and_never_goes_below_three() {
        let gib = 1024 * MIB;
        assert_eq!(auto_budget_mb(None, 16 * gib), 163);
        assert_eq!(auto_budget_mb(Some(2 * gib), 16 * gib), 20);
        assert_eq!(auto_budget_mb(Some(128 * MIB), 16 * gib), 3);
        assert_eq!(
            auto_budget_mb(Some(64 * gib), 16 * gib),
            163,
            "limit above RAM"
        );
        assert_eq!(auto_budget_mb(None, 0), 3);
    }

    #[test]
    fn cgroup_and_meminfo_parsing() {
        assert_eq!(parse_cgroup_limit("max\n"), None);
        assert_eq!(parse_cgroup_limit("268435456\n"), Some(268_435_456));
        assert_eq!(parse_cgroup_limit("9223372036854771712\n"), None);
        assert_eq!(parse_cgroup_limit("garbage"), None);
        let meminfo = "MemTotal:       24567892 kB\nMemFree:        1234 kB\n";
        assert_eq!(parse_meminfo_total(meminfo), Some(24_567_892 * 1024));
    }
}

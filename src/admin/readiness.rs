//! Readiness as a set of latches: each subsystem holds one until it is ready (UDP bound,
//! pipeline running, config loaded, ...), and the whole daemon turns unready the moment
//! shutdown begins.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The daemon's readiness.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    pending: Arc<Mutex<BTreeMap<&'static str, ()>>>,
    shutting_down: Arc<AtomicBool>,
}

/// Held by a subsystem until it is ready; releasing (or dropping) it clears its reason.
#[derive(Debug)]
#[must_use = "the subsystem is not ready until the latch is released"]
pub struct Latch {
    readiness: Readiness,
    reason: &'static str,
}

impl Readiness {
    /// A readiness with no latches held.
    pub fn new() -> Self {
        Readiness::default()
    }

    /// Adds a latch; the daemon is not ready until it is released.
    pub fn latch(&self, reason: &'static str) -> Latch {
        self.lock().insert(reason, ());
        Latch {
            readiness: self.clone(),
            reason,
        }
    }

    /// Marks the daemon as shutting down: never ready again.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// `Ok` when ready, else the reasons it is not.
    pub fn check(&self) -> Result<(), Vec<&'static str>> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(vec!["shutting down"]);
        }
        let pending = self.lock();
        if pending.is_empty() {
            Ok(())
        } else {
            Err(pending.keys().copied().collect())
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, ()>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Latch {
    /// The subsystem is ready.
    pub fn release(self) {}
}

impl Drop for Latch {
    fn drop(&mut self) {
        self.readiness.lock().remove(self.reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_every_latch_is_released_and_never_after_shutdown() {
        let readiness = Readiness::new();
        let udp = readiness.latch("udp not bound");
        let pipeline = readiness.latch("pipeline not running");
        assert_eq!(
            readiness.check(),
            Err(vec!["pipeline not running", "udp not bound"])
        );
        udp.release();
        assert_eq!(readiness.check(), Err(vec!["pipeline not running"]));
        drop(pipeline);
        assert_eq!(readiness.check(), Ok(()));
        readiness.begin_shutdown();
        assert_eq!(readiness.check(), Err(vec!["shutting down"]));
    }
}

//! What `/debug/status` reports: the answers an operator needs first when traces go missing
//! (is anything arriving, is anything leaving, the last error and when, where uploads go,
//! how full the buffer is). Hot paths only touch atomics here; secrets are never stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Facts the pipeline and the supervisor record as they happen.
#[derive(Debug, Default)]
pub struct StatusBoard {
    started_unix_secs: AtomicU64,
    last_received_unix_secs: AtomicU64,
    last_upload_ok_unix_secs: AtomicU64,
    last_upload_error: Mutex<Option<Event>>,
    destination: Mutex<Destination>,
    last_reload: Mutex<Option<Event>>,
}

/// Something that happened, and when (RFC 3339).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Event {
    /// When.
    pub at: String,
    /// What (an error message, or a reload result).
    pub message: String,
}

/// Where segments go and with which identity.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Destination {
    /// `xray` or `local`.
    pub sink: String,
    /// The region, if uploading.
    pub region: Option<String>,
    /// Where the region came from.
    pub region_source: Option<String>,
    /// The endpoint uploads go to.
    pub endpoint: Option<String>,
    /// The credentials provider that supplied the current credentials (never the keys).
    pub credential_source: Option<String>,
    /// The local sink target.
    pub local_sink: Option<String>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn rfc3339(unix_secs: u64) -> Option<String> {
    (unix_secs > 0).then(|| {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(unix_secs))
            .to_string()
    })
}

impl StatusBoard {
    /// A board stamped with the start time.
    pub fn new() -> Self {
        let board = StatusBoard::default();
        board.started_unix_secs.store(now_secs(), Ordering::Relaxed);
        board
    }

    /// Segments arrived (called once per receive batch, not per datagram).
    pub fn received_now(&self) {
        self.last_received_unix_secs
            .store(now_secs(), Ordering::Relaxed);
    }

    /// An upload succeeded.
    pub fn upload_succeeded(&self) {
        self.last_upload_ok_unix_secs
            .store(now_secs(), Ordering::Relaxed);
    }

    /// An upload failed with `message`.
    pub fn upload_failed(&self, message: &str) {
        *lock(&self.last_upload_error) = Some(Event {
            at: rfc3339(now_secs()).unwrap_or_default(),
            message: message.to_owned(),
        });
    }

    /// Records where segments now go.
    pub fn set_destination(&self, destination: Destination) {
        *lock(&self.destination) = destination;
    }

    /// Records the credentials provider once credentials were resolved.
    pub fn set_credential_source(&self, source: String) {
        lock(&self.destination).credential_source = Some(source);
    }

    /// Records a reload attempt's result.
    pub fn reloaded(&self, message: String) {
        *lock(&self.last_reload) = Some(Event {
            at: rfc3339(now_secs()).unwrap_or_default(),
            message,
        });
    }

    /// Seconds since start.
    pub fn uptime_secs(&self) -> u64 {
        now_secs().saturating_sub(self.started_unix_secs.load(Ordering::Relaxed))
    }

    /// The board's facts, ready to serialise.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            last_segment_received_at: rfc3339(self.last_received_unix_secs.load(Ordering::Relaxed)),
            last_upload_succeeded_at: rfc3339(
                self.last_upload_ok_unix_secs.load(Ordering::Relaxed),
            ),
            last_upload_error: lock(&self.last_upload_error).clone(),
            destination: lock(&self.destination).clone(),
            last_reload: lock(&self.last_reload).clone(),
        }
    }
}

/// A copy of the board's facts.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// When a segment last arrived.
    pub last_segment_received_at: Option<String>,
    /// When an upload last succeeded.
    pub last_upload_succeeded_at: Option<String>,
    /// The last upload failure.
    pub last_upload_error: Option<Event>,
    /// Where segments go.
    pub destination: Destination,
    /// The last reload attempt.
    pub last_reload: Option<Event>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_records_what_happened_and_when() {
        let board = StatusBoard::new();
        assert_eq!(board.snapshot().last_segment_received_at, None);
        board.received_now();
        board.upload_failed("dispatch failure: connection refused");
        let snapshot = board.snapshot();
        assert!(snapshot.last_segment_received_at.unwrap().ends_with('Z'));
        assert_eq!(
            snapshot.last_upload_error.unwrap().message,
            "dispatch failure: connection refused"
        );
    }
}

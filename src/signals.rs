//! Process signals: SIGTERM and SIGINT ask for a shutdown; SIGHUP asks for a reload.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::reload::{ReloadRequest, Trigger};

/// Turns every SIGHUP into a reload request until the daemon stops taking them.
pub async fn forward_reloads(requests: mpsc::Sender<ReloadRequest>) {
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("Unable to handle SIGHUP: reload through POST /-/reload instead");
        return;
    };
    while hangups.recv().await.is_some() {
        let request = ReloadRequest {
            trigger: Trigger::Signal,
            reply: None,
        };
        if requests.send(request).await.is_err() {
            return;
        }
    }
}

/// Waits for SIGTERM or SIGINT and returns its Go name (`terminated`, `interrupt`), which the
/// shutdown log line prints.
pub async fn shutdown_requested() -> &'static str {
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the default action (exit) still applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => "terminated",
        _ = interrupt.recv() => "interrupt",
    }
}

//! Process signals: SIGTERM and SIGINT ask for a shutdown.

use tokio::signal::unix::{signal, SignalKind};

/// Waits for SIGTERM or SIGINT and returns its Go name (`terminated`, `interrupt`), which the
/// shutdown log line prints.
pub async fn shutdown_requested() -> &'static str {
    let (Ok(mut terminate), Ok(mut interrupt)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        // Without signal handlers the default action (exit) still applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => "terminated",
        _ = interrupt.recv() => "interrupt",
    }
}

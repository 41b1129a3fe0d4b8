//! The admin HTTP server (axum): liveness, readiness, Prometheus metrics, diagnostics and the
//! reload endpoint. It runs on its own thread and runtime, so a flood that keeps the ingest
//! runtime busy cannot starve the probes Kubernetes and operators depend on.

pub mod readiness;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::budget::MemoryBudget;
use crate::config::{self, Loaded};
use crate::metrics::Metrics;
use crate::reload::{ReloadRequest, Trigger};
pub use readiness::{Latch, Readiness};
pub use status::StatusBoard;

/// Everything the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// The metrics to expose.
    pub metrics: Metrics,
    /// Readiness latches.
    pub readiness: Readiness,
    /// Facts for `/debug/status`.
    pub status: Arc<StatusBoard>,
    /// The memory budget.
    pub budget: Arc<MemoryBudget>,
    /// The configuration in force, with its sources.
    pub config: watch::Receiver<Arc<Loaded>>,
    /// Where reload requests go.
    pub reload: mpsc::Sender<ReloadRequest>,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/status", get(debug_status))
        .route("/debug/config", get(debug_config))
        .route("/-/reload", post(reload))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> Response {
    match state.readiness.check() {
        Ok(()) => "ready".into_response(),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", reasons.join(", ")),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.encode_text(),
    )
        .into_response()
}

async fn debug_status(State(state): State<AdminState>) -> Response {
    let m = &state.metrics;
    let total = |name: &str| m.total(name);
    let (used, limit) = (state.budget.used_bytes(), state.budget.limit_bytes());
    let snapshot = state.status.snapshot();
    let body = json!({
        "version": crate::VERSION,
        "commit": crate::GIT_COMMIT,
        "uptime_seconds": state.status.uptime_secs(),
        "ready": state.readiness.check().is_ok(),
        "destination": snapshot.destination,
        "segments": {
            "received": total("xray_segments_received_total"),
            "sent": total("xray_segments_sent_total"),
            "rejected": total("xray_segments_rejected_total"),
            "dropped": total("xray_segments_dropped_total"),
            "buffered": state.budget.held_segments(),
            "last_received_at": snapshot.last_segment_received_at,
        },
        "buffer": {
            "used_bytes": used,
            "limit_bytes": limit,
            "used_ratio": if limit == 0 { 0.0 } else { used as f64 / limit as f64 },
        },
        "uploads": {
            "in_flight_batches": m.upload_in_flight_batches.get(),
            "last_succeeded_at": snapshot.last_upload_succeeded_at,
            "last_error": snapshot.last_upload_error,
        },
        "config": {
            "file": state.config.borrow().file.as_ref().map(|f| f.display().to_string()),
            "last_reload": snapshot.last_reload,
        },
    });
    axum::Json(body).into_response()
}

async fn debug_config(State(state): State<AdminState>) -> Response {
    let loaded = Arc::clone(&state.config.borrow());
    (
        [(header::CONTENT_TYPE, "application/yaml; charset=utf-8")],
        config::describe(&loaded.config, &loaded.sources),
    )
        .into_response()
}

async fn reload(State(state): State<AdminState>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    let allowed = peer.ip().to_canonical().is_loopback() || state.config.borrow().config.admin_enable_lifecycle;
    if !allowed {
        return (
            StatusCode::FORBIDDEN,
            "reload is only accepted from loopback unless --admin-enable-lifecycle is set\n",
        )
            .into_response();
    }
    let (reply, answer) = oneshot::channel();
    let request = ReloadRequest {
        trigger: Trigger::Http,
        reply: Some(reply),
    };
    if state.reload.send(request).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match answer.await {
        Ok(Ok(summary)) => (StatusCode::OK, format!("{summary}\n")).into_response(),
        Ok(Err(error)) => (StatusCode::BAD_REQUEST, format!("reload failed: {error}\n")).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

/// The admin server on its own thread; it can move to a new listener without a gap.
pub struct AdminServer {
    rebind: mpsc::UnboundedSender<std::net::TcpListener>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    /// Serves `router` on `listener` from a dedicated thread.
    pub fn spawn(listener: std::net::TcpListener, router: Router) -> std::io::Result<AdminServer> {
        let (rebind, mut next_listeners) = mpsc::unbounded_channel::<std::net::TcpListener>();
        let stop = CancellationToken::new();
        let stop_serving = stop.clone();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name("xray-admin".into()).spawn(move || {
            runtime.block_on(async move {
                let mut current = Some(listener);
                while let Some(listener) = current.take() {
                    let Ok(listener) = listener
                        .set_nonblocking(true)
                        .and_then(|()| tokio::net::TcpListener::from_std(listener))
                    else {
                        break;
                    };
                    let (switch_tx, switch_rx) = oneshot::channel();
                    let stop = stop_serving.clone();
                    let shutdown = async move {
                        let next = tokio::select! {
                            next = next_listeners.recv() => next,
                            () = stop.cancelled() => None,
                        };
                        let _ = switch_tx.send((next, next_listeners));
                    };
                    let service = router.clone().into_make_service_with_connect_info::<SocketAddr>();
                    if let Err(error) = axum::serve(listener, service).with_graceful_shutdown(shutdown).await {
                        tracing::error!("Admin server failed: {error}");
                    }
                    let Ok((next, receiver)) = switch_rx.await else { break };
                    next_listeners = receiver;
                    current = next;
                }
            });
        })?;
        Ok(AdminServer {
            rebind,
            stop,
            thread: Some(thread),
        })
    }

    /// Moves the server to `listener` (already bound, so the new address answers at once).
    pub fn rebind(&self, listener: std::net::TcpListener) {
        let _ = self.rebind.send(listener);
    }

    /// Stops serving and waits for the thread.
    pub fn stop(mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

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
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
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
            // Never received, so apart from the segment counts above.
            "udp_kernel_drops": total("xray_udp_kernel_drops_total"),
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

async fn reload(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let allowed = peer.ip().to_canonical().is_loopback()
        || state.config.borrow().config.admin_enable_lifecycle;
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
        Ok(Err(error)) => {
            (StatusCode::BAD_REQUEST, format!("reload failed: {error}\n")).into_response()
        }
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
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("xray-admin".into())
            .spawn(move || {
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
                        let service = router
                            .clone()
                            .into_make_service_with_connect_info::<SocketAddr>();
                        if let Err(error) = axum::serve(listener, service)
                            .with_graceful_shutdown(shutdown)
                            .await
                        {
                            tracing::error!("Admin server failed: {error}");
                        }
                        let Ok((next, receiver)) = switch_rx.await else {
                            break;
                        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::connect_info::MockConnectInfo;
    use axum::http::{Method, Request};
    use tower::ServiceExt;

    struct Fixture {
        state: AdminState,
        reloads: mpsc::Receiver<ReloadRequest>,
        _config: watch::Sender<Arc<Loaded>>,
    }

    fn fixture(enable_lifecycle: bool) -> Fixture {
        let budget = MemoryBudget::new(1 << 20);
        let metrics = Metrics::new(prometheus::Registry::new(), Arc::clone(&budget)).unwrap();
        let mut args = vec!["-o".to_owned(), "--local-sink".into(), "-".into()];
        if enable_lifecycle {
            args.push("--admin-enable-lifecycle".into());
        }
        let Ok(crate::cli::Command::Run(flags)) = crate::cli::parse(&args) else {
            unreachable!()
        };
        let loaded = config::load(&flags, &Default::default(), &[]).unwrap();
        let (config_tx, config) = watch::channel(Arc::new(loaded));
        let (reload, reloads) = mpsc::channel(1);
        Fixture {
            state: AdminState {
                metrics,
                readiness: Readiness::new(),
                status: Arc::new(StatusBoard::new()),
                budget,
                config,
                reload,
            },
            reloads,
            _config: config_tx,
        }
    }

    async fn call(
        state: &AdminState,
        method: Method,
        path: &str,
        peer: &str,
    ) -> (StatusCode, String) {
        let app = router(state.clone()).layer(MockConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn liveness_is_unconditional_and_readiness_follows_latches_and_shutdown() {
        let f = fixture(false);
        let latch = f.state.readiness.latch("udp listener not bound");
        assert_eq!(
            call(&f.state, Method::GET, "/healthz", "127.0.0.1:1").await,
            (StatusCode::OK, "ok".into())
        );
        let (status, body) = call(&f.state, Method::GET, "/readyz", "127.0.0.1:1").await;
        assert_eq!(
            (status, body.as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: udp listener not bound"
            )
        );
        latch.release();
        assert_eq!(
            call(&f.state, Method::GET, "/readyz", "127.0.0.1:1").await,
            (StatusCode::OK, "ready".into())
        );
        f.state.readiness.begin_shutdown();
        let (status, body) = call(&f.state, Method::GET, "/readyz", "127.0.0.1:1").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down")
        );
        assert_eq!(
            call(&f.state, Method::GET, "/healthz", "127.0.0.1:1")
                .await
                .0,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn metrics_status_and_config_are_served() {
        let f = fixture(false);
        let (status, body) = call(&f.state, Method::GET, "/metrics", "10.0.0.1:1").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("# HELP xray_segments_received_total"),
            "{body}"
        );
        let (status, body) = call(&f.state, Method::GET, "/debug/status", "10.0.0.1:1").await;
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["version"], crate::VERSION);
        assert_eq!(json["buffer"]["limit_bytes"], 1 << 20);
        assert_eq!(json["segments"]["received"], 0);
        let (status, body) = call(&f.state, Method::GET, "/debug/config", "10.0.0.1:1").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("LocalSink"), "{body}");
        assert_eq!(
            call(&f.state, Method::GET, "/nope", "10.0.0.1:1").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(&f.state, Method::GET, "/-/reload", "127.0.0.1:1")
                .await
                .0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn reload_is_refused_off_loopback_unless_lifecycle_is_enabled() {
        let mut f = fixture(false);
        let (status, body) = call(&f.state, Method::POST, "/-/reload", "10.1.2.3:5555").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(f.reloads.try_recv().is_err(), "nothing was requested");

        for peer in ["127.0.0.1:9", "[::1]:9", "[::ffff:127.0.0.1]:9"] {
            let answer = tokio::spawn({
                let state = f.state.clone();
                async move { call(&state, Method::POST, "/-/reload", peer).await }
            });
            let request = f.reloads.recv().await.unwrap();
            assert_eq!(request.trigger, Trigger::Http);
            request
                .reply
                .unwrap()
                .send(Ok("changed Concurrency".into()))
                .unwrap();
            assert_eq!(
                answer.await.unwrap(),
                (StatusCode::OK, "changed Concurrency\n".into())
            );
        }

        let answer = tokio::spawn({
            let state = f.state.clone();
            async move { call(&state, Method::POST, "/-/reload", "127.0.0.1:9").await }
        });
        f.reloads
            .recv()
            .await
            .unwrap()
            .reply
            .unwrap()
            .send(Err("Concurrency: invalid".into()))
            .unwrap();
        assert_eq!(answer.await.unwrap().0, StatusCode::BAD_REQUEST);

        let mut open = fixture(true);
        let answer = tokio::spawn({
            let state = open.state.clone();
            async move { call(&state, Method::POST, "/-/reload", "10.1.2.3:5555").await }
        });
        open.reloads
            .recv()
            .await
            .unwrap()
            .reply
            .unwrap()
            .send(Ok("no settings changed".into()))
            .unwrap();
        assert_eq!(answer.await.unwrap().0, StatusCode::OK);
    }
}

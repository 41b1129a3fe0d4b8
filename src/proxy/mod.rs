//! The TCP port: the SigV4 sampling proxy (HTTP/1.1) that the X-Ray SDKs call unsigned, and,
//! on the same port, segment ingest for connections whose first byte opens a JSON header.
//!
//! Unlike the Go daemon's proxy, this one forwards only an allow-list of X-Ray API paths, never
//! forwards a request it could not sign, and bounds request size, time and connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::aws::target::{Unsigned, XrayTarget};
use crate::ingest::{tcp, Admission, SegmentSender};
use crate::metrics::Metrics;

/// The paths every X-Ray SDK's centralized sampling uses.
pub const DEFAULT_PATHS: [&str; 2] = ["/GetSamplingRules", "/SamplingTargets"];
/// The largest request body forwarded (413 beyond).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// How long a client may take to send its request headers, and its body.
pub const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once (HTTP and segment streams together); more wait in the backlog.
pub const MAX_CONNECTIONS: usize = 512;

type ProxyBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// What reload can change about the TCP port's behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyPolicy {
    /// Paths forwarded (the defaults plus `--proxy-extra-paths`).
    pub allowed_paths: Vec<String>,
    /// How long to wait for X-Ray's answer.
    pub upstream_timeout: Duration,
    /// Whether segment streams are accepted.
    pub tcp_ingest: bool,
}

impl ProxyPolicy {
    /// The policy for `config`.
    pub fn from_config(config: &crate::config::Config) -> Self {
        let mut allowed_paths: Vec<String> =
            DEFAULT_PATHS.iter().map(|p| (*p).to_owned()).collect();
        allowed_paths.extend(config.proxy_extra_paths.iter().cloned());
        ProxyPolicy {
            allowed_paths,
            upstream_timeout: config.proxy_upstream_timeout,
            tcp_ingest: config.tcp_ingest,
        }
    }
}

/// Everything a TCP connection needs.
#[derive(Clone)]
pub struct TcpPortState {
    /// Where requests go; `None` with the local sink (no AWS).
    pub target: watch::Receiver<Option<Arc<XrayTarget>>>,
    /// Allow-list, timeouts, ingest switch.
    pub policy: watch::Receiver<ProxyPolicy>,
    /// Proxy metrics.
    pub metrics: Metrics,
    /// Admission for segment streams (counted as `transport="tcp"`).
    pub admission: Admission,
    /// Where admitted segments go.
    pub segments: SegmentSender,
}

/// The TCP listener and its connections.
pub struct TcpServer {
    stop_accepting: CancellationToken,
    accept: tokio::task::JoinHandle<()>,
    local_addr: SocketAddr,
}

impl TcpServer {
    /// Serves `listener`; connections end when `stop` fires (HTTP ones after their current
    /// request).
    pub fn start(
        listener: std::net::TcpListener,
        state: TcpPortState,
        stop: CancellationToken,
        connections: TaskTracker,
    ) -> std::io::Result<TcpServer> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let local_addr = listener.local_addr()?;
        let stop_accepting = stop.child_token();
        let accept = tokio::spawn(accept_loop(
            listener,
            state,
            stop_accepting.clone(),
            stop,
            connections,
        ));
        Ok(TcpServer {
            stop_accepting,
            accept,
            local_addr,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting new connections (existing ones run on until the daemon stops them).
    pub async fn stop_accepting(self) {
        self.stop_accepting.cancel();
        let _ = self.accept.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: TcpPortState,
    stop_accepting: CancellationToken,
    stop: CancellationToken,
    connections: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot,
            () = stop_accepting.cancelled() => return,
        };
        let Ok(slot) = slot else { return };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!("proxy http server: accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop_accepting.cancelled() => return,
        };
        let (state, stop) = (state.clone(), stop.clone());
        connections.spawn(async move {
            serve_connection(stream, peer, state, stop).await;
            drop(slot);
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: TcpPortState,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    // A segment stream starts with its JSON header; an HTTP request with a method name.
    let mut first = [0u8; 1];
    let Ok(Ok(peeked)) = tokio::time::timeout(CLIENT_READ_TIMEOUT, stream.peek(&mut first)).await
    else {
        return;
    };
    if peeked == 1 && first[0] == b'{' && state.policy.borrow().tcp_ingest {
        tcp::serve(
            stream,
            state.admission.clone(),
            state.segments.clone(),
            stop,
        )
        .await;
        return;
    }
    let service = hyper::service::service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&state, request, peer).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Handles one proxied request and records it.
async fn handle(
    state: &TcpPortState,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let policy = state.policy.borrow().clone();
    let path = request.uri().path().to_owned();
    let label = if policy.allowed_paths.contains(&path) {
        path.as_str()
    } else {
        "other"
    };
    let response = match forward(state, &policy, request, peer).await {
        Ok(response) => response,
        Err(refusal) => {
            if refusal.status.is_server_error() {
                tracing::error!("Proxy request {path} failed: {}", refusal.message);
            } else {
                tracing::debug!("Proxy request {path} refused: {}", refusal.message);
            }
            refusal.into_response()
        }
    };
    state
        .metrics
        .proxy_requests
        .with_label_values(&[label, response.status().as_str()])
        .inc();
    state
        .metrics
        .proxy_duration_seconds
        .observe(started.elapsed().as_secs_f64());
    response
}

/// A request the proxy answers itself, with a short explanation.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
        }
    }

    fn into_response(self) -> Response<ProxyBody> {
        let body = Full::new(Bytes::from(format!(
            "xray-daemon proxy: {}\n",
            self.message
        )))
        .map_err(|never| match never {})
        .boxed_unsync();
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

async fn forward(
    state: &TcpPortState,
    policy: &ProxyPolicy,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<ProxyBody>, Refusal> {
    let path = request.uri().path();
    if !policy.allowed_paths.iter().any(|allowed| allowed == path) {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!(
                "{path} is not forwarded; allowed: {}",
                policy.allowed_paths.join(", ")
            ),
        ));
    }
    let Some(target) = state.target.borrow().clone() else {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no X-Ray endpoint: the daemon writes to a local sink",
        ));
    };
    let (parts, body) = request.into_parts();
    let body = match tokio::time::timeout(
        CLIENT_READ_TIMEOUT,
        Limited::new(body, MAX_BODY_BYTES).collect(),
    )
    .await
    {
        Err(_) => {
            return Err(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time",
            ))
        }
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {MAX_BODY_BYTES} bytes"),
            ))
        }
        Ok(Err(error)) => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("reading request body: {error}"),
            ))
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let mut upstream = upstream_request(&parts, body, &target)
        .map_err(|e| Refusal::new(StatusCode::BAD_GATEWAY, e))?;
    target.sign(&mut upstream).await.map_err(|e| {
        let status = match e {
            Unsigned::NoCredentials(_) => StatusCode::SERVICE_UNAVAILABLE,
            Unsigned::Sign(_) => StatusCode::BAD_GATEWAY,
        };
        Refusal::new(status, format!("not forwarded unsigned: {e}"))
    })?;
    // Added after signing, as the Go daemon's reverse proxy does: it is informational.
    append_forwarded_for(upstream.headers_mut(), peer);

    let response = match tokio::time::timeout(policy.upstream_timeout, target.send(upstream)).await
    {
        Err(_) => {
            return Err(Refusal::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("X-Ray did not answer within {:?}", policy.upstream_timeout),
            ))
        }
        Ok(Err(error)) => {
            return Err(Refusal::new(
                StatusCode::BAD_GATEWAY,
                format!("X-Ray unreachable: {}", crate::aws::error_chain(&error)),
            ))
        }
        Ok(Ok(response)) => response,
    };
    let response = response
        .try_into_http1x()
        .map_err(|e| Refusal::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body.boxed_unsync()))
}

/// The request to send upstream: same method, path and query on the endpoint, the client's
/// end-to-end headers minus any signing headers of its own.
fn upstream_request(
    parts: &http::request::Parts,
    body: Bytes,
    target: &XrayTarget,
) -> Result<Request<Bytes>, String> {
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = target
        .uri_on_host(path_and_query)
        .map_err(|e| format!("bad upstream URI: {e}"))?;
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    for name in [
        "authorization",
        "x-amz-date",
        "x-amz-security-token",
        "x-amz-content-sha256",
        "host",
        "content-length",
        "expect",
    ] {
        headers.remove(name);
    }
    headers.insert(header::HOST, target.host().clone());
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let mut request = Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .body(body)
        .map_err(|e| e.to_string())?;
    *request.headers_mut() = headers;
    Ok(request)
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let client = peer.ip().to_canonical().to_string();
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(existing) => format!("{existing}, {client}"),
        None => client,
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"]);
    }

    #[test]
    fn the_upstream_request_keeps_path_and_query_and_drops_client_signing() {
        let request = Request::builder()
            .method("POST")
            .uri("/GetSamplingRules?x=1")
            .header("host", "127.0.0.1:2000")
            .header("authorization", "AWS4-HMAC-SHA256 forged")
            .header("x-amz-security-token", "stolen")
            .header("content-type", "application/json")
            .header("connection", "close")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let target = XrayTarget::new(
            "https://xray.eu-west-1.amazonaws.com/ignored/prefix",
            "eu-west-1",
            aws_credential_types::provider::SharedCredentialsProvider::new(
                crate::aws::credentials::NoProvider,
            ),
            aws_smithy_runtime_api::client::http::SharedHttpConnector::new(
                crate::aws::proxy::connector(None).unwrap(),
            ),
        )
        .unwrap();
        let upstream = upstream_request(&parts, Bytes::from_static(b"{}"), &target).unwrap();
        assert_eq!(
            upstream.uri(),
            "https://xray.eu-west-1.amazonaws.com/GetSamplingRules?x=1"
        );
        assert_eq!(upstream.headers()["host"], "xray.eu-west-1.amazonaws.com");
        assert_eq!(upstream.headers()["content-length"], "2");
        assert_eq!(upstream.headers()["content-type"], "application/json");
        for gone in ["authorization", "x-amz-security-token", "connection"] {
            assert!(!upstream.headers().contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn forwarded_for_appends_the_client() {
        let mut headers = HeaderMap::new();
        append_forwarded_for(&mut headers, "[::ffff:10.1.2.3]:5000".parse().unwrap());
        assert_eq!(headers["x-forwarded-for"], "10.1.2.3");
        append_forwarded_for(&mut headers, "127.0.0.1:1".parse().unwrap());
        assert_eq!(headers["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    }

    #[test]
    fn the_policy_adds_extra_paths_to_the_sampling_calls() {
        let Ok(crate::cli::Command::Run(flags)) = crate::cli::parse(&[
            "--proxy-extra-paths".into(),
            "/GetSamplingStatisticSummaries".into(),
        ]) else {
            unreachable!()
        };
        let loaded = crate::config::load(&flags, &Default::default(), &[]).unwrap();
        let policy = ProxyPolicy::from_config(&loaded.config);
        assert_eq!(
            policy.allowed_paths,
            [
                "/GetSamplingRules",
                "/SamplingTargets",
                "/GetSamplingStatisticSummaries"
            ]
        );
        assert!(policy.tcp_ingest);
    }
}

//! A fake X-Ray endpoint on loopback: verifies every request's SigV4 signature against the
//! test secret, records the documents it receives, and answers as scripted (failures,
//! throttling, stalls, unprocessed segments) so tests control the backend.
//! `PutTelemetryRecords` calls have their own script and record their parsed bodies.
//!
//! [`FakeXray::start_tls`] serves HTTPS with a freshly generated self-signed certificate (the
//! `NoVerifySSL` tests); [`FakeXray::accept_key`] adds credentials it accepts signatures from
//! (keys issued by a fake STS or container credentials endpoint).
//!
//! Transport faults: a reply can reset the connection instead of answering
//! ([`Reply::Reset`], [`FakeXray::resets`]), requests can be answered slowly for a while
//! ([`FakeXray::slow`]), and the listener can go away and come back on the same port
//! ([`FakeXray::go_offline`], [`FakeXray::come_back`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

pub const ACCESS_KEY: &str = "AKIDTESTDAEMON";
pub const SECRET_KEY: &str = "test-secret-never-logged-7f3a";
pub const REGION: &str = "us-east-1";

/// How the fake answers one `PutTraceSegments` request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with no unprocessed segments.
    Accept,
    /// An error status with an AWS error code; nothing is recorded.
    Fail(u16, &'static str),
    /// Wait this long, then accept.
    Stall(Duration),
    /// 200, but these segment ids come back unprocessed with this code (others recorded).
    Unprocessed(Vec<String>, &'static str),
    /// No response: the connection is reset (RST) once the request has been read; nothing
    /// is recorded.
    Reset,
    /// 200 with a body of this many bytes (over the daemon's limit); nothing is recorded.
    Oversized(usize),
}

/// A request the fake received on a path other than `/TraceSegments`.
#[derive(Debug, Clone)]
pub struct Proxied {
    pub path: String,
    /// The `Host` header as received (the daemon sets it to the endpoint's authority).
    pub host: Option<String>,
    pub forwarded_for: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct Recorded {
    proxied: Vec<Proxied>,
    outage: Option<(tokio::time::Instant, u16, &'static str)>,
    documents: Vec<String>,
    requests: usize,
    bad_signatures: usize,
    user_agents: Vec<String>,
    timestamps: Vec<String>,
    script: VecDeque<Reply>,
    telemetry: Vec<serde_json::Value>,
    telemetry_script: VecDeque<Reply>,
    /// Until when every request is reset (`resets`).
    resets_until: Option<tokio::time::Instant>,
    /// Until when every request is answered only after a delay (`slow`).
    slow_until: Option<(tokio::time::Instant, Duration)>,
    /// The `Authorization` and `x-amz-security-token` values received, for leak checks.
    authorizations: Vec<String>,
    security_tokens: Vec<String>,
    /// Connections accepted (each one a TCP connection from the daemon).
    connections: usize,
    /// TLS handshakes that failed (the client refused the certificate, or spoke plain HTTP).
    tls_failures: usize,
    /// Secret access keys by access key id: whose signatures verify.
    keys: std::collections::HashMap<String, String>,
    /// The access key id of every request whose signature verified, in arrival order.
    signers: Vec<String>,
    /// The fake's clock minus the machine's, in seconds (`clock_ahead`): its `Date` headers
    /// show it, and signatures more than 5 minutes away from it are refused, as AWS does.
    clock_offset_secs: i64,
    /// Requests refused because their signing time was outside that window.
    expired_signatures: usize,
}

/// A running fake.
#[derive(Clone)]
pub struct FakeXray {
    pub addr: SocketAddr,
    state: Arc<Mutex<Recorded>>,
    /// Stops the current listener and every connection it accepted (`go_offline`).
    serving: Arc<Mutex<tokio_util::sync::CancellationToken>>,
    /// Set for an HTTPS fake.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Handed to the handler of every request: resets the request's connection.
#[derive(Clone)]
struct ConnectionReset(tokio_util::sync::CancellationToken);

impl FakeXray {
    pub async fn start() -> FakeXray {
        FakeXray::start_with(None).await
    }

    /// An HTTPS fake whose certificate (for `127.0.0.1` and `localhost`) is self-signed, so
    /// no trust store accepts it.
    pub async fn start_tls() -> FakeXray {
        let certified = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
        FakeXray::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> FakeXray {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut recorded = Recorded::default();
        recorded
            .keys
            .insert(ACCESS_KEY.to_owned(), SECRET_KEY.to_owned());
        let fake = FakeXray {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new(recorded)),
            serving: Arc::default(),
            tls,
        };
        fake.serve(listener);
        fake
    }

    /// Moves the fake's clock `secs` ahead of the machine's (negative: behind).
    pub fn clock_ahead(&self, secs: i64) {
        self.state.lock().unwrap().clock_offset_secs = secs;
    }

    /// Requests refused with "Signature expired" (signed too far from the fake's clock).
    pub fn expired_signatures(&self) -> usize {
        self.state.lock().unwrap().expired_signatures
    }

    /// Accepts signatures made with this key pair from now on.
    pub fn accept_key(&self, access_key: &str, secret_key: &str) {
        self.state
            .lock()
            .unwrap()
            .keys
            .insert(access_key.to_owned(), secret_key.to_owned());
    }

    /// The access key id of every request whose signature verified, in arrival order.
    pub fn signers(&self) -> Vec<String> {
        self.state.lock().unwrap().signers.clone()
    }

    /// TLS handshakes that failed (an HTTPS fake only).
    pub fn tls_failures(&self) -> usize {
        self.state.lock().unwrap().tls_failures
    }

    /// Accepts connections on `listener` until `go_offline`. Each connection is served with
    /// HTTP/1.1 and can be reset from its handler.
    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&self.state));
        let serving = tokio_util::sync::CancellationToken::new();
        *self.serving.lock().unwrap() = serving.clone();
        let state = Arc::clone(&self.state);
        let tls = self.tls.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    () = serving.cancelled() => return,
                };
                state.lock().unwrap().connections += 1;
                tokio::spawn(serve_connection(
                    stream,
                    app.clone(),
                    serving.clone(),
                    tls.clone(),
                    Arc::clone(&state),
                ));
            }
        });
    }

    /// Closes the listener and every open connection: the endpoint refuses connections
    /// (nothing listens on the port) until `come_back`.
    pub fn go_offline(&self) {
        self.serving.lock().unwrap().cancel();
    }

    /// Listens on the same port again.
    pub async fn come_back(&self) {
        // The port was ours a moment ago; retry briefly in case the kernel is slow to free it.
        for _ in 0..100 {
            if let Ok(listener) = tokio::net::TcpListener::bind(self.addr).await {
                self.serve(listener);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("cannot listen on {} again", self.addr);
    }

    /// Every `PutTraceSegments` request until `duration` from now is reset without an answer.
    pub fn resets(&self, duration: Duration) {
        self.state.lock().unwrap().resets_until = Some(tokio::time::Instant::now() + duration);
    }

    /// Every `PutTraceSegments` request until `duration` from now is answered only after
    /// `delay`; its documents are recorded only if the answer is sent (a request whose client
    /// gave up first is dropped unprocessed, as behind a load balancer that timed out).
    pub fn slow(&self, duration: Duration, delay: Duration) {
        self.state.lock().unwrap().slow_until =
            Some((tokio::time::Instant::now() + duration, delay));
    }

    /// The `Authorization` header values received.
    pub fn authorizations(&self) -> Vec<String> {
        self.state.lock().unwrap().authorizations.clone()
    }

    /// The `x-amz-security-token` header values received.
    pub fn security_tokens(&self) -> Vec<String> {
        self.state.lock().unwrap().security_tokens.clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Queues replies for the next requests; after the script, requests are accepted.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// Queues replies for the next `PutTelemetryRecords` calls (`Fail` and `Stall` apply;
    /// anything else accepts). Telemetry calls never consume the segment script.
    pub fn script_telemetry(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().telemetry_script.extend(replies);
    }

    /// The bodies of the accepted `PutTelemetryRecords` calls, parsed, in arrival order.
    pub fn telemetry(&self) -> Vec<serde_json::Value> {
        self.state.lock().unwrap().telemetry.clone()
    }

    /// Every request until `duration` from now fails with `status` and `code`.
    pub fn outage(&self, duration: std::time::Duration, status: u16, code: &'static str) {
        self.state.lock().unwrap().outage =
            Some((tokio::time::Instant::now() + duration, status, code));
    }

    pub fn proxied(&self) -> Vec<Proxied> {
        self.state.lock().unwrap().proxied.clone()
    }

    pub fn documents(&self) -> Vec<String> {
        self.state.lock().unwrap().documents.clone()
    }

    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    pub fn bad_signatures(&self) -> usize {
        self.state.lock().unwrap().bad_signatures
    }

    pub fn user_agents(&self) -> Vec<String> {
        self.state.lock().unwrap().user_agents.clone()
    }

    pub fn timestamps(&self) -> Vec<String> {
        self.state.lock().unwrap().timestamps.clone()
    }

    /// Waits until at least `count` documents arrived, up to `timeout`.
    pub async fn wait_for_documents(&self, count: usize, timeout: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let documents = self.documents();
            if documents.len() >= count || tokio::time::Instant::now() >= deadline {
                return documents;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Answers any other X-Ray API call (what the sampling proxy forwards): records it and echoes
/// its path and body, so tests can see exactly what arrived and what came back.
async fn proxied_reply(
    state: &Arc<Mutex<Recorded>>,
    reply: Reply,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    state.lock().unwrap().proxied.push(Proxied {
        path: uri.path().to_owned(),
        host: headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        forwarded_for: headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.to_vec(),
    });
    match reply {
        Reply::Fail(status, code) => return error(status, code),
        Reply::Stall(delay) => tokio::time::sleep(delay).await,
        Reply::Accept | Reply::Unprocessed(..) | Reply::Reset | Reply::Oversized(_) => {}
    }
    let echo = serde_json::json!({ "Path": uri.path(), "Body": String::from_utf8_lossy(body) });
    (
        StatusCode::OK,
        [("content-type", "application/json"), ("x-echo", "1")],
        echo.to_string(),
    )
        .into_response()
}

/// Serves one connection (after a TLS handshake, for an HTTPS fake) until it closes, its
/// handler resets it, or the fake goes offline.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: axum::Router,
    serving: tokio_util::sync::CancellationToken,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<Mutex<Recorded>>,
) {
    use tower::ServiceExt;
    // A second handle on the socket, so a reset can set SO_LINGER 0 (close sends RST).
    let Ok(twin) = socket2::SockRef::from(&stream).try_clone() else {
        return;
    };
    let reset = ConnectionReset(tokio_util::sync::CancellationToken::new());
    let handle = reset.clone();
    let service = hyper::service::service_fn(move |mut request: axum::http::Request<_>| {
        request.extensions_mut().insert(handle.clone());
        app.clone().oneshot(request.map(axum::body::Body::new))
    });
    let http = hyper::server::conn::http1::Builder::new();
    let connection = async {
        match tls {
            None => {
                let _ = http
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            }
            Some(acceptor) => {
                match tokio::time::timeout(Duration::from_secs(5), acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = http
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    }
                    _ => state.lock().unwrap().tls_failures += 1,
                }
            }
        }
    };
    tokio::select! {
        () = connection => {}
        () = reset.0.cancelled() => {
            let _ = twin.set_linger(Some(Duration::ZERO));
        }
        () = serving.cancelled() => {
            let _ = twin.set_linger(Some(Duration::ZERO));
        }
    }
}

/// The fake's time, as `Date` and the signing window see it.
fn fake_now(state: &Mutex<Recorded>) -> SystemTime {
    let offset = state.lock().unwrap().clock_offset_secs;
    let by = Duration::from_secs(offset.unsigned_abs());
    if offset >= 0 {
        SystemTime::now() + by
    } else {
        SystemTime::now() - by
    }
}

/// Every answer carries the fake's `Date`; a signature made more than 5 minutes away from the
/// fake's clock is refused before anything else, as AWS does.
async fn handle(
    State(state): State<Arc<Mutex<Recorded>>>,
    reset: axum::Extension<ConnectionReset>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = fake_now(&state);
    let signed_at = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .and_then(|date| parse_amz_date(date).ok());
    let expired = signed_at.is_some_and(|at| {
        let apart = at.duration_since(now).unwrap_or_else(|e| e.duration());
        apart > Duration::from_secs(300)
    });
    let mut response = if expired {
        state.lock().unwrap().expired_signatures += 1;
        let body = serde_json::json!({
            "message": "Signature expired: the request was signed too far from the current time"
        })
        .to_string();
        (
            StatusCode::FORBIDDEN,
            [("x-amzn-errortype", "InvalidSignatureException")],
            body,
        )
            .into_response()
    } else {
        answer(State(state), reset, method, uri, headers, body).await
    };
    let date = aws_smithy_types::DateTime::from(now)
        .fmt(aws_smithy_types::date_time::Format::HttpDate)
        .unwrap();
    response.headers_mut().insert("date", date.parse().unwrap());
    response
}

async fn answer(
    State(state): State<Arc<Mutex<Recorded>>>,
    axum::Extension(reset): axum::Extension<ConnectionReset>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let keys = state.lock().unwrap().keys.clone();
    let signer = verify_sigv4(&keys, &method, &uri, &headers, &body);
    let signature_ok = signer.is_some();
    let telemetry = uri.path() == "/TelemetryRecords";
    let reply = {
        let mut recorded = state.lock().unwrap();
        recorded.requests += 1;
        recorded.user_agents.extend(header("user-agent"));
        recorded.timestamps.extend(header("x-amzn-xray-timestamp"));
        recorded.authorizations.extend(header("authorization"));
        recorded
            .security_tokens
            .extend(header("x-amz-security-token"));
        match signer {
            Some(access_key) => recorded.signers.push(access_key),
            None => recorded.bad_signatures += 1,
        }
        let script = if telemetry {
            &mut recorded.telemetry_script
        } else {
            &mut recorded.script
        };
        script.pop_front().unwrap_or(Reply::Accept)
    };
    if !signature_ok {
        return error(403, "InvalidSignatureException");
    }
    if telemetry {
        return telemetry_reply(&state, reply, &body).await;
    }
    if let Some((until, status, code)) = state.lock().unwrap().outage {
        if tokio::time::Instant::now() < until {
            return error(status, code);
        }
    }
    if uri.path() != "/TraceSegments" {
        return proxied_reply(&state, reply, &uri, &headers, &body).await;
    }
    let documents: Vec<String> = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| serde_json::from_value(v["TraceSegmentDocuments"].clone()).ok())
        .unwrap_or_default();
    let (resetting, slow) = {
        let recorded = state.lock().unwrap();
        let now = tokio::time::Instant::now();
        (
            recorded.resets_until.is_some_and(|until| now < until),
            recorded
                .slow_until
                .and_then(|(until, delay)| (now < until).then_some(delay)),
        )
    };
    if resetting {
        return reset_connection(&reset).await;
    }
    if let Some(delay) = slow {
        tokio::time::sleep(delay).await;
    }
    match reply {
        Reply::Fail(status, code) => return error(status, code),
        Reply::Stall(delay) => tokio::time::sleep(delay).await,
        Reply::Reset => return reset_connection(&reset).await,
        Reply::Oversized(bytes) => {
            let padding = " ".repeat(bytes);
            return (
                StatusCode::OK,
                format!("{{\"UnprocessedTraceSegments\":[]{padding}}}"),
            )
                .into_response();
        }
        Reply::Accept | Reply::Unprocessed(..) => {}
    }
    let unprocessed_ids = match &reply {
        Reply::Unprocessed(ids, _) => ids.clone(),
        _ => Vec::new(),
    };
    let mut unprocessed = Vec::new();
    let mut recorded = state.lock().unwrap();
    for document in documents {
        let id = serde_json::from_str::<serde_json::Value>(&document)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned));
        match id.filter(|id| unprocessed_ids.contains(id)) {
            Some(id) => unprocessed.push(serde_json::json!({
                "Id": id,
                "ErrorCode": match &reply { Reply::Unprocessed(_, code) => *code, _ => "" },
                "Message": "scripted"
            })),
            None => recorded.documents.push(document),
        }
    }
    let body = serde_json::json!({ "UnprocessedTraceSegments": unprocessed }).to_string();
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

async fn telemetry_reply(state: &Mutex<Recorded>, reply: Reply, body: &[u8]) -> Response {
    match reply {
        Reply::Fail(status, code) => return error(status, code),
        Reply::Stall(delay) => tokio::time::sleep(delay).await,
        Reply::Accept | Reply::Unprocessed(..) | Reply::Reset | Reply::Oversized(_) => {}
    }
    let parsed = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    state.lock().unwrap().telemetry.push(parsed);
    (StatusCode::OK, [("content-type", "application/json")], "{}").into_response()
}

/// Resets the connection this request came on; the response is never sent.
async fn reset_connection(reset: &ConnectionReset) -> Response {
    reset.0.cancel();
    std::future::pending().await
}

fn error(status: u16, code: &str) -> Response {
    let body = serde_json::json!({ "__type": code, "message": "scripted failure" }).to_string();
    (
        StatusCode::from_u16(status).unwrap(),
        [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amzn-errortype", code),
        ],
        body,
    )
        .into_response()
}

/// Recomputes the request's signature from the headers it says it signed, with the secret of
/// the access key it names; the access key id when the signature matches.
fn verify_sigv4(
    keys: &std::collections::HashMap<String, String>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<String> {
    let authorization = headers.get("authorization")?.to_str().ok()?;
    let access_key = authorization
        .split([',', ' '])
        .find_map(|part| part.trim().strip_prefix("Credential="))?
        .split('/')
        .next()?
        .to_owned();
    let secret_key = keys.get(&access_key)?;
    signature_matches(&access_key, secret_key, method, uri, headers, body).then_some(access_key)
}

fn signature_matches(
    access_key: &str,
    secret_key: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> bool {
    let Some(authorization) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let field = |name: &str| {
        authorization
            .split([',', ' '])
            .find_map(|part| part.trim().strip_prefix(name))
            .map(str::to_owned)
    };
    let (Some(credential), Some(signed_headers), Some(signature)) = (
        field("Credential="),
        field("SignedHeaders="),
        field("Signature="),
    ) else {
        return false;
    };
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.first() != Some(&access_key) || scope.get(3) != Some(&"xray") {
        return false;
    }
    let Some(date) = headers.get("x-amz-date").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Ok(time) = parse_amz_date(date) else {
        return false;
    };
    // The signer adds x-amz-date and the session token itself; pass the other signed headers.
    let signed: Vec<(&str, &str)> = signed_headers
        .split(';')
        .filter(|name| !matches!(*name, "x-amz-date" | "x-amz-security-token"))
        .filter_map(|name| Some((name, headers.get(name)?.to_str().ok()?)))
        .collect();
    let token = headers
        .get("x-amz-security-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let identity = Credentials::new(access_key, secret_key, token, None, "fake").into();
    let mut settings = SigningSettings::default();
    settings.excluded_headers = None;
    let Ok(params) = v4::SigningParams::builder()
        .identity(&identity)
        .region(scope.get(2).copied().unwrap_or(REGION))
        .name("xray")
        .time(time)
        .settings(settings)
        .build()
    else {
        return false;
    };
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(request) = SignableRequest::new(
        method.as_str(),
        path_and_query,
        signed.into_iter(),
        SignableBody::Bytes(body),
    ) else {
        return false;
    };
    sign(request, &params.into()).is_ok_and(|output| output.signature() == signature)
}

fn parse_amz_date(date: &str) -> Result<SystemTime, ()> {
    // 20240102T030405Z
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        date.get(0..4).ok_or(())?,
        date.get(4..6).ok_or(())?,
        date.get(6..8).ok_or(())?,
        date.get(9..11).ok_or(())?,
        date.get(11..13).ok_or(())?,
        date.get(13..15).ok_or(())?
    );
    humantime::parse_rfc3339(&rfc3339).map_err(|_| ())
}

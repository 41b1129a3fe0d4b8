//! A fake X-Ray endpoint on loopback: verifies every request's SigV4 signature against the
//! test secret, records the documents it receives, and answers as scripted (failures,
//! throttling, stalls, unprocessed segments) so tests control the backend.
//! `PutTelemetryRecords` calls have their own script and record their parsed bodies.

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
}

/// A request the fake received on a path other than `/TraceSegments`.
#[derive(Debug, Clone)]
pub struct Proxied {
    pub path: String,
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
}

/// A running fake.
#[derive(Clone)]
pub struct FakeXray {
    pub addr: SocketAddr,
    state: Arc<Mutex<Recorded>>,
}

impl FakeXray {
    pub async fn start() -> FakeXray {
        let state = Arc::new(Mutex::new(Recorded::default()));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeXray { addr, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
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
        forwarded_for: headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.to_vec(),
    });
    match reply {
        Reply::Fail(status, code) => return error(status, code),
        Reply::Stall(delay) => tokio::time::sleep(delay).await,
        Reply::Accept | Reply::Unprocessed(..) => {}
    }
    let echo = serde_json::json!({ "Path": uri.path(), "Body": String::from_utf8_lossy(body) });
    (
        StatusCode::OK,
        [("content-type", "application/json"), ("x-echo", "1")],
        echo.to_string(),
    )
        .into_response()
}

async fn handle(
    State(state): State<Arc<Mutex<Recorded>>>,
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
    let signature_ok = verify_sigv4(&method, &uri, &headers, &body);
    let telemetry = uri.path() == "/TelemetryRecords";
    let reply = {
        let mut recorded = state.lock().unwrap();
        recorded.requests += 1;
        recorded.user_agents.extend(header("user-agent"));
        recorded.timestamps.extend(header("x-amzn-xray-timestamp"));
        if !signature_ok {
            recorded.bad_signatures += 1;
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
    match reply {
        Reply::Fail(status, code) => return error(status, code),
        Reply::Stall(delay) => tokio::time::sleep(delay).await,
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
        Reply::Accept | Reply::Unprocessed(..) => {}
    }
    let parsed = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    state.lock().unwrap().telemetry.push(parsed);
    (StatusCode::OK, [("content-type", "application/json")], "{}").into_response()
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

/// Recomputes the request's signature from the headers it says it signed.
fn verify_sigv4(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> bool {
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
    if scope.first() != Some(&ACCESS_KEY) || scope.get(3) != Some(&"xray") {
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
    let identity = Credentials::new(ACCESS_KEY, SECRET_KEY, token, None, "fake").into();
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

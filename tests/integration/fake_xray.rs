//! A fake X-Ray endpoint on loopback: verifies every request's SigV4 signature against the
//! test secret, records the documents it receives, and answers as scripted (failures,
//! throttling, stalls, unprocessed segments) so tests control the backend.

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

#[derive(Default)]
struct Recorded {
    documents: Vec<String>,
    requests: usize,
    bad_signatures: usize,
    user_agents: Vec<String>,
    timestamps: Vec<String>,
    script: VecDeque<Reply>,
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
    let reply = {
        let mut recorded = state.lock().unwrap();
        recorded.requests += 1;
        recorded.user_agents.extend(header("user-agent"));
        recorded.timestamps.extend(header("x-amzn-xray-timestamp"));
        if !signature_ok {
            recorded.bad_signatures += 1;
        }
        recorded.script.pop_front().unwrap_or(Reply::Accept)
    };
    if !signature_ok {
        return error(403, "InvalidSignatureException");
    }
    if uri.path() != "/TraceSegments" {
        return (StatusCode::OK, "{}").into_response();
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

//! Credentials from Kubernetes identities, against loopback fakes: IRSA (web identity through
//! a fake STS that issues short-lived keys, with the token file rotated between refreshes) and
//! EKS Pod Identity (container credentials with an authorization token file). The fake X-Ray
//! accepts only signatures made with the keys these fakes issued.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Form;

use crate::process::Xray;
use crate::{datagram, http, send_paced, FakeXray};

const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/xray-irsa";

/// One `AssumeRoleWithWebIdentity` call the fake STS answered.
#[derive(Debug, Clone)]
struct StsCall {
    token: String,
    role_arn: String,
    session_name: String,
    /// The access key it issued.
    access_key: String,
}

/// A fake STS for `AssumeRoleWithWebIdentity`: every call issues new keys, valid for
/// `lifetime`, which `xray` (the fake X-Ray) then accepts.
async fn fake_sts(xray: FakeXray, lifetime: Duration) -> (SocketAddr, Arc<Mutex<Vec<StsCall>>>) {
    let calls = Arc::new(Mutex::new(Vec::<StsCall>::new()));
    let recorded = Arc::clone(&calls);
    let app = axum::Router::new().route(
        "/",
        post(move |Form(form): Form<HashMap<String, String>>| {
            let (xray, recorded) = (xray.clone(), Arc::clone(&recorded));
            async move {
                if form.get("Action").map(String::as_str) != Some("AssumeRoleWithWebIdentity") {
                    return (StatusCode::BAD_REQUEST, String::new()).into_response();
                }
                let mut calls = recorded.lock().unwrap();
                let n = calls.len() + 1;
                let (access_key, secret) = (format!("ASIAIRSA{n:04}"), format!("irsa-secret-{n}"));
                xray.accept_key(&access_key, &secret);
                let field = |name: &str| form.get(name).cloned().unwrap_or_default();
                calls.push(StsCall {
                    token: field("WebIdentityToken"),
                    role_arn: field("RoleArn"),
                    session_name: field("RoleSessionName"),
                    access_key: access_key.clone(),
                });
                let expiration = humantime::format_rfc3339_seconds(SystemTime::now() + lifetime);
                let body = format!(
                    "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
                     <AssumeRoleWithWebIdentityResult><Credentials>\
                     <AccessKeyId>{access_key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>\
                     <SessionToken>irsa-session-{n}</SessionToken><Expiration>{expiration}</Expiration>\
                     </Credentials><SubjectFromWebIdentityToken>system:serviceaccount:obs:xray</SubjectFromWebIdentityToken>\
                     <AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/xray-irsa/s{n}</Arn>\
                     <AssumedRoleId>AROAEXAMPLE:s{n}</AssumedRoleId></AssumedRoleUser>\
                     </AssumeRoleWithWebIdentityResult>\
                     <ResponseMetadata><RequestId>req-{n}</RequestId></ResponseMetadata>\
                     </AssumeRoleWithWebIdentityResponse>"
                );
                ([("content-type", "text/xml")], body).into_response()
            }
        }),
    );
    (serve(app).await, calls)
}

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Replaces `file`'s content in one step, as the kubelet does with projected tokens.
fn rotate(file: &std::path::Path, content: &str) {
    let staged = file.with_extension("new");
    std::fs::write(&staged, content).unwrap();
    std::fs::rename(&staged, file).unwrap();
}

#[tokio::test]
async fn irsa_credentials_are_refreshed_with_the_rotated_token_file() {
    let fake = FakeXray::start().await;
    // Keys that expire 12 s after issue are stale to the daemon's cache at once and to the
    // SDK client's within seconds, so refreshes come every few seconds of uploads.
    let (sts, calls) = fake_sts(fake.clone(), Duration::from_secs(12)).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    rotate(&token_file, "token-before-rotation");
    let sts_url = format!("http://{sts}");
    let xray = Xray::start(
        &["--endpoint", &fake.endpoint()],
        &[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
            ("AWS_ROLE_ARN", ROLE_ARN),
            ("AWS_ROLE_SESSION_NAME", "irsa-test"),
            ("AWS_ENDPOINT_URL_STS", &sts_url),
        ],
    )
    .await;
    let udp = xray.udp().await;

    send_paced(udp, &[datagram("before", 100)], 1000).await;
    assert_eq!(
        fake.wait_for_documents(1, Duration::from_secs(10))
            .await
            .len(),
        1,
        "{}",
        xray.log()
    );
    let before = calls.lock().unwrap().clone();
    assert!(!before.is_empty());
    assert!(before.iter().all(|c| c.token == "token-before-rotation"));

    rotate(&token_file, "token-after-rotation");
    let issued_after = || -> Vec<String> {
        calls.lock().unwrap()[before.len()..]
            .iter()
            .map(|c| c.access_key.clone())
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut sent = 1;
    while !fake
        .signers()
        .iter()
        .any(|signer| issued_after().contains(signer))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no upload signed with a refreshed key; STS calls: {:?}\n{}",
            calls.lock().unwrap(),
            xray.log()
        );
        send_paced(udp, &[datagram(&format!("after-{sent}"), 100)], 1000).await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let calls = calls.lock().unwrap().clone();
    let after = &calls[before.len()..];
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|c| c.token == "token-after-rotation"),
        "every refresh after the rotation sent the new token: {after:?}"
    );
    assert!(calls
        .iter()
        .all(|c| c.role_arn == ROLE_ARN && c.session_name == "irsa-test"));
    let documents = fake.wait_for_documents(sent, Duration::from_secs(10)).await;
    assert_eq!(documents.len(), sent, "every segment was delivered");
    assert_eq!(
        fake.bad_signatures(),
        0,
        "uploads were never signed with stale keys"
    );
    let (_, metrics) = http("GET", xray.admin().await, "/metrics").await;
    let uploads = |outcome: &str| {
        let series = format!("xray_upload_requests_total{{outcome=\"{outcome}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&series)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(uploads("ok") as usize, fake.requests(), "{metrics}");
    for failed in ["http_4xx", "connection", "other"] {
        assert_eq!(uploads(failed), 0.0, "{failed}:\n{metrics}");
    }
}

#[tokio::test]
async fn eks_pod_identity_credentials_use_the_authorization_token_file() {
    const TOKEN: &str = "eks-pod-identity-token.abc123";
    let fake = FakeXray::start().await;
    fake.accept_key("ASIAPODIDENTITY", "pod-identity-secret");
    let authorizations = Arc::new(Mutex::new(Vec::<Option<String>>::new()));
    let recorded = Arc::clone(&authorizations);
    let agent = serve(axum::Router::new().route(
        "/v1/credentials",
        get(move |headers: HeaderMap| {
            let recorded = Arc::clone(&recorded);
            async move {
                let authorization = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                recorded.lock().unwrap().push(authorization.clone());
                if authorization.as_deref() != Some(TOKEN) {
                    return (StatusCode::UNAUTHORIZED, String::new());
                }
                let expiration = humantime::format_rfc3339_seconds(
                    SystemTime::now() + Duration::from_secs(3600),
                );
                let body = serde_json::json!({
                    "AccessKeyId": "ASIAPODIDENTITY",
                    "SecretAccessKey": "pod-identity-secret",
                    "Token": "pod-identity-session",
                    "AccountId": "123456789012",
                    "Expiration": expiration.to_string(),
                });
                (StatusCode::OK, body.to_string())
            }
        }),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("eks-pod-identity-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let uri = format!("http://{agent}/v1/credentials");
    let xray = Xray::start(
        &["--endpoint", &fake.endpoint()],
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                token_file.to_str().unwrap(),
            ),
        ],
    )
    .await;

    send_paced(xray.udp().await, &[datagram("pod-identity", 100)], 1000).await;
    let documents = fake.wait_for_documents(1, Duration::from_secs(10)).await;
    assert_eq!(crate::ids(&documents), ["pod-identity"], "{}", xray.log());
    let authorizations = authorizations.lock().unwrap().clone();
    assert!(!authorizations.is_empty());
    assert!(authorizations.iter().all(|a| a.as_deref() == Some(TOKEN)));
    assert!(fake.signers().iter().all(|s| s == "ASIAPODIDENTITY"));
    assert!(fake
        .security_tokens()
        .iter()
        .all(|t| t == "pod-identity-session"));
    assert_eq!(fake.bad_signatures(), 0);

    let (_, status) = http("GET", xray.admin().await, "/debug/status").await;
    assert!(
        status.contains("container credentials (ECS or EKS Pod Identity): resolved"),
        "{status}"
    );
}

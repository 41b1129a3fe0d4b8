//! Exposure: the sampling proxy cannot be turned into a way to call X-Ray APIs outside its
//! allow-list, to reach another host, or to obtain signatures; and no credential, session
//! token or signature appears in the logs at any level (`-l dev` included), in
//! `/debug/status`, `/debug/config`, or in any answer the daemon gives.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::faults::{unique_ids, Scrape, Xray};
use crate::{args_for, datagram, fake_xray, send_paced, FakeXray, Reply, Running};

/// A listener standing for "any other host": counts the connections it gets.
async fn decoy() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, hits)
}

/// Sends `request` on a new connection and reads until the daemon closes it (every request
/// here says `Connection: close`): (status, whole response text).
async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut response))
        .await
        .expect("the daemon answers and closes within 15 s");
    // A reset after a refusal is an answer too; what was read so far counts.
    let _ = read;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn request(method: &str, target: &str, headers: &[&str], body: &str) -> String {
    let mut text = format!("{method} {target} HTTP/1.1\r\n");
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"))
    {
        text.push_str("Host: 127.0.0.1:2000\r\n");
    }
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    text.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    text
}

/// Nothing in a response the proxy gives back lets the client sign or replay anything.
fn assert_no_signing_material(response: &str) {
    let lower = response.to_ascii_lowercase();
    for needle in [
        "signature=",
        "authorization",
        "x-amz-security-token",
        "aws4-hmac-sha256",
        fake_xray::SECRET_KEY,
    ] {
        assert!(
            !lower.contains(&needle.to_ascii_lowercase()),
            "{needle} in:\n{response}"
        );
    }
}

#[tokio::test]
async fn absolute_uris_connect_and_host_games_never_reach_another_host() {
    let fake = FakeXray::start().await;
    let daemon = Running::start(args_for(&fake)).await;
    let (other, hits) = decoy().await;
    let fake_host = fake.addr.to_string();
    let body = "{}";

    // Allowed paths, however the target and Host are dressed, go to the configured endpoint
    // only, with the Host rewritten to it.
    let dressed = [
        request(
            "POST",
            &format!("http://{other}/GetSamplingRules"),
            &[],
            body,
        ),
        request("POST", "http://169.254.169.254/GetSamplingRules", &[], body),
        request(
            "POST",
            "/GetSamplingRules",
            &[&format!("Host: {other}")],
            body,
        ),
        request(
            "POST",
            "/GetSamplingRules",
            &["Host: 169.254.169.254"],
            body,
        ),
        request(
            "POST",
            "/GetSamplingRules",
            &[
                &format!("X-Forwarded-Host: {other}"),
                "X-Forwarded-Proto: http",
                &format!("Forwarded: host={other}"),
            ],
            body,
        ),
        request(
            "POST",
            &format!("http://user:pw@{other}/SamplingTargets?x=1"),
            &[&format!("Host: {other}")],
            body,
        ),
    ];
    for (i, text) in dressed.iter().enumerate() {
        let (status, response) = raw(daemon.tcp, text).await;
        assert_eq!(status, 200, "request {i}: {response}");
        assert_no_signing_material(&response);
    }
    let proxied = fake.proxied();
    assert!(!proxied.is_empty(), "allowed requests reach X-Ray");
    for request in &proxied {
        assert_eq!(request.host.as_deref(), Some(fake_host.as_str()));
        assert!(
            request.path == "/GetSamplingRules" || request.path == "/SamplingTargets",
            "{}",
            request.path
        );
    }

    // Anything else is refused before any connection is made.
    let refused = [
        request("POST", "http://169.254.169.254/latest/api/token", &[], ""),
        request(
            "GET",
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            &[],
            "",
        ),
        request("GET", &format!("http://{other}/"), &[], ""),
        request(
            "CONNECT",
            &other.to_string(),
            &[&format!("Host: {other}")],
            "",
        ),
        request(
            "CONNECT",
            "sts.amazonaws.com:443",
            &["Host: sts.amazonaws.com:443"],
            "",
        ),
        request("OPTIONS", "*", &[], ""),
        request("POST", &format!("//{other}/GetSamplingRules"), &[], body),
    ];
    for (i, text) in refused.iter().enumerate() {
        let (status, response) = raw(daemon.tcp, text).await;
        assert!(
            (400..500).contains(&status),
            "request {i} must be refused: {status}\n{response}"
        );
        assert_no_signing_material(&response);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "no connection to another host"
    );
    assert_eq!(
        fake.proxied().len(),
        proxied.len(),
        "refused requests never reach X-Ray"
    );
    assert_eq!(fake.bad_signatures(), 0);
    daemon.shutdown().await;
}

#[tokio::test]
async fn only_the_allow_listed_x_ray_apis_are_signed_and_only_for_x_ray() {
    let fake = FakeXray::start().await;
    let daemon = Running::start(args_for(&fake)).await;
    for path in [
        "/TraceSegments",
        "/TelemetryRecords",
        "/CreateSamplingRule",
        "/UpdateSamplingRule",
        "/DeleteSamplingRule",
        "/PutEncryptionConfig",
        "/GetTraceSummaries",
        "/Traces",
        "/getsamplingrules",
        "/GetSamplingRules/",
        "/GetSamplingRules/../DeleteSamplingRule",
        "/./GetSamplingRules",
        "/GetSamplingRules%2F..%2FDeleteSamplingRule",
        "/%47etSamplingRules",
        "/GetSamplingRules;DeleteSamplingRule",
        "/GetSamplingRules%00",
    ] {
        let (status, response) = raw(daemon.tcp, &request("POST", path, &[], "{}")).await;
        assert!((400..500).contains(&status), "{path}: {status}\n{response}");
        assert_no_signing_material(&response);
    }
    assert!(fake.proxied().is_empty() && fake.documents().is_empty());
    assert_eq!(
        fake.requests(),
        0,
        "nothing outside the allow-list was sent anywhere"
    );

    // A second request smuggled behind an allowed one (chunked body and a Content-Length)
    // is parsed as its own request and refused like any other.
    let smuggled = "POST /GetSamplingRules HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n\
                    Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
                    POST /DeleteSamplingRule HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\
                    Connection: close\r\n\r\n{}";
    let (_, response) = raw(daemon.tcp, smuggled).await;
    assert_no_signing_material(&response);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        fake.proxied().iter().all(|p| p.path == "/GetSamplingRules"),
        "{:?}",
        fake.proxied()
    );

    // What is forwarded is signed for X-Ray in the configured region, whatever the client
    // claims: its own Authorization, date, token and target headers are not used.
    let (status, response) = raw(
        daemon.tcp,
        &request(
            "POST",
            "/GetSamplingRules",
            &[
                "Authorization: AWS4-HMAC-SHA256 Credential=AKIDEVIL/20260101/eu-west-1/sts/aws4_request, SignedHeaders=host, Signature=00",
                "X-Amz-Date: 20200101T000000Z",
                "X-Amz-Security-Token: client-token",
                "X-Amz-Target: AWSSecurityTokenServiceV20110615.GetCallerIdentity",
            ],
            "{}",
        ),
    )
    .await;
    assert_eq!(status, 200, "{response}");
    assert_no_signing_material(&response);
    let authorizations = fake.authorizations();
    assert!(!authorizations.is_empty());
    for authorization in &authorizations {
        assert!(
            authorization.contains(&format!("Credential={}/", fake_xray::ACCESS_KEY))
                && authorization.contains(&format!("/{}/xray/aws4_request", fake_xray::REGION)),
            "{authorization}"
        );
        assert!(!authorization.contains("AKIDEVIL"));
    }
    assert!(fake.security_tokens().iter().all(|t| t != "client-token"));
    assert_eq!(fake.bad_signatures(), 0, "every forwarded request verifies");
    daemon.shutdown().await;
}

/// Everything a canary could leak into.
struct Canaries {
    secret: &'static str,
    token: &'static str,
    proxy_password: &'static str,
}

const CANARIES: Canaries = Canaries {
    secret: fake_xray::SECRET_KEY,
    token: "SESSIONTOKEN-canary-IQoJb3JpZ2luX2VjEJr-never-logged",
    proxy_password: "proxy-password-canary-9c1e",
};

/// Every `Signature=<hex>` value in `text`.
fn signatures_in(text: &str) -> Vec<String> {
    text.match_indices("Signature=")
        .map(|(at, _)| {
            text[at + "Signature=".len()..]
                .chars()
                .take_while(char::is_ascii_hexdigit)
                .collect::<String>()
        })
        .filter(|hex| hex.len() >= 16)
        .collect()
}

fn assert_nothing_leaks(what: &str, text: &str, seen_signatures: &[String]) {
    for (name, canary) in [
        ("secret access key", CANARIES.secret),
        ("session token", CANARIES.token),
        ("proxy password", CANARIES.proxy_password),
    ] {
        if let Some(at) = text.find(canary) {
            let line_start = text[..at].rfind('\n').map_or(0, |n| n + 1);
            let line_end = text[at..].find('\n').map_or(text.len(), |n| at + n);
            panic!(
                "the {name} appears in {what}:\n{}",
                &text[line_start..line_end.min(line_start + 2_000)]
            );
        }
    }
    let found = signatures_in(text);
    assert!(
        found.is_empty(),
        "{} signature(s) in {what}, e.g. Signature={}",
        found.len(),
        found[0]
    );
    for signature in seen_signatures {
        assert!(
            !text.contains(signature.as_str()),
            "a signature X-Ray received is in {what}"
        );
    }
}

/// The real binary at `-l dev` (everything, the AWS SDK's and aws-sigv4's trace events
/// included) with static credentials, a session token and a proxy password, through
/// uploads, failures, retries, timeouts, resets, the sampling proxy (forwarded, refused,
/// failing upstream, unreachable upstream), reloads by SIGHUP and HTTP, the diagnostics
/// endpoints and shutdown: no secret, token, password or signature in any output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_token_or_signature_appears_anywhere_at_any_log_level() {
    let fake = FakeXray::start().await;
    fake.script([
        Reply::Fail(500, "InternalFailure"),
        Reply::Fail(400, "ThrottlingException"),
        Reply::Reset,
        Reply::Stall(Duration::from_millis(2_500)),
        Reply::Unprocessed(vec!["leak3".into()], "ThrottledException"),
    ]);
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("cfg.yaml");
    let write_config = |level: &str, concurrency: u32| {
        std::fs::write(
            &config,
            format!("Version: 2\nConcurrency: {concurrency}\nLogging:\n  LogLevel: {level}\n"),
        )
        .unwrap()
    };
    write_config("dev", 4);
    let proxy = format!("http://proxyuser:{}@127.0.0.1:9", CANARIES.proxy_password);
    let mut xray = Xray::start(
        &fake,
        "dev",
        &["-c", config.to_str().unwrap(), "-p", &proxy],
        &[
            ("AWS_SESSION_TOKEN", CANARIES.token),
            ("NO_PROXY", "127.0.0.1,localhost"),
        ],
    );
    // `-l dev` on the command line outranks the file; reloads change what the file sets.
    let mut answers = String::new();

    // Uploads: failures, throttling, a reset, a timeout, an unprocessed retry, then success.
    let datagrams: Vec<Vec<u8>> = (0..120)
        .map(|i| datagram(&format!("leak{i}"), 200))
        .collect();
    send_paced(xray.udp, &datagrams, 2_000).await;
    let documents = fake.wait_for_documents(120, Duration::from_secs(30)).await;
    assert_eq!(unique_ids(&documents).len(), 120, "{}", xray.log());
    assert!(fake.security_tokens().iter().all(|t| t == CANARIES.token));
    assert!(
        !fake.security_tokens().is_empty(),
        "the session token is used"
    );

    // The sampling proxy: forwarded, refused, failing upstream, unreachable upstream. A query
    // string is beyond the kept-key signer's plain shape, so aws-sigv4 signs that call.
    for text in [
        request("POST", "/GetSamplingRules", &[], "{}"),
        request("POST", "/GetSamplingRules?NextToken=leak", &[], "{}"),
        request(
            "POST",
            "/SamplingTargets",
            &[],
            r#"{"SamplingStatisticsDocuments":[]}"#,
        ),
        request("POST", "/DeleteSamplingRule", &[], "{}"),
    ] {
        answers.push_str(&raw(xray.tcp, &text).await.1);
    }
    fake.script([Reply::Fail(503, "ServiceUnavailableException")]);
    answers.push_str(
        &raw(xray.tcp, &request("POST", "/GetSamplingRules", &[], "{}"))
            .await
            .1,
    );
    fake.go_offline();
    let (status, unreachable) =
        raw(xray.tcp, &request("POST", "/GetSamplingRules", &[], "{}")).await;
    assert_eq!(status, 502, "{unreachable}");
    answers.push_str(&unreachable);
    fake.come_back().await;

    // Reloads: SIGHUP and HTTP, changing concurrency and the file's log level.
    write_config("debug", 2);
    xray.signal("HUP");
    xray.wait_for_log("Reloaded configuration (SIGHUP)", Duration::from_secs(10));
    write_config("dev", 3);
    let (status, reload) = crate::http("POST", xray.admin, "/-/reload").await;
    assert_eq!(status, 200, "{reload}");
    answers.push_str(&reload);
    for path in ["/debug/status", "/debug/config", "/metrics"] {
        let (status, body) = crate::http("GET", xray.admin, path).await;
        assert_eq!(status, 200, "{path}");
        answers.push_str(&body);
    }
    let (_, config_dump) = crate::http("GET", xray.admin, "/debug/config").await;
    assert!(config_dump.contains("ProxyAddress"), "{config_dump}");

    // More uploads after the reloads, then a clean exit.
    send_paced(xray.udp, &[datagram("leak-after", 100)], 1_000).await;
    let documents = fake.wait_for_documents(121, Duration::from_secs(10)).await;
    assert_eq!(unique_ids(&documents).len(), 121);
    // The counters agree with X-Ray (its answer reaches the daemon just after it records).
    let mut scrape = Scrape::of(xray.admin).await;
    for _ in 0..50 {
        if scrape.value("xray_segments_sent_total") == 121 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        scrape = Scrape::of(xray.admin).await;
    }
    assert_eq!(scrape.value("xray_segments_sent_total"), 121);
    assert_eq!(
        scrape.identity_gap(),
        0,
        "received = sent + rejected + dropped + buffered"
    );
    xray.signal("TERM");
    let (code, _) = tokio::task::block_in_place(|| xray.wait_exit(Duration::from_secs(15)));
    assert_eq!(code, 0);

    let output = xray.all_output();
    // The events that could leak are in the output: aws-sigv4's canonical request (which
    // holds x-amz-security-token: the telemetry call, and the proxied call with a query) and
    // the SDK's request dump (which holds Authorization). The kept-key signer that signs the
    // uploads and plain proxied calls logs nothing.
    for event in ["[Trace] canonical_request=", "[Trace] transmitting request"] {
        assert!(
            output.contains(event),
            "no {event:?} at -l dev: the check below proves less than it claims"
        );
    }
    let seen: Vec<String> = fake
        .authorizations()
        .iter()
        .flat_map(|a| signatures_in(a))
        .collect();
    assert!(!seen.is_empty());
    assert_nothing_leaks("the log, stdout or stderr", &output, &seen);
    assert_nothing_leaks("the admin and proxy answers", &answers, &seen);
}

//! The TCP port: the SigV4 sampling proxy (allow-list, limits, never unsigned) and segment
//! ingest over TCP (framing, counters, backpressure).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{args_for, datagram, fake_xray, with, FakeXray, Reply, Running};

/// Sends raw bytes on a new connection and reads the first response: (status, body).
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_response(&mut stream).await
}

async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut received = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
            .await
            .expect("a response within 20 s")
            .unwrap();
        received.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            });
            if read == 0 || length.is_some_and(|n| body.len() >= n) {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return (status, body.to_owned());
            }
        }
        if read == 0 {
            return (0, text);
        }
    }
}

pub fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn start(fake: &FakeXray, extra: &[&str]) -> (Running, SocketAddr) {
    let daemon = Running::start(with(args_for(fake), extra)).await;
    let tcp = daemon.tcp;
    (daemon, tcp)
}

#[tokio::test]
async fn sampling_calls_are_forwarded_signed_and_answered_on_one_connection() {
    let fake = FakeXray::start().await;
    let (daemon, tcp) = start(&fake, &[]).await;
    let mut stream = TcpStream::connect(tcp).await.unwrap();
    for (path, body) in [
        ("/GetSamplingRules", "{}"),
        ("/SamplingTargets", r#"{"SamplingStatisticsDocuments":[]}"#),
    ] {
        stream.write_all(&post(path, body)).await.unwrap();
        let (status, answer) = read_response(&mut stream).await;
        assert_eq!(status, 200, "{answer}");
        let echo: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(
            (echo["Path"].as_str(), echo["Body"].as_str()),
            (Some(path), Some(body))
        );
    }
    assert_eq!(fake.bad_signatures(), 0, "every forwarded request verifies");
    let proxied = fake.proxied();
    assert_eq!(proxied.len(), 2);
    assert_eq!(proxied[0].forwarded_for.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        daemon.series(r#"xray_proxy_requests_total{code="200",path="/GetSamplingRules"}"#),
        1
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn other_paths_are_refused_unless_allowed_and_never_reach_x_ray() {
    let fake = FakeXray::start().await;
    let (daemon, tcp) = start(
        &fake,
        &["--proxy-extra-paths", "/GetSamplingStatisticSummaries"],
    )
    .await;
    for path in [
        "/TraceSegments",
        "/GetGroups",
        "/GetSamplingRules/../TraceSegments",
        "/",
    ] {
        let (status, body) = exchange(tcp, &post(path, "{}")).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("is not forwarded"), "{body}");
    }
    assert!(fake.proxied().is_empty() && fake.documents().is_empty());
    assert_eq!(
        daemon.series(r#"xray_proxy_requests_total{code="403",path="other"}"#),
        4
    );
    let (status, _) = exchange(tcp, &post("/GetSamplingStatisticSummaries", "{}")).await;
    assert_eq!(status, 200, "an extra path is forwarded");
    daemon.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_get_413_and_upstream_failures_502_and_504() {
    let fake = FakeXray::start().await;
    let (daemon, tcp) = start(&fake, &["--proxy-upstream-timeout", "1s"]).await;
    let big = "x".repeat(xray_daemon::proxy::MAX_BODY_BYTES + 1);
    assert_eq!(exchange(tcp, &post("/GetSamplingRules", &big)).await.0, 413);

    fake.script([Reply::Stall(Duration::from_secs(3))]);
    let (status, body) = exchange(tcp, &post("/GetSamplingRules", "{}")).await;
    assert_eq!(status, 504, "{body}");

    fake.script([Reply::Fail(429, "ThrottlingException")]);
    assert_eq!(
        exchange(tcp, &post("/SamplingTargets", "{}")).await.0,
        429,
        "X-Ray's own errors pass through"
    );
    daemon.shutdown().await;

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let args = with(
        args_for(&fake),
        &["--endpoint", &format!("http://{closed}")],
    );
    let daemon = Running::start(args).await;
    let (status, body) = exchange(daemon.tcp, &post("/GetSamplingRules", "{}")).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("X-Ray unreachable"), "{body}");
    daemon.shutdown().await;
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let fake = FakeXray::start().await;
    let (daemon, tcp) = start(&fake, &[]).await;
    let slow_headers = async {
        let mut stream = TcpStream::connect(tcp).await.unwrap();
        stream
            .write_all(b"POST /GetSamplingRules HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut rest))
            .await
            .expect("closed by the daemon");
    };
    let slow_body = async {
        let mut stream = TcpStream::connect(tcp).await.unwrap();
        stream
            .write_all(b"POST /GetSamplingRules HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"partial\":")
            .await
            .unwrap();
        read_response(&mut stream).await.0
    };
    let ((), status) = tokio::join!(slow_headers, slow_body);
    assert_eq!(status, 408);
    assert!(fake.proxied().is_empty());
    daemon.shutdown().await;
}

#[tokio::test]
async fn ten_thousand_tcp_records_arrive_once_and_a_bad_record_costs_only_itself() {
    let fake = FakeXray::start().await;
    let (daemon, tcp) = start(&fake, &[]).await;
    let mut stream = TcpStream::connect(tcp).await.unwrap();
    let mut payload = Vec::new();
    for i in 0..10_000 {
        if i == 5_000 {
            payload.extend_from_slice(b"{\"format\":\"json\",\"version\":2}\n{\"id\":\"bad\"}\n");
        }
        payload.extend_from_slice(&datagram(&format!("t{i}"), 300));
        payload.push(b'\n');
    }
    stream.write_all(&payload).await.unwrap();
    let documents = fake
        .wait_for_documents(10_000, Duration::from_secs(20))
        .await;
    let unique: HashSet<&String> = documents.iter().collect();
    assert_eq!((documents.len(), unique.len()), (10_000, 10_000));
    assert_eq!(
        daemon.series(r#"xray_segments_received_total{transport="tcp"}"#),
        10_001
    );
    assert_eq!(
        daemon.series(r#"xray_segments_rejected_total{reason="invalid_header"}"#),
        1
    );
    daemon.assert_accounting_identity().await;
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_full_budget_slows_tcp_senders_down_instead_of_dropping() {
    let fake = FakeXray::start().await;
    fake.outage(Duration::from_secs(3), 503, "ServiceUnavailable");
    let (daemon, tcp) = start(&fake, &["-m", "3"]).await;
    let writer = tokio::spawn(async move {
        let mut stream = TcpStream::connect(tcp).await.unwrap();
        for i in 0..25_000 {
            let mut record = datagram(&format!("b{i}"), 1_000);
            record.push(b'\n');
            stream.write_all(&record).await.unwrap();
        }
        stream.shutdown().await.unwrap();
    });
    // 25 MB of records against a 3 MB budget while X-Ray is down: beyond what the kernel's
    // socket buffers absorb, so the writer must block.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !writer.is_finished(),
        "backpressure holds the sender while the budget is full"
    );
    writer.await.unwrap();
    let documents = fake
        .wait_for_documents(25_000, Duration::from_secs(60))
        .await;
    let unique: HashSet<&String> = documents.iter().collect();
    assert_eq!((documents.len(), unique.len()), (25_000, 25_000));
    assert_eq!(daemon.total("xray_segments_dropped_total"), 0);
    daemon.shutdown().await;
}

#[tokio::test]
async fn with_tcp_ingest_off_a_segment_stream_is_just_a_bad_http_request() {
    let fake = FakeXray::start().await;
    let (daemon, tcp) = start(&fake, &["--tcp-ingest=false"]).await;
    let mut record = datagram("off", 100);
    record.push(b'\n');
    let (status, _) = exchange(tcp, &record).await;
    assert_eq!(status, 400);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(fake.documents().is_empty());
    assert_eq!(
        daemon.series(r#"xray_segments_received_total{transport="tcp"}"#),
        0
    );
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_nothing_is_forwarded_unsigned() {
    let fake = FakeXray::start().await;
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xray"))
        .args([
            "-o",
            "-n",
            fake_xray::REGION,
            "--endpoint",
            &fake.endpoint(),
            "-b",
            "127.0.0.1:0",
        ])
        .args(["-t", &tcp.to_string(), "--admin-address", "127.0.0.1:0"])
        .env_clear()
        .env("HOME", dir.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut answer = None;
    for _ in 0..100 {
        if TcpStream::connect(tcp).await.is_ok() {
            answer = Some(exchange(tcp, &post("/GetSamplingRules", "{}")).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let (status, body) = answer.expect("the proxy came up");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("not forwarded unsigned") && body.contains("credentials"),
        "{body}"
    );
    assert!(
        fake.proxied().is_empty() && fake.requests() == 0,
        "nothing reached X-Ray"
    );
}

//! Working where the Go daemon works: region from EC2 instance metadata (IMDSv2, and the
//! IMDSv1 fallback) and the ECS metadata file, and uploads through an HTTP proxy unless
//! `NO_PROXY` says otherwise.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use tokio::io::AsyncWriteExt;

use crate::{datagram, fake_xray, http, send_paced, FakeXray, Running};

const TOKEN: &str = "imds-test-token";

/// A fake instance metadata service; `token_status` is what the IMDSv2 token call answers
/// (200 issues a token; 403 forces IMDSv1).
async fn fake_imds(token_status: u16) -> (SocketAddr, Arc<AtomicUsize>) {
    let v1_requests = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&v1_requests);
    let app = axum::Router::new()
        .route(
            "/latest/api/token",
            put(move |headers: HeaderMap| async move {
                assert!(headers.contains_key("x-aws-ec2-metadata-token-ttl-seconds"));
                (StatusCode::from_u16(token_status).unwrap(), TOKEN)
            }),
        )
        .route(
            "/latest/meta-data/placement/region",
            get(move |headers: HeaderMap| async move {
                match headers.get("x-aws-ec2-metadata-token") {
                    Some(token) if token == TOKEN => (StatusCode::OK, "eu-west-3"),
                    Some(_) => (StatusCode::UNAUTHORIZED, ""),
                    None if token_status == 200 => (StatusCode::UNAUTHORIZED, ""),
                    None => {
                        counter.fetch_add(1, Ordering::Relaxed);
                        (StatusCode::OK, "ap-south-2")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, v1_requests)
}

fn args_without_region(fake: &FakeXray) -> Vec<String> {
    [
        "--endpoint",
        &fake.endpoint(),
        "-b",
        "127.0.0.1:0",
        "--admin-address",
        "127.0.0.1:0",
        "-t",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn destination(daemon: &Running) -> serde_json::Value {
    let (_, body) = http("GET", daemon.admin, "/debug/status").await;
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["destination"].clone()
}

/// Starts a daemon with no region configured against a fake IMDS whose token call answers
/// `token_status`; returns its `/debug/status` destination and how many IMDSv1 reads it made.
async fn region_from_imds(token_status: u16) -> (serde_json::Value, usize) {
    let fake = FakeXray::start().await;
    let (imds, v1) = fake_imds(token_status).await;
    let endpoint = format!("http://{imds}");
    let daemon = Running::start_with_env(
        args_without_region(&fake),
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint)],
    )
    .await;
    let destination = destination(&daemon).await;
    daemon.shutdown().await;
    (destination, v1.load(Ordering::Relaxed))
}

#[tokio::test]
async fn the_region_comes_from_instance_metadata_with_an_imdsv2_token() {
    let (destination, v1_reads) = region_from_imds(200).await;
    assert_eq!(destination["region"], "eu-west-3");
    assert_eq!(destination["region_source"], "ec2 metadata");
    assert_eq!(v1_reads, 0);
}

#[tokio::test]
async fn instance_metadata_falls_back_to_imdsv1_when_tokens_are_refused() {
    let (destination, v1_reads) = region_from_imds(403).await;
    assert_eq!(destination["region"], "ap-south-2");
    assert_eq!(v1_reads, 1);
}

#[tokio::test]
async fn the_ecs_metadata_file_comes_before_instance_metadata() {
    let fake = FakeXray::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ecs.json");
    std::fs::write(
        &file,
        r#"{"TaskARN":"arn:aws:ecs:sa-east-1:123456789012:task/c/1"}"#,
    )
    .unwrap();
    let daemon = Running::start_with_env(
        args_without_region(&fake),
        &[
            ("ECS_ENABLE_CONTAINER_METADATA", "true"),
            ("ECS_CONTAINER_METADATA_FILE", file.to_str().unwrap()),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    )
    .await;
    assert_eq!(destination(&daemon).await["region"], "sa-east-1");
    daemon.shutdown().await;
}

#[tokio::test]
async fn without_any_region_source_the_start_fails_fast_with_the_go_message() {
    let fake = FakeXray::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ecs.json");
    std::fs::write(&file, r#"{"Cluster":"no task arn here"}"#).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoint = format!("http://{closed}");
    let started = std::time::Instant::now();
    let result = Running::try_start(
        args_without_region(&fake),
        &[
            ("ECS_ENABLE_CONTAINER_METADATA", "true"),
            ("ECS_CONTAINER_METADATA_FILE", file.to_str().unwrap()),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint),
        ],
    )
    .await;
    let Err(error) = result else {
        panic!("started without a region")
    };
    assert!(
        error
            .to_string()
            .starts_with("Cannot fetch region variable from config file"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

/// A loopback HTTP proxy (CONNECT and absolute-form requests) that counts what it carries.
pub async fn counting_proxy() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let carried = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&carried);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let Some(head) = crate::read_request_head(&mut client).await else {
                    return;
                };
                let target = head.split(' ').nth(1).unwrap_or_default().to_owned();
                counter.fetch_add(1, Ordering::Relaxed);
                let authority = target
                    .trim_start_matches("http://")
                    .split('/')
                    .next()
                    .unwrap()
                    .to_owned();
                let Ok(mut upstream) = tokio::net::TcpStream::connect(&authority).await else {
                    return;
                };
                if head.starts_with("CONNECT") {
                    let _ = client
                        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                        .await;
                } else {
                    // Absolute form: forward the request line and headers as they are.
                    let _ = upstream.write_all(head.as_bytes()).await;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, carried)
}

#[tokio::test]
async fn uploads_go_through_the_proxy_and_no_proxy_bypasses_it() {
    let fake = FakeXray::start().await;
    let (proxy, carried) = counting_proxy().await;
    let proxy_url = format!("http://{proxy}");
    let args = |extra: &[&str]| {
        let mut args = vec!["-o", "-n", fake_xray::REGION, "--endpoint"];
        let endpoint = fake.endpoint();
        args.push(&endpoint);
        args.extend([
            "-b",
            "127.0.0.1:0",
            "--admin-address",
            "127.0.0.1:0",
            "-t",
            "127.0.0.1:0",
            "-p",
            &proxy_url,
        ]);
        args.extend(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let daemon = Running::start(args(&[])).await;
    send_paced(daemon.udp, &[datagram("via-proxy", 100)], 1000).await;
    assert_eq!(
        fake.wait_for_documents(1, Duration::from_secs(5))
            .await
            .len(),
        1
    );
    assert!(
        carried.load(Ordering::Relaxed) >= 1,
        "the upload went through the proxy"
    );
    assert_eq!(fake.bad_signatures(), 0);
    daemon.shutdown().await;

    let before = carried.load(Ordering::Relaxed);
    let daemon = Running::start_with_env(args(&[]), &[("NO_PROXY", "127.0.0.1")]).await;
    send_paced(daemon.udp, &[datagram("direct", 100)], 1000).await;
    assert_eq!(
        fake.wait_for_documents(2, Duration::from_secs(5))
            .await
            .len(),
        2
    );
    assert_eq!(
        carried.load(Ordering::Relaxed),
        before,
        "NO_PROXY bypassed the proxy"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_bad_proxy_url_is_refused_with_a_clear_message() {
    let fake = FakeXray::start().await;
    let mut args = crate::args_for(&fake);
    args.extend(["-p".to_owned(), "http://user:hunter2@:bad port".to_owned()]);
    let Ok(xray_daemon::cli::Command::Run(flags)) = xray_daemon::cli::parse(&args) else {
        unreachable!()
    };
    let inputs = xray_daemon::reload::ConfigInputs {
        flags,
        ..Default::default()
    };
    let error = inputs.load().unwrap_err().to_string();
    assert!(error.starts_with("Bad proxy URL"), "{error}");
    assert!(
        !error.contains("hunter2"),
        "credentials never appear in errors: {error}"
    );
}

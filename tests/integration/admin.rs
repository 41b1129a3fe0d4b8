//! The admin server on a real socket: readiness through startup and shutdown, answering
//! under a UDP flood, and the `xray healthcheck` probe.

use std::time::{Duration, Instant};

use crate::{args_for, datagram, http, send_paced, FakeXray, Reply, Running};

#[tokio::test]
async fn readiness_turns_503_the_moment_shutdown_begins() {
    let fake = FakeXray::start().await;
    fake.script(std::iter::repeat_n(Reply::Stall(Duration::from_secs(2)), 8));
    let daemon = Running::start(args_for(&fake)).await;
    let (status, body) = http("GET", daemon.admin, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready"));
    let datagrams: Vec<Vec<u8>> = (0..100).map(|i| datagram(&format!("r{i}"), 100)).collect();
    send_paced(daemon.udp, &datagrams, 10_000).await;

    let admin = daemon.admin;
    let shutdown = tokio::spawn(daemon.shutdown());
    let mut saw_503 = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (status, body) = http("GET", admin, "/readyz").await;
        if status == 503 {
            assert_eq!(body, "not ready: shutting down");
            assert_eq!(
                http("GET", admin, "/healthz").await.0,
                200,
                "liveness does not depend on readiness"
            );
            saw_503 = true;
            break;
        }
    }
    assert!(
        saw_503,
        "readiness must flip while the backend still holds the flush"
    );
    assert!(shutdown.await.unwrap().drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_server_answers_during_a_udp_flood() {
    let fake = FakeXray::start().await;
    let daemon = Running::start(args_for(&fake)).await;
    let target = daemon.udp;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (0..2)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                let junk = [b'x'; 1200];
                let deadline = Instant::now() + Duration::from_secs(3);
                let mut sent = 0u64;
                while Instant::now() < deadline && !stop.load(std::sync::atomic::Ordering::Relaxed)
                {
                    let _ = socket.send_to(&junk, target);
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let (status, _) = tokio::time::timeout(
            Duration::from_secs(2),
            http("GET", daemon.admin, "/healthz"),
        )
        .await
        .expect("admin answered within 2 s under the flood");
        assert_eq!(status, 200);
        let (status, body) = http("GET", daemon.admin, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("xray_segments_rejected_total"));
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent: u64 = flooders.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(
        slowest < Duration::from_secs(1),
        "slowest admin answer {slowest:?}"
    );
    assert!(daemon.series(r#"xray_segments_rejected_total{reason="missing_header"}"#) > 0);
    assert!(sent > 10_000, "the flood was a flood: {sent} datagrams");
    daemon.assert_accounting_identity().await;
    daemon.shutdown().await;
}

#[tokio::test]
async fn xray_healthcheck_probes_readyz() {
    let fake = FakeXray::start().await;
    let daemon = Running::start(args_for(&fake)).await;
    let probe = |url: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_xray"))
            .args(["healthcheck", "--url", &url])
            .output()
            .unwrap()
    };
    let ready = tokio::task::spawn_blocking({
        let url = format!("http://{}/readyz", daemon.admin);
        move || probe(url)
    })
    .await
    .unwrap();
    assert_eq!(
        ready.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ready.stderr)
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let refused = tokio::task::spawn_blocking(move || probe(format!("http://{closed}/readyz")))
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    daemon.shutdown().await;
}

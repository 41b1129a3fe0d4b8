//! From UDP datagram to a signed `PutTraceSegments`: delivery, batching, budget, retries,
//! shutdown, and the accounting identity.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::{
    args_for, datagram, eventually, http, ids, send_paced, with, FakeXray, Reply, Running,
};

fn fixtures() -> Vec<Vec<u8>> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/sdk-datagrams");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fixtures at {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| std::fs::read(path).unwrap())
        .collect()
}

fn body_of(datagram: &[u8]) -> &[u8] {
    &datagram[datagram.iter().position(|&b| b == b'\n').unwrap() + 1..]
}

#[tokio::test]
async fn every_captured_sdk_datagram_arrives_byte_identical_and_signed() {
    let fake = FakeXray::start().await;
    let daemon = Running::start(args_for(&fake)).await;
    let datagrams = fixtures();
    send_paced(daemon.udp, &datagrams, 1000).await;

    let documents = fake
        .wait_for_documents(datagrams.len(), Duration::from_secs(5))
        .await;
    let mut received: Vec<&[u8]> = documents.iter().map(|d| d.as_bytes()).collect();
    let mut expected: Vec<&[u8]> = datagrams.iter().map(|d| body_of(d)).collect();
    received.sort();
    expected.sort();
    assert_eq!(received, expected);
    assert_eq!(
        fake.bad_signatures(),
        0,
        "every request must carry a valid SigV4 signature"
    );
    let user_agent = &fake.user_agents()[0];
    assert!(
        user_agent.contains(&format!(
            "xray-agent/xray-daemon/{} exec-env/",
            xray_daemon::VERSION
        )),
        "{user_agent}"
    );
    let timestamp = &fake.timestamps()[0];
    let (_, decimals) = timestamp.split_once('.').expect("seconds.nanoseconds");
    assert_eq!(decimals.len(), 9, "{timestamp}");
    daemon.shutdown().await;
}

#[tokio::test]
async fn ten_thousand_datagrams_arrive_once_each() {
    let fake = FakeXray::start().await;
    let daemon = Running::start(args_for(&fake)).await;
    let datagrams: Vec<Vec<u8>> = (0..10_000)
        .map(|i| datagram(&format!("{i:016x}"), 300))
        .collect();
    // Paced so that a loaded machine's scheduling stalls stay within the socket buffer: this
    // test is about the daemon losing nothing; rates are the benchmark's business.
    send_paced(daemon.udp, &datagrams, 5_000).await;

    let documents = fake
        .wait_for_documents(10_000, Duration::from_secs(20))
        .await;
    let ids = ids(&documents);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        daemon.total("xray_segments_received_total"),
        10_000,
        "kernel drops on loopback?"
    );
    assert_eq!(ids.len(), 10_000, "delivered");
    assert_eq!(unique.len(), 10_000, "no duplicates");
    assert!(
        fake.requests() >= 200,
        "batches of at most 50: {} requests",
        fake.requests()
    );
    // The fake records a batch before answering; the daemon counts it sent once answered.
    assert!(
        eventually(Duration::from_secs(2), || {
            daemon.total("xray_segments_sent_total") == 10_000
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(2), || daemon.budget.held_segments()
            == 0)
        .await
    );
    daemon.assert_accounting_identity().await;
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_lone_datagram_leaves_within_one_and_a_half_seconds() {
    let fake = FakeXray::start().await;
    let daemon = Running::start(args_for(&fake)).await;
    let started = Instant::now();
    send_paced(daemon.udp, &[datagram("lone", 200)], 1000).await;
    let documents = fake.wait_for_documents(1, Duration::from_secs(3)).await;
    let elapsed = started.elapsed();
    assert_eq!(ids(&documents), ["lone"]);
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
    daemon.shutdown().await;
}

#[tokio::test]
async fn invalid_datagrams_are_counted_by_reason_and_valid_ones_still_flow() {
    let fake = FakeXray::start().await;
    let daemon = Running::start(args_for(&fake)).await;
    let junk: Vec<Vec<u8>> = vec![
        b"no newline at all".to_vec(),
        b"{\"format\":\"json\",\"version\":1}\n".to_vec(),
        b"{\"format\":\"json\",\"version\":2}\n{}".to_vec(),
        b"{\"format\":\"json\",\"version\":1}x\n{}".to_vec(),
        datagram("good", 100),
    ];
    send_paced(daemon.udp, &junk, 1000).await;
    assert_eq!(
        ids(&fake.wait_for_documents(1, Duration::from_secs(3)).await),
        ["good"]
    );
    assert_eq!(
        daemon.series(r#"xray_segments_rejected_total{reason="missing_header"}"#),
        1
    );
    assert_eq!(
        daemon.series(r#"xray_segments_rejected_total{reason="empty_body"}"#),
        1
    );
    assert_eq!(
        daemon.series(r#"xray_segments_rejected_total{reason="invalid_header"}"#),
        2
    );
    daemon.assert_accounting_identity().await;
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_flood_past_the_budget_is_dropped_counted_and_bounded() {
    let fake = FakeXray::start().await;
    // The backend stalls, so nothing leaves while the flood arrives.
    fake.script(std::iter::repeat_n(Reply::Stall(Duration::from_secs(3)), 8));
    let daemon = Running::start(with(args_for(&fake), &["-m", "3"])).await;
    let datagrams: Vec<Vec<u8>> = (0..6_000)
        .map(|i| datagram(&format!("{i:016x}"), 1000))
        .collect();
    send_paced(daemon.udp, &datagrams, 30_000).await;

    assert!(
        eventually(Duration::from_secs(2), || daemon
            .total("xray_segments_received_total")
            == 6_000)
        .await
    );
    let dropped = daemon.series(r#"xray_segments_dropped_total{reason="buffer_full"}"#);
    assert!(
        dropped > 2_000,
        "3 MB holds about 2,900 such segments; dropped {dropped}"
    );
    assert!(daemon.budget.used_bytes() <= daemon.budget.limit_bytes());
    daemon.assert_accounting_identity().await;

    // When the backend recovers, everything held is delivered, and new segments flow at once.
    let held = daemon.budget.held_segments();
    let delivered = fake
        .wait_for_documents(held, Duration::from_secs(15))
        .await
        .len();
    assert_eq!(delivered, held);
    send_paced(daemon.udp, &[datagram("after-flood", 100)], 1000).await;
    assert!(
        eventually(Duration::from_secs(3), || ids(&fake.documents())
            .contains(&"after-flood".to_string()))
        .await
    );
    daemon.assert_accounting_identity().await;
    daemon.shutdown().await;
}

/// Packets the kernel's per-CPU input queues dropped (`/proc/net/softnet_stat`, second
/// column, hexadecimal), for every device on the host.
#[cfg(target_os = "linux")]
fn loopback_backlog_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .expect("Linux has softnet_stat")
        .lines()
        .filter_map(|row| u64::from_str_radix(row.split_whitespace().nth(1)?, 16).ok())
        .sum()
}

/// A burst into the smallest receive buffer the kernel grants: what the kernel drops is
/// counted, so every datagram sent is either received (and delivered) or counted there.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn datagrams_the_kernel_drops_are_counted_and_the_rest_are_delivered() {
    const SENT: u64 = 3_000;
    let fake = FakeXray::start().await;
    let daemon = Running::start(with(args_for(&fake), &["--receive-buffer-bytes", "1"])).await;
    let buffer_bytes = daemon.series("xray_udp_receive_buffer_bytes");
    assert!(
        buffer_bytes > 0 && buffer_bytes < 64 * 1024,
        "the kernel's minimum: {buffer_bytes}"
    );
    let datagrams: Vec<Vec<u8>> = (0..SENT)
        .map(|i| datagram(&format!("{i:016x}"), 1000))
        .collect();
    // 100 per burst: far more than the buffer holds, and far fewer than the 1,000 the
    // loopback device queues before it drops datagrams itself (`netdev_max_backlog`).
    let backlog_drops_before = loopback_backlog_drops();
    send_paced(daemon.udp, &datagrams, 10_000).await;
    let counts = || {
        (
            daemon.total("xray_segments_received_total"),
            daemon.total("xray_udp_kernel_drops_total"),
        )
    };
    // The count is read at most once a second while datagrams arrive.
    eventually(Duration::from_secs(5), || {
        let (received, dropped) = counts();
        received + dropped == SENT
    })
    .await;
    let (received, dropped) = counts();
    // Concurrent floods from other tests may overflow the loopback device's own queue: those
    // datagrams never reach a socket, and are no one's to count but the kernel's.
    let lost_before_the_socket = loopback_backlog_drops() - backlog_drops_before;
    assert!(
        received + dropped <= SENT && received + dropped + lost_before_the_socket >= SENT,
        "received {received}, dropped {dropped}, lost before the socket {lost_before_the_socket}"
    );
    assert!(dropped > 0, "a few datagrams fill the smallest buffer");
    let (_, status) = http("GET", daemon.admin, "/debug/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["segments"]["udp_kernel_drops"], dropped);
    let delivered = fake
        .wait_for_documents(received as usize, Duration::from_secs(5))
        .await;
    assert_eq!(delivered.len() as u64, received);
    daemon.assert_accounting_identity().await;
    daemon.shutdown().await;
}

#[tokio::test]
async fn throttling_and_outages_are_retried_until_everything_arrives_once() {
    let fake = FakeXray::start().await;
    fake.script([
        Reply::Fail(400, "ThrottlingException"),
        Reply::Fail(503, "ServiceUnavailable"),
        Reply::Fail(500, "InternalFailure"),
        Reply::Fail(429, "TooManyRequestsException"),
    ]);
    let daemon = Running::start(args_for(&fake)).await;
    let datagrams: Vec<Vec<u8>> = (0..200).map(|i| datagram(&format!("r{i}"), 200)).collect();
    send_paced(daemon.udp, &datagrams, 5_000).await;

    let documents = fake.wait_for_documents(200, Duration::from_secs(15)).await;
    let unique: HashSet<String> = ids(&documents).into_iter().collect();
    assert_eq!((documents.len(), unique.len()), (200, 200));
    assert_eq!(
        daemon.series(r#"xray_upload_requests_total{outcome="throttled"}"#),
        2
    );
    assert_eq!(
        daemon.series(r#"xray_upload_requests_total{outcome="http_5xx"}"#),
        2
    );
    assert_eq!(daemon.total("xray_segments_dropped_total"), 0);
    daemon.assert_accounting_identity().await;
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_non_retryable_rejection_drops_the_batch_and_counts_it() {
    let fake = FakeXray::start().await;
    fake.script([Reply::Fail(403, "AccessDeniedException")]);
    let daemon = Running::start(args_for(&fake)).await;
    send_paced(daemon.udp, &[datagram("denied", 100)], 1000).await;
    assert!(
        eventually(Duration::from_secs(3), || {
            daemon.series(r#"xray_segments_dropped_total{reason="retries_exhausted"}"#) == 1
        })
        .await
    );
    assert_eq!(
        daemon.series(r#"xray_upload_requests_total{outcome="http_4xx"}"#),
        1
    );
    daemon.assert_accounting_identity().await;
    daemon.shutdown().await;
}

#[tokio::test]
async fn unprocessed_segments_are_resent_when_retryable_and_rejected_otherwise() {
    let fake = FakeXray::start().await;
    fake.script([
        Reply::Unprocessed(vec!["u1".into()], "ThrottledException"),
        Reply::Accept, // the re-sent u1, within the first retry's 100 ms backoff
        Reply::Unprocessed(vec!["u2".into()], "InvalidSegment"),
    ]);
    let daemon = Running::start(args_for(&fake)).await;
    send_paced(
        daemon.udp,
        &[datagram("u1", 100), datagram("u3", 100)],
        1000,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    send_paced(daemon.udp, &[datagram("u2", 100)], 1000).await;

    assert!(
        eventually(Duration::from_secs(5), || daemon.budget.held_segments()
            == 0
            && daemon.total("xray_segments_received_total") == 3)
        .await
    );
    let mut delivered = ids(&fake.documents());
    delivered.sort();
    assert_eq!(
        delivered,
        ["u1", "u3"],
        "u1 re-sent once, u2 refused for good"
    );
    assert_eq!(
        daemon.series(r#"xray_segments_rejected_total{reason="backend_rejected"}"#),
        1
    );
    assert_eq!(
        daemon.series(r#"xray_segments_unprocessed_total{retryable="true"}"#),
        1
    );
    assert_eq!(daemon.total("xray_segments_sent_total"), 2);
    daemon.assert_accounting_identity().await;
    daemon.shutdown().await;
}

#[tokio::test]
async fn shutdown_flushes_everything_buffered() {
    let fake = FakeXray::start().await;
    fake.script(std::iter::repeat_n(
        Reply::Stall(Duration::from_millis(500)),
        4,
    ));
    let daemon = Running::start(with(args_for(&fake), &["--concurrency", "2"])).await;
    let datagrams: Vec<Vec<u8>> = (0..1_000)
        .map(|i| datagram(&format!("s{i}"), 500))
        .collect();
    send_paced(daemon.udp, &datagrams, 50_000).await;
    assert!(
        eventually(Duration::from_secs(2), || daemon
            .total("xray_segments_received_total")
            == 1_000)
        .await
    );
    assert!(
        daemon.budget.held_segments() > 0,
        "the stalled backend keeps segments buffered"
    );

    let summary = daemon.shutdown().await;
    assert!(summary.drained);
    let documents = fake.documents();
    let unique: HashSet<String> = ids(&documents).into_iter().collect();
    assert_eq!((documents.len(), unique.len()), (1_000, 1_000));
}

#[tokio::test]
async fn what_the_shutdown_deadline_cuts_off_is_counted_as_dropped() {
    let fake = FakeXray::start().await;
    fake.script(std::iter::repeat_n(
        Reply::Stall(Duration::from_secs(30)),
        50,
    ));
    let daemon = Running::start(with(args_for(&fake), &["--shutdown-timeout", "500ms"])).await;
    let datagrams: Vec<Vec<u8>> = (0..300).map(|i| datagram(&format!("d{i}"), 200)).collect();
    send_paced(daemon.udp, &datagrams, 30_000).await;
    assert!(
        eventually(Duration::from_secs(2), || daemon
            .total("xray_segments_received_total")
            == 300)
        .await
    );

    let metrics = daemon.metrics.clone();
    let budget = daemon.budget.clone();
    let started = Instant::now();
    let summary = daemon.shutdown().await;
    assert!(!summary.drained);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the deadline"
    );
    assert_eq!(budget.held_segments(), 0);
    assert_eq!(metrics.total("xray_segments_dropped_total"), 300);
    assert_eq!(metrics.total("xray_segments_sent_total"), 0);
}

/// An answer over the 1 MiB limit is not read to its end: the attempt fails as `other` and
/// the batch is sent again (and then delivered once).
#[tokio::test]
async fn an_oversized_answer_fails_the_attempt_and_the_batch_is_resent() {
    let fake = FakeXray::start().await;
    fake.script([Reply::Oversized(2 << 20), Reply::Accept]);
    let daemon = Running::start(args_for(&fake)).await;
    send_paced(daemon.udp, &[datagram("big-answer", 100)], 1000).await;
    let documents = fake.wait_for_documents(1, Duration::from_secs(5)).await;
    assert_eq!(ids(&documents), ["big-answer"]);
    assert!(
        eventually(Duration::from_secs(2), || daemon
            .series(r#"xray_upload_requests_total{outcome="ok"}"#)
            == 1)
        .await
    );
    assert_eq!(
        daemon.series(r#"xray_upload_requests_total{outcome="other"}"#),
        1
    );
    assert_eq!(daemon.total("xray_segments_sent_total"), 1);
    daemon.shutdown().await;
}

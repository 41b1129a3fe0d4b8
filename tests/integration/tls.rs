//! `NoVerifySSL` against an HTTPS fake X-Ray whose certificate is self-signed: with it (in
//! cfg.yaml, where the Go daemon reads it) uploads and the sampling proxy's upstream calls get
//! through, directly and through a `CONNECT` proxy; without it nothing is delivered and the
//! failures are counted; a reload that turns it on delivers what was held; STS never skips
//! verification.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::aws::counting_proxy;
use crate::proxy::{exchange, post};
use crate::{args_for, datagram, eventually, http, send_paced, with, FakeXray, Running};

/// A cfg.yaml (Version 2) with `NoVerifySSL` as given, in its own directory.
fn config_file(no_verify_ssl: bool) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cfg.yaml");
    std::fs::write(&file, format!("Version: 2\nNoVerifySSL: {no_verify_ssl}\n")).unwrap();
    (dir, file)
}

fn outcome(daemon: &Running, outcome: &str) -> u64 {
    daemon.series(&format!(
        "xray_upload_requests_total{{outcome=\"{outcome}\"}}"
    ))
}

#[tokio::test]
async fn with_no_verify_ssl_a_self_signed_endpoint_gets_uploads_and_sampling_calls() {
    let fake = FakeXray::start_tls().await;
    let (_dir, file) = config_file(true);
    let daemon = Running::start(with(args_for(&fake), &["-c", file.to_str().unwrap()])).await;

    send_paced(daemon.udp, &[datagram("tls-ok", 200)], 1000).await;
    let documents = fake.wait_for_documents(1, Duration::from_secs(5)).await;
    assert_eq!(crate::ids(&documents), ["tls-ok"]);
    assert_eq!(fake.bad_signatures(), 0);
    assert_eq!(fake.tls_failures(), 0);
    assert!(eventually(Duration::from_secs(2), || outcome(&daemon, "ok") == 1).await);

    let (status, body) = exchange(daemon.tcp, &post("/GetSamplingRules", "{}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(fake.proxied().len(), 1);
    assert_eq!(fake.bad_signatures(), 0, "the proxied call is signed too");

    let (_, config) = http("GET", daemon.admin, "/debug/config").await;
    assert!(config.contains("NoVerifySSL: true"), "{config}");
    daemon.shutdown().await;
    // The final telemetry record at shutdown goes over the same transport.
    assert_eq!(
        fake.telemetry().len(),
        1,
        "PutTelemetryRecords reached the fake"
    );
    assert_eq!(fake.bad_signatures(), 0);
}

#[tokio::test]
async fn without_no_verify_ssl_nothing_reaches_a_self_signed_endpoint_and_it_is_counted() {
    let fake = FakeXray::start_tls().await;
    let (_dir, file) = config_file(false);
    let daemon = Running::start(with(
        args_for(&fake),
        &["-c", file.to_str().unwrap(), "--shutdown-timeout", "1s"],
    ))
    .await;

    send_paced(daemon.udp, &[datagram("tls-refused", 200)], 1000).await;
    assert!(
        eventually(Duration::from_secs(5), || outcome(&daemon, "connection")
            >= 1)
        .await,
        "{}",
        daemon.metrics.encode_text()
    );
    assert!(
        fake.tls_failures() >= 1,
        "the daemon refused the certificate"
    );
    assert_eq!(
        fake.requests(),
        0,
        "no request was sent over an unverified connection"
    );
    assert_eq!(outcome(&daemon, "ok"), 0);
    assert_eq!(daemon.total("xray_segments_sent_total"), 0);

    let (status, body) = exchange(daemon.tcp, &post("/GetSamplingRules", "{}")).await;
    assert_eq!(status, 502, "{body}");
    assert!(fake.proxied().is_empty());
    daemon.shutdown().await;
    assert!(fake.documents().is_empty());
}

#[tokio::test]
async fn the_no_verify_ssl_transport_honours_the_proxy_and_no_proxy() {
    let fake = FakeXray::start_tls().await;
    let (proxy, carried) = counting_proxy().await;
    let (_dir, file) = config_file(true);
    let proxy_url = format!("http://{proxy}");
    let args = with(
        args_for(&fake),
        &["-c", file.to_str().unwrap(), "-p", &proxy_url],
    );

    let daemon = Running::start(args.clone()).await;
    send_paced(daemon.udp, &[datagram("tunnelled", 200)], 1000).await;
    assert_eq!(
        fake.wait_for_documents(1, Duration::from_secs(5))
            .await
            .len(),
        1
    );
    let (status, body) = exchange(daemon.tcp, &post("/GetSamplingRules", "{}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        carried.load(Ordering::Relaxed) >= 2,
        "the upload and the sampling call went through the proxy"
    );
    daemon.shutdown().await;

    let before = carried.load(Ordering::Relaxed);
    let daemon = Running::start_with_env(args, &[("NO_PROXY", "127.0.0.1")]).await;
    send_paced(daemon.udp, &[datagram("direct", 200)], 1000).await;
    assert_eq!(
        fake.wait_for_documents(2, Duration::from_secs(5))
            .await
            .len(),
        2
    );
    let (status, _) = exchange(daemon.tcp, &post("/GetSamplingRules", "{}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        carried.load(Ordering::Relaxed),
        before,
        "NO_PROXY bypassed the proxy"
    );
    assert_eq!(fake.bad_signatures(), 0);
    daemon.shutdown().await;
}

#[tokio::test]
async fn with_no_verify_ssl_a_plain_http_endpoint_goes_through_the_proxy_in_absolute_form() {
    let fake = FakeXray::start().await;
    let (proxy, carried) = counting_proxy().await;
    let (_dir, file) = config_file(true);
    let proxy_url = format!("http://{proxy}");
    let daemon = Running::start(with(
        args_for(&fake),
        &["-c", file.to_str().unwrap(), "-p", &proxy_url],
    ))
    .await;
    send_paced(daemon.udp, &[datagram("forwarded", 200)], 1000).await;
    let documents = fake.wait_for_documents(1, Duration::from_secs(5)).await;
    assert_eq!(crate::ids(&documents), ["forwarded"]);
    assert!(carried.load(Ordering::Relaxed) >= 1);
    assert_eq!(fake.bad_signatures(), 0);
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_reload_that_sets_no_verify_ssl_delivers_the_held_segments() {
    let fake = FakeXray::start_tls().await;
    let (_dir, file) = config_file(false);
    let daemon = Running::start(with(args_for(&fake), &["-c", file.to_str().unwrap()])).await;
    send_paced(daemon.udp, &[datagram("held", 200)], 1000).await;
    assert!(
        eventually(Duration::from_secs(5), || outcome(&daemon, "connection")
            >= 1)
        .await
    );
    assert!(fake.documents().is_empty());

    std::fs::write(&file, "Version: 2\nNoVerifySSL: true\n").unwrap();
    let (status, body) = http("POST", daemon.admin, "/-/reload").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("changed NoVerifySSL"), "{body}");
    let documents = fake.wait_for_documents(1, Duration::from_secs(10)).await;
    assert_eq!(
        crate::ids(&documents),
        ["held"],
        "the retried batch went out"
    );
    let (status, _) = exchange(daemon.tcp, &post("/GetSamplingRules", "{}")).await;
    assert_eq!(status, 200, "the sampling proxy's upstream was rebuilt too");
    daemon.shutdown().await;
    assert_eq!(fake.documents().len(), 1, "delivered once");
    assert_eq!(fake.bad_signatures(), 0);
}

#[tokio::test]
async fn no_verify_ssl_does_not_apply_to_sts() {
    // STS behind the same kind of self-signed certificate: with NoVerifySSL set, X-Ray calls
    // would accept it, but the role's AssumeRole call must still refuse it.
    let xray = FakeXray::start_tls().await;
    let sts = FakeXray::start_tls().await;
    let (_dir, file) = config_file(true);
    let daemon = crate::process::Xray::start(
        &[
            "-c",
            file.to_str().unwrap(),
            "--endpoint",
            &xray.endpoint(),
            "-r",
            "arn:aws:iam::123456789012:role/xray-writer",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", crate::fake_xray::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", crate::fake_xray::SECRET_KEY),
            ("AWS_ENDPOINT_URL_STS", &sts.endpoint()),
        ],
    )
    .await;
    send_paced(daemon.udp().await, &[datagram("no-sts", 100)], 1000).await;
    assert!(
        eventually(Duration::from_secs(10), || sts.tls_failures() >= 1).await,
        "{}",
        daemon.log()
    );
    daemon
        .wait_for_log("Sending segment batch failed", Duration::from_secs(10))
        .await;
    assert_eq!(sts.requests(), 0, "no request reached the unverified STS");
    assert!(xray.documents().is_empty());
    assert_eq!(xray.requests(), 0, "nothing is sent to X-Ray unsigned");
}

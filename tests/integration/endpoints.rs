//! FIPS and dual-stack endpoints through the SDK's standard settings, seen from outside: the
//! daemon runs behind a loopback proxy that records which host each connection is for (and
//! refuses it, so nothing leaves the machine). Uploads and the sampling proxy's upstream both
//! go to the FIPS / dual-stack X-Ray host, whether the setting comes from the environment or
//! the shared config profile; `Endpoint` overrides them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::process::Xray;
use crate::proxy::{exchange, post};
use crate::{datagram, eventually, fake_xray, send_paced, FakeXray};

/// A loopback HTTP proxy that records the target of every request (the `CONNECT` authority,
/// or the absolute URL) and answers 403.
async fn recording_proxy() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let targets = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&targets);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let recorded = Arc::clone(&recorded);
            tokio::spawn(async move {
                let Some(head) = crate::read_request_head(&mut client).await else {
                    return;
                };
                if let Some(target) = head.split(' ').nth(1) {
                    recorded.lock().unwrap().push(target.to_owned());
                }
                let _ = client
                    .write_all(
                        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    (addr, targets)
}

/// Where a daemon with `env` (static test credentials added) sends a sampling call and then an
/// upload, as the proxy saw them; and its log.
async fn hosts_reached(env: &[(&str, &str)]) -> (Vec<String>, Vec<String>, String) {
    let (proxy, targets) = recording_proxy().await;
    let proxy_url = format!("http://{proxy}");
    let mut env = env.to_vec();
    env.extend([
        ("AWS_ACCESS_KEY_ID", fake_xray::ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", fake_xray::SECRET_KEY),
    ]);
    let xray = Xray::start(&["-p", &proxy_url], &env).await;

    let (status, body) = exchange(xray.tcp().await, &post("/GetSamplingRules", "{}")).await;
    assert_eq!(status, 502, "the proxy refuses every tunnel: {body}");
    let sampling = std::mem::take(&mut *targets.lock().unwrap());

    send_paced(xray.udp().await, &[datagram("fips", 100)], 1000).await;
    assert!(
        eventually(Duration::from_secs(10), || !targets
            .lock()
            .unwrap()
            .is_empty())
        .await,
        "no upload attempt through the proxy:\n{}",
        xray.log()
    );
    let uploads = targets.lock().unwrap().clone();
    (sampling, uploads, xray.log())
}

async fn assert_both_reach(env: &[(&str, &str)], host: &str) -> String {
    let (sampling, uploads, log) = hosts_reached(env).await;
    let expected = format!("{host}:443");
    assert_eq!(sampling, [expected.as_str()], "sampling proxy upstream");
    assert!(!uploads.is_empty());
    assert!(
        uploads.iter().all(|target| *target == expected),
        "uploads went to {uploads:?}"
    );
    assert!(
        log.contains(&format!(
            "HTTP Proxy server using X-Ray Endpoint : https://{host}"
        )),
        "{log}"
    );
    log
}

#[tokio::test]
async fn without_settings_both_reach_the_regional_endpoint() {
    let log = assert_both_reach(&[], "xray.us-east-1.amazonaws.com").await;
    assert!(
        log.contains("Using X-Ray endpoint https://xray.us-east-1.amazonaws.com"),
        "{log}"
    );
}

#[tokio::test]
async fn aws_use_fips_endpoint_sends_uploads_and_sampling_to_the_fips_host() {
    let log = assert_both_reach(
        &[("AWS_USE_FIPS_ENDPOINT", "true")],
        "xray-fips.us-east-1.amazonaws.com",
    )
    .await;
    assert!(
        log.contains("Using FIPS X-Ray endpoint https://xray-fips.us-east-1.amazonaws.com"),
        "{log}"
    );
}

#[tokio::test]
async fn aws_use_dualstack_endpoint_sends_both_to_the_dual_stack_host() {
    assert_both_reach(
        &[("AWS_USE_DUALSTACK_ENDPOINT", "true")],
        "xray.us-east-1.api.aws",
    )
    .await;
}

#[tokio::test]
async fn profile_settings_select_the_fips_dual_stack_host() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::write(
        &config,
        "[profile xray]\nuse_fips_endpoint = true\nuse_dualstack_endpoint = true\n",
    )
    .unwrap();
    assert_both_reach(
        &[
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_PROFILE", "xray"),
        ],
        "xray-fips.us-east-1.api.aws",
    )
    .await;
}

#[tokio::test]
async fn endpoint_overrides_fips_for_uploads_and_sampling() {
    let fake = FakeXray::start().await;
    let endpoint = fake.endpoint();
    let xray = Xray::start(
        &["--endpoint", &endpoint],
        &[
            ("AWS_USE_FIPS_ENDPOINT", "true"),
            ("AWS_ACCESS_KEY_ID", fake_xray::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", fake_xray::SECRET_KEY),
        ],
    )
    .await;
    send_paced(xray.udp().await, &[datagram("custom", 100)], 1000).await;
    let documents = fake.wait_for_documents(1, Duration::from_secs(5)).await;
    assert_eq!(crate::ids(&documents), ["custom"], "{}", xray.log());
    let (status, body) = exchange(xray.tcp().await, &post("/GetSamplingRules", "{}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(fake.bad_signatures(), 0);
    xray.wait_for_log(
        "is set, so the SDK's FIPS endpoint setting does not apply",
        Duration::from_secs(1),
    )
    .await;
}

/// `AWS_ENDPOINT_URL_XRAY` (and the global `AWS_ENDPOINT_URL`), read as the SDK reads them,
/// move uploads and the sampling proxy's upstream together.
#[tokio::test]
async fn aws_endpoint_url_settings_move_uploads_and_sampling() {
    for variable in ["AWS_ENDPOINT_URL_XRAY", "AWS_ENDPOINT_URL"] {
        let fake = FakeXray::start().await;
        let endpoint = fake.endpoint();
        let xray = Xray::start(
            &[],
            &[
                (variable, endpoint.as_str()),
                ("AWS_ACCESS_KEY_ID", fake_xray::ACCESS_KEY),
                ("AWS_SECRET_ACCESS_KEY", fake_xray::SECRET_KEY),
            ],
        )
        .await;
        send_paced(xray.udp().await, &[datagram("moved", 100)], 1000).await;
        let documents = fake.wait_for_documents(1, Duration::from_secs(5)).await;
        assert_eq!(
            crate::ids(&documents),
            ["moved"],
            "{variable}: {}",
            xray.log()
        );
        let (status, body) = exchange(xray.tcp().await, &post("/GetSamplingRules", "{}")).await;
        assert_eq!(status, 200, "{variable}: {body}");
        assert_eq!(fake.proxied().len(), 1, "{variable}");
        assert_eq!(fake.bad_signatures(), 0);
        xray.wait_for_log(
            &format!("HTTP Proxy server using X-Ray Endpoint : {endpoint}"),
            Duration::from_secs(1),
        )
        .await;
    }
}

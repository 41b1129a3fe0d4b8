//! Live reload through a ConfigMap-style directory (the kubelet's atomic `..data` swap) and
//! `POST /-/reload`: changes apply within seconds, invalid files change nothing, identical
//! rewrites are ignored, and moving the UDP listener loses nothing.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{
    datagram, eventually, fake_xray, http, send_paced, ConfigMapDir, FakeXray, Reply, Running,
};

fn free_udp_addr() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn config_yaml(udp: SocketAddr, concurrency: usize, log_level: &str) -> String {
    format!(
        "Version: 2\nConcurrency: {concurrency}\nSocket:\n  UDPAddress: \"{udp}\"\nLogging:\n  LogLevel: {log_level}\n"
    )
}

async fn start_with_file(fake: &FakeXray, configmap: &ConfigMapDir) -> Running {
    let file = configmap.file();
    let args = [
        "-o",
        "-n",
        fake_xray::REGION,
        "--endpoint",
        &fake.endpoint(),
        "--admin-address",
        "127.0.0.1:0",
        "-t",
        "127.0.0.1:0",
        "-c",
        file.to_str().unwrap(),
    ];
    Running::start(args.iter().map(|s| s.to_string()).collect()).await
}

fn reloads(daemon: &Running, result: &str) -> u64 {
    daemon.series(&format!("xray_config_reloads_total{{result=\"{result}\"}}"))
}

#[tokio::test]
async fn a_configmap_swap_changes_concurrency_within_seconds() {
    let fake = FakeXray::start().await;
    fake.script(std::iter::repeat_n(
        Reply::Stall(Duration::from_secs(4)),
        16,
    ));
    let configmap = ConfigMapDir::new(&config_yaml(free_udp_addr(), 2, "info"));
    let daemon = start_with_file(&fake, &configmap).await;
    let datagrams: Vec<Vec<u8>> = (0..400).map(|i| datagram(&format!("c{i}"), 200)).collect();
    send_paced(daemon.udp, &datagrams, 20_000).await;
    let in_flight = || daemon.metrics.upload_in_flight_batches.get();
    assert!(
        eventually(Duration::from_secs(2), || in_flight() == 2).await,
        "2 slots in use"
    );

    configmap.update(&config_yaml(daemon.udp, 4, "info"));
    assert!(
        eventually(Duration::from_secs(4), || in_flight() == 4).await,
        "4 slots after the swap"
    );
    assert_eq!(
        (reloads(&daemon, "success"), reloads(&daemon, "failure")),
        (1, 0)
    );
    let (status, body) = http("GET", daemon.admin, "/debug/config").await;
    assert_eq!(status, 200);
    assert!(body.contains("Concurrency: 4"), "{body}");
    daemon.shutdown().await;
}

#[tokio::test]
async fn an_invalid_file_is_refused_and_the_old_config_keeps_working() {
    let fake = FakeXray::start().await;
    let configmap = ConfigMapDir::new(&config_yaml(free_udp_addr(), 3, "info"));
    let daemon = start_with_file(&fake, &configmap).await;

    configmap.update("Version: 2\nConcurrency: lots\n");
    assert!(eventually(Duration::from_secs(4), || reloads(&daemon, "failure") == 1).await);
    assert_eq!(daemon.series("xray_config_last_reload_successful"), 0);
    let (_, status) = http("GET", daemon.admin, "/debug/status").await;
    assert!(
        status.contains("Concurrency"),
        "the failure names the key: {status}"
    );
    let (_, config) = http("GET", daemon.admin, "/debug/config").await;
    assert!(config.contains("Concurrency: 3"), "{config}");

    send_paced(daemon.udp, &[datagram("still-works", 100)], 1000).await;
    assert_eq!(
        fake.wait_for_documents(1, Duration::from_secs(3))
            .await
            .len(),
        1
    );

    configmap.update("Version: 2\nUnknownKey: 1\n");
    assert!(eventually(Duration::from_secs(4), || reloads(&daemon, "failure") == 2).await);
    assert_eq!(reloads(&daemon, "success"), 0);
    daemon.shutdown().await;
}

#[tokio::test]
async fn identical_rewrites_cause_no_reload() {
    let fake = FakeXray::start().await;
    let content = config_yaml(free_udp_addr(), 3, "info");
    let configmap = ConfigMapDir::new(&content);
    let daemon = start_with_file(&fake, &configmap).await;
    for _ in 0..3 {
        configmap.update(&content);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(reloads(&daemon, "success") + reloads(&daemon, "failure"), 0);
    daemon.shutdown().await;
}

#[tokio::test]
async fn moving_the_udp_listener_loses_nothing_while_a_sender_keeps_sending() {
    let fake = FakeXray::start().await;
    let configmap = ConfigMapDir::new(&config_yaml(free_udp_addr(), 8, "info"));
    let daemon = start_with_file(&fake, &configmap).await;
    let target = Arc::new(Mutex::new(daemon.udp));
    let sender = tokio::spawn({
        let target = Arc::clone(&target);
        async move {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            for i in 0..600 {
                let to = *target.lock().unwrap();
                socket
                    .send_to(&datagram(&format!("m{i}"), 200), to)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let new_address = free_udp_addr();
    configmap.update(&config_yaml(new_address, 8, "info"));
    assert!(eventually(Duration::from_secs(4), || reloads(&daemon, "success") == 1).await);
    // The sender learns the new address a little later, as real clients would.
    tokio::time::sleep(Duration::from_millis(200)).await;
    *target.lock().unwrap() = new_address;
    sender.await.unwrap();

    let documents = fake.wait_for_documents(600, Duration::from_secs(5)).await;
    let unique: HashSet<&String> = documents.iter().collect();
    assert_eq!((documents.len(), unique.len()), (600, 600));
    let (_, status) = http("GET", daemon.admin, "/debug/config").await;
    assert!(status.contains(&new_address.to_string()), "{status}");
    daemon.assert_accounting_identity().await;
    daemon.shutdown().await;
}

#[tokio::test]
async fn post_reload_applies_the_file_and_reports_what_changed() {
    let fake = FakeXray::start().await;
    let udp = free_udp_addr();
    let configmap = ConfigMapDir::new(&config_yaml(udp, 3, "info"));
    let daemon = start_with_file(&fake, &configmap).await;
    // Write in place (no directory event a watcher would debounce differently), then ask.
    std::fs::write(configmap.file(), config_yaml(udp, 5, "debug")).unwrap();
    let (status, body) = http("POST", daemon.admin, "/-/reload").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("Concurrency") && body.contains("Logging.LogLevel"),
        "{body}"
    );
    let (_, config) = http("GET", daemon.admin, "/debug/config").await;
    assert!(
        config.contains("Concurrency: 5") && config.contains("LogLevel: debug"),
        "{config}"
    );
    daemon.shutdown().await;
}

fn free_tcp_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn endpoint_buffer_and_admin_address_change_together() {
    let (first, second) = (FakeXray::start().await, FakeXray::start().await);
    let udp = free_udp_addr();
    let base = config_yaml(udp, 8, "info");
    let (old_admin, new_admin) = (free_tcp_addr(), free_tcp_addr());
    let settings = |endpoint: &str, buffer_mb: u32, admin: SocketAddr| {
        format!("{base}Endpoint: {endpoint}\nTotalBufferSizeMB: {buffer_mb}\nAdmin:\n  Address: \"{admin}\"\n")
    };
    let configmap = ConfigMapDir::new(&settings(&first.endpoint(), 8, old_admin));
    // Flags outrank the file, so everything that changes comes from the file alone.
    let file = configmap.file();
    let args = [
        "-o",
        "-n",
        fake_xray::REGION,
        "-t",
        "127.0.0.1:0",
        "-c",
        file.to_str().unwrap(),
    ];
    let daemon = Running::start(args.iter().map(|s| s.to_string()).collect()).await;
    send_paced(daemon.udp, &[datagram("before", 100)], 1000).await;
    assert_eq!(
        first
            .wait_for_documents(1, Duration::from_secs(3))
            .await
            .len(),
        1
    );

    configmap.update(&settings(&second.endpoint(), 32, new_admin));
    assert!(eventually(Duration::from_secs(4), || reloads(&daemon, "success") == 1).await);
    assert_eq!(daemon.series("xray_buffer_limit_bytes"), 32 << 20);
    send_paced(daemon.udp, &[datagram("after", 100)], 1000).await;
    assert_eq!(
        second
            .wait_for_documents(1, Duration::from_secs(3))
            .await
            .len(),
        1
    );
    assert_eq!(
        first.documents().len(),
        1,
        "nothing new reaches the old endpoint"
    );
    let (status, body) = http("GET", new_admin, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready"));
    assert!(
        eventually(Duration::from_secs(2), || std::net::TcpStream::connect(
            old_admin
        )
        .is_err())
        .await,
        "the old admin address is released"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_reload_that_cannot_bind_changes_nothing() {
    let fake = FakeXray::start().await;
    let udp = free_udp_addr();
    let configmap = ConfigMapDir::new(&config_yaml(udp, 3, "info"));
    let daemon = start_with_file(&fake, &configmap).await;
    let busy = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    configmap.update(&config_yaml(busy.local_addr().unwrap(), 6, "debug"));
    assert!(eventually(Duration::from_secs(4), || reloads(&daemon, "failure") == 1).await);
    let (_, config) = http("GET", daemon.admin, "/debug/config").await;
    assert!(
        config.contains("Concurrency: 3") && config.contains("LogLevel: info"),
        "{config}"
    );
    let (_, status) = http("GET", daemon.admin, "/debug/status").await;
    assert!(status.contains("address already in use"), "{status}");
    send_paced(daemon.udp, &[datagram("still-here", 100)], 1000).await;
    assert_eq!(
        fake.wait_for_documents(1, Duration::from_secs(3))
            .await
            .len(),
        1
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn the_tcp_port_moves_on_reload() {
    let fake = FakeXray::start().await;
    let (udp, old_tcp, new_tcp) = (free_udp_addr(), free_tcp_addr(), free_tcp_addr());
    let settings = |tcp: SocketAddr| {
        format!("Version: 2\nSocket:\n  UDPAddress: \"{udp}\"\n  TCPAddress: \"{tcp}\"\n")
    };
    let configmap = ConfigMapDir::new(&settings(old_tcp));
    let file = configmap.file();
    let args = [
        "-o",
        "-n",
        fake_xray::REGION,
        "--endpoint",
        &fake.endpoint(),
        "--admin-address",
        "127.0.0.1:0",
        "-c",
        file.to_str().unwrap(),
    ];
    let daemon = Running::start(args.iter().map(|s| s.to_string()).collect()).await;
    assert_eq!(daemon.tcp, old_tcp);

    configmap.update(&settings(new_tcp));
    assert!(eventually(Duration::from_secs(4), || reloads(&daemon, "success") == 1).await);
    let (status, _) = http("POST", new_tcp, "/GetSamplingRules").await;
    assert_eq!(status, 200, "the proxy answers on the new address");
    assert_eq!(fake.bad_signatures(), 0);
    // The old listener closes in the background once the new one serves.
    assert!(
        eventually(Duration::from_secs(2), || std::net::TcpStream::connect(
            old_tcp
        )
        .is_err())
        .await,
        "the old address is released"
    );
    daemon.shutdown().await;
}

//! Integration tests: the daemon in process, on ephemeral loopback ports, against a fake
//! X-Ray that verifies SigV4 signatures.

mod fake_xray;
mod pipeline;

use std::net::SocketAddr;
use std::sync::Once;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use xray_daemon::app::{Daemon, RunSummary};
use xray_daemon::config::Config;
use xray_daemon::metrics::Metrics;

pub use fake_xray::{FakeXray, Reply};

/// The credentials the fake verifies against, for every in-process daemon. Every test sets
/// the same values, so the process-wide environment is consistent whichever test runs first.
fn set_test_credentials() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", fake_xray::ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", fake_xray::SECRET_KEY);
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::env::remove_var("AWS_PROFILE");
    });
}

/// A configuration for an in-process daemon uploading to `fake`.
pub fn config_for(fake: &FakeXray) -> Config {
    Config {
        total_buffer_size_mb: 16,
        concurrency: 8,
        endpoint: Some(fake.endpoint()),
        region: Some(fake_xray::REGION.into()),
        udp_address: "127.0.0.1:0".into(),
        tcp_address: "127.0.0.1:0".into(),
        receive_buffer_bytes: 8 << 20,
        log_rotation: true,
        log_level: "prod".into(),
        log_path: None,
        local_mode: true,
        resource_arn: None,
        role_arn: None,
        no_verify_ssl: false,
        proxy_address: None,
        local_sink: None,
        admin_address: "127.0.0.1:0".into(),
        admin_enable_lifecycle: false,
        shutdown_timeout: Duration::from_secs(10),
    }
}

/// A running in-process daemon.
pub struct Running {
    pub udp: SocketAddr,
    pub metrics: Metrics,
    pub budget: std::sync::Arc<xray_daemon::budget::MemoryBudget>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<RunSummary>,
}

impl Running {
    pub async fn start(config: Config) -> Running {
        set_test_credentials();
        let daemon = Daemon::start(config, prometheus::Registry::new()).await.expect("daemon starts");
        let (stop, stopped) = oneshot::channel::<()>();
        let (udp, metrics, budget) = (daemon.udp_local_addr(), daemon.metrics().clone(), daemon.budget().clone());
        let task = tokio::spawn(daemon.run(async move {
            let _ = stopped.await;
        }));
        Running { udp, metrics, budget, stop: Some(stop), task }
    }

    /// Triggers the shutdown sequence and waits for it.
    pub async fn shutdown(mut self) -> RunSummary {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap()
    }

    /// A counter value summed over its labels.
    pub fn total(&self, name: &str) -> u64 {
        self.metrics.total(name)
    }

    /// A counter value for one exact series line prefix, e.g. `xray_segments_dropped_total{reason="buffer_full"}`.
    pub fn series(&self, series: &str) -> u64 {
        self.metrics
            .encode_text()
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    /// received == sent + rejected + dropped + held, the accounting identity.
    pub fn assert_accounting_identity(&self) {
        let received = self.total("xray_segments_received_total");
        let sent = self.total("xray_segments_sent_total");
        let rejected = self.total("xray_segments_rejected_total");
        let dropped = self.total("xray_segments_dropped_total");
        let held = self.budget.held_segments() as u64;
        assert_eq!(
            received,
            sent + rejected + dropped + held,
            "received {received} != sent {sent} + rejected {rejected} + dropped {dropped} + held {held}"
        );
    }
}

/// A datagram carrying a compact segment document with `id`, padded to about `size` bytes.
pub fn datagram(id: &str, size: usize) -> Vec<u8> {
    let mut document = format!(r#"{{"trace_id":"1-5f84c7a1-{id:0>24}","id":"{id}","name":"svc","start_time":1,"end_time":2,"annotations":{{"pad":"#);
    let pad = size.saturating_sub(document.len() + 3);
    document.push('"');
    document.extend(std::iter::repeat_n('x', pad));
    document.push_str("\"}}");
    format!("{{\"format\":\"json\",\"version\":1}}\n{document}").into_bytes()
}

/// Sends datagrams at about `per_second`, in bursts, from one socket.
pub async fn send_paced(target: SocketAddr, datagrams: &[Vec<u8>], per_second: usize) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let burst = (per_second / 100).max(1);
    for chunk in datagrams.chunks(burst) {
        for datagram in chunk {
            socket.send_to(datagram, target).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `condition` until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

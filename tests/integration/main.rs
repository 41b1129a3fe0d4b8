//! Integration tests: the daemon in process, on ephemeral loopback ports, against a fake
//! X-Ray that verifies SigV4 signatures.

mod admin;
mod aws;
mod binary;
mod endpoints;
mod exposure;
mod fake_xray;
mod faults;
mod hostile;
mod identity;
mod pipeline;
mod process;
mod proxy;
mod reload;
mod telemetry;
mod tls;

use std::net::SocketAddr;
use std::sync::Once;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use xray_daemon::app::{Daemon, RunSummary};
use xray_daemon::cli::{self, Command};
use xray_daemon::metrics::Metrics;
use xray_daemon::reload::ConfigInputs;

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

/// Command-line arguments for an in-process daemon uploading to `fake`.
pub fn args_for(fake: &FakeXray) -> Vec<String> {
    [
        "-o",
        "-n",
        fake_xray::REGION,
        "--endpoint",
        &fake.endpoint(),
        "-b",
        "127.0.0.1:0",
        "--admin-address",
        "127.0.0.1:0",
        "-t",
        "127.0.0.1:0",
        "-m",
        "16",
        "--shutdown-timeout",
        "10s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `args` with more flags appended (later flags win, as in Go).
pub fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A running in-process daemon.
pub struct Running {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: Metrics,
    pub budget: std::sync::Arc<xray_daemon::budget::MemoryBudget>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<RunSummary>,
}

impl Running {
    /// Starts a daemon configured by `args` exactly as the binary would be (no environment
    /// variables or search-path files are read).
    pub async fn start(args: Vec<String>) -> Running {
        Running::start_with_env(args, &[]).await
    }

    /// Starts a daemon that sees `env` as its environment (for its own settings: region
    /// discovery, proxies; AWS credentials still come from the test process).
    pub async fn start_with_env(args: Vec<String>, env: &[(&str, &str)]) -> Running {
        Running::try_start(args, env).await.expect("daemon starts")
    }

    /// Like `start_with_env`, but returns the start error.
    pub async fn try_start(
        args: Vec<String>,
        env: &[(&str, &str)],
    ) -> Result<Running, xray_daemon::app::StartError> {
        set_test_credentials();
        let Ok(Command::Run(flags)) = cli::parse(&args) else {
            panic!("bad test arguments {args:?}");
        };
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let inputs = ConfigInputs {
            flags,
            env,
            ..ConfigInputs::default()
        };
        let loaded = inputs.load().expect("valid test configuration");
        let daemon = Daemon::start(inputs, loaded, None, prometheus::Registry::new()).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let (udp, tcp, admin) = (
            daemon.udp_local_addr(),
            daemon.tcp_local_addr(),
            daemon.admin_local_addr(),
        );
        let (metrics, budget) = (daemon.metrics().clone(), daemon.budget().clone());
        let task = tokio::spawn(daemon.run(async move {
            let _ = stopped.await;
        }));
        Ok(Running {
            udp,
            tcp,
            admin,
            metrics,
            budget,
            stop: Some(stop),
            task,
        })
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

    /// received == sent + rejected + dropped + held, the accounting identity, once the
    /// pipeline has settled (a datagram being admitted right now is counted received before
    /// its outcome).
    pub async fn assert_accounting_identity(&self) {
        let terms = || {
            let received = self.total("xray_segments_received_total");
            let sent = self.total("xray_segments_sent_total");
            let rejected = self.total("xray_segments_rejected_total");
            let dropped = self.total("xray_segments_dropped_total");
            let held = self.budget.held_segments() as u64;
            (received, sent, rejected, dropped, held)
        };
        eventually(Duration::from_secs(3), || {
            let (received, sent, rejected, dropped, held) = terms();
            received == sent + rejected + dropped + held
        })
        .await;
        let (received, sent, rejected, dropped, held) = terms();
        assert_eq!(
            received,
            sent + rejected + dropped + held,
            "received {received} != sent {sent} + rejected {rejected} + dropped {dropped} + held {held}"
        );
    }
}

/// A datagram carrying a compact segment document with `id`, padded to about `size` bytes.
pub fn datagram(id: &str, size: usize) -> Vec<u8> {
    let mut document = format!(
        r#"{{"trace_id":"1-5f84c7a1-{id:0>24}","id":"{id}","name":"svc","start_time":1,"end_time":2,"annotations":{{"pad":"#
    );
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

/// Resident memory of process `pid` now and at its peak, in KiB, from /proc.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Reads an HTTP request head (through the blank line) byte by byte, so nothing after it is
/// consumed; `None` if the peer closes first.
pub async fn read_request_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A minimal HTTP/1.1 request to the admin server: (status, body).
pub async fn http(method: &str, addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin server answers");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Bodies may come chunked; tests only look for substrings, so strip chunk-size lines.
    (status, body.to_owned())
}

/// A directory laid out like a mounted ConfigMap: `cfg.yaml -> ..data/cfg.yaml`,
/// `..data -> ..<version>`. `update` swaps `..data` atomically, as the kubelet does.
pub struct ConfigMapDir {
    pub dir: tempfile::TempDir,
    version: std::cell::Cell<u32>,
}

impl ConfigMapDir {
    pub fn new(content: &str) -> ConfigMapDir {
        let dir = tempfile::tempdir().unwrap();
        let configmap = ConfigMapDir {
            dir,
            version: std::cell::Cell::new(0),
        };
        configmap.update(content);
        std::os::unix::fs::symlink("..data/cfg.yaml", configmap.dir.path().join("cfg.yaml"))
            .unwrap();
        configmap
    }

    pub fn file(&self) -> std::path::PathBuf {
        self.dir.path().join("cfg.yaml")
    }

    pub fn update(&self, content: &str) {
        let version = self.version.get() + 1;
        self.version.set(version);
        let root = self.dir.path();
        let data_dir = format!("..2026_11_21_00_00_{version:02}.000000001");
        std::fs::create_dir(root.join(&data_dir)).unwrap();
        std::fs::write(root.join(&data_dir).join("cfg.yaml"), content).unwrap();
        std::os::unix::fs::symlink(&data_dir, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    }
}

/// The `id` of each document, in arrival order.
pub fn ids(documents: &[String]) -> Vec<String> {
    documents
        .iter()
        .map(|d| {
            serde_json::from_str::<serde_json::Value>(d).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

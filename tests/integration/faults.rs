//! Backend faults and shutdown under load: X-Ray answering 503, throttling, answering after
//! the request timeout, resetting connections, or unreachable, each for a while and then
//! recovering. With a budget large enough nothing is lost and nothing is delivered twice;
//! with too small a budget the losses equal the counted drops exactly. SIGTERM to the real
//! binary while segments arrive and uploads are in flight loses nothing uncounted and exits
//! within `--shutdown-timeout`. Every scenario ends with the accounting identity.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{args_for, datagram, eventually, fake_xray, ids, send_paced, with, FakeXray, Running};

/// Asserts no id arrived twice; returns the set.
pub fn unique_ids(documents: &[String]) -> HashSet<String> {
    let all = ids(documents);
    let unique: HashSet<String> = all.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "{} documents delivered twice",
        all.len() - unique.len()
    );
    unique
}

/// What the backend does for a while.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Every request fails with this status and AWS error code.
    Status(u16, &'static str),
    /// Every request is answered after 2.5 s, past the daemon's 2 s request timeout.
    Slow,
    /// Every request's connection is reset without an answer.
    Resets,
    /// Nothing listens on the endpoint's port (connection refused).
    Unreachable,
}

impl Fault {
    /// Starts the fault now; it ends by itself after `duration`.
    async fn start(self, fake: &FakeXray, duration: Duration) {
        match self {
            Fault::Status(status, code) => fake.outage(duration, status, code),
            Fault::Slow => fake.slow(duration, Duration::from_millis(2_500)),
            Fault::Resets => fake.resets(duration),
            Fault::Unreachable => {
                fake.go_offline();
                let fake = fake.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(duration).await;
                    fake.come_back().await;
                });
            }
        }
    }

    /// The `xray_upload_requests_total` outcome this fault must show up as.
    fn outcome(self) -> &'static str {
        match self {
            Fault::Status(429, _) | Fault::Status(400, "ThrottlingException") => "throttled",
            Fault::Status(status, _) if status >= 500 => "http_5xx",
            Fault::Status(..) => "http_4xx",
            Fault::Slow => "timeout",
            Fault::Resets | Fault::Unreachable => "connection",
        }
    }
}

/// One scenario: `count` segments of about `size` bytes sent at an even pace over the
/// fault's `duration` (so every one arrives while the backend is down), then the backend
/// recovers. Returns the daemon (for more checks) and the ids sent.
async fn during_fault(
    fault: Fault,
    duration: Duration,
    count: usize,
    size: usize,
    extra: &[&str],
) -> (Running, FakeXray, Vec<String>) {
    let fake = FakeXray::start().await;
    let daemon = Running::start(with(args_for(&fake), extra)).await;
    let sent: Vec<String> = (0..count).map(|i| format!("f{i:015}")).collect();
    let datagrams: Vec<Vec<u8>> = sent.iter().map(|id| datagram(id, size)).collect();
    fault.start(&fake, duration).await;
    let fault_ends = Instant::now() + duration;
    spread(daemon.udp, &datagrams, duration.mul_f64(0.9)).await;
    assert!(
        eventually(Duration::from_secs(2), || daemon
            .total("xray_segments_received_total")
            == count as u64)
        .await,
        "the kernel dropped datagrams on loopback ({} of {count} received): no verdict possible",
        daemon.total("xray_segments_received_total")
    );
    let failed = daemon.series(&format!(
        r#"xray_upload_requests_total{{outcome="{}"}}"#,
        fault.outcome()
    ));
    assert!(
        failed > 0,
        "{fault:?} never showed as outcome {}:\n{}",
        fault.outcome(),
        daemon.metrics.encode_text()
    );
    let wait = fault_ends.saturating_duration_since(Instant::now());
    tokio::time::sleep(wait).await;
    (daemon, fake, sent)
}

/// Sends `datagrams` evenly spread over `duration`.
async fn spread(target: SocketAddr, datagrams: &[Vec<u8>], duration: Duration) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let started = tokio::time::Instant::now();
    let gap = duration / datagrams.len().max(1) as u32;
    for (i, datagram) in datagrams.iter().enumerate() {
        tokio::time::sleep_until(started + gap * i as u32).await;
        socket.send_to(datagram, target).await.unwrap();
    }
}

/// Once the fault is over, waits (bounded) until the daemon holds nothing, then checks that
/// every segment is either delivered exactly once or counted as dropped, and that the counters
/// agree with the fake.
/// `recovery` bounds the wait: the retry backoff (full jitter, capped at 30 s) decides when a
/// batch notices the recovery.
async fn settle(
    daemon: &Running,
    fake: &FakeXray,
    sent: &[String],
    recovery: Duration,
) -> HashSet<String> {
    let started = Instant::now();
    let settled = eventually(recovery, || daemon.budget.held_segments() == 0).await;
    assert!(
        settled,
        "still {} segments held {recovery:?} after the fault ended",
        daemon.budget.held_segments()
    );
    eprintln!(
        "recovery: everything held delivered {:?} after the fault ended",
        started.elapsed()
    );
    let delivered = unique_ids(&fake.documents());
    let sent_set: HashSet<String> = sent.iter().cloned().collect();
    assert!(
        delivered.is_subset(&sent_set),
        "delivered ids that were never sent"
    );
    let dropped = daemon.total("xray_segments_dropped_total");
    assert_eq!(
        delivered.len() as u64 + dropped,
        sent.len() as u64,
        "lost = sent - delivered must equal the counted drops"
    );
    assert_eq!(
        daemon.total("xray_segments_sent_total"),
        delivered.len() as u64,
        "sent_total agrees with what X-Ray recorded"
    );
    assert_eq!(daemon.total("xray_segments_rejected_total"), 0);
    daemon.assert_accounting_identity().await;
    delivered
}

/// With the default 16 MB budget, a fault of `duration` costs nothing.
async fn nothing_lost(fault: Fault, duration: Duration, count: usize, extra: &[&str]) {
    let (daemon, fake, sent) = during_fault(fault, duration, count, 300, extra).await;
    let delivered = settle(&daemon, &fake, &sent, Duration::from_secs(35)).await;
    assert_eq!(
        delivered.len(),
        sent.len(),
        "every segment sent during the fault is delivered afterwards"
    );
    assert_eq!(daemon.total("xray_segments_dropped_total"), 0);
    // And new segments flow at once.
    let started = Instant::now();
    send_paced(daemon.udp, &[datagram("after", 100)], 1000).await;
    assert!(
        eventually(Duration::from_secs(3), || ids(&fake.documents())
            .contains(&"after".to_string()))
        .await
    );
    assert!(started.elapsed() < Duration::from_millis(2_500));
    daemon.assert_accounting_identity().await;
    daemon.shutdown().await;
}

/// With a 3 MB budget and 5 MB sent during the fault, the excess is dropped as
/// `buffer_full`, and exactly the dropped ones are missing afterwards.
async fn losses_are_the_counted_drops(fault: Fault) {
    let (daemon, fake, sent) =
        during_fault(fault, Duration::from_secs(4), 5_000, 1_000, &["-m", "3"]).await;
    let delivered = settle(&daemon, &fake, &sent, Duration::from_secs(35)).await;
    let buffer_full = daemon.series(r#"xray_segments_dropped_total{reason="buffer_full"}"#);
    assert!(
        buffer_full > 1_000,
        "5 MB into a 3 MB budget must overflow: {buffer_full} dropped"
    );
    assert_eq!(
        buffer_full,
        daemon.total("xray_segments_dropped_total"),
        "every drop is buffer_full"
    );
    assert_eq!(delivered.len() as u64 + buffer_full, 5_000);
    daemon.shutdown().await;
}

/// The issue's scenario: X-Ray answers 503 for 20 s, then recovers; with a large enough budget
/// every segment sent during the outage is delivered afterwards, none twice. By then every
/// upload slot is sleeping in a backoff of up to 30 s; the first batch through wakes the
/// others, so the rest follows within moments instead of each batch's own backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_s_503_outage_loses_nothing_and_duplicates_nothing() {
    let (daemon, fake, sent) = during_fault(
        Fault::Status(503, "ServiceUnavailableException"),
        Duration::from_secs(20),
        1_000,
        300,
        &[],
    )
    .await;
    assert!(
        eventually(Duration::from_secs(35), || !fake.documents().is_empty()).await,
        "nothing delivered within 35 s of the recovery"
    );
    let first_delivery = Instant::now();
    let delivered = settle(&daemon, &fake, &sent, Duration::from_secs(10)).await;
    let rest = first_delivery.elapsed();
    assert!(
        rest < Duration::from_secs(3),
        "the rest took {rest:?} after the first delivery: batches in backoff were not woken"
    );
    assert_eq!(delivered.len(), sent.len());
    assert_eq!(daemon.total("xray_segments_dropped_total"), 0);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_for_5_s_loses_nothing_and_duplicates_nothing() {
    nothing_lost(
        Fault::Status(400, "ThrottlingException"),
        Duration::from_secs(5),
        500,
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_slower_than_the_request_timeout_lose_nothing_and_duplicate_nothing() {
    nothing_lost(Fault::Slow, Duration::from_secs(5), 500, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_resets_lose_nothing_and_duplicate_nothing() {
    nothing_lost(Fault::Resets, Duration::from_secs(5), 500, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_loses_nothing_and_duplicates_nothing() {
    nothing_lost(Fault::Unreachable, Duration::from_secs(5), 500, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_outage_past_a_small_budget_loses_exactly_the_counted_drops() {
    losses_are_the_counted_drops(Fault::Status(503, "ServiceUnavailableException")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_past_a_small_budget_loses_exactly_the_counted_drops() {
    losses_are_the_counted_drops(Fault::Unreachable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_past_a_small_budget_lose_exactly_the_counted_drops() {
    losses_are_the_counted_drops(Fault::Slow).await;
}

// ---------------------------------------------------------------------------------------------
// The real binary.

/// The binary under test: `XRAY_TEST_BINARY` (e.g. `target/release/xray`, to measure a
/// release build with the same scenarios), else the debug build cargo made for this test.
pub fn binary() -> PathBuf {
    std::env::var_os("XRAY_TEST_BINARY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_xray")),
        // Relative to where the tests run (the crate root), not to the daemon's directory.
        |path| std::path::absolute(path).unwrap(),
    )
}

/// A running `xray` process with its log, stdout and stderr captured in a temp directory,
/// and the addresses it bound (read from its log).
pub struct Xray {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub udp: SocketAddr,
    pub admin: SocketAddr,
    pub tcp: SocketAddr,
}

impl Xray {
    /// Starts the binary uploading to `fake` at log level `level`, on ephemeral loopback
    /// ports, with the fake's credentials plus `env`, and `extra` flags.
    pub fn start(fake: &FakeXray, level: &str, extra: &[&str], env: &[(&str, &str)]) -> Xray {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("xray.log");
        let out = std::fs::File::create(dir.path().join("stdout")).unwrap();
        let err = std::fs::File::create(dir.path().join("stderr")).unwrap();
        let child = Command::new(binary())
            .args(["-o", "-n", fake_xray::REGION, "-l", level])
            .args(["--endpoint", &fake.endpoint(), "-f", log.to_str().unwrap()])
            .args(["-b", "127.0.0.1:0", "-t", "127.0.0.1:0"])
            .args(["--admin-address", "127.0.0.1:0"])
            .args(extra)
            .current_dir(dir.path())
            .env_clear()
            .env("AWS_ACCESS_KEY_ID", fake_xray::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", fake_xray::SECRET_KEY)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(env.iter().copied())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("xray starts");
        let mut xray = Xray {
            child,
            dir,
            udp: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            tcp: "0.0.0.0:0".parse().unwrap(),
        };
        xray.admin = xray.address_after("Starting admin server on ");
        xray.tcp = xray.address_after("Starting proxy http server on ");
        xray.udp = xray.address_after("Listening on UDP ");
        xray
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("xray.log")).unwrap_or_default()
    }

    /// Everything the process wrote: log file, stdout and stderr.
    pub fn all_output(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name));
        [
            self.log(),
            read("stdout").unwrap_or_default(),
            read("stderr").unwrap_or_default(),
        ]
        .concat()
    }

    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{log}\nstderr: {}",
                std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn address_after(&self, prefix: &str) -> SocketAddr {
        let log = self.wait_for_log(prefix, Duration::from_secs(15));
        let line = log.lines().find(|l| l.contains(prefix)).unwrap();
        let rest = &line[line.find(prefix).unwrap() + prefix.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (bounded); returns its exit code and how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> (i32, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), started.elapsed());
            }
            assert!(
                started.elapsed() < timeout,
                "did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Resident memory now and at its peak, in KiB, from /proc.
    pub fn rss_kib(&self) -> (u64, u64) {
        crate::rss_kib(self.child.id())
    }

    /// The exit summary line's counts: (received, sent, rejected, dropped).
    pub fn exit_counts(&self) -> (u64, u64, u64, u64) {
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("Trace segment: received:"))
            .unwrap_or_else(|| panic!("no summary line in:\n{log}"));
        let numbers: Vec<u64> = line
            .rsplit("received:")
            .next()
            .unwrap()
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(numbers.len(), 4, "{line}");
        (numbers[0], numbers[1], numbers[2], numbers[3])
    }
}

impl Drop for Xray {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scrape of `/metrics`: the value of one series (exact name and labels), summed over
/// all series of `name` when `name` has no labels.
pub struct Scrape(pub String);

impl Scrape {
    pub async fn of(admin: SocketAddr) -> Scrape {
        let (status, body) = crate::http("GET", admin, "/metrics").await;
        assert_eq!(status, 200);
        Scrape(body)
    }

    pub fn value(&self, series: &str) -> u64 {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                let matches = name == series
                    || (!series.contains('{') && name.split('{').next() == Some(series));
                matches.then(|| value.trim().parse::<f64>().ok())?
            })
            .sum::<f64>() as u64
    }

    /// received - (sent + rejected + dropped + buffered): 0 when the identity holds.
    pub fn identity_gap(&self) -> i64 {
        let v = |name| self.value(name) as i64;
        v("xray_segments_received_total")
            - v("xray_segments_sent_total")
            - v("xray_segments_rejected_total")
            - v("xray_segments_dropped_total")
            - v("xray_buffer_segments")
    }
}

/// Sends `datagram(id)` for ids `prefix0, prefix1, ...` at about `per_second` from a thread
/// until `stop` is set (bounded by `max`); returns how many it sent.
fn sender(
    target: SocketAddr,
    prefix: &'static str,
    per_second: u64,
    max: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let started = Instant::now();
        let mut sent = 0;
        while sent < max && !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let due = (started.elapsed().as_secs_f64() * per_second as f64) as usize;
            while sent < due.min(max) {
                // After the daemon closes its socket, sends may fail (ICMP unreachable).
                let _ = socket.send_to(&datagram(&format!("{prefix}{sent}"), 400), target);
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        sent
    })
}

/// SIGTERM while segments arrive and a slow backend holds uploads in flight: the process
/// flushes, everything it accepted is delivered exactly once, the summary line agrees with
/// the last scrape and the fake, and it exits 0 within the shutdown timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_delivers_everything_accepted_within_the_timeout() {
    let fake = FakeXray::start().await;
    fake.slow(Duration::from_secs(60), Duration::from_millis(600));
    let mut xray = Xray::start(&fake, "debug", &["--shutdown-timeout", "8s"], &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // About three times what the slow backend takes (8 uploads of 50 per 0.6 s), so the
    // backlog at the signal is a few seconds of uploads.
    let load = sender(xray.udp, "t", 2_000, 40_000, stop.clone());
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before = Scrape::of(xray.admin).await;
    assert!(
        before.value("xray_upload_in_flight_batches") > 0,
        "uploads in flight at the signal"
    );
    xray.signal("TERM");
    let (code, took) = tokio::task::block_in_place(|| xray.wait_exit(Duration::from_secs(15)));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let offered = load.join().unwrap();
    let (received, sent, rejected, dropped) = xray.exit_counts();
    eprintln!(
        "SIGTERM under load: exit {code} after {took:?}; {offered} offered, {} in flight at the signal; \
         received {received}, sent {sent}, rejected {rejected}, dropped {dropped}",
        before.value("xray_upload_in_flight_batches")
    );
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(8), "exit took {took:?}");

    assert!(received >= before.value("xray_segments_received_total"));
    assert!(received <= offered as u64);
    assert_eq!(rejected, 0);
    assert_eq!(
        dropped, 0,
        "a slow backend within the timeout gets everything"
    );
    assert_eq!(received, sent + rejected + dropped, "the identity at exit");
    let delivered = unique_ids(&fake.documents());
    assert_eq!(
        delivered.len() as u64,
        sent,
        "X-Ray has exactly what was sent"
    );
}

/// SIGTERM with a backend that never answers: what the deadline cuts off is counted as
/// dropped (shutdown), and the process still exits within `--shutdown-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_hung_backend_counts_the_rest_as_dropped_and_exits_in_time() {
    let fake = FakeXray::start().await;
    fake.script(std::iter::repeat_n(
        crate::Reply::Stall(Duration::from_secs(120)),
        400,
    ));
    let mut xray = Xray::start(&fake, "debug", &["--shutdown-timeout", "2s"], &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = sender(xray.udp, "h", 4_000, 40_000, stop.clone());
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let before = Scrape::of(xray.admin).await;
    assert_eq!(before.value("xray_segments_dropped_total"), 0);
    assert!(before.value("xray_buffer_segments") > 0);
    xray.signal("TERM");
    let (code, took) = tokio::task::block_in_place(|| xray.wait_exit(Duration::from_secs(10)));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let offered = load.join().unwrap();
    let (received, sent, rejected, dropped) = xray.exit_counts();
    eprintln!(
        "SIGTERM, hung backend: exit {code} after {took:?}; {offered} offered; \
         received {received}, sent {sent}, rejected {rejected}, dropped {dropped}"
    );
    assert_eq!(code, 0);
    // The deadline, plus the time to stop ingest and log.
    assert!(took < Duration::from_millis(3_000), "exit took {took:?}");
    let log = xray.log();
    assert!(log.contains("Shutdown timeout of 2s reached"), "{log}");
    assert!(received >= before.value("xray_segments_received_total"));
    assert!(received <= offered as u64);
    assert_eq!((sent, rejected), (0, 0));
    assert_eq!(received, dropped, "everything held is counted as dropped");
    assert!(fake.documents().is_empty());
}

/// A host clock an hour behind X-Ray's: the first upload is refused ("Signature expired"),
/// its answer's `Date` teaches the skew, and the same batch is signed again with X-Ray's time
/// at once. Later uploads and proxied sampling calls are signed right the first time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_an_hour_off_is_corrected_from_xrays_date_and_loses_nothing() {
    let fake = FakeXray::start().await;
    fake.clock_ahead(3600);
    let daemon = Running::start(args_for(&fake)).await;

    send_paced(daemon.udp, &[datagram("skew-1", 100)], 1000).await;
    let documents = fake.wait_for_documents(1, Duration::from_secs(10)).await;
    assert_eq!(ids(&documents), ["skew-1"]);
    assert_eq!(
        fake.expired_signatures(),
        1,
        "only the first attempt used the host's clock"
    );

    send_paced(daemon.udp, &[datagram("skew-2", 100)], 1000).await;
    fake.wait_for_documents(2, Duration::from_secs(10)).await;
    let (status, body) =
        crate::proxy::exchange(daemon.tcp, &crate::proxy::post("/GetSamplingRules", "{}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(fake.expired_signatures(), 1);
    assert_eq!(fake.bad_signatures(), 0);

    assert_eq!(daemon.total("xray_segments_sent_total"), 2);
    assert_eq!(daemon.total("xray_segments_dropped_total"), 0);
    daemon.assert_accounting_identity().await;
    daemon.shutdown().await;
}

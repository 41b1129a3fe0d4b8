//! The real `xray` binary as operators run it: signals, exit codes, memory under a flood.

use std::collections::HashSet;
use std::io::{Read, Seek};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{datagram, fake_xray, send_paced, FakeXray, Reply};

struct Process {
    child: Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
    udp: std::net::SocketAddr,
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Process {
    fn start(fake: &FakeXray, extra: &[&str]) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("xray.log");
        let udp: std::net::SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_xray"))
            .args([
                "-o",
                "-n",
                fake_xray::REGION,
                "-l",
                "debug",
                "--endpoint",
                &fake.endpoint(),
            ])
            .args([
                "-b",
                &udp.to_string(),
                "-t",
                "127.0.0.1:0",
                "--admin-address",
                "127.0.0.1:0",
            ])
            .args(["-f", log.to_str().unwrap()])
            .args(extra)
            .current_dir(dir.path())
            .env_clear()
            .env("AWS_ACCESS_KEY_ID", fake_xray::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", fake_xray::SECRET_KEY)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("xray starts");
        let process = Process {
            child,
            log,
            _dir: dir,
            udp,
        };
        process.wait_for_log("Listening on UDP", Duration::from_secs(10));
        process
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory now and at its peak, in KiB.
    fn rss_kib(&self) -> (u64, u64) {
        crate::rss_kib(self.child.id())
    }

    fn terminate(&mut self, timeout: Duration) -> i32 {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The accounting line the daemon logs when it exits.
    fn exit_counts(&self) -> (u64, u64, u64, u64) {
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("Trace segment: received:"))
            .expect("summary line");
        let numbers: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        let n = numbers.len();
        (
            numbers[n - 4],
            numbers[n - 3],
            numbers[n - 2],
            numbers[n - 1],
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_full_buffer_delivers_everything_and_exits_zero() {
    let fake = FakeXray::start().await;
    fake.script(std::iter::repeat_n(
        Reply::Stall(Duration::from_millis(800)),
        8,
    ));
    let mut xray = Process::start(&fake, &[]);
    let datagrams: Vec<Vec<u8>> = (0..2_000)
        .map(|i| datagram(&format!("t{i}"), 500))
        .collect();
    send_paced(xray.udp, &datagrams, 40_000).await;

    let code = tokio::task::block_in_place(|| xray.terminate(Duration::from_secs(20)));
    assert_eq!(code, 0);
    let log = xray.log();
    assert!(
        log.contains("[Info] Got shutdown signal: terminated"),
        "{log}"
    );
    let ids: HashSet<String> = fake
        .documents()
        .iter()
        .map(|d| {
            serde_json::from_str::<serde_json::Value>(d).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!((fake.documents().len(), ids.len()), (2_000, 2_000));
    assert_eq!(xray.exit_counts(), (2_000, 2_000, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_a_3_mb_budget_keeps_memory_bounded_and_counts_every_drop() {
    let fake = FakeXray::start().await;
    // The backend hangs far longer than the test: nothing leaves the budget.
    fake.script(std::iter::repeat_n(
        Reply::Stall(Duration::from_secs(60)),
        64,
    ));
    let mut xray = Process::start(&fake, &["-m", "3", "--shutdown-timeout", "1s"]);
    let (idle_rss, _) = xray.rss_kib();
    // 40 MB of documents, more than ten times the budget.
    let datagrams: Vec<Vec<u8>> = (0..40_000)
        .map(|i| datagram(&format!("f{i}"), 1_000))
        .collect();
    send_paced(xray.udp, &datagrams, 50_000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, peak_rss) = xray.rss_kib();
    let growth_kib = peak_rss.saturating_sub(idle_rss);
    // The budget (3 MiB) plus in-flight request bodies (8 x 50 KB) and allocator slack.
    assert!(
        growth_kib < 8 * 1024,
        "RSS grew by {growth_kib} KiB (idle {idle_rss} KiB, peak {peak_rss} KiB)"
    );

    assert_eq!(
        tokio::task::block_in_place(|| xray.terminate(Duration::from_secs(10))),
        0
    );
    let (received, sent, rejected, dropped) = xray.exit_counts();
    assert_eq!(sent, 0);
    assert_eq!(rejected, 0);
    assert_eq!(
        received, dropped,
        "every received segment is accounted for as dropped"
    );
    assert!(
        received > 10_000,
        "the flood must exceed the budget several times: received {received}"
    );
}

#[test]
fn flag_and_config_errors_exit_like_the_go_daemon() {
    let xray = env!("CARGO_BIN_EXE_xray");
    let run = |args: &[&str]| Command::new(xray).args(args).env_clear().output().unwrap();
    let undefined = run(&["-x"]);
    assert_eq!(undefined.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&undefined.stderr),
        "flag provided but not defined: -x\n"
    );
    assert!(String::from_utf8_lossy(&undefined.stdout).starts_with("Usage: X-Ray [options]\n"));
    let help = run(&["-h"]);
    assert_eq!(help.status.code(), Some(0));
    let version = run(&["-v"]);
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("AWS X-Ray daemon version: "));
    let small = run(&["-m", "2", "-o", "-n", "us-east-1"]);
    assert_eq!(small.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&small.stderr)
        .contains("[Error] Not enough Buffers Memory Allocated."));
    let no_region = Command::new(xray)
        .args([
            "-b",
            "127.0.0.1:0",
            "--admin-address",
            "127.0.0.1:0",
            "-t",
            "127.0.0.1:0",
        ])
        .env_clear()
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(no_region.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_region.stdout).contains("Cannot fetch region variable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file_and_the_log_level_changes_live() {
    let fake = FakeXray::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, log) = (dir.path().join("cfg.yaml"), dir.path().join("xray.log"));
    let udp = format!("127.0.0.1:{}", free_udp_port());
    let write_config = |level: &str| {
        std::fs::write(
            &config,
            format!(
                "Version: 2\nSocket:\n  UDPAddress: \"{udp}\"\nLogging:\n  LogLevel: {level}\n"
            ),
        )
        .unwrap()
    };
    write_config("info");
    let child = Command::new(env!("CARGO_BIN_EXE_xray"))
        .args([
            "-o",
            "-n",
            fake_xray::REGION,
            "--endpoint",
            &fake.endpoint(),
            "--admin-address",
            "127.0.0.1:0",
        ])
        .args(["-c", config.to_str().unwrap(), "-f", log.to_str().unwrap()])
        .env_clear()
        .env("AWS_ACCESS_KEY_ID", fake_xray::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", fake_xray::SECRET_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut xray = Process {
        child,
        log,
        _dir: dir,
        udp: udp.parse().unwrap(),
    };
    xray.wait_for_log("Starting admin server", Duration::from_secs(10));
    let junk = || {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .send_to(b"junk", xray.udp)
            .unwrap()
    };
    junk();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !xray.log().contains("[Debug]"),
        "info level logs no debug lines"
    );

    write_config("debug");
    Command::new("kill")
        .args(["-HUP", &xray.child.id().to_string()])
        .status()
        .unwrap();
    xray.wait_for_log(
        "Reloaded configuration (SIGHUP): changed Logging.LogLevel",
        Duration::from_secs(5),
    );
    junk();
    xray.wait_for_log(
        "[Debug] Refused segment (missing_header)",
        Duration::from_secs(5),
    );
    assert_eq!(
        tokio::task::block_in_place(|| xray.terminate(Duration::from_secs(10))),
        0
    );
}

/// The runtime's worker threads of a running daemon, by thread name.
fn runtime_workers(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "tokio-rt-worker")
        .count()
}

/// One runtime worker (UDP has a thread of its own), unless `TOKIO_WORKER_THREADS` says
/// otherwise; either way segments flow.
#[tokio::test]
async fn the_runtime_has_one_worker_unless_tokio_worker_threads_is_set() {
    for (env, workers) in [(None, 1), (Some("3"), 3)] {
        let fake = FakeXray::start().await;
        let endpoint = fake.endpoint();
        let mut vars = vec![
            ("AWS_ACCESS_KEY_ID", fake_xray::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", fake_xray::SECRET_KEY),
        ];
        vars.extend(env.map(|threads| ("TOKIO_WORKER_THREADS", threads)));
        let xray = crate::process::Xray::start(&["--endpoint", &endpoint], &vars).await;
        assert_eq!(runtime_workers(xray.pid()), workers, "{env:?}");
        send_paced(xray.udp().await, &[datagram("w", 100)], 1000).await;
        let documents = fake.wait_for_documents(1, Duration::from_secs(5)).await;
        assert_eq!(crate::ids(&documents), ["w"], "{}", xray.log());
    }
}

/// Once started, the real binary's relocation table pages are no longer in memory (the
/// kernel's page map says so for each), and the daemon works on.
#[tokio::test]
async fn the_relocation_table_is_out_of_memory_once_started() {
    let fake = FakeXray::start().await;
    let endpoint = fake.endpoint();
    let xray = crate::process::Xray::start(
        &["--endpoint", &endpoint],
        &[
            ("AWS_ACCESS_KEY_ID", fake_xray::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", fake_xray::SECRET_KEY),
        ],
    )
    .await;
    let line = xray
        .wait_for_log("KB of relocation table pages at 0x", Duration::from_secs(5))
        .await;
    let range = line.rsplit(" at ").next().unwrap().trim();
    let (start, end) = range.split_once('-').unwrap();
    let parse = |hex: &str| u64::from_str_radix(hex.trim_start_matches("0x"), 16).unwrap();
    let (start, end) = (parse(start), parse(end));
    assert!(end - start >= 64 * 1024, "{line}");
    // One 8-byte entry per 4 KB page; bit 63 is "present" (readable without privileges).
    let Ok(mut pagemap) = std::fs::File::open(format!("/proc/{}/pagemap", xray.pid())) else {
        return; // a kernel without /proc/PID/pagemap: nothing more to check
    };
    let mut entries = vec![0u8; usize::try_from((end - start) / 4096 * 8).unwrap()];
    pagemap
        .seek(std::io::SeekFrom::Start(start / 4096 * 8))
        .unwrap();
    pagemap.read_exact(&mut entries).unwrap();
    let present = entries
        .chunks_exact(8)
        .filter(|entry| u64::from_le_bytes((*entry).try_into().unwrap()) >> 63 == 1)
        .count();
    assert_eq!(present, 0, "relocation pages still present");
    send_paced(xray.udp().await, &[datagram("after", 100)], 1000).await;
    let documents = fake.wait_for_documents(1, Duration::from_secs(5)).await;
    assert_eq!(crate::ids(&documents), ["after"]);
}

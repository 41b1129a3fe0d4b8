//! Hostile input: a UDP junk flood at full speed (random bytes, truncated headers, 64 KiB
//! datagrams, empty datagrams) beside valid senders; memory under a sustained flood above
//! what the backend accepts; and the inputs the fuzzers found (see `fuzz/` and
//! `scripts/fuzz.sh`), kept as regression tests.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::faults::{unique_ids, Scrape, Xray};
use crate::ids;
use crate::{args_for, datagram, eventually, send_paced, FakeXray, Running};

/// The kernel's receive-buffer overflow count for the UDP socket bound to `addr`, from the
/// `drops` column of /proc/net/udp (0 if the socket is not listed).
pub fn kernel_drops(addr: SocketAddr) -> u64 {
    let table = std::fs::read_to_string("/proc/net/udp").expect("Linux lists UDP sockets");
    let port = format!(":{:04X}", addr.port());
    table
        .lines()
        .skip(1)
        .filter(|line| {
            line.split_whitespace()
                .nth(1)
                .is_some_and(|local| local.ends_with(&port))
        })
        .filter_map(|line| line.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// The largest UDP payload over IPv4 (65,535 - 20 IP - 8 UDP): the "64 KiB datagram".
const MAX_UDP_PAYLOAD: usize = 65_507;

/// Junk of every kind the header rules refuse, chosen by `kind`; never empty.
fn junk(rng: &mut fastrand::Rng, kind: u64) -> Vec<u8> {
    const HEADER: &[u8] = br#"{"format":"json","version":1}"#;
    match kind % 6 {
        // Random bytes, possibly with newlines: refused for one reason or another.
        0 => {
            let len = rng.usize(1..1_500);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            bytes[0] = b'x'; // Never a valid header by chance.
            bytes
        }
        // A truncated header and nothing else.
        1 => HEADER[..rng.usize(1..HEADER.len())].to_vec(),
        // A truncated header, then a document.
        2 => [&HEADER[..rng.usize(1..HEADER.len())], b"\n{\"id\":\"x\"}"].concat(),
        // A complete header with no document.
        3 => [HEADER, b"\n"].concat(),
        // 64 KiB of junk without a newline.
        4 => vec![b'z'; MAX_UDP_PAYLOAD],
        // A wrong version, then a 64 KiB document.
        _ => {
            let mut bytes = br#"{"format":"json","version":2}"#.to_vec();
            bytes.push(b'\n');
            bytes.resize(MAX_UDP_PAYLOAD, b'a');
            bytes
        }
    }
}

/// What a flood thread sent.
#[derive(Debug, Default, Clone, Copy)]
struct Flooded {
    junk: u64,
    empty: u64,
}

/// Sends junk (and every 16th datagram an empty one) as fast as one socket can, for at most
/// `duration` (and at most 2 million datagrams). The junk is made up front so the flood runs
/// at the speed of the socket, not of the generator.
fn flood(target: SocketAddr, duration: Duration) -> std::thread::JoinHandle<Flooded> {
    let mut rng = fastrand::Rng::with_seed(8);
    let pool: Vec<Vec<u8>> = (0..240).map(|i| junk(&mut rng, i)).collect();
    std::thread::spawn(move || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sent = Flooded::default();
        let started = Instant::now();
        for i in 0usize..2_000_000 {
            if i % 256 == 0 && started.elapsed() >= duration {
                break;
            }
            if i % 16 == 15 {
                if socket.send_to(&[], target).is_ok() {
                    sent.empty += 1;
                }
            } else if socket.send_to(&pool[i % pool.len()], target).is_ok() {
                sent.junk += 1;
            }
        }
        sent
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junk_flood_is_counted_as_rejected_and_valid_senders_are_served_alongside() {
    let fake = FakeXray::start().await;
    let daemon = Running::start(args_for(&fake)).await;
    let mut ready = false;
    for _ in 0..100 {
        ready = crate::http("GET", daemon.admin, "/readyz").await.0 == 200;
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready, "ready before the flood");
    let flooding = flood(daemon.udp, Duration::from_secs(3));

    // A valid sender beside the flood, and the admin server answering throughout.
    let valid: Vec<String> = (0..600).map(|i| format!("valid{i:011}")).collect();
    let datagrams: Vec<Vec<u8>> = valid.iter().map(|id| datagram(id, 300)).collect();
    let udp = daemon.udp;
    let sending = tokio::spawn(async move { send_paced(udp, &datagrams, 250).await });
    let mut slowest_probe = Duration::ZERO;
    while !sending.is_finished() {
        let asked = Instant::now();
        let (status, body) = crate::http("GET", daemon.admin, "/readyz").await;
        assert_eq!(status, 200, "readiness during the flood: {body}");
        slowest_probe = slowest_probe.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sending.await.unwrap();
    let sent = tokio::task::spawn_blocking(|| flooding.join().unwrap())
        .await
        .unwrap();
    assert!(
        slowest_probe < Duration::from_secs(1),
        "/readyz took {slowest_probe:?} during the flood"
    );

    // Everything the kernel queued is read; what it could not queue, it counted.
    let offered = sent.junk + valid.len() as u64;
    let arrived = || daemon.total("xray_segments_received_total") + kernel_drops(daemon.udp);
    eventually(Duration::from_secs(5), || arrived() >= offered).await;
    assert!(
        eventually(Duration::from_secs(5), || daemon.budget.held_segments()
            == 0)
        .await,
        "valid segments still held"
    );
    let received = daemon.total("xray_segments_received_total");
    let drops = kernel_drops(daemon.udp);
    eprintln!(
        "junk flood: {} junk + {} empty + {} valid datagrams sent; {received} received, {drops} kernel drops",
        sent.junk,
        sent.empty,
        valid.len()
    );
    assert!(sent.junk > 10_000, "a flood: only {} sent", sent.junk);
    // Empty datagrams are ignored entirely (not even received); the kernel may drop some.
    assert!(
        received + drops >= offered && received + drops <= offered + sent.empty,
        "received {received} + kernel drops {drops} vs {offered} non-empty (+{} empty) sent",
        sent.empty
    );
    assert!(received <= offered, "empty datagrams were counted");
    // The daemon counts the kernel's drops itself, from the same table.
    let own_count = || daemon.total("xray_udp_kernel_drops_total");
    eventually(Duration::from_secs(3), || own_count() == drops).await;
    assert_eq!(own_count(), drops, "xray_udp_kernel_drops_total");

    // Every valid datagram that got in is delivered, once; every junk one that got in is
    // rejected.
    let delivered = unique_ids(&fake.documents());
    let valid_set: HashSet<String> = valid.iter().cloned().collect();
    assert!(delivered.is_subset(&valid_set));
    let valid_lost = valid.len() as u64 - delivered.len() as u64;
    assert!(
        valid_lost <= drops,
        "{valid_lost} valid segments lost, only {drops} kernel drops"
    );
    let rejected = daemon.total("xray_segments_rejected_total");
    assert_eq!(
        rejected,
        received - delivered.len() as u64,
        "every junk datagram that arrived is rejected"
    );
    assert!(rejected + drops >= sent.junk);
    assert_eq!(daemon.total("xray_segments_dropped_total"), 0);
    assert_eq!(
        daemon.total("xray_segments_sent_total"),
        delivered.len() as u64
    );
    daemon.assert_accounting_identity().await;

    // After the flood, valid senders lose nothing.
    let after: Vec<Vec<u8>> = (0..200)
        .map(|i| datagram(&format!("after{i:011}"), 300))
        .collect();
    send_paced(daemon.udp, &after, 1_000).await;
    let expected = delivered.len() + 200;
    let documents = fake
        .wait_for_documents(expected, Duration::from_secs(5))
        .await;
    assert_eq!(unique_ids(&documents).len(), expected);
    daemon.assert_accounting_identity().await;
    daemon.shutdown().await;
}

#[tokio::test]
async fn empty_datagrams_are_ignored_entirely() {
    let fake = FakeXray::start().await;
    let daemon = Running::start(args_for(&fake)).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for round in 0..10 {
        for _ in 0..100 {
            socket.send_to(&[], daemon.udp).await.unwrap();
        }
        send_paced(daemon.udp, &[datagram(&format!("e{round}"), 100)], 1000).await;
    }
    let documents = fake.wait_for_documents(10, Duration::from_secs(5)).await;
    assert_eq!(unique_ids(&documents).len(), 10);
    assert_eq!(kernel_drops(daemon.udp), 0);
    assert_eq!(
        daemon.total("xray_segments_received_total"),
        10,
        "1,000 empty datagrams are not received segments"
    );
    assert_eq!(daemon.total("xray_segments_rejected_total"), 0);
    let bytes = daemon.total("xray_received_bytes_total");
    let expected: usize = (0..10)
        .map(|round| datagram(&format!("e{round}"), 100).len())
        .sum();
    assert_eq!(bytes, expected as u64);
    daemon.assert_accounting_identity().await;
    daemon.shutdown().await;
}

/// Sends 1 KB datagrams at `per_second` from a thread for `duration`; returns the count.
fn steady(
    target: SocketAddr,
    per_second: u64,
    duration: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    // One datagram, its id (in `id` and `trace_id`) rewritten in place for each send.
    let mut template = datagram("m000000000000000", 1_000);
    let id_at: Vec<usize> = (0..template.len() - 16)
        .filter(|&at| &template[at..at + 16] == b"m000000000000000")
        .map(|at| at + 1)
        .collect();
    assert_eq!(id_at.len(), 2);
    std::thread::spawn(move || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < duration && !stop.load(Ordering::Relaxed) {
            let due = (started.elapsed().as_secs_f64() * per_second as f64) as u64;
            while sent < due {
                let digits = format!("{sent:015}");
                for &at in &id_at {
                    template[at..at + 15].copy_from_slice(digits.as_bytes());
                }
                socket.send_to(&template, target).unwrap();
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        sent
    })
}

/// A sustained flood (about 60 MB over 3 s) above what a slow backend accepts, into the
/// real binary with an 8 MB budget: resident memory grows by less than the budget plus the
/// overhead the README states, the excess is dropped as `buffer_full`, and when the flood
/// stops the daemon delivers what it held and new segments at once.
///
/// `XRAY_TEST_BINARY=target/release/xray` measures a release build the same way; the
/// figures are printed (run with `--nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sustained_flood_keeps_memory_within_the_budget_and_recovers_at_once() {
    const BUDGET_MIB: u64 = 8;
    let fake = FakeXray::start().await;
    // The backend takes about 8 x 50 segments per 0.4 s (1,000/s); the flood is 20,000/s.
    let flood_for = Duration::from_secs(3);
    let xray = Xray::start(
        &fake,
        "debug",
        &["-m", &BUDGET_MIB.to_string(), "--concurrency", "8"],
        &[],
    );
    // Warm up: the first upload builds the HTTP client and its TLS configuration, which
    // belong to the baseline, not to the flood.
    send_paced(xray.udp, &[datagram("warm-up", 1_000)], 1_000).await;
    assert_eq!(
        fake.wait_for_documents(1, Duration::from_secs(5))
            .await
            .len(),
        1
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (idle_kib, _) = xray.rss_kib();
    fake.slow(
        flood_for + Duration::from_millis(500),
        Duration::from_millis(400),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let offered = tokio::task::spawn_blocking({
        let (udp, stop) = (xray.udp, stop.clone());
        move || steady(udp, 20_000, flood_for, stop).join().unwrap()
    })
    .await
    .unwrap();
    let during = Scrape::of(xray.admin).await;
    let buffer_full = during.value(r#"xray_segments_dropped_total{reason="buffer_full"}"#);
    eprintln!(
        "memory: during the flood: {} received, {buffer_full} buffer_full, {} bytes of the budget used, {} held",
        during.value("xray_segments_received_total"),
        during.value("xray_buffer_used_bytes"),
        during.value("xray_buffer_segments"),
    );
    // About 60 MB offered; the budget holds 8 MB and the backend takes about 3 MB meanwhile.
    assert!(
        buffer_full > 10_000,
        "the flood overflows the budget: {buffer_full} buffer_full of {offered} offered"
    );
    assert!(during.value("xray_buffer_used_bytes") <= BUDGET_MIB << 20);

    // The flood has stopped and the backend is fast again: what is held drains, and a new
    // segment is delivered at once.
    let mut drained = false;
    for _ in 0..100 {
        let now = Scrape::of(xray.admin).await;
        let arrived = now.value("xray_segments_received_total") + kernel_drops(xray.udp);
        if arrived == offered + 1 && now.value("xray_buffer_segments") == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(drained, "what the daemon held is delivered within 10 s");
    let started = Instant::now();
    send_paced(xray.udp, &[datagram("after-flood", 100)], 1000).await;
    assert!(
        eventually(Duration::from_secs(3), || ids(&fake.documents())
            .contains(&"after-flood".to_string()))
        .await
    );
    assert!(started.elapsed() < Duration::from_millis(2_000));

    // The peak (VmHWM) covers the flood, the backlog and the burst of uploads that drained it.
    let (_, peak_kib) = xray.rss_kib();
    let growth_kib = peak_kib.saturating_sub(idle_kib);
    eprintln!(
        "memory: binary {:?}, budget {BUDGET_MIB} MiB, idle RSS {idle_kib} KiB, peak RSS {peak_kib} KiB, \
         growth {growth_kib} KiB = budget + {} KiB; {offered} datagrams offered",
        crate::faults::binary(),
        growth_kib as i64 - (BUDGET_MIB * 1024) as i64
    );
    // The budget, plus in-flight request bodies (8 x 50 x 1 KB) and about 3 MB of allocator
    // and queue slack (README, "Memory, retries and shutdown").
    assert!(
        growth_kib < BUDGET_MIB * 1024 + 400 + 3 * 1024,
        "RSS grew by {growth_kib} KiB with a {BUDGET_MIB} MiB budget"
    );
    let after = Scrape::of(xray.admin).await;
    assert_eq!(
        after.identity_gap(),
        0,
        "received = sent + rejected + dropped + buffered"
    );
    assert_eq!(after.value("xray_buffer_segments"), 0);
    let delivered = unique_ids(&fake.documents());
    assert_eq!(
        after.value("xray_segments_sent_total"),
        delivered.len() as u64
    );
    assert_eq!(
        after.value("xray_segments_received_total") + kernel_drops(xray.udp),
        offered + 2,
        "every datagram offered is received or counted by the kernel"
    );
    // The daemon's own count, read at most a second after the last datagram.
    let mut own_count = after.value("xray_udp_kernel_drops_total");
    for _ in 0..30 {
        if own_count == kernel_drops(xray.udp) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        own_count = Scrape::of(xray.admin)
            .await
            .value("xray_udp_kernel_drops_total");
    }
    assert_eq!(
        own_count,
        kernel_drops(xray.udp),
        "xray_udp_kernel_drops_total"
    );
    assert_eq!(
        after.value("xray_segments_dropped_total"),
        after.value(r#"xray_segments_dropped_total{reason="buffer_full"}"#),
        "no drop other than buffer_full"
    );
}

// ---------------------------------------------------------------------------------------------
// Inputs the fuzzers found (fuzz/, scripts/fuzz.sh), kept as regression tests.

/// Loads `loaded`'s `/debug/config` rendering as a `-c` file; the configuration must come
/// back unchanged (the rendering promises to be "itself a valid `-c` file").
fn assert_describe_round_trips(loaded: &xray_daemon::config::Loaded) {
    let described = xray_daemon::config::describe(&loaded.config, &loaded.sources);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("described.yaml");
    std::fs::write(&path, &described).unwrap();
    let flags = xray_daemon::cli::Flags {
        options: Vec::new(),
        config: Some(path),
    };
    let reloaded = xray_daemon::config::load(&flags, &Default::default(), &[])
        .unwrap_or_else(|e| panic!("the rendering does not load: {e}\n{described}"));
    assert_eq!(reloaded.config, loaded.config, "rendered as:\n{described}");
}

fn loaded_from_flags(args: &[&str]) -> xray_daemon::config::Loaded {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let Ok(xray_daemon::cli::Command::Run(flags)) = xray_daemon::cli::parse(&args) else {
        panic!("{args:?} parse");
    };
    xray_daemon::config::load(&flags, &Default::default(), &[]).expect("a valid configuration")
}

fn loaded_from_file(text: &[u8]) -> xray_daemon::config::Loaded {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cfg.yaml");
    std::fs::write(&path, text).unwrap();
    let flags = xray_daemon::cli::Flags {
        options: Vec::new(),
        config: Some(path),
    };
    xray_daemon::config::load(&flags, &Default::default(), &[]).expect("a valid configuration")
}

/// fuzz/regressions/cli_flags/crash-5b51221ac626f229c2f4668792ea69f822f8bdbd: `-n` with a
/// value holding a newline. The value is rendered as a YAML block scalar and the source
/// comment (` # flag -n`) lands inside it, so the file loads with a different region.
#[test]
fn fuzz_cli_flags_a_value_with_a_newline_survives_the_config_rendering() {
    assert_describe_round_trips(&loaded_from_flags(&["-n", "su-sa-\u{FFFD}0\n-o"]));
}

/// fuzz/regressions/config_file/crash-17baaa69cb9ff8e8174bd4851ba7dbbf1b07fbf5 (shortened):
/// a quoted `LogLevel` holding carriage returns. Its rendering is not valid YAML at all.
#[test]
fn fuzz_config_file_a_value_with_carriage_returns_survives_the_config_rendering() {
    assert_describe_round_trips(&loaded_from_file(
        b"Version: 2\nLogging:\n  LogLevel: \"\r\r\rdebug\"\n",
    ));
}

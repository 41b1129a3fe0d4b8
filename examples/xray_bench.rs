//! `xray_bench`: the end-to-end load benchmark behind `scripts/bench.sh` (issue 7).
//!
//! One invocation starts a fake X-Ray endpoint (axum, in this process), then for every rate
//! and every run starts a fresh subject process on loopback, sends it `count` segments of
//! `size` bytes at `rate` per second from a dedicated pacing thread, and measures:
//! - delivered/sent (distinct segments seen by the fake), kernel drops (the `drops` column of
//!   `/proc/net/udp{,6}` for the subject's port) and subject drops (received but not delivered);
//! - the subject's CPU seconds over the send-and-drain window (`/proc/<pid>/stat` utime+stime,
//!   all threads, dead ones included) and µs of CPU per delivered segment;
//! - idle RSS (before sending), peak RSS (VmHWM) and end RSS;
//! - end-to-end latency (the send time is embedded in each document, read by the fake on
//!   receipt; both clocks are this process's monotonic clock): p50, p99, max.
//!
//! Subjects ("scenarios"): `daemon` is the real `xray` binary; `forwarder` is a minimal
//! forwarder (this binary re-executed with `--forwarder`: recvmmsg, batches of 50, one
//! keep-alive HTTP/1.1 connection, no signing), the floor measured in the same invocation;
//! `forwarder+sigv4` is that forwarder signing each request with the daemon's signer (SigV4's
//! least work: the key kept for the day; the body's SHA-256, the canonical request's and one
//! HMAC), the floor for a daemon, which must sign its uploads. Runs of the subjects are
//! interleaved so background load hits them alike. Medians are printed in a final markdown
//! table, with the issue's targets checked where the rates allow.
//!
//! Everything is bounded: a watchdog ends the whole benchmark after `--timeout` seconds, and
//! every child dies with this process (PR_SET_PDEATHSIG) or is killed when its run ends.
//!
//! `cargo run --release --example xray_bench -- --help` lists the flags.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

// ---------------------------------------------------------------------------------------
// Small pieces of libc (no libc crate in this project's dependencies).

mod sys {
    use std::ffi::{c_int, c_long, c_uint, c_ulong, c_void};

    pub const SIGINT: c_int = 2;
    pub const SIGKILL: c_int = 9;
    pub const SIGTERM: c_int = 15;
    pub const MSG_WAITFORONE: c_int = 0x10000;
    const PR_SET_PDEATHSIG: c_int = 1;
    const SC_CLK_TCK: c_int = 2;

    #[repr(C)]
    pub struct Iovec {
        pub base: *mut c_void,
        pub len: usize,
    }

    /// glibc's `struct msghdr` (Linux, 64-bit).
    #[repr(C)]
    pub struct Msghdr {
        pub name: *mut c_void,
        pub namelen: u32,
        pub iov: *mut Iovec,
        pub iovlen: usize,
        pub control: *mut c_void,
        pub controllen: usize,
        pub flags: c_int,
    }

    #[repr(C)]
    pub struct Mmsghdr {
        pub hdr: Msghdr,
        pub len: c_uint,
    }

    extern "C" {
        fn kill(pid: c_int, sig: c_int) -> c_int;
        fn prctl(option: c_int, ...) -> c_int;
        fn sysconf(name: c_int) -> c_long;
        fn getppid() -> c_int;
        fn gettid() -> c_int;
        fn setpriority(which: c_int, who: c_uint, prio: c_int) -> c_int;
        pub fn recvmmsg(
            fd: c_int,
            msgs: *mut Mmsghdr,
            vlen: c_uint,
            flags: c_int,
            timeout: *mut c_void,
        ) -> c_int;
    }

    pub fn signal(pid: u32, sig: c_int) -> bool {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { kill(pid as c_int, sig) == 0 }
    }

    /// In a freshly forked child: die when the parent (`parent`) dies.
    pub fn die_with_parent(parent: u32) -> std::io::Result<()> {
        // SAFETY: prctl(PR_SET_PDEATHSIG, sig) and getppid() are async-signal-safe syscalls.
        unsafe {
            if prctl(PR_SET_PDEATHSIG, SIGKILL as c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if getppid() as u32 != parent {
                return Err(std::io::Error::other("parent already gone"));
            }
        }
        Ok(())
    }

    /// Sets the calling thread's nice value (within its autogroup).
    pub fn set_thread_nice(nice: c_int) -> bool {
        const PRIO_PROCESS: c_int = 0;
        // SAFETY: plain syscalls on the calling thread's own id.
        unsafe { setpriority(PRIO_PROCESS, gettid() as c_uint, nice) == 0 }
    }

    pub fn clock_ticks_per_second() -> f64 {
        // SAFETY: sysconf has no preconditions.
        match unsafe { sysconf(SC_CLK_TCK) } {
            t if t > 0 => t as f64,
            _ => 100.0,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Clock shared by the sender and the fake: nanoseconds since the benchmark started.

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

// ---------------------------------------------------------------------------------------
// Options.

const USAGE: &str = "\
xray_bench: end-to-end load benchmark of the xray daemon against a fake X-Ray on loopback.

USAGE: xray_bench [OPTIONS]        (scripts/bench.sh builds and runs it)

  --rate LIST          segments per second, comma-separated (default 20000)
  --count N            segments per run (default: rate x --duration)
  --duration SECS      send time per run when --count is not given (default 10)
  --size BYTES         document size in bytes, header excluded (default 1000, min 256)
  --runs N             runs per rate and scenario; medians are reported (default 3)
  --budget MB          the daemon's -m memory budget (default 16)
  --scenarios LIST     daemon,forwarder,forwarder+sigv4 (default all; runs are interleaved);
                       forwarder+sigv4 is the forwarder signing with the daemon's signer (the
                       body's SHA-256, the canonical request's and one HMAC; the key kept)
  --daemon PATH        the xray binary (default <crate>/target/release/xray)
  --daemon-arg ARG     extra argument for the daemon (repeatable)
  --daemon-prefix CMD  run the daemon under CMD, e.g. 'valgrind --tool=callgrind
                       --callgrind-out-file=/tmp/cg.out' (split on spaces)
  --attach CMD         run CMD during each send window, {pid} replaced by the subject's pid,
                       stopped with SIGINT at the end (e.g. 'perf record -p {pid} -o f')
  --receive-buffer N   SO_RCVBUF asked by the forwarder (default 4194304, the daemon's default)
  --idle SECS          settle time before idle RSS is read and sending starts (default 2)
  --drain-timeout SECS longest wait for deliveries after sending ends (default 10)
  --quiet SECS         stop waiting after this long without a new delivery (default 3)
  --verify N           fully decode the first N requests of each run (default 20)
  --logs DIR           subject logs (default <crate>/target/xray-bench)
  --timeout SECS       hard limit for the whole benchmark (default 1800)
  --nice N             scheduling weight of this benchmark's autogroup (/proc/self/autogroup)
                       while it runs, so other sessions' compiles on a shared machine disturb
                       it less (default -10; 0 leaves it alone; restored at exit)
  --help
";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    Daemon,
    Forwarder,
    /// The forwarder signing as the daemon does: the floor for a daemon, which must sign.
    SigningForwarder,
}

impl Scenario {
    const ALL: [Scenario; 3] = [
        Scenario::Daemon,
        Scenario::Forwarder,
        Scenario::SigningForwarder,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Daemon => "daemon",
            Scenario::Forwarder => "forwarder",
            Scenario::SigningForwarder => "forwarder+sigv4",
        }
    }
}

#[derive(Debug, Clone)]
struct Options {
    rates: Vec<u64>,
    count: Option<u64>,
    duration: f64,
    size: usize,
    runs: usize,
    budget_mb: u64,
    scenarios: Vec<Scenario>,
    daemon: PathBuf,
    daemon_args: Vec<String>,
    daemon_prefix: Vec<String>,
    attach: Option<String>,
    receive_buffer: usize,
    idle: f64,
    drain_timeout: f64,
    quiet: f64,
    verify: u32,
    logs: PathBuf,
    timeout: f64,
    nice: i32,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut o = Options {
            rates: vec![20_000],
            count: None,
            duration: 10.0,
            size: 1000,
            runs: 3,
            budget_mb: 16,
            scenarios: Scenario::ALL.to_vec(),
            daemon: crate_dir.join("target/release/xray"),
            daemon_args: Vec::new(),
            daemon_prefix: Vec::new(),
            attach: None,
            receive_buffer: 4 * 1024 * 1024,
            idle: 2.0,
            drain_timeout: 10.0,
            quiet: 3.0,
            verify: 20,
            logs: crate_dir.join("target/xray-bench"),
            timeout: 1800.0,
            nice: -10,
        };
        let mut i = 0;
        while i < args.len() {
            let (flag, inline) = match args[i].split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (args[i].clone(), None),
            };
            i += 1;
            if flag == "--help" || flag == "-h" {
                return Err(String::new());
            }
            let value = match inline {
                Some(v) => v,
                None => {
                    let v = args
                        .get(i)
                        .cloned()
                        .ok_or(format!("{flag} needs a value"))?;
                    i += 1;
                    v
                }
            };
            let bad = |what: &str| format!("{flag}: invalid {what}: {value:?}");
            let num = |v: &str| {
                v.replace('_', "")
                    .parse::<f64>()
                    .ok()
                    .filter(|n| *n >= 0.0 && n.is_finite())
            };
            match flag.as_str() {
                "--rate" => {
                    o.rates = value
                        .split(',')
                        .map(|r| num(r).filter(|n| *n >= 1.0).map(|n| n as u64))
                        .collect::<Option<Vec<_>>>()
                        .ok_or(bad("rate"))?
                }
                "--count" => {
                    o.count = Some(num(&value).filter(|n| *n >= 1.0).ok_or(bad("count"))? as u64)
                }
                "--duration" => {
                    o.duration = num(&value).filter(|n| *n > 0.0).ok_or(bad("duration"))?
                }
                "--size" => o.size = num(&value).ok_or(bad("size"))? as usize,
                "--runs" => o.runs = num(&value).filter(|n| *n >= 1.0).ok_or(bad("runs"))? as usize,
                "--budget" => {
                    o.budget_mb = num(&value).filter(|n| *n >= 1.0).ok_or(bad("budget"))? as u64
                }
                "--scenarios" => {
                    o.scenarios = value
                        .split(',')
                        .map(|s| Scenario::ALL.into_iter().find(|c| c.name() == s.trim()))
                        .collect::<Option<Vec<_>>>()
                        .ok_or(bad("scenario list"))?
                }
                "--daemon" => o.daemon = PathBuf::from(value),
                "--daemon-arg" => o.daemon_args.push(value),
                "--daemon-prefix" => {
                    o.daemon_prefix = value.split_whitespace().map(str::to_owned).collect()
                }
                "--attach" => o.attach = Some(value),
                "--receive-buffer" => o.receive_buffer = num(&value).ok_or(bad("size"))? as usize,
                "--idle" => o.idle = num(&value).ok_or(bad("seconds"))?,
                "--drain-timeout" => o.drain_timeout = num(&value).ok_or(bad("seconds"))?,
                "--quiet" => o.quiet = num(&value).ok_or(bad("seconds"))?,
                "--verify" => o.verify = num(&value).ok_or(bad("count"))? as u32,
                "--logs" => o.logs = PathBuf::from(value),
                "--timeout" => {
                    o.timeout = num(&value).filter(|n| *n > 0.0).ok_or(bad("seconds"))?
                }
                "--nice" => {
                    o.nice = value
                        .parse()
                        .ok()
                        .filter(|n| (-20..=19).contains(n))
                        .ok_or(bad("nice value"))?
                }
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        if o.size < 256 || o.size > 60_000 {
            return Err(format!(
                "--size must be between 256 and 60000 (got {})",
                o.size
            ));
        }
        o.scenarios.sort();
        o.scenarios.dedup();
        Ok(o)
    }

    fn count_for(&self, rate: u64) -> u64 {
        self.count
            .unwrap_or(((rate as f64) * self.duration).round().max(1.0) as u64)
    }

    fn profiling(&self) -> bool {
        !self.daemon_prefix.is_empty()
    }
}

// ---------------------------------------------------------------------------------------
// Datagrams: a fixed-size template with the run, sequence number and send time stamped in.

const HEADER: &[u8] = b"{\"format\":\"json\",\"version\":1}\n";
/// The stamp key; the fake finds it in the escaped request body as `\"xray_bench\":\"`.
const STAMP_KEY: &str = "xray_bench";
const ESCAPED_MARK: &[u8] = br#"\"xray_bench\":\""#;
/// `RRRR:SSSSSSSSSS:TTTTTTTTTTTTTTTT`: run, sequence number, send time in ns.
const STAMP_LEN: usize = 4 + 1 + 10 + 1 + 16;

struct Template {
    datagram: Vec<u8>,
    trace_at: usize,
    id_at: usize,
    stamp_at: usize,
}

impl Template {
    /// A datagram whose document is exactly `size` bytes of compact JSON.
    fn new(size: usize, run: u32) -> Template {
        let head = "{\"trace_id\":\"1-65f0a1b2-";
        let mid1 = "\",\"id\":\"";
        let mid2 = format!(
            "\",\"name\":\"svc\",\"start_time\":1700000000.123,\"end_time\":1700000000.456,\
             \"http\":{{\"request\":{{\"method\":\"GET\",\"url\":\"http://svc/api\"}},\"response\":{{\"status\":200}}}},\
             \"annotations\":{{\"{STAMP_KEY}\":\""
        );
        let mid3 = "\"},\"metadata\":{\"pad\":\"";
        let tail = "\"}}";
        let fixed =
            head.len() + 24 + mid1.len() + 16 + mid2.len() + STAMP_LEN + mid3.len() + tail.len();
        assert!(
            size >= fixed,
            "document size {size} below the template's {fixed} bytes"
        );
        let mut d = HEADER.to_vec();
        d.extend_from_slice(head.as_bytes());
        let trace_at = d.len();
        d.extend_from_slice(&[b'0'; 24]);
        d.extend_from_slice(mid1.as_bytes());
        let id_at = d.len();
        d.extend_from_slice(&[b'0'; 16]);
        d.extend_from_slice(mid2.as_bytes());
        let stamp_at = d.len();
        d.extend_from_slice(format!("{run:04}:0000000000:0000000000000000").as_bytes());
        d.extend_from_slice(mid3.as_bytes());
        const PAD: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ-_.";
        d.extend((0..size - fixed).map(|i| PAD[i % PAD.len()]));
        d.extend_from_slice(tail.as_bytes());
        debug_assert_eq!(d.len(), HEADER.len() + size);
        Template {
            datagram: d,
            trace_at,
            id_at,
            stamp_at,
        }
    }

    fn stamp(&mut self, seq: u64, sent_ns: u64) -> &[u8] {
        let d = &mut self.datagram;
        write_hex(
            &mut d[self.trace_at..self.trace_at + 24],
            seq.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        write_hex(
            &mut d[self.id_at..self.id_at + 16],
            seq.wrapping_mul(0xff51_afd7_ed55_8ccd) | 1,
        );
        write_dec(&mut d[self.stamp_at + 5..self.stamp_at + 15], seq);
        write_dec(&mut d[self.stamp_at + 16..self.stamp_at + 32], sent_ns);
        d
    }
}

fn write_dec(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

fn write_hex(out: &mut [u8], mut v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 15) as usize];
        v >>= 4;
    }
}

fn parse_dec(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        let p = hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        i += p;
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Every stamp in a request body: (run, seq, sent_ns). `doc_size` lets the scan jump ahead:
/// an escaped document is never shorter than the document, so the next stamp is at least
/// `doc_size` bytes after this one.
fn scan_stamps(body: &[u8], doc_size: usize, out: &mut Vec<(u32, u64, u64)>) {
    let mut from = 0;
    while let Some(offset) = body.get(from..).and_then(|rest| find(rest, ESCAPED_MARK)) {
        let mark = from + offset;
        let at = mark + ESCAPED_MARK.len();
        let Some(stamp) = body.get(at..at + STAMP_LEN) else {
            break;
        };
        if let (Some(run), Some(seq), Some(sent)) = (
            parse_dec(&stamp[0..4]),
            parse_dec(&stamp[5..15]),
            parse_dec(&stamp[16..32]),
        ) {
            out.push((run as u32, seq, sent));
        }
        from = (at + STAMP_LEN).max(mark + doc_size.saturating_sub(32));
    }
}

// ---------------------------------------------------------------------------------------
// The fake X-Ray endpoint.

#[derive(Default)]
struct Recorder {
    run: u32,
    count: u64,
    doc_size: usize,
    seen: Vec<u64>,
    delivered: u64,
    duplicates: u64,
    stale: u64,
    latencies_ns: Vec<u64>,
    verify_left: u32,
    verified_docs: u64,
    bad_docs: u64,
    requests: u64,
}

#[derive(Default)]
struct FakeState {
    recorder: Mutex<Recorder>,
    delivered: AtomicU64,
    last_delivery_ns: AtomicU64,
    other_requests: AtomicU64,
}

impl FakeState {
    fn reset(&self, run: u32, count: u64, doc_size: usize, verify: u32) {
        let mut r = self.recorder.lock().unwrap();
        *r = Recorder {
            run,
            count,
            doc_size,
            seen: vec![0; count.div_ceil(64) as usize],
            latencies_ns: Vec::with_capacity(count as usize),
            verify_left: verify,
            ..Recorder::default()
        };
        self.delivered.store(0, Ordering::SeqCst);
    }

    fn record(&self, body: &[u8], received_ns: u64) {
        let doc_size = self.recorder.lock().unwrap().doc_size;
        let mut stamps = Vec::with_capacity(64);
        scan_stamps(body, doc_size, &mut stamps);
        let mut r = self.recorder.lock().unwrap();
        r.requests += 1;
        if r.verify_left > 0 {
            r.verify_left -= 1;
            let (good, bad) = verify_body(body, r.doc_size, stamps.len());
            r.verified_docs += good;
            r.bad_docs += bad;
        }
        let mut fresh = 0;
        for (run, seq, sent) in stamps {
            if run != r.run || seq >= r.count {
                r.stale += 1;
                continue;
            }
            let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
            if r.seen[word] & bit != 0 {
                r.duplicates += 1;
                continue;
            }
            r.seen[word] |= bit;
            r.delivered += 1;
            fresh += 1;
            r.latencies_ns.push(received_ns.saturating_sub(sent));
        }
        if fresh > 0 {
            self.delivered.fetch_add(fresh, Ordering::SeqCst);
            self.last_delivery_ns.store(received_ns, Ordering::SeqCst);
        }
    }
}

/// Decodes the body as JSON and checks each document; returns (good, bad) document counts.
fn verify_body(body: &[u8], doc_size: usize, stamps: usize) -> (u64, u64) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (0, stamps.max(1) as u64);
    };
    let Some(docs) = value
        .get("TraceSegmentDocuments")
        .and_then(|d| d.as_array())
    else {
        return (0, stamps.max(1) as u64);
    };
    let good = docs
        .iter()
        .filter(|d| {
            d.as_str().is_some_and(|s| {
                s.len() == doc_size
                    && s.starts_with("{\"trace_id\":\"1-")
                    && serde_json::from_str::<serde_json::Value>(s).is_ok()
            })
        })
        .count() as u64;
    let bad = docs.len() as u64 - good + (stamps as u64).abs_diff(docs.len() as u64);
    (good, bad)
}

const OK_BODY: &str = r#"{"UnprocessedTraceSegments":[]}"#;

async fn put_trace_segments(State(state): State<Arc<FakeState>>, body: Bytes) -> Response {
    state.record(&body, now_ns());
    ([(CONTENT_TYPE, "application/x-amz-json-1.1")], OK_BODY).into_response()
}

async fn other_call(State(state): State<Arc<FakeState>>) -> Response {
    state.other_requests.fetch_add(1, Ordering::Relaxed);
    ([(CONTENT_TYPE, "application/x-amz-json-1.1")], "{}").into_response()
}

fn start_fake(runtime: &tokio::runtime::Runtime, state: Arc<FakeState>) -> io::Result<SocketAddr> {
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let app = axum::Router::new()
            .route("/TraceSegments", axum::routing::post(put_trace_segments))
            .fallback(other_call)
            .layer(DefaultBodyLimit::disable())
            .with_state(state);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("fake X-Ray stopped: {e}");
            }
        });
        Ok(address)
    })
}

// ---------------------------------------------------------------------------------------
// Child processes: registered for the watchdog, killed when dropped.

static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

struct Proc {
    child: Child,
    name: String,
    log: PathBuf,
    grace: Duration,
}

impl Proc {
    fn spawn(
        argv: &[String],
        env: &[(&str, &str)],
        log: &Path,
        name: &str,
        grace: Duration,
    ) -> io::Result<Proc> {
        let file = std::fs::File::create(log)?;
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let parent = std::process::id();
        // SAFETY: the closure only makes async-signal-safe syscalls.
        unsafe {
            command.pre_exec(move || sys::die_with_parent(parent));
        }
        let child = command
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {}: {e}", argv[0])))?;
        CHILDREN.lock().unwrap().push(child.id());
        Ok(Proc {
            child,
            name: name.to_owned(),
            log: log.to_owned(),
            grace,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks the process to stop with `signal`, then kills it after the grace period.
    fn stop_with(&mut self, signal: i32) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        sys::signal(self.pid(), signal);
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
        eprintln!(
            "  {} did not stop within {:?}; killing it",
            self.name, self.grace
        );
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        CHILDREN
            .lock()
            .unwrap()
            .retain(|&pid| pid != self.child.id());
    }
}

fn start_watchdog(limit: Duration) {
    thread::spawn(move || {
        thread::sleep(limit);
        eprintln!("xray_bench: time limit of {limit:?} reached; killing children and exiting");
        for &pid in CHILDREN.lock().unwrap().iter() {
            sys::signal(pid, sys::SIGKILL);
        }
        restore_autogroup_nice();
        std::process::exit(3);
    });
}

/// The autogroup nice value this process found at start, when it changed it.
static AUTOGROUP_NICE: Mutex<Option<i32>> = Mutex::new(None);

fn read_autogroup_nice() -> Option<i32> {
    let text = std::fs::read_to_string("/proc/self/autogroup").ok()?;
    text.split_whitespace().last()?.parse().ok()
}

/// With autogroup scheduling, CPU is shared between sessions first: the weight of our own
/// session's group decides how much a concurrent compile elsewhere can take from the subject,
/// the sender and the fake. Returns a note for the report.
fn set_autogroup_nice(nice: i32) -> String {
    let Some(old) = read_autogroup_nice() else {
        return "no autogroup scheduling here: --nice not applied".to_owned();
    };
    if old == nice {
        return format!("autogroup nice {nice}");
    }
    match std::fs::write("/proc/self/autogroup", nice.to_string()) {
        Ok(()) => {
            *AUTOGROUP_NICE.lock().unwrap() = Some(old);
            format!("autogroup nice {nice} (was {old}; restored at exit)")
        }
        Err(e) => format!("could not set autogroup nice {nice} ({e}): running at {old}"),
    }
}

fn restore_autogroup_nice() {
    if let Some(old) = AUTOGROUP_NICE.lock().unwrap().take() {
        let _ = std::fs::write("/proc/self/autogroup", old.to_string());
    }
}

// ---------------------------------------------------------------------------------------
// /proc readings.

fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / sys::clock_ticks_per_second())
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// (bound, drops) of the UDP sockets bound to `port`, from /proc/net/udp and udp6.
fn udp_port_state(port: u16) -> (bool, u64) {
    let suffix = format!(":{port:04X}");
    let mut bound = false;
    let mut drops = 0;
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1).is_some_and(|local| local.ends_with(&suffix)) {
                bound = true;
                drops += fields
                    .last()
                    .and_then(|d| d.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    (bound, drops)
}

/// (busy, total) jiffies of the whole machine.
fn host_cpu() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn free_udp_port() -> io::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_tcp_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The daemon's non-zero drop and rejection counters from its admin `/metrics`, e.g.
/// `dropped{reason="buffer_full"}=14122`; empty when there are none (or no admin server).
fn daemon_loss_counters(admin_port: u16) -> String {
    let fetch = || -> io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", admin_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    };
    let Ok(text) = fetch() else {
        return String::new();
    };
    text.lines()
        .filter_map(|line| {
            let rest = line
                .strip_prefix("xray_segments_dropped_total")
                .map(|r| ("dropped", r))
                .or_else(|| {
                    line.strip_prefix("xray_segments_rejected_total")
                        .map(|r| ("rejected", r))
                })
                .or_else(|| {
                    // The daemon's own count of the kernel drops this harness reads itself.
                    line.strip_prefix("xray_udp_kernel_drops_total")
                        .map(|r| ("kernel_drops", r))
                })?;
            let (labels, value) = rest.1.rsplit_once(' ')?;
            let value: f64 = value.trim().parse().ok()?;
            (value > 0.0).then(|| format!("{}{labels}={value}", rest.0))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------
// The paced sender.

struct SendReport {
    sent: u64,
    errors: u64,
    seconds: f64,
    max_behind: u64,
}

/// The sender thread's nice value (relative to the subject and the fake, which run at 0).
const SENDER_NICE: i32 = -10;

/// Sends `count` datagrams at `rate`/s: every millisecond tick it sends what is due by then,
/// so the average rate is exact and bursts are at most one tick's worth (unless it fell
/// behind, which `max_behind` reports).
fn send_paced(
    target: SocketAddr,
    mut template: Template,
    rate: u64,
    count: u64,
) -> io::Result<SendReport> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(target)?;
    let start = Instant::now();
    let (mut sent, mut errors, mut max_behind) = (0u64, 0u64, 0u64);
    let mut tick = 0u64;
    while sent < count {
        let elapsed = start.elapsed().as_secs_f64();
        let due = (((elapsed * rate as f64) as u64) + 1).min(count);
        max_behind = max_behind.max(due.saturating_sub(sent));
        while sent < due {
            let datagram = template.stamp(sent, now_ns());
            if socket.send(datagram).is_err() {
                errors += 1;
            }
            sent += 1;
        }
        if sent >= count {
            break;
        }
        tick = tick.max((start.elapsed().as_micros() / 1000) as u64) + 1;
        let next = start + Duration::from_millis(tick);
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        }
    }
    Ok(SendReport {
        sent,
        errors,
        seconds: start.elapsed().as_secs_f64(),
        max_behind,
    })
}

// ---------------------------------------------------------------------------------------
// One run.

#[derive(Debug, Clone, Default)]
struct RunResult {
    scenario: Option<Scenario>,
    rate: u64,
    sent: u64,
    send_errors: u64,
    send_rate: f64,
    delivered: u64,
    duplicates: u64,
    kernel_drops: u64,
    subject_drops: u64,
    cpu_seconds: f64,
    us_per_segment: f64,
    idle_rss_kb: u64,
    peak_rss_kb: u64,
    end_rss_kb: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    bench_cpu_seconds: f64,
    other_load_pct: f64,
    bad_docs: u64,
    verified_docs: u64,
    requests: u64,
    failed: Option<String>,
    /// The daemon's own drop/rejection counters, when any is non-zero.
    daemon_counters: String,
}

struct Bench {
    options: Options,
    fake: Arc<FakeState>,
    endpoint: SocketAddr,
    next_run: u32,
}

impl Bench {
    fn subject(
        &self,
        scenario: Scenario,
        port: u16,
        admin_port: u16,
        run: u32,
    ) -> io::Result<Proc> {
        let log = self
            .options
            .logs
            .join(format!("run{run:04}-{}.log", scenario.name()));
        let env = [
            ("AWS_ACCESS_KEY_ID", "AKIDXRAYBENCH"),
            ("AWS_SECRET_ACCESS_KEY", "xray-bench-secret"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ];
        match scenario {
            Scenario::Daemon => {
                let o = &self.options;
                let mut argv = o.daemon_prefix.clone();
                argv.push(o.daemon.display().to_string());
                argv.extend(
                    [
                        "-o",
                        "-n",
                        "us-east-1",
                        "--endpoint",
                        &format!("http://{}", self.endpoint),
                        "-b",
                        &format!("127.0.0.1:{port}"),
                        "-t",
                        "127.0.0.1:0",
                        "--admin-address",
                        &format!("127.0.0.1:{admin_port}"),
                        "-m",
                        &o.budget_mb.to_string(),
                        "-l",
                        "error",
                    ]
                    .map(str::to_owned),
                );
                argv.extend(o.daemon_args.iter().cloned());
                let grace = if o.profiling() {
                    Duration::from_secs(120)
                } else {
                    Duration::from_secs(10)
                };
                Proc::spawn(&argv, &env, &log, "daemon", grace)
            }
            Scenario::Forwarder | Scenario::SigningForwarder => {
                let mut argv = vec![
                    std::env::current_exe()?.display().to_string(),
                    "--forwarder".to_owned(),
                    format!("127.0.0.1:{port}"),
                    self.endpoint.to_string(),
                    self.options.receive_buffer.to_string(),
                ];
                if scenario == Scenario::SigningForwarder {
                    argv.push("sign".to_owned());
                }
                Proc::spawn(&argv, &env, &log, "forwarder", Duration::from_secs(5))
            }
        }
    }

    fn run_once(&mut self, scenario: Scenario, rate: u64) -> RunResult {
        self.next_run += 1;
        let run = self.next_run;
        let mut result = RunResult {
            scenario: Some(scenario),
            rate,
            ..RunResult::default()
        };
        if let Err(e) = self.measure(scenario, rate, run, &mut result) {
            result.failed = Some(e);
        }
        result
    }

    fn measure(
        &mut self,
        scenario: Scenario,
        rate: u64,
        run: u32,
        out: &mut RunResult,
    ) -> Result<(), String> {
        let o = self.options.clone();
        let count = o.count_for(rate);
        let port = free_udp_port().map_err(|e| format!("no free port: {e}"))?;
        self.fake.reset(run, count, o.size, o.verify);
        let admin_port = free_tcp_port().map_err(|e| format!("no free port: {e}"))?;
        let mut subject = self
            .subject(scenario, port, admin_port, run)
            .map_err(|e| e.to_string())?;
        let pid = subject.pid();

        // Started when its UDP port shows up in /proc/net/udp.
        let start_limit = Duration::from_secs(if o.profiling() { 180 } else { 30 });
        let started = Instant::now();
        while !udp_port_state(port).0 {
            if let Some(status) = subject.exited() {
                return Err(format!(
                    "{} exited at start ({status}):\n{}",
                    subject.name,
                    subject.log_tail()
                ));
            }
            if started.elapsed() > start_limit {
                return Err(format!(
                    "{} did not bind 127.0.0.1:{port} within {start_limit:?}",
                    subject.name
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(Duration::from_secs_f64(o.idle));
        out.idle_rss_kb = proc_status_kb(pid, "VmRSS:").unwrap_or(0);

        let mut attached = match &o.attach {
            Some(command) => {
                let argv: Vec<String> = command
                    .split_whitespace()
                    .map(|a| a.replace("{pid}", &pid.to_string()))
                    .collect();
                let log = o.logs.join(format!("run{run:04}-attach.log"));
                let proc = Proc::spawn(
                    &argv,
                    &[],
                    &log,
                    "attached command",
                    Duration::from_secs(60),
                )
                .map_err(|e| e.to_string())?;
                thread::sleep(Duration::from_millis(500));
                Some(proc)
            }
            None => None,
        };

        let cpu0 = proc_cpu_seconds(pid).ok_or("cannot read the subject's CPU time")?;
        let bench_cpu0 = proc_cpu_seconds(std::process::id()).unwrap_or(0.0);
        let host0 = host_cpu();
        let template = Template::new(o.size, run);
        let target: SocketAddr = ([127, 0, 0, 1], port).into();
        let sender = thread::Builder::new()
            .name("sender".into())
            .spawn(move || {
                // The load generator goes first within our group, so the rate holds even
                // when the subject and the fake keep both cores busy.
                sys::set_thread_nice(SENDER_NICE);
                send_paced(target, template, rate, count)
            })
            .map_err(|e| e.to_string())?;
        let report = sender
            .join()
            .map_err(|_| "sender thread panicked".to_owned())?
            .map_err(|e| format!("sender: {e}"))?;
        out.sent = report.sent - report.errors;
        out.send_errors = report.errors;
        out.send_rate = report.sent as f64 / report.seconds.max(1e-9);
        if report.max_behind as f64 > rate as f64 / 100.0 + 2.0 {
            eprintln!(
                "  note: the sender fell behind by up to {} segments",
                report.max_behind
            );
        }

        // Drain: until every segment the kernel let through is delivered, or no delivery for
        // `quiet` seconds, or the drain timeout.
        let drops_after_send = udp_port_state(port).1;
        let expected = out.sent.saturating_sub(drops_after_send);
        let drain_start = Instant::now();
        loop {
            let delivered = self.fake.delivered.load(Ordering::SeqCst);
            if delivered >= expected {
                break;
            }
            let last = self.fake.last_delivery_ns.load(Ordering::SeqCst);
            let quiet_for = now_ns().saturating_sub(last) as f64 / 1e9;
            let drained_for = drain_start.elapsed().as_secs_f64();
            if (quiet_for > o.quiet && drained_for > o.quiet) || drained_for > o.drain_timeout {
                break;
            }
            if let Some(status) = subject.exited() {
                return Err(format!(
                    "{} exited during the run ({status}):\n{}",
                    subject.name,
                    subject.log_tail()
                ));
            }
            thread::sleep(Duration::from_millis(5));
        }
        let cpu1 = proc_cpu_seconds(pid).ok_or("cannot read the subject's CPU time")?;
        let bench_cpu1 = proc_cpu_seconds(std::process::id()).unwrap_or(0.0);
        let host1 = host_cpu();
        out.peak_rss_kb = proc_status_kb(pid, "VmHWM:").unwrap_or(0);
        out.end_rss_kb = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
        out.kernel_drops = udp_port_state(port).1;
        if scenario == Scenario::Daemon {
            out.daemon_counters = daemon_loss_counters(admin_port);
        }
        if let Some(attached) = attached.as_mut() {
            attached.stop_with(sys::SIGINT);
        }
        let status = subject.stop_with(sys::SIGTERM);
        drop(subject);

        let (latencies, recorder_summary) = {
            let mut r = self.fake.recorder.lock().unwrap();
            let latencies = std::mem::take(&mut r.latencies_ns);
            (
                latencies,
                (
                    r.delivered,
                    r.duplicates,
                    r.verified_docs,
                    r.bad_docs,
                    r.requests,
                    r.stale,
                ),
            )
        };
        let (delivered, duplicates, verified, bad, requests, stale) = recorder_summary;
        out.delivered = delivered;
        out.duplicates = duplicates;
        out.verified_docs = verified;
        out.bad_docs = bad;
        out.requests = requests;
        out.subject_drops = out
            .sent
            .saturating_sub(out.kernel_drops)
            .saturating_sub(delivered);
        out.cpu_seconds = cpu1 - cpu0;
        out.us_per_segment = if delivered > 0 {
            out.cpu_seconds * 1e6 / delivered as f64
        } else {
            f64::NAN
        };
        out.bench_cpu_seconds = bench_cpu1 - bench_cpu0;
        // What everything else on the machine used, as % of all its CPUs over the window.
        let ticks = sys::clock_ticks_per_second();
        let busy = (host1.0 - host0.0) as f64 / ticks;
        let total = (host1.1 - host0.1) as f64 / ticks;
        let others = (busy - out.cpu_seconds - out.bench_cpu_seconds).max(0.0);
        out.other_load_pct = if total > 0.0 {
            others * 100.0 / total
        } else {
            f64::NAN
        };
        let (p50, p99, max) = percentiles(latencies);
        (out.p50_ms, out.p99_ms, out.max_ms) = (p50, p99, max);
        if stale > 0 {
            eprintln!("  note: {stale} documents from earlier runs arrived late");
        }
        if let Some(status) = status.filter(|s| !s.success() && scenario == Scenario::Daemon) {
            eprintln!("  note: the daemon exited with {status}");
        }
        Ok(())
    }
}

fn percentiles(mut ns: Vec<u64>) -> (f64, f64, f64) {
    if ns.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    ns.sort_unstable();
    let at =
        |q: f64| ns[((ns.len() as f64 * q).ceil() as usize).clamp(1, ns.len()) - 1] as f64 / 1e6;
    (at(0.50), at(0.99), *ns.last().unwrap() as f64 / 1e6)
}

// ---------------------------------------------------------------------------------------
// Reporting.

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn mb(kb: f64) -> f64 {
    kb / 1024.0
}

fn print_run(i: usize, runs: usize, r: &RunResult) {
    let name = r.scenario.map_or("?", Scenario::name);
    if let Some(error) = &r.failed {
        println!(
            "  {name:<9} {:>6}/s run {}/{}: FAILED: {error}",
            r.rate,
            i + 1,
            runs
        );
        return;
    }
    println!(
        "  {name:<9} {:>6}/s run {}/{}: delivered {}/{} (kernel drops {}, {} drops {}, dup {}), \
         sent at {:.0}/s, CPU {:.3} s = {:.2} us/seg, RSS idle {:.1} peak {:.1} end {:.1} MB, \
         latency p50 {:.2} p99 {:.2} max {:.1} ms, bench CPU {:.2} s, other load {:.0}%{}",
        r.rate,
        i + 1,
        runs,
        r.delivered,
        r.sent,
        r.kernel_drops,
        name,
        r.subject_drops,
        r.duplicates,
        r.send_rate,
        r.cpu_seconds,
        r.us_per_segment,
        mb(r.idle_rss_kb as f64),
        mb(r.peak_rss_kb as f64),
        mb(r.end_rss_kb as f64),
        r.p50_ms,
        r.p99_ms,
        r.max_ms,
        r.bench_cpu_seconds,
        r.other_load_pct,
        if r.bad_docs > 0 {
            format!(", {} BAD DOCUMENTS", r.bad_docs)
        } else {
            String::new()
        } + &if r.daemon_counters.is_empty() {
            String::new()
        } else {
            format!("; daemon metrics: {}", r.daemon_counters)
        },
    );
}

struct Medians {
    runs: usize,
    failed: usize,
    sent: f64,
    delivered: f64,
    kernel_drops: f64,
    subject_drops: f64,
    max_loss: u64,
    send_rate: f64,
    cpu: f64,
    us: f64,
    idle: f64,
    peak: f64,
    end: f64,
    p50: f64,
    p99: f64,
    max: f64,
    other: f64,
    bad: u64,
}

fn medians(results: &[&RunResult]) -> Medians {
    let ok: Vec<&&RunResult> = results.iter().filter(|r| r.failed.is_none()).collect();
    let m = |f: &dyn Fn(&RunResult) -> f64| median(ok.iter().map(|r| f(r)).collect());
    Medians {
        runs: results.len(),
        failed: results.len() - ok.len(),
        sent: m(&|r| r.sent as f64),
        delivered: m(&|r| r.delivered as f64),
        kernel_drops: m(&|r| r.kernel_drops as f64),
        subject_drops: m(&|r| r.subject_drops as f64),
        max_loss: ok
            .iter()
            .map(|r| r.sent - r.delivered.min(r.sent))
            .max()
            .unwrap_or(0),
        send_rate: m(&|r| r.send_rate),
        cpu: m(&|r| r.cpu_seconds),
        us: m(&|r| r.us_per_segment),
        idle: m(&|r| mb(r.idle_rss_kb as f64)),
        peak: m(&|r| mb(r.peak_rss_kb as f64)),
        end: m(&|r| mb(r.end_rss_kb as f64)),
        p50: m(&|r| r.p50_ms),
        p99: m(&|r| r.p99_ms),
        max: m(&|r| r.max_ms),
        other: m(&|r| r.other_load_pct),
        bad: ok.iter().map(|r| r.bad_docs).sum(),
    }
}

fn report(options: &Options, results: &[RunResult]) -> bool {
    let mut groups: BTreeMap<(u64, Scenario), Vec<&RunResult>> = BTreeMap::new();
    for r in results {
        groups
            .entry((r.rate, r.scenario.unwrap()))
            .or_default()
            .push(r);
    }
    println!();
    println!(
        "## Medians of {} run(s): {}-byte documents, -m {} MB budget",
        options.runs, options.size, options.budget_mb
    );
    println!();
    println!(
        "| scenario | rate/s | sent | delivered | kernel drops | subject drops | worst-run loss | achieved send rate/s \
         | CPU s | CPU µs/segment | idle RSS MB | peak RSS MB | end RSS MB | p50 ms | p99 ms | max ms | other load % |"
    );
    println!(
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut all: BTreeMap<(u64, Scenario), Medians> = BTreeMap::new();
    for (&(rate, scenario), runs) in &groups {
        let m = medians(runs);
        println!(
            "| {}{} | {rate} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.3} | {:.2} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.1} | {:.0} |",
            scenario.name(),
            if m.failed > 0 { format!(" ({} of {} runs failed)", m.failed, m.runs) } else { String::new() },
            m.sent,
            m.delivered,
            m.kernel_drops,
            m.subject_drops,
            m.max_loss,
            m.send_rate,
            m.cpu,
            m.us,
            m.idle,
            m.peak,
            m.end,
            m.p50,
            m.p99,
            m.max,
            m.other,
        );
        all.insert((rate, scenario), m);
    }
    let mut all_good = true;
    if all.values().any(|m| m.bad > 0) {
        println!(
            "\nWARNING: the fake found malformed documents in some requests (see the run lines)."
        );
        all_good = false;
    }

    println!();
    println!("## The issue's targets");
    println!();
    let mut checked = false;
    let mut check = |what: String, ok: bool| {
        checked = true;
        all_good &= ok;
        println!("- [{}] {what}", if ok { "x" } else { " " });
    };
    for rate in options.rates.iter().copied() {
        let [daemon, forwarder, signing] = Scenario::ALL.map(|s| all.get(&(rate, s)));
        for (floor, scenario) in [
            (forwarder, Scenario::Forwarder),
            (signing, Scenario::SigningForwarder),
        ] {
            if let (Some(d), Some(f)) = (daemon, floor) {
                println!(
                    "- {rate}/s: daemon {:.2} µs/segment vs {} {:.2} µs/segment = {:.2}x",
                    d.us,
                    scenario.name(),
                    f.us,
                    d.us / f.us
                );
            }
        }
        if let (20_000, Some(s)) = (rate, signing) {
            println!(
                "- 20000/s: the signing floor (the minimal forwarder, signing as the daemon \
                 must) is {:.2} µs/segment in this run",
                s.us
            );
        }
        if rate == 20_000 {
            if let Some(d) = daemon {
                check(
                    format!(
                        "CPU per delivered segment at 20,000/s <= 4 µs: {:.2} µs",
                        d.us
                    ),
                    d.us <= 4.0,
                );
                if let Some(f) = forwarder {
                    check(
                        format!(
                            "... and within 2x of the minimal forwarder: {:.2}x",
                            d.us / f.us
                        ),
                        d.us <= 2.0 * f.us,
                    );
                }
                check(
                    format!("peak RSS at 20,000/s <= 15 MB: {:.1} MB", d.peak),
                    d.peak <= 15.0,
                );
                check(format!("idle RSS <= 6 MB: {:.1} MB", d.idle), d.idle <= 6.0);
                check(
                    format!(
                        "p99 end-to-end latency at 20,000/s <= 5 ms: {:.2} ms",
                        d.p99
                    ),
                    d.p99 <= 5.0,
                );
            }
        }
        if rate == 100_000 {
            if let Some(d) = daemon {
                check(
                    format!(
                        "zero loss at 100,000/s (every run; kernel + daemon): worst run lost {} (median kernel {:.0}, daemon {:.0})",
                        d.max_loss, d.kernel_drops, d.subject_drops
                    ),
                    d.max_loss == 0 && d.failed == 0,
                );
            }
        }
    }
    if !checked {
        println!("- (no target applies to these rates: run --rate 20000,100000 with the daemon)");
    }
    all_good
}

// ---------------------------------------------------------------------------------------
// The minimal forwarder (this binary with `--forwarder LISTEN ENDPOINT RCVBUF`).

mod forwarder {
    use super::*;

    const BATCH: usize = 50;
    const MAX_WAIT: Duration = Duration::from_secs(1);
    const VLEN: usize = 64;
    const BUFFER: usize = 64 * 1024;
    const PREFIX: &[u8] = br#"{"TraceSegmentDocuments":["#;

    pub fn main(args: &[String]) -> ExitCode {
        match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("forwarder: {e}");
                ExitCode::from(1)
            }
        }
    }

    fn run(args: &[String]) -> io::Result<()> {
        let (listen, endpoint, rcvbuf, signing) = match args {
            [listen, endpoint, rcvbuf] => (listen, endpoint, rcvbuf, None),
            [listen, endpoint, rcvbuf, sign] if sign == "sign" => {
                (listen, endpoint, rcvbuf, Some(Signing::from_env()?))
            }
            _ => {
                return Err(io::Error::other(
                    "usage: --forwarder LISTEN ENDPOINT RCVBUF [sign]",
                ))
            }
        };
        let socket = UdpSocket::bind(listen.as_str())?;
        let rcvbuf: usize = rcvbuf.parse().map_err(io::Error::other)?;
        socket2::SockRef::from(&socket).set_recv_buffer_size(rcvbuf)?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut client = Client {
            endpoint: endpoint.clone(),
            stream: None,
            response: Vec::with_capacity(4096),
            signing,
        };

        let mut buffers = vec![0u8; VLEN * BUFFER];
        let mut iovecs: Vec<sys::Iovec> = buffers
            .chunks_mut(BUFFER)
            .map(|chunk| sys::Iovec {
                base: chunk.as_mut_ptr().cast::<c_void>(),
                len: BUFFER,
            })
            .collect();
        let mut messages: Vec<sys::Mmsghdr> = iovecs
            .iter_mut()
            .map(|iov| sys::Mmsghdr {
                hdr: sys::Msghdr {
                    name: std::ptr::null_mut(),
                    namelen: 0,
                    iov,
                    iovlen: 1,
                    control: std::ptr::null_mut(),
                    controllen: 0,
                    flags: 0,
                },
                len: 0,
            })
            .collect();
        let mut body = Vec::with_capacity(BATCH * 1200);
        let mut pending = 0usize;
        let mut oldest = Instant::now();
        loop {
            // SAFETY: `messages` points into `iovecs` and `buffers`, which outlive the call and
            // are not otherwise accessed while it runs.
            let n = unsafe {
                sys::recvmmsg(
                    socket.as_raw_fd(),
                    messages.as_mut_ptr(),
                    VLEN as u32,
                    sys::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                let error = io::Error::last_os_error();
                if !matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) {
                    return Err(error);
                }
            }
            for i in 0..n.max(0) as usize {
                let len = messages[i].len as usize;
                let datagram = &buffers[i * BUFFER..i * BUFFER + len];
                let Some(newline) = datagram.iter().position(|&b| b == b'\n') else {
                    continue;
                };
                let (header, document) = (&datagram[..newline], &datagram[newline + 1..]);
                if header != &HEADER[..HEADER.len() - 1] || document.is_empty() {
                    continue;
                }
                if pending == 0 {
                    body.clear();
                    body.extend_from_slice(PREFIX);
                    oldest = Instant::now();
                } else {
                    body.push(b',');
                }
                body.push(b'"');
                escape(&mut body, document);
                body.push(b'"');
                pending += 1;
                if pending == BATCH {
                    flush(&mut client, &mut body, &mut pending);
                }
            }
            if pending > 0 && oldest.elapsed() >= MAX_WAIT {
                flush(&mut client, &mut body, &mut pending);
            }
        }
    }

    fn flush(client: &mut Client, body: &mut Vec<u8>, pending: &mut usize) {
        body.extend_from_slice(b"]}");
        if let Err(e) = client.post(body) {
            eprintln!("forwarder: dropped a batch of {pending}: {e}");
        }
        *pending = 0;
    }

    /// The document as the inside of a JSON string: checked for UTF-8 (invalid input takes
    /// the slow lossy path), then escaped eight bytes at a time, since almost every byte of a
    /// segment document needs no escaping.
    fn escape(out: &mut Vec<u8>, text: &[u8]) {
        if std::str::from_utf8(text).is_err() {
            let lossy = String::from_utf8_lossy(text).into_owned();
            return escape_valid(out, lossy.as_bytes());
        }
        escape_valid(out, text);
    }

    #[cfg(test)]
    pub fn escape_for_test(out: &mut Vec<u8>, text: &[u8]) {
        escape(out, text);
    }

    fn escape_valid(out: &mut Vec<u8>, text: &[u8]) {
        let mut run = 0;
        let mut i = 0;
        while i < text.len() {
            if i + 8 <= text.len() {
                let word = u64::from_le_bytes(text[i..i + 8].try_into().unwrap());
                if !needs_escape(word) {
                    i += 8;
                    continue;
                }
            }
            let end = (i + 8).min(text.len());
            while i < end {
                let b = text[i];
                if b < 0x20 || b == b'"' || b == b'\\' {
                    out.extend_from_slice(&text[run..i]);
                    match b {
                        b'"' => out.extend_from_slice(br#"\""#),
                        b'\\' => out.extend_from_slice(br"\\"),
                        _ => {
                            const HEX: &[u8; 16] = b"0123456789abcdef";
                            out.extend_from_slice(&[
                                b'\\',
                                b'u',
                                b'0',
                                b'0',
                                HEX[usize::from(b >> 4)],
                                HEX[usize::from(b & 15)],
                            ]);
                        }
                    }
                    run = i + 1;
                }
                i += 1;
            }
        }
        out.extend_from_slice(&text[run..]);
    }

    /// Whether any byte of `word` is a control character, `"` or `\\` (SWAR zero-byte test).
    fn needs_escape(word: u64) -> bool {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let below_space = word.wrapping_sub(ONES * 0x20) & !word;
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        let is_quote = quote.wrapping_sub(ONES) & !quote;
        let is_backslash = backslash.wrapping_sub(ONES) & !backslash;
        (below_space | is_quote | is_backslash) & HIGH != 0
    }

    struct Client {
        endpoint: String,
        stream: Option<TcpStream>,
        response: Vec<u8>,
        signing: Option<Signing>,
    }

    impl Client {
        fn post(&mut self, body: &mut Vec<u8>) -> io::Result<()> {
            for attempt in 0..2 {
                match self.exchange(body) {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        self.stream = None;
                        if attempt == 1 {
                            return Err(e);
                        }
                    }
                }
            }
            Ok(())
        }

        fn exchange(&mut self, body: &mut Vec<u8>) -> io::Result<()> {
            if self.stream.is_none() {
                let stream = TcpStream::connect(self.endpoint.as_str())?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                self.stream = Some(stream);
            }
            let stream = self.stream.as_mut().unwrap();
            let signed = match &self.signing {
                Some(signing) => signing.headers(&self.endpoint, body)?,
                None => String::new(),
            };
            let head = format!(
                "POST /TraceSegments HTTP/1.1\r\nHost: {}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\n{signed}\r\n",
                self.endpoint,
                body.len()
            );
            stream.write_all(head.as_bytes())?;
            stream.write_all(body)?;
            // Read the response head, then its Content-Length bytes.
            self.response.clear();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.response.extend_from_slice(&chunk[..n]);
                if let Some(end) = find(&self.response, b"\r\n\r\n") {
                    break end + 4;
                }
            };
            let head = String::from_utf8_lossy(&self.response[..head_end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                return Err(io::Error::other(
                    head.lines().next().unwrap_or("").to_owned(),
                ));
            }
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while self.response.len() < head_end + length {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.response.extend_from_slice(&chunk[..n]);
            }
            Ok(())
        }
    }

    const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

    /// The daemon's own SigV4 signer (the key kept for the day) and the credentials it signs
    /// with.
    struct Signing {
        signer: xray_daemon::aws::sign::Signer,
        credentials: aws_credential_types::Credentials,
    }

    impl Signing {
        fn from_env() -> io::Result<Self> {
            let var = |name: &str| {
                std::env::var(name).map_err(|_| io::Error::other(format!("{name} is not set")))
            };
            Ok(Signing {
                signer: Default::default(),
                credentials: aws_credential_types::Credentials::new(
                    var("AWS_ACCESS_KEY_ID")?,
                    var("AWS_SECRET_ACCESS_KEY")?,
                    None,
                    None,
                    "environment",
                ),
            })
        }

        /// The signing header lines (each ending in CRLF) for posting `body` to `host`.
        /// `body` is lent to the signer without a copy and given back.
        fn headers(&self, host: &str, body: &mut Vec<u8>) -> io::Result<String> {
            let mut request = axum::http::Request::builder()
                .method("POST")
                .uri(format!("http://{host}/TraceSegments"))
                .header("host", host)
                .header("content-type", CONTENT_TYPE)
                .body(Bytes::new())
                .map_err(io::Error::other)?;
            *request.body_mut() = Bytes::from(std::mem::take(body));
            let signed = self
                .signer
                .sign(
                    &mut request,
                    &self.credentials,
                    "us-east-1",
                    SystemTime::now(),
                )
                .map_err(io::Error::other);
            let (parts, lent) = request.into_parts();
            *body = Vec::from(lent);
            signed?;
            let mut lines = String::new();
            for (name, value) in &parts.headers {
                if !matches!(name.as_str(), "host" | "content-type") {
                    let value = value.to_str().map_err(io::Error::other)?;
                    lines.push_str(&format!("{name}: {value}\r\n"));
                }
            }
            Ok(lines)
        }
    }
}

// ---------------------------------------------------------------------------------------

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--forwarder") {
        return forwarder::main(&args[1..]);
    }
    let options = match Options::parse(&args) {
        Ok(options) => options,
        Err(message) if message.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("xray_bench: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    EPOCH.get_or_init(Instant::now);
    start_watchdog(Duration::from_secs_f64(options.timeout));
    if options.scenarios.contains(&Scenario::Daemon) && !options.daemon.exists() {
        eprintln!(
            "xray_bench: no daemon binary at {} (cargo build --release --bin xray)",
            options.daemon.display()
        );
        return ExitCode::from(2);
    }
    if let Err(e) = std::fs::create_dir_all(&options.logs) {
        eprintln!("xray_bench: cannot create {}: {e}", options.logs.display());
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fake-xray")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("xray_bench: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let fake = Arc::new(FakeState::default());
    let endpoint = match start_fake(&runtime, Arc::clone(&fake)) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            eprintln!("xray_bench: cannot start the fake X-Ray: {e}");
            return ExitCode::from(1);
        }
    };

    let nice_note = match options.nice {
        0 => "autogroup nice unchanged".to_owned(),
        nice => set_autogroup_nice(nice),
    };
    let started = Instant::now();
    let date = humantime::format_rfc3339_seconds(SystemTime::now());
    println!(
        "xray_bench {date}: {} CPUs, load average {}; fake X-Ray at {endpoint}; daemon {}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        options.daemon.display(),
    );
    println!(
        "rates {:?}/s, counts {:?}, {}-byte documents, {} run(s) each, scenarios {:?}, -m {}, {nice_note}{}",
        options.rates,
        options
            .rates
            .iter()
            .map(|&r| options.count_for(r))
            .collect::<Vec<_>>(),
        options.size,
        options.runs,
        options
            .scenarios
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>(),
        options.budget_mb,
        if options.profiling() {
            format!(", daemon under {:?}", options.daemon_prefix.join(" "))
        } else {
            String::new()
        },
    );
    let mut bench = Bench {
        options: options.clone(),
        fake,
        endpoint,
        next_run: 0,
    };
    let mut results = Vec::new();
    for &rate in &options.rates {
        for i in 0..options.runs {
            for &scenario in &options.scenarios {
                let result = bench.run_once(scenario, rate);
                print_run(i, options.runs, &result);
                let _ = io::stdout().flush();
                results.push(result);
            }
        }
    }
    let all_met = report(&options, &results);
    if !all_met {
        println!(
            "\nSome checks failed: these are findings about the subject, not benchmark errors."
        );
    }
    println!(
        "\nTook {:.0} s. Subject logs in {}. Other requests at the fake (telemetry etc.): {}.",
        started.elapsed().as_secs_f64(),
        options.logs.display(),
        bench.fake.other_requests.load(Ordering::Relaxed)
    );
    drop(runtime);
    restore_autogroup_nice();
    if results.iter().any(|r| r.failed.is_some()) {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_survive_the_daemons_escaping() {
        let mut template = Template::new(1000, 7);
        let docs: Vec<Vec<u8>> = (0..3)
            .map(|seq| template.stamp(seq, 1_000 + seq)[HEADER.len()..].to_vec())
            .collect();
        assert!(docs.iter().all(|d| d.len() == 1000));
        let body =
            xray_daemon::upload::body::put_trace_segments_body(docs.iter().map(Vec::as_slice));
        let mut stamps = Vec::new();
        scan_stamps(&body, 1000, &mut stamps);
        assert_eq!(stamps, vec![(7, 0, 1000), (7, 1, 1001), (7, 2, 1002)]);
        assert_eq!(verify_body(&body, 1000, 3), (3, 0));
    }

    #[test]
    fn the_forwarder_escapes_like_the_daemon() {
        let cases: [&[u8]; 5] = [
            b"plain ascii text that is long enough for several words",
            b"{\"quoted\":\"va\\lue\"}\n\t\x01 and more text after it......",
            "unicode h\u{e9}llo \u{1F600} \"q\"".as_bytes(),
            b"1234567\"",
            b"",
        ];
        for case in cases {
            let mut ours = Vec::new();
            forwarder::escape_for_test(&mut ours, case);
            let mut daemon = Vec::new();
            xray_daemon::upload::body::escape_json_string_into(&mut daemon, case);
            // The same string once decoded (the daemon writes \n where we write \u000a).
            let decode = |escaped: &[u8]| -> String {
                serde_json::from_slice(&[b"\"", escaped, b"\""].concat()).unwrap()
            };
            assert_eq!(decode(&ours), decode(&daemon));
        }
    }
}

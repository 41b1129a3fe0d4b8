#!/usr/bin/env python3
"""Soak test of the xray daemon (issue 8): a steady segment rate for a bounded time, with
periodic config reloads (SIGHUP and POST /-/reload, changing Concurrency and the log level)
and backend hiccups (periods of 503), against a threaded fake X-Ray on loopback.

It prints, at every interval, the daemon's resident memory, open file descriptors (from
/proc/<pid>/fd), threads (/proc/<pid>/status) and counters (/metrics), and at the end a
verdict: memory, descriptors and threads flat; every segment delivered once or counted; the
accounting identity exact. Exit status 0 = PASS, 1 = FAIL, 2 = could not run.

Run it through scripts/soak.sh, which builds the release binary; standard library only.
"""

import argparse
import http.server
import json
import os
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HEADER = b'{"format":"json","version":1}\n'


class FakeXray:
    """PutTraceSegments on loopback: counts documents (and duplicates by id), answers 503
    while a hiccup is on, and `{"UnprocessedTraceSegments":[]}` otherwise."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ids = set()
        self.documents = 0
        self.duplicates = 0
        self.requests = 0
        self.refused = 0
        self.hiccup_until = 0.0
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with fake.lock:
                    fake.requests += 1
                    hiccup = time.monotonic() < fake.hiccup_until
                    if hiccup:
                        fake.refused += 1
                if hiccup:
                    self.reply(503, {"__type": "ServiceUnavailableException", "message": "soak hiccup"},
                               {"x-amzn-errortype": "ServiceUnavailableException"})
                    return
                if self.path != "/TraceSegments":
                    self.reply(200, {})
                    return
                try:
                    documents = json.loads(body).get("TraceSegmentDocuments", [])
                except ValueError:
                    self.reply(400, {"__type": "InvalidRequestException", "message": "bad json"})
                    return
                with fake.lock:
                    for document in documents:
                        fake.documents += 1
                        try:
                            segment_id = json.loads(document).get("id")
                        except ValueError:
                            segment_id = None
                        if segment_id in fake.ids:
                            fake.duplicates += 1
                        fake.ids.add(segment_id)
                self.reply(200, {"UnprocessedTraceSegments": []})

            def reply(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hiccup(self, seconds):
        with self.lock:
            self.hiccup_until = time.monotonic() + seconds

    def snapshot(self):
        with self.lock:
            return {"documents": self.documents, "unique": len(self.ids),
                    "duplicates": self.duplicates, "requests": self.requests, "refused": self.refused}


class Sender(threading.Thread):
    """Paced UDP sender: `rate` datagrams of about `size` bytes per second, unique ids."""

    def __init__(self, port, rate, size):
        super().__init__(daemon=True)
        self.port, self.rate, self.size = port, rate, size
        self.sent = 0
        self.stopping = threading.Event()

    def datagram(self, n):
        segment_id = f"{n:016x}"
        document = (f'{{"trace_id":"1-5f84c7a1-{n:024x}","id":"{segment_id}","name":"soak",'
                    f'"start_time":1,"end_time":2,"annotations":{{"pad":"')
        pad = max(0, self.size - len(document) - 3)
        return HEADER + (document + "x" * pad + '"}}').encode()

    def run(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        started = time.monotonic()
        while not self.stopping.is_set():
            due = int((time.monotonic() - started) * self.rate)
            while self.sent < due:
                sock.sendto(self.datagram(self.sent), ("127.0.0.1", self.port))
                self.sent += 1
            time.sleep(0.005)


def free_port(kind):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(admin):
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        name = series.split("{", 1)[0]
        try:
            number = float(value)
        except ValueError:
            continue
        values[series] = number
        values[name + "(sum)"] = values.get(name + "(sum)", 0.0) + number
    return values


def proc(pid, backend_port, admin_port):
    """(RSS KiB, open fds, of which TCP connections to the backend, threads). Connections
    accepted by the admin server (this script's own scrapes, closing) are left out of
    `proc.others`, the descriptors that must stay put."""
    status = open(f"/proc/{pid}/status").read()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kib = int(fields["VmRSS"].split()[0])
    threads = int(fields["Threads"])
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile
    backend_inodes, scrape_inodes = set(), set()
    suffix, admin = f":{backend_port:04X}", f":{admin_port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if len(f) <= 9:
                continue
            if f[2].endswith(suffix):
                backend_inodes.add(f[9])
            elif f[1].endswith(admin) and not f[2].endswith(":0000"):
                scrape_inodes.add(f[9])
    inode = lambda link: link[8:-1] if link.startswith("socket:[") else None
    backend = sum(1 for link in links if inode(link) in backend_inodes)
    proc.others = sorted(link for link in links
                         if inode(link) not in backend_inodes and inode(link) not in scrape_inodes)
    return rss_kib, len(links), backend, threads


def total(m, name):
    return int(m.get(name + "(sum)", 0))


def write_config(path, udp, admin, tcp, concurrency, level):
    with open(path, "w") as f:
        f.write("Version: 2\n"
                f"Concurrency: {concurrency}\n"
                "Socket:\n"
                f'  UDPAddress: "{udp}"\n'
                f'  TCPAddress: "{tcp}"\n'
                "Logging:\n"
                f"  LogLevel: {level}\n"
                "Admin:\n"
                f'  Address: "{admin}"\n')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--daemon", required=True, help="the xray binary")
    parser.add_argument("--duration", type=float, default=600, help="seconds (default 600)")
    parser.add_argument("--rate", type=int, default=300, help="segments per second (default 300)")
    parser.add_argument("--size", type=int, default=600, help="document bytes (default 600)")
    parser.add_argument("--budget", type=int, default=16, help="-m, MB (default 16)")
    parser.add_argument("--interval", type=float, default=15, help="seconds between reports (default 15)")
    parser.add_argument("--reload-every", type=float, default=30, help="seconds (default 30)")
    parser.add_argument("--hiccup-every", type=float, default=60, help="seconds (default 60)")
    parser.add_argument("--hiccup-seconds", type=float, default=5, help="seconds of 503 (default 5)")
    parser.add_argument("--show-fds", action="store_true",
                        help="print the descriptors other than X-Ray connections whenever they change")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds ignored by the verdict (default: the first hiccup and 30 s after it, "
                             "so retry state and the connection pool have grown once)")
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = args.hiccup_every + args.hiccup_seconds + 30
    if args.duration < 2 * args.warmup:
        args.warmup = args.duration / 2

    fake = FakeXray()
    udp_port = free_port(socket.SOCK_DGRAM)
    admin = f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"
    tcp = f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"
    udp = f"127.0.0.1:{udp_port}"
    work = tempfile.mkdtemp(prefix="xray-soak-")
    config = os.path.join(work, "cfg.yaml")
    log = os.path.join(work, "xray.log")
    write_config(config, udp, admin, tcp, 8, "info")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AWS_ACCESS_KEY_ID": "AKIDSOAK",
           "AWS_SECRET_ACCESS_KEY": "soak-secret", "AWS_EC2_METADATA_DISABLED": "true"}
    daemon = subprocess.Popen(
        [args.daemon, "-o", "-n", "us-east-1", "--endpoint", f"http://127.0.0.1:{fake.port}",
         "-c", config, "-f", log, "-m", str(args.budget), "--shutdown-timeout", "10s"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"soak: daemon pid {daemon.pid}, udp {udp}, admin {admin}, fake X-Ray :{fake.port}, "
          f"log {log}", flush=True)
    print(f"soak: {args.duration:.0f} s at {args.rate}/s of {args.size} B, budget {args.budget} MB, "
          f"reload every {args.reload_every:.0f} s, {args.hiccup_seconds:.0f} s of 503 every "
          f"{args.hiccup_every:.0f} s", flush=True)
    deadline = time.monotonic() + 15
    while True:
        try:
            metrics(admin)
            break
        except OSError:
            if time.monotonic() > deadline or daemon.poll() is not None:
                print("soak: the daemon did not start; log:\n" + open(log).read() if os.path.exists(log) else "",
                      file=sys.stderr)
                daemon.kill()
                return 2
            time.sleep(0.1)

    sender = Sender(udp_port, args.rate, args.size)
    sender.start()
    samples = []  # (t, rss_kib, fds, backend connections, threads, other fds)
    reloads = {"ok": 0, "failed": 0}
    started = time.monotonic()
    next_report, next_reload, next_hiccup = 0.0, args.reload_every, args.hiccup_every
    reload_count = 0
    shown_fds = None
    header = (f"{'t(s)':>6} {'rss(KiB)':>9} {'fds':>4} {'conn':>4} {'thr':>4} {'received':>9} {'sent':>9} "
              f"{'dropped':>7} {'rejected':>8} {'held':>6} {'inflight':>8} {'reloads':>7} {'503s':>6}")
    print(header, flush=True)
    failure = None
    try:
        while (now := time.monotonic() - started) < args.duration:
            if daemon.poll() is not None:
                failure = f"the daemon exited with {daemon.returncode}"
                break
            if now >= next_hiccup:
                fake.hiccup(args.hiccup_seconds)
                next_hiccup += args.hiccup_every
            if now >= next_reload:
                reload_count += 1
                concurrency = (8, 4, 2, 6)[reload_count % 4]
                level = ("info", "debug")[reload_count % 2]
                write_config(config, udp, admin, tcp, concurrency, level)
                if reload_count % 2:
                    os.kill(daemon.pid, signal.SIGHUP)
                    reloads["ok"] += 1
                else:
                    request = urllib.request.Request(f"http://{admin}/-/reload", method="POST", data=b"")
                    try:
                        with urllib.request.urlopen(request, timeout=10) as response:
                            reloads["ok" if response.status == 200 else "failed"] += 1
                    except OSError:
                        reloads["failed"] += 1
                next_reload += args.reload_every
            if now >= next_report:
                rss, fds, connections, threads = proc(daemon.pid, fake.port, int(admin.rsplit(":", 1)[1]))
                m = metrics(admin)
                samples.append((now, rss, fds, connections, threads, len(proc.others)))
                if args.show_fds and proc.others != shown_fds:
                    print(f"       fds: {' '.join(describe_fd(link) for link in proc.others)}", flush=True)
                    shown_fds = proc.others
                print(f"{now:6.0f} {rss:9d} {fds:4d} {connections:4d} {threads:4d} "
                      f"{total(m, 'xray_segments_received_total'):9d} {total(m, 'xray_segments_sent_total'):9d} "
                      f"{total(m, 'xray_segments_dropped_total'):7d} {total(m, 'xray_segments_rejected_total'):8d} "
                      f"{int(m.get('xray_buffer_segments', 0)):6d} {int(m.get('xray_upload_in_flight_batches', 0)):8d} "
                      f"{reloads['ok']:7d} {fake.snapshot()['refused']:6d}", flush=True)
                next_report += args.interval
            time.sleep(0.05)
    finally:
        sender.stopping.set()
        sender.join(timeout=5)

    # Let the backlog drain (no hiccup now), then judge.
    fake.hiccup(0)
    drained = False
    m = {}
    for _ in range(600):  # at most 60 s
        if daemon.poll() is not None:
            break
        m = metrics(admin)
        if m.get("xray_buffer_segments", 1) == 0 and \
                total(m, "xray_segments_received_total") + kernel_drops(udp_port) >= sender.sent:
            drained = True
            break
        time.sleep(0.1)
    drops = kernel_drops(udp_port)
    daemon.send_signal(signal.SIGTERM)
    try:
        code = daemon.wait(timeout=20)
    except subprocess.TimeoutExpired:
        daemon.kill()
        code = "killed"

    received = total(m, "xray_segments_received_total")
    sent = total(m, "xray_segments_sent_total")
    dropped = total(m, "xray_segments_dropped_total")
    rejected = total(m, "xray_segments_rejected_total")
    held = int(m.get("xray_buffer_segments", 0))
    backend = fake.snapshot()
    print(f"end: sender {sender.sent}, kernel drops {drops}; daemon received {received}, sent {sent}, "
          f"dropped {dropped}, rejected {rejected}, held {held}; fake documents {backend['documents']} "
          f"({backend['unique']} unique, {backend['duplicates']} duplicates), "
          f"{backend['requests']} requests ({backend['refused']} answered 503); "
          f"reloads {reloads}; exit {code}", flush=True)

    checks = []
    steady = [s for s in samples if s[0] >= args.warmup]
    if len(steady) >= 4:
        quarter = max(1, len(steady) // 4)
        first, last = steady[:quarter], steady[-quarter:]
        rss_first = statistics.median(s[1] for s in first)
        rss_last = statistics.median(s[1] for s in last)
        allowed = max(2048, rss_first * 0.05)
        checks.append((rss_last - rss_first <= allowed,
                       f"RSS flat: median {rss_first:.0f} KiB in the first quarter after warm-up, "
                       f"{rss_last:.0f} KiB in the last (allowed growth {allowed:.0f} KiB); "
                       f"min {min(s[1] for s in steady)}, max {max(s[1] for s in steady)} KiB"))
        # Pooled connections to X-Ray come and go with the load (at most one per concurrent
        # upload); every other descriptor must stay put.
        other = [s[5] for s in steady]
        other_first, other_last = max(other[:quarter]), max(other[-quarter:])
        checks.append((other_last <= other_first,
                       f"fds other than X-Ray connections flat: at most {other_first} in the first "
                       f"quarter, {other_last} in the last"))
        connections = max(s[3] for s in steady)
        checks.append((connections <= 8 + 2,
                       f"connections to X-Ray bounded by the largest Concurrency used (8): at most "
                       f"{connections}"))
        thr_first, thr_last = max(s[4] for s in first), max(s[4] for s in last)
        checks.append((thr_last <= thr_first + 2,
                       f"threads flat: at most {thr_first} in the first quarter, {thr_last} in the last"))
        minutes = (steady[-1][0] - steady[0][0]) / 60
        if minutes > 0:
            slope = (statistics.linear_regression([s[0] for s in steady], [s[1] for s in steady]).slope * 60
                     if len(steady) > 1 else 0.0)
            print(f"RSS trend after warm-up: {slope:+.0f} KiB/min over {minutes:.1f} min")
    else:
        checks.append((False, f"too few samples after warm-up ({len(steady)}): run longer"))
    checks.append((failure is None, failure or "the daemon ran throughout"))
    checks.append((drained, "the backlog drained within 60 s after the load stopped"))
    checks.append((received + drops == sender.sent,
                   f"every datagram sent was received or counted by the kernel "
                   f"({received} + {drops} vs {sender.sent})"))
    checks.append((received == sent + dropped + rejected + held,
                   f"accounting identity: {received} = {sent} + {dropped} + {rejected} + {held}"))
    checks.append((backend["duplicates"] == 0 and backend["unique"] == sent,
                   f"X-Ray got each segment once: {backend['unique']} unique, "
                   f"{backend['duplicates']} duplicates, daemon sent {sent}"))
    checks.append((reloads["failed"] == 0 and reloads["ok"] > 0, f"reloads: {reloads}"))
    checks.append((code == 0, f"exit code after SIGTERM: {code}"))
    ok = all(passed for passed, _ in checks)
    for passed, text in checks:
        print(f"  {'ok  ' if passed else 'FAIL'} {text}")
    print(f"VERDICT: {'PASS' if ok else 'FAIL'}", flush=True)
    return 0 if ok else 1


def describe_fd(link):
    """A socket's protocol and ports (from /proc/net), else the link itself."""
    if not link.startswith("socket:["):
        return link
    inode = link[8:-1]
    for table in ("tcp", "tcp6", "udp", "udp6", "unix"):
        try:
            rows = open(f"/proc/net/{table}").read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if table == "unix":
                if len(f) > 6 and f[6] == inode:
                    return "unix"
            elif len(f) > 9 and f[9] == inode:
                local, remote = (int(x.split(":")[1], 16) for x in (f[1], f[2]))
                return f"{table}:{local}->{remote}" if remote else f"{table}:{local}"
    return link


def kernel_drops(port):
    drops = 0
    suffix = f":{port:04X}"
    try:
        lines = open("/proc/net/udp").read().splitlines()[1:]
    except OSError:
        return 0
    for line in lines:
        fields = line.split()
        if len(fields) > 1 and fields[1].endswith(suffix):
            drops += int(fields[-1])
    return drops


if __name__ == "__main__":
    sys.exit(main())

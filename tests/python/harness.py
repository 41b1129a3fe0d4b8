"""Process and network helpers for the black-box tests of the `xray` binary.

Everything here talks to loopback only (127.0.0.1 / ::1), every wait has a
deadline, and every process started is stopped by the fixture that started it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[2]
XRAY_BIN = Path(os.environ.get("XRAY_BIN") or REPO / "target" / "debug" / "xray")
FIXTURES_DIR = REPO.parent / "shared" / "fixtures" / "sdk-datagrams"
NODE_DIR = REPO / "tests" / "node"
VENV_BIN = Path(sys.executable).parent

TEST_REGION = "us-east-1"
TEST_ACCESS_KEY = "testing"
TEST_SECRET_KEY = "testing"

# `2016-11-24T06:07:06Z [Info] message`
LOG_LINE_RE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:Z|[+-]\d\d:\d\d) \[(Debug|Info|Warn|Error|Trace|Critical)\] "
)


# --------------------------------------------------------------------------- ports


def free_port(kind: str = "tcp", host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago: bind port 0, read the port, close."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock_type = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}[kind]
    with socket.socket(family, sock_type) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def udp_port_bound(port: int) -> bool:
    """True if some UDP socket on this machine is bound to `port` (Linux /proc)."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    local = line.split()[1]
                    if int(local.rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            continue
    return False


def send_udp(address: tuple[str, int], payload: bytes) -> None:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.sendto(payload, address)


# --------------------------------------------------------------------------- waiting


def poll(fn: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    """Call fn until it returns something truthy; raise TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what} (last value: {last!r})")
        time.sleep(interval)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET url; returns (status, body). Raises OSError if nothing answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text exposition -> {(name, frozenset(labels.items())): value}."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if m:
            labels = frozenset(_LABEL_RE.findall(m.group(2) or ""))
            samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def metric(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 if none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


# --------------------------------------------------------------------------- env


def clean_env(extra: Optional[dict[str, str]] = None, tmp_dir: Optional[Path] = None) -> dict[str, str]:
    """The environment for a child process: no inherited AWS_*/XRAY_*/proxy
    settings, fake static credentials, IMDS disabled, loopback never proxied."""
    drop_prefixes = ("AWS_", "XRAY_")
    drop_names = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(drop_prefixes) and k.lower() not in drop_names
    }
    env.update(
        AWS_ACCESS_KEY_ID=TEST_ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=TEST_SECRET_KEY,
        AWS_EC2_METADATA_DISABLED="true",
        NO_PROXY="127.0.0.1,localhost,::1",
        no_proxy="127.0.0.1,localhost,::1",
    )
    if tmp_dir is not None:
        # Never read the developer's ~/.aws files.
        env["AWS_CONFIG_FILE"] = str(tmp_dir / "no-aws-config")
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_dir / "no-aws-credentials")
    if extra:
        env.update(extra)
    return env


# --------------------------------------------------------------------------- daemon


class DaemonError(AssertionError):
    """The daemon exited or never became ready; the message carries its log."""


@dataclass
class DaemonResult:
    returncode: Optional[int]
    log: str
    killed: bool = False  # True if SIGTERM did not stop it and it had to be SIGKILLed


@dataclass
class Daemon:
    proc: subprocess.Popen
    args: list[str]
    log_path: Path
    udp_port: Optional[int]
    tcp_port: Optional[int]
    admin_port: Optional[int]
    host: str = "127.0.0.1"
    stdout_path: Optional[Path] = None  # set when stdout is captured apart from stderr
    result: Optional[DaemonResult] = field(default=None)

    # -- addresses
    @property
    def udp_address(self) -> tuple[str, int]:
        assert self.udp_port is not None
        return (self.host, self.udp_port)

    @property
    def daemon_address(self) -> str:
        """`host:port` for AWS_XRAY_DAEMON_ADDRESS / SDK daemon_address (UDP port)."""
        return f"{self.host}:{self.udp_port}"

    @property
    def admin_url(self) -> str:
        assert self.admin_port is not None
        return f"http://127.0.0.1:{self.admin_port}"

    # -- interaction
    def metrics(self) -> dict:
        status, text = http_get(self.admin_url + "/metrics")
        assert status == 200, f"GET /metrics answered {status}: {text}"
        return parse_metrics(text)

    def send(self, payload: bytes) -> None:
        send_udp(self.udp_address, payload)

    def log(self) -> str:
        text = self.log_path.read_bytes().decode("utf-8", "replace")
        if self.stdout_path is not None:
            text = self.stdout_path.read_bytes().decode("utf-8", "replace") + text
        return text

    def stdout(self) -> str:
        assert self.stdout_path is not None, "started without separate_stdout=True"
        return self.stdout_path.read_bytes().decode("utf-8", "replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match:
        rx = re.compile(pattern, re.MULTILINE)

        def check():
            m = rx.search(self.log())
            if m is None and not self.running():
                raise DaemonError(
                    f"daemon exited ({self.proc.returncode}) before logging /{pattern}/:\n{self.log()}"
                )
            return m

        try:
            return poll(check, timeout, what=f"log line /{pattern}/")
        except TimeoutError as e:
            raise DaemonError(f"{e}\n--- daemon log ---\n{self.log()}") from None

    def stop(self, timeout: float = 30.0) -> DaemonResult:
        """SIGTERM, wait up to `timeout` s, SIGKILL if still running. Idempotent."""
        if self.result is not None:
            return self.result
        killed = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                killed = True
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.result = DaemonResult(self.proc.returncode, self.log(), killed)
        return self.result


def start_daemon(
    binary: Path,
    extra_args: list[str],
    workdir: Path,
    log_path: Path,
    env: Optional[dict[str, str]] = None,
    bind: bool = True,
    admin: bool = True,
    wait: bool = True,
    ready_timeout: float = 20.0,
    separate_stdout: bool = False,
) -> Daemon:
    """Start `binary` on ephemeral loopback ports and wait until it is ready.

    With bind=True it gets `-b 127.0.0.1:U -t 127.0.0.1:T`, with admin=True
    `--admin-address 127.0.0.1:A`; those come first (Go flag parsing stops at the
    first positional argument). Ready means: the UDP port is bound and, with an
    admin server, GET /readyz answers 200.
    """
    attempts = 3
    for attempt in range(1, attempts + 1):
        udp_port = free_port("udp") if bind else None
        tcp_port = free_port("tcp") if bind else None
        admin_port = free_port("tcp") if admin else None
        args: list[str] = [str(binary)]
        if bind:
            args += ["-b", f"127.0.0.1:{udp_port}", "-t", f"127.0.0.1:{tcp_port}"]
        if admin:
            args += ["--admin-address", f"127.0.0.1:{admin_port}"]
        args += list(extra_args)
        stdout_path = log_path.with_suffix(".stdout.log") if separate_stdout else None
        with open(log_path, "wb") as log_f:
            out_f = open(stdout_path, "wb") if stdout_path else None
            try:
                proc = subprocess.Popen(
                    args,
                    cwd=workdir,
                    env=env if env is not None else clean_env(tmp_dir=workdir),
                    stdin=subprocess.DEVNULL,
                    stdout=out_f if out_f else log_f,
                    stderr=log_f if out_f else subprocess.STDOUT,
                )
            finally:
                if out_f:
                    out_f.close()
        d = Daemon(proc, args, log_path, udp_port, tcp_port, admin_port, stdout_path=stdout_path)
        if not wait:
            return d
        try:
            _wait_ready(d, ready_timeout)
            return d
        except DaemonError:
            res = d.stop(timeout=5)
            port_race = re.search(r"address already in use|Address in use", res.log, re.I)
            if port_race and attempt < attempts:
                continue  # another process took one of our ephemeral ports; retry
            raise
    raise AssertionError("unreachable")


def _wait_ready(d: Daemon, timeout: float) -> None:
    def ready():
        if not d.running():
            raise DaemonError(
                f"daemon exited with {d.proc.returncode} during start-up\n"
                f"command: {' '.join(d.args)}\n--- daemon log ---\n{d.log()}"
            )
        if d.udp_port is not None and not udp_port_bound(d.udp_port):
            return False
        if d.admin_port is not None:
            try:
                status, _ = http_get(d.admin_url + "/readyz", timeout=1.0)
            except OSError:
                return False
            return status == 200
        return True

    try:
        poll(ready, timeout, interval=0.05, what="the daemon to be ready")
    except TimeoutError as e:
        what = f"UDP 127.0.0.1:{d.udp_port} bound" + (
            f" and GET {d.admin_url}/readyz == 200" if d.admin_port else ""
        )
        raise DaemonError(
            f"{e} ({what})\ncommand: {' '.join(d.args)}\n--- daemon log ---\n{d.log()}"
        ) from None


def run_xray(binary: Path, args: list[str], workdir: Path, timeout: float = 15.0,
             env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Run the binary to completion (for CLI tests); kill it after `timeout` s."""
    try:
        return subprocess.run(
            [str(binary), *args],
            cwd=workdir,
            env=env if env is not None else clean_env(tmp_dir=workdir),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"`xray {' '.join(args)}` still running after {timeout} s (expected it to exit)\n"
            f"stdout: {e.stdout!r}\nstderr: {e.stderr!r}"
        ) from None


# --------------------------------------------------------------------------- moto


@dataclass
class MotoServer:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def reset(self) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        req = urllib.request.Request(self.url + "/moto-api/reset", data=b"", method="POST")
        opener.open(req, timeout=5).read()


def start_moto(log_path: Path, env: Optional[dict[str, str]] = None, timeout: float = 30.0) -> MotoServer:
    exe = VENV_BIN / "moto_server"
    if not exe.exists():
        raise RuntimeError(f"{exe} not found: run scripts/setup-test-deps.sh and use .venv-test/bin/python")
    port = free_port("tcp")
    with open(log_path, "wb") as log_f:
        proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(port)],
            env=env if env is not None else clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=log_f,
            stderr=subprocess.STDOUT,
        )
    m = MotoServer(proc, port, log_path)

    def answers():
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}:\n{m.log()}")
        try:
            http_get(m.url + "/moto-api/", timeout=1.0)
            return True
        except OSError:
            return False

    try:
        poll(answers, timeout, interval=0.1, what="moto_server to answer")
    except BaseException:
        stop_process(proc)
        raise
    return m


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> Optional[int]:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def xray_client(endpoint_url: str):
    import boto3

    return boto3.client(
        "xray",
        endpoint_url=endpoint_url,
        region_name=TEST_REGION,
        aws_access_key_id=TEST_ACCESS_KEY,
        aws_secret_access_key=TEST_SECRET_KEY,
    )


def wait_for_trace(client, trace_id: str, timeout: float = 15.0, min_segments: int = 1) -> dict:
    """Poll BatchGetTraces until the trace has at least `min_segments` segments."""

    def fetch():
        resp = client.batch_get_traces(TraceIds=[trace_id])
        for trace in resp.get("Traces", []):
            if trace.get("Id") == trace_id and len(trace.get("Segments", [])) >= min_segments:
                return trace
        return None

    return poll(fetch, timeout, interval=0.2, what=f"trace {trace_id} in BatchGetTraces")


def new_trace_id() -> str:
    return "1-%08x-%s" % (int(time.time()), os.urandom(12).hex())


def new_segment_id() -> str:
    return os.urandom(8).hex()


def segment_doc(name: str, trace_id: Optional[str] = None, **extra: Any) -> dict:
    now = time.time()
    doc = {
        "trace_id": trace_id or new_trace_id(),
        "id": new_segment_id(),
        "name": name,
        "start_time": now - 0.01,
        "end_time": now,
    }
    doc.update(extra)
    return doc


HEADER = b'{"format":"json","version":1}\n'


def datagram(doc: dict) -> bytes:
    return HEADER + json.dumps(doc, separators=(",", ":")).encode()


def split_datagram(data: bytes) -> tuple[bytes, bytes]:
    """Split at the first newline, as the daemon does: (header, body)."""
    header, sep, body = data.partition(b"\n")
    assert sep, f"datagram without a newline: {data[:80]!r}"
    return header, body

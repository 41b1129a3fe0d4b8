"""The daemon's /metrics against real Prometheus tooling (issue 3).

- `promtool check metrics` lints the exposition text after segments flowed (so the
  histograms have samples): exit 0, no lint problems.
- A real `prometheus` server on loopback scrapes the daemon's admin address every second;
  N segments go through the daemon to moto. Prometheus's `xray_segments_sent_total` must
  reach N and moto must hold exactly those N segments (the sent metric matches what the
  backend received), and the accounting identity
  `received = sent + rejected + dropped + xray_buffer_segments` holds through PromQL.

Needs `promtool` and `prometheus` (apt package prometheus); skipped without them unless
CI=true, where their absence fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import uuid
from pathlib import Path

import pytest

import harness

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")


def _need(binary: str | None, name: str) -> str:
    if binary:
        return binary
    msg = f"{name} not installed (apt-get install prometheus; scripts/setup-test-deps.sh)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def start_uploading_daemon(daemon, moto_server):
    return daemon("-o", "-n", harness.TEST_REGION, "--endpoint", moto_server.url)


def send_segments(d, n: int, prefix: str) -> list[dict]:
    docs = [harness.segment_doc(f"{prefix}-{i}") for i in range(n)]
    for doc in docs:
        d.send(harness.datagram(doc))
    return docs


def wait_sent(d, n: int, timeout: float = 20.0) -> None:
    harness.poll(lambda: harness.metric(d.metrics(), "xray_segments_sent_total") >= n, timeout,
                 interval=0.1, what=f"xray_segments_sent_total >= {n}")


def segments_in_moto(client, docs: list[dict]) -> dict[str, str]:
    """{segment id: document} for the traces of `docs`, via BatchGetTraces (5 ids a call)."""
    ids = sorted({doc["trace_id"] for doc in docs})
    found: dict[str, str] = {}
    for i in range(0, len(ids), 5):
        resp = client.batch_get_traces(TraceIds=ids[i:i + 5])
        for trace in resp.get("Traces", []):
            for seg in trace.get("Segments", []):
                found[seg["Id"]] = seg["Document"]
    return found


# --------------------------------------------------------------------------- promtool


def test_promtool_check_metrics_after_traffic(daemon, moto_server, xray_client):
    promtool = _need(PROMTOOL, "promtool")
    d = start_uploading_daemon(daemon, moto_server)
    docs = send_segments(d, 12, "promtool-" + uuid.uuid4().hex[:6])
    d.send(b"not a segment")  # a rejection too: the labelled counters are non-zero
    wait_sent(d, len(docs))

    status, text = harness.http_get(d.admin_url + "/metrics")
    assert status == 200, text
    samples = harness.parse_metrics(text)
    # The histograms really have samples.
    assert harness.metric(samples, "xray_upload_duration_seconds_count") >= 1, text
    assert harness.metric(samples, "xray_batch_segments_count") >= 1, text
    assert harness.metric(samples, "xray_batch_segments_sum") == len(docs), text

    proc = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                          capture_output=True, timeout=30)
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 0, f"promtool check metrics exited {proc.returncode}:\n{out}\n--- metrics ---\n{text}"
    assert out.strip() == "", f"promtool reported:\n{out}"


# --------------------------------------------------------------------------- prometheus


class Prometheus:
    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path):
        self.proc, self.port, self.log_path = proc, port, log_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def query(self, promql: str) -> list[dict]:
        status, body = harness.http_get(
            self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql}), timeout=5)
        assert status == 200, f"query {promql!r} answered {status}: {body}"
        doc = json.loads(body)
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def scalar(self, promql: str) -> float | None:
        """The value of a one-element instant vector, None when the vector is empty."""
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, f"{promql!r} returned {len(result)} series: {result}"
        return float(result[0]["value"][1])

    def targets(self) -> list[dict]:
        status, body = harness.http_get(self.url + "/api/v1/targets", timeout=5)
        assert status == 200, body
        return json.loads(body)["data"]["activeTargets"]


@pytest.fixture
def prometheus(tmp_path):
    """Factory: prometheus(admin_port) -> Prometheus scraping 127.0.0.1:admin_port/metrics every 1 s."""
    binary = _need(PROMETHEUS, "prometheus")
    started: list[Prometheus] = []

    def start(admin_port: int) -> Prometheus:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: xray-daemon\n"
            "    metrics_path: /metrics\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{admin_port}']\n"
        )
        for attempt in range(3):
            port = harness.free_port("tcp")
            log_path = tmp_path / f"prometheus{attempt}.log"
            data = tmp_path / f"tsdb{attempt}"
            with open(log_path, "wb") as log_f:
                proc = subprocess.Popen(
                    [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
                     f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                    cwd=tmp_path, env=harness.clean_env(), stdin=subprocess.DEVNULL,
                    stdout=log_f, stderr=subprocess.STDOUT)
            p = Prometheus(proc, port, log_path)
            started.append(p)

            def ready():
                if proc.poll() is not None:
                    return "exited"
                try:
                    return harness.http_get(p.url + "/-/ready", timeout=1)[0] == 200
                except OSError:
                    return False

            state = harness.poll(ready, 30, interval=0.2, what="prometheus /-/ready")
            if state is True:
                return p
            if "address already in use" not in p.log():
                raise AssertionError(f"prometheus exited {proc.returncode}:\n{p.log()}")
        raise AssertionError("prometheus could not bind a port in 3 attempts")

    yield start
    for p in started:
        harness.stop_process(p.proc)


def test_prometheus_scrapes_sent_matching_backend(daemon, moto_server, xray_client, prometheus):
    d = start_uploading_daemon(daemon, moto_server)
    prom = prometheus(d.admin_port)

    # Prometheus sees the daemon up before traffic (sent == 0 at first).
    harness.poll(lambda: prom.scalar('up{job="xray-daemon"}') == 1.0, 20, interval=0.25,
                 what="up{job=xray-daemon} == 1")
    assert prom.scalar("xray_segments_sent_total") == 0.0

    n, junk = 40, 3
    docs = send_segments(d, n, "prom-" + uuid.uuid4().hex[:6])
    for _ in range(junk):
        d.send(b'{"format":"json","version":1}\n')  # empty body: rejected
    wait_sent(d, n)

    # Prometheus converges on the same number (scrapes every second).
    try:
        harness.poll(lambda: prom.scalar("xray_segments_sent_total") == float(n), 20, interval=0.25,
                     what=f"Prometheus xray_segments_sent_total == {n}")
    except TimeoutError as e:
        raise AssertionError(f"{e}\ntargets: {prom.targets()}\nprometheus log:\n{prom.log()}") from None

    # ... which is what the backend holds: exactly these N segments, as sent.
    found = harness.poll(lambda: (lambda f: f if len(f) >= n else None)(segments_in_moto(xray_client, docs)),
                         15, interval=0.3, what=f"{n} segments in moto")
    assert set(found) == {doc["id"] for doc in docs}
    assert prom.scalar("xray_segments_sent_total") == float(len(found))

    # Received and the accounting identity, through PromQL (summed over labels).
    harness.poll(lambda: prom.scalar("sum(xray_segments_received_total)") == float(n + junk), 10,
                 interval=0.25, what=f"sum(xray_segments_received_total) == {n + junk}")
    assert prom.scalar('xray_segments_received_total{transport="udp"}') == float(n + junk)
    assert prom.scalar('xray_segments_rejected_total{reason="empty_body"}') == float(junk)
    assert prom.scalar("sum(xray_segments_dropped_total)") == 0.0
    assert prom.scalar("xray_buffer_segments") == 0.0
    identity = (
        "sum(xray_segments_received_total) - ("
        "sum(xray_segments_sent_total) + sum(xray_segments_rejected_total)"
        " + sum(xray_segments_dropped_total) + sum(xray_buffer_segments))"
    )
    assert prom.scalar(identity) == 0.0
    # And as a PromQL comparison that returns a series only when it holds.
    holds = prom.query(
        "sum(xray_segments_received_total) == sum(xray_segments_sent_total)"
        " + sum(xray_segments_rejected_total) + sum(xray_segments_dropped_total)"
        " + sum(xray_buffer_segments)")
    assert len(holds) == 1 and float(holds[0]["value"][1]) == float(n + junk), holds

    # Histograms scraped with samples; the batch sizes add up to what was sent.
    assert prom.scalar("xray_batch_segments_sum") == float(n)
    assert prom.scalar("xray_upload_duration_seconds_count") >= 1
    q = prom.scalar("histogram_quantile(0.99, xray_upload_duration_seconds_bucket)")
    assert q is not None and 0 < q <= 10, q
    assert prom.scalar('sum(xray_upload_requests_total{outcome!="ok"})') == 0.0

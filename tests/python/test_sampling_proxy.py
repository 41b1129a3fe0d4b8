"""The TCP sampling proxy (issue 5) against a SigV4-verifying fake X-Ray.

The daemon's TCP address (`-t`) serves HTTP/1.1: `POST /GetSamplingRules` and
`POST /SamplingTargets` (plus any `--proxy-extra-paths`) are re-targeted to `--endpoint`,
SigV4-signed for service `xray` with the daemon's credentials, and X-Ray's answer is
returned unchanged; any other path gets 403 and never leaves the daemon.

The upstream (sigv4_upstream.py) recomputes every signature with botocore from the test
secret and answers 403 on a mismatch, so a 200 seen by a client means the daemon signed
correctly. The real Python and Node X-Ray SDKs, with centralized sampling, get their rules
(and targets) through the daemon, and their sampling decisions follow the served rule: a
rule with fixed rate 0 and reservoir 0 (the SDKs' local fallback would sample the first
request of each second) makes them sample nothing.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

import harness
from harness import NODE_DIR
from sigv4_upstream import SigV4Upstream, sampling_rule

RULE_NAME = "xray-daemon-tests-rule"


@pytest.fixture
def upstream():
    with SigV4Upstream(rules=[sampling_rule(RULE_NAME, fixed_rate=1.0, reservoir=1)]) as up:
        yield up


def start_proxy_daemon(daemon, upstream, *extra: str):
    return daemon("-o", "-n", harness.TEST_REGION, "--endpoint", upstream.url, *extra)


def sdk_address(d) -> str:
    """AWS_XRAY_DAEMON_ADDRESS naming both ports (the fixture binds UDP and TCP apart)."""
    return f"tcp:127.0.0.1:{d.tcp_port} udp:127.0.0.1:{d.udp_port}"


def post(d, path: str, body: bytes = b"{}", headers: dict | None = None,
         method: str = "POST", timeout: float = 15.0) -> tuple[int, dict, bytes]:
    """One raw HTTP/1.1 request to the daemon's TCP address: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", d.tcp_port, timeout=timeout)
    try:
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def assert_all_verified(upstream) -> None:
    bad = [(r.path, r.verification.reason) for r in upstream.recorded() if not r.verified]
    assert not bad, f"requests that did not verify at the upstream: {bad}"


# --------------------------------------------------------------------------- raw HTTP


def test_get_sampling_rules_is_signed_and_answered_unchanged(daemon, upstream):
    d = start_proxy_daemon(daemon, upstream)
    status, headers, body = post(d, "/GetSamplingRules", b"{}")
    [rec] = upstream.wait_for("/GetSamplingRules", timeout=5)
    assert rec.verified, rec.verification.reason
    assert rec.method == "POST"
    assert rec.body == b"{}"  # forwarded as received
    assert rec.verification.access_key == harness.TEST_ACCESS_KEY
    assert (rec.verification.region, rec.verification.service) == (harness.TEST_REGION, "xray")
    assert rec.headers["host"] == f"127.0.0.1:{upstream.port}"
    assert status == 200, body
    assert body == rec.response  # byte for byte what X-Ray answered
    assert headers.get("content-type") == "application/json"
    rules = json.loads(body)["SamplingRuleRecords"]
    assert [r["SamplingRule"]["RuleName"] for r in rules] == [RULE_NAME]


def test_sampling_targets_is_signed_and_answered_unchanged(daemon, upstream):
    d = start_proxy_daemon(daemon, upstream)
    stats = {"SamplingStatisticsDocuments": [{
        "RuleName": RULE_NAME, "ClientID": "0123456789abcdef01234567", "RequestCount": 5,
        "BorrowCount": 1, "SampledCount": 2, "Timestamp": int(time.time())}]}
    payload = json.dumps(stats).encode()
    status, _, body = post(d, "/SamplingTargets", payload)
    [rec] = upstream.wait_for("/SamplingTargets", timeout=5)
    assert rec.verified, rec.verification.reason
    assert rec.body == payload
    assert status == 200, body
    assert body == rec.response
    docs = json.loads(body)["SamplingTargetDocuments"]
    assert [doc["RuleName"] for doc in docs] == [RULE_NAME]


def test_empty_body_is_signed_as_empty(daemon, upstream):
    d = start_proxy_daemon(daemon, upstream)
    status, _, body = post(d, "/GetSamplingRules", b"")
    [rec] = upstream.wait_for("/GetSamplingRules", timeout=5)
    assert rec.verified, rec.verification.reason
    assert rec.body == b""
    assert status == 200, body


def test_keep_alive_connection_serves_several_requests(daemon, upstream):
    """The SDKs' HTTP clients (botocore's pool, Node's agent) reuse connections."""
    d = start_proxy_daemon(daemon, upstream)
    conn = http.client.HTTPConnection("127.0.0.1", d.tcp_port, timeout=15)
    try:
        for path in ("/GetSamplingRules", "/SamplingTargets", "/GetSamplingRules"):
            conn.request("POST", path, body=b"{}", headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, (path, resp.status, body)
    finally:
        conn.close()
    assert [r.path for r in upstream.recorded()] == [
        "/GetSamplingRules", "/SamplingTargets", "/GetSamplingRules"]
    assert_all_verified(upstream)


def test_client_authorization_is_replaced_by_the_daemons_signature(daemon, upstream):
    """An SDK may send its own (unsigned or differently signed) headers; the daemon signs."""
    d = start_proxy_daemon(daemon, upstream)
    bogus = ("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-west-2/xray/aws4_request, "
             "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64)
    status, _, body = post(d, "/GetSamplingRules", b"{}", headers={
        "Authorization": bogus, "X-Amz-Date": "20150830T123600Z",
        "X-Amz-Security-Token": "client-token"})
    [rec] = upstream.wait_for("/GetSamplingRules", timeout=5)
    assert rec.verified, rec.verification.reason
    assert rec.verification.access_key == harness.TEST_ACCESS_KEY
    assert "x-amz-security-token" not in rec.headers  # static keys: no token
    assert status == 200, body


class MotoIssuedSecrets(dict):
    """access key -> secret for the keys moto's STS issued (read from moto's state on
    lookup), so the upstream verifies signatures made with assumed-role credentials."""

    def __init__(self, moto_url: str):
        super().__init__()
        self.moto_url = moto_url

    def get(self, key, default=None):
        status, body = harness.http_get(self.moto_url + "/moto-api/data.json", timeout=5)
        roles = json.loads(body).get("sts", {}).get("AssumedRole", []) if status == 200 else []
        self.roles = {r["access_key_id"]: r for r in roles}
        role = self.roles.get(key)
        return role["secret_access_key"] if role else default


def test_proxy_signs_with_the_assumed_role(daemon, moto_server):
    """With -r the proxy signs with the role's temporary credentials (STS: moto)."""
    secrets = MotoIssuedSecrets(moto_server.url)
    with SigV4Upstream(secrets=secrets, rules=[sampling_rule(RULE_NAME)]) as up:
        d = daemon("-o", "-n", harness.TEST_REGION, "--endpoint", up.url,
                   "-r", "arn:aws:iam::123456789012:role/xray-sampler",
                   env={"AWS_ENDPOINT_URL_STS": moto_server.url})
        status, _, body = post(d, "/GetSamplingRules", b"{}")
        [rec] = up.wait_for("/GetSamplingRules", timeout=5)
        assert rec.verified, rec.verification.reason
        key = rec.verification.access_key
        assert key.startswith("ASIA") and key != harness.TEST_ACCESS_KEY, key
        role = secrets.roles[key]
        assert role["role_arn"] == "arn:aws:iam::123456789012:role/xray-sampler"
        assert role["session_name"] == "xray-daemon"
        assert rec.headers.get("x-amz-security-token") == role["session_token"]
        assert "x-amz-security-token" in rec.verification.signed_headers
        assert status == 200, body


def test_upstream_error_is_returned_unchanged(daemon, upstream):
    err = b'{"__type":"ThrottlingException","message":"Rate exceeded"}'
    upstream.respond("/GetSamplingRules", 429, err, {"Content-Type": "application/x-amz-json-1.1",
                                                    "x-amzn-ErrorType": "ThrottlingException"})
    d = start_proxy_daemon(daemon, upstream)
    status, headers, body = post(d, "/GetSamplingRules", b"{}")
    [rec] = upstream.wait_for("/GetSamplingRules", timeout=5)
    assert rec.verified, rec.verification.reason
    assert (status, body) == (429, err)
    assert headers.get("x-amzn-errortype") == "ThrottlingException"


def test_upstream_timeout_answers_504(daemon, upstream):
    upstream.delay("/GetSamplingRules", 5)
    d = start_proxy_daemon(daemon, upstream, "--proxy-upstream-timeout", "1s")
    started = time.monotonic()
    status, _, body = post(d, "/GetSamplingRules", b"{}")
    elapsed = time.monotonic() - started
    assert status == 504, (status, body)
    assert 0.9 <= elapsed < 4, elapsed


def test_unreachable_upstream_answers_502(daemon, free_port):
    closed = free_port("tcp")  # nothing listens there
    d = daemon("-o", "-n", harness.TEST_REGION, "--endpoint", f"http://127.0.0.1:{closed}")
    status, _, body = post(d, "/GetSamplingRules", b"{}")
    assert status == 502, (status, body)


@pytest.mark.parametrize("path", [
    "/TraceSegments",
    "/GetGroups",
    "/TelemetryRecords",
    "/GetSamplingStatisticSummaries",  # only with --proxy-extra-paths
    "/GetSamplingRules/../GetGroups",
    "/GetSamplingRulesX",
    "/",
])
def test_disallowed_path_gets_403_and_never_reaches_upstream(daemon, upstream, path):
    d = start_proxy_daemon(daemon, upstream)
    status, _, body = post(d, path, b"{}")
    assert status == 403, (status, body)
    # The allowed path still works on the same daemon (so the upstream was reachable) ...
    status, _, _ = post(d, "/GetSamplingRules", b"{}")
    assert status == 200
    upstream.wait_for("/GetSamplingRules", timeout=5)
    # ... and the disallowed request never got there.
    assert [r.path for r in upstream.recorded()] == ["/GetSamplingRules"]


def test_proxy_extra_paths_forwards_more(daemon, upstream):
    d = start_proxy_daemon(daemon, upstream, "--proxy-extra-paths", "/GetSamplingStatisticSummaries")
    status, _, body = post(d, "/GetSamplingStatisticSummaries", b"{}")
    [rec] = upstream.wait_for("/GetSamplingStatisticSummaries", timeout=5)
    assert rec.verified, rec.verification.reason
    assert status == 200, body
    assert body == rec.response
    # Not a wildcard: the rest stays closed.
    status, _, _ = post(d, "/GetGroups", b"{}")
    assert status == 403
    assert "/GetGroups" not in [r.path for r in upstream.recorded()]


def test_proxy_counts_requests_in_metrics(daemon, upstream):
    d = start_proxy_daemon(daemon, upstream)
    assert post(d, "/GetSamplingRules")[0] == 200
    assert post(d, "/GetGroups")[0] == 403
    samples = d.metrics()
    assert harness.metric(samples, "xray_proxy_requests_total", code="200") >= 1
    assert harness.metric(samples, "xray_proxy_requests_total", code="403") >= 1
    assert harness.metric(samples, "xray_proxy_duration_seconds_count") >= 1


# --------------------------------------------------------------------------- the real SDKs


PY_SDK_SCRIPT = textwrap.dedent("""
    import json, logging, sys, time
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    from aws_xray_sdk.core import xray_recorder
    from aws_xray_sdk.core.sampling.connector import ServiceConnector

    address, decisions_wanted, targets_wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    targets = []
    original = ServiceConnector.fetch_sampling_target
    def recording(self, rules):
        result = original(self, rules)
        targets.append({name: t["rate"] for name, t in result[0].items()})
        return result
    ServiceConnector.fetch_sampling_target = recording

    xray_recorder.configure(sampling=True, daemon_address=address, context_missing="LOG_ERROR",
                            plugins=(), service="py-sampling-test")
    sampler = xray_recorder.sampler
    req = {"host": "example.com", "method": "GET", "path": "/sampled", "service": "py-sampling-test"}
    sampler.should_trace(dict(req))  # starts the pollers; not kept
    deadline = time.monotonic() + 10
    while not sampler._cache.rules and time.monotonic() < deadline:
        time.sleep(0.05)
    rules = [r.name for r in sampler._cache.rules]
    decisions = [sampler.should_trace(dict(req)) for _ in range(decisions_wanted)] if rules else []
    deadline = time.monotonic() + targets_wait
    while targets_wait > 0 and not targets and time.monotonic() < deadline:
        time.sleep(0.1)
    print(json.dumps({"rules": rules, "decisions": decisions, "targets": targets}), flush=True)
""")


def run_python_sdk(d, decisions: int, targets_wait: float) -> dict:
    env = harness.clean_env()
    proc = subprocess.run([sys.executable, "-c", PY_SDK_SCRIPT, sdk_address(d), str(decisions),
                           str(targets_wait)], env=env, capture_output=True, text=True,
                          timeout=targets_wait + 40)
    assert proc.returncode == 0, f"python SDK script failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"stderr": proc.stderr}


@pytest.mark.timeout(90)
def test_python_sdk_centralized_sampling_through_daemon(daemon, upstream):
    upstream.rules = [sampling_rule(RULE_NAME, fixed_rate=0.0, reservoir=0)]
    d = start_proxy_daemon(daemon, upstream)
    out = run_python_sdk(d, decisions=50, targets_wait=30)

    assert out["rules"] == [RULE_NAME], out
    # Rate 0, reservoir 0: nothing sampled (the SDK's local fallback would sample the first).
    assert out["decisions"] == [False] * 50, out["decisions"]
    assert out["targets"], f"no SamplingTargets answer within 30 s\n{out['stderr']}"
    assert out["targets"][0] == {RULE_NAME: 0.0}

    rules_reqs = upstream.recorded("/GetSamplingRules")
    target_reqs = upstream.recorded("/SamplingTargets")
    assert rules_reqs and target_reqs, [r.path for r in upstream.recorded()]
    assert_all_verified(upstream)
    stats = target_reqs[0].json()["SamplingStatisticsDocuments"]
    assert [s["RuleName"] for s in stats] == [RULE_NAME]
    assert stats[0]["RequestCount"] >= 50 and stats[0]["SampledCount"] == 0, stats


def test_python_sdk_samples_by_the_served_rule(daemon, upstream):
    upstream.rules = [sampling_rule(RULE_NAME, fixed_rate=1.0, reservoir=0)]
    d = start_proxy_daemon(daemon, upstream)
    out = run_python_sdk(d, decisions=20, targets_wait=0)
    assert out["rules"] == [RULE_NAME], out
    # Sampled by the served rule: the decision names it.
    assert out["decisions"] == [RULE_NAME] * 20, out["decisions"]
    assert upstream.recorded("/GetSamplingRules")
    assert_all_verified(upstream)


def _node() -> str:
    node = shutil.which("node")
    installed = (NODE_DIR / "node_modules" / "aws-xray-sdk-core" / "package.json").is_file()
    if not node or not installed:
        msg = ("node or tests/node/node_modules/aws-xray-sdk-core missing "
               "(scripts/setup-test-deps.sh installs them)")
        if os.environ.get("CI") == "true":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return node


@pytest.mark.timeout(90)
def test_node_sdk_centralized_sampling_through_daemon(daemon, upstream):
    node = _node()
    upstream.rules = [sampling_rule(RULE_NAME, fixed_rate=0.0, reservoir=0)]
    d = start_proxy_daemon(daemon, upstream)
    env = harness.clean_env({"AWS_XRAY_DAEMON_ADDRESS": sdk_address(d)})
    proc = subprocess.run([node, str(NODE_DIR / "sampling.js"), "50", "30"], cwd=NODE_DIR, env=env,
                          capture_output=True, text=True, timeout=70)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"sampling.js printed nothing (exit {proc.returncode}):\n{proc.stderr}"
    out = json.loads(lines[-1])
    assert proc.returncode == 0, f"sampling.js exit {proc.returncode}: {out}\n{proc.stderr}"

    assert out["rules"] == [RULE_NAME], out
    assert out["decisions"] == [False] * 50, out["decisions"]
    assert out["targets"] and out["targets"][RULE_NAME]["rate"] == 0.0, out

    rules_reqs = upstream.recorded("/GetSamplingRules")
    target_reqs = upstream.recorded("/SamplingTargets")
    assert rules_reqs and target_reqs, [r.path for r in upstream.recorded()]
    assert_all_verified(upstream)
    assert rules_reqs[0].body == b"{}"
    stats = target_reqs[0].json()["SamplingStatisticsDocuments"]
    assert [s["RuleName"] for s in stats] == [RULE_NAME]
    assert stats[0]["RequestCount"] >= 50 and stats[0]["SampledCount"] == 0, stats

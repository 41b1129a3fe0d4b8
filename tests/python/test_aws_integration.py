"""The daemon against a real AWS API double (issue 4): moto in server mode as X-Ray and STS.

Each test gets its own moto with request recording on (MOTO_ENABLE_RECORDING): moto then
writes every request it serves (method, URL, headers, body) to a file. With moto's
internal state (`GET /moto-api/data.json`: the STS `AssumedRole`s it issued, with access
key id, secret, session token, session name, external id; the X-Ray `TelemetryRecords` it
stored) this proves, without trusting the daemon's own account of it:

- which credentials signed each X-Ray call: the recorded `Credential=` access key is the
  `ASIA...` key moto issued for the role, `X-Amz-Security-Token` is that session's token,
  and the recorded signature re-verifies (botocore SigV4) with that session's secret
  (and never with the base `testing` key);
- what reached STS: the recorded AssumeRole / AssumeRoleWithWebIdentity parameters
  (RoleArn, RoleSessionName, ExternalId, WebIdentityToken);
- what PutTelemetryRecords delivered (moto stores it, it cannot return it through the
  X-Ray API).

The daemon reaches STS through `AWS_ENDPOINT_URL_STS` (honoured by the SDK for Rust) and
X-Ray through `--endpoint`.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest

import harness
from sigv4_upstream import verify_sigv4

ROLE_ARN = "arn:aws:iam::123456789012:role/xray-writer"
IRSA_ROLE_ARN = "arn:aws:iam::123456789012:role/xray-irsa"
CRED_RE = re.compile(r"Credential=([^/]+)/")


def _slow_mark():
    """`@pytest.mark.slow` once pytest.ini registers it (--strict-markers), else no mark."""
    ini = Path(__file__).with_name("pytest.ini")
    try:
        registered = re.search(r"^\s*slow\s*:", ini.read_text(), re.MULTILINE) is not None
    except OSError:
        registered = False
    return pytest.mark.slow if registered else (lambda f: f)


# --------------------------------------------------------------------------- moto with a recorder


class RecordingMoto(harness.MotoServer):
    recording: Path

    def data(self) -> dict:
        status, body = harness.http_get(self.url + "/moto-api/data.json", timeout=5)
        assert status == 200, body
        return json.loads(body)

    def assumed_roles(self) -> list[dict]:
        return self.data().get("sts", {}).get("AssumedRole", [])

    def telemetry(self) -> list[dict]:
        return self.data().get("xray", {}).get("TelemetryRecords", [])

    def requests(self) -> list[dict]:
        """Every recorded request: {method, url, path, headers, body (bytes), params}."""
        out = []
        if not self.recording.exists():
            return out
        for line in self.recording.read_text().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue  # the line moto is writing right now; the next read has it whole
            body = e.get("body") or ""
            body = base64.b64decode(body) if e.get("body_encoded") else body.encode()
            path = urllib.parse.urlsplit(e["url"]).path
            params = {}
            if e["headers"].get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
                params = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}
            out.append(dict(method=e["method"], url=e["url"], path=path, headers=e["headers"],
                            body=body, params=params))
        return out

    def sts_calls(self, action: str) -> list[dict]:
        return [r for r in self.requests() if r["params"].get("Action") == action]

    def xray_calls(self, path: str) -> list[dict]:
        return [r for r in self.requests() if r["path"] == path]


@pytest.fixture
def moto(tmp_path):
    recording = tmp_path / "moto-recording.jsonl"
    env = harness.clean_env({"MOTO_ENABLE_RECORDING": "true", "MOTO_RECORDER_FILEPATH": str(recording)})
    server = harness.start_moto(tmp_path / "moto.log", env=env)
    m = RecordingMoto(server.proc, server.port, server.log_path)
    m.recording = recording
    try:
        yield m
    finally:
        harness.stop_process(m.proc)


@pytest.fixture
def client(moto):
    return harness.xray_client(moto.url)


@pytest.fixture
def raw_daemon(xray_bin, tmp_path, request):
    """Factory like `daemon`, but with exactly the environment given (plus the loopback and
    no-IMDS basics): no static keys unless the test puts them there."""
    started: list[harness.Daemon] = []

    def start(*args: str, env: dict[str, str]) -> harness.Daemon:
        n = len(started)
        workdir = tmp_path / f"raw{n}"
        workdir.mkdir()
        full = harness.clean_env(tmp_dir=workdir)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            full.pop(k)
        full.update(env)
        d = harness.start_daemon(xray_bin, list(args), workdir, tmp_path / f"raw{n}.log", env=full)
        started.append(d)
        return d

    yield start
    problems = []
    for d in started:
        res = d.stop()
        print(f"--- daemon log: {' '.join(d.args)} (exit {res.returncode}) ---\n{res.log}")
        if res.killed or res.returncode != 0:
            problems.append(f"`{' '.join(d.args)}` exited {res.returncode} (killed={res.killed})")
    if problems and not getattr(request.node, "_xray_failed", False):
        pytest.fail("\n".join(problems), pytrace=False)


def upload_args(moto) -> list[str]:
    return ["-o", "-n", harness.TEST_REGION, "--endpoint", moto.url]


def send_and_find(d, client, n: int = 3, prefix: str = "aws") -> list[dict]:
    docs = [harness.segment_doc(f"{prefix}-{uuid.uuid4().hex[:6]}-{i}") for i in range(n)]
    for doc in docs:
        d.send(harness.datagram(doc))
    for doc in docs:
        trace = harness.wait_for_trace(client, doc["trace_id"], timeout=20)
        assert [s["Id"] for s in trace["Segments"]] == [doc["id"]]
    return docs


def signer_of(request: dict, roles: list[dict]) -> dict:
    """The AssumedRole whose credentials signed `request`, after re-verifying the signature
    with that role's secret; fails with the evidence otherwise."""
    auth = request["headers"].get("Authorization", "")
    m = CRED_RE.search(auth)
    assert m, f"{request['path']} was not SigV4-signed: {request['headers']}"
    key = m.group(1)
    assert key != harness.TEST_ACCESS_KEY, (
        f"{request['path']} was signed with the base credentials ({key}), not the assumed role's")
    assert key.startswith("ASIA"), f"{request['path']} signed with {key}, not temporary credentials"
    by_key = {r["access_key_id"]: r for r in roles}
    assert key in by_key, f"{key} is not a key moto's STS issued: {sorted(by_key)}"
    role = by_key[key]
    assert request["headers"].get("X-Amz-Security-Token") == role["session_token"], (
        "X-Amz-Security-Token is not the assumed session's token")
    v = verify_sigv4(request["method"], request["url"], request["headers"], request["body"],
                     {key: role["secret_access_key"]}, harness.TEST_REGION, "xray")
    assert v.ok, f"{request['path']} does not verify with the assumed secret: {v.reason}"
    # ... and not with the base secret under the same key id (the check is not vacuous).
    assert not verify_sigv4(request["method"], request["url"], request["headers"], request["body"],
                            {key: harness.TEST_SECRET_KEY}, harness.TEST_REGION, "xray").ok
    return role


def daemon_xray_calls(moto) -> list[dict]:
    """X-Ray calls the daemon made (the test's own boto3 client only calls /Traces)."""
    return [r for r in moto.requests()
            if r["path"] in ("/TraceSegments", "/TelemetryRecords", "/GetSamplingRules", "/SamplingTargets")]


# --------------------------------------------------------------------------- assume role (-r)


def test_role_assumed_through_sts_uploads_with_the_role(raw_daemon, moto, client):
    d = raw_daemon(*upload_args(moto), "-r", ROLE_ARN,
                   "--role-session-name", "xray-tests-sess", "--role-external-id", "ext-4242",
                   env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_ENDPOINT_URL_STS": moto.url})
    docs = send_and_find(d, client, n=3, prefix="role")

    # What reached STS: AssumeRole, signed with the base keys, with the role, session name
    # and external id given on the command line.
    calls = moto.sts_calls("AssumeRole")
    assert calls, f"no AssumeRole reached moto; recorded: {[r['path'] for r in moto.requests()]}"
    for call in calls:
        assert call["params"]["RoleArn"] == ROLE_ARN
        assert call["params"]["RoleSessionName"] == "xray-tests-sess"
        assert call["params"]["ExternalId"] == "ext-4242"
        assert f"Credential={harness.TEST_ACCESS_KEY}/" in call["headers"]["Authorization"]
        assert "/sts/aws4_request" in call["headers"]["Authorization"]
    roles = moto.assumed_roles()
    assert roles and all(r["session_name"] == "xray-tests-sess" and r["external_id"] == "ext-4242"
                         and r["role_arn"] == ROLE_ARN for r in roles), roles
    assert all(r["arn"] == "arn:aws:sts::123456789012:assumed-role/xray-writer/xray-tests-sess"
               for r in roles)

    # Every X-Ray call the daemon made was signed with the assumed role's credentials.
    uploads = moto.xray_calls("/TraceSegments")
    assert uploads
    uploaded = set()
    for req in uploads:
        signer_of(req, roles)
        for seg in json.loads(req["body"])["TraceSegmentDocuments"]:
            uploaded.add(json.loads(seg)["id"])
    assert uploaded == {doc["id"] for doc in docs}

    res = d.stop()
    assert res.returncode == 0, res.log
    for req in daemon_xray_calls(moto):  # including any telemetry sent at stop
        signer_of(req, roles)


def test_role_session_name_defaults_to_xray_daemon(raw_daemon, moto, client):
    d = raw_daemon(*upload_args(moto), "-r", ROLE_ARN,
                   env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_ENDPOINT_URL_STS": moto.url})
    send_and_find(d, client, n=1, prefix="role-default")
    calls = moto.sts_calls("AssumeRole")
    assert calls
    for call in calls:
        assert call["params"]["RoleSessionName"] == "xray-daemon"
        assert "ExternalId" not in call["params"], call["params"]
    roles = moto.assumed_roles()
    for req in moto.xray_calls("/TraceSegments"):
        assert signer_of(req, roles)["session_name"] == "xray-daemon"


def test_without_role_uploads_with_the_base_credentials(raw_daemon, moto, client):
    """The control for the tests above: no -r, no STS call, X-Ray signed with `testing`."""
    d = raw_daemon(*upload_args(moto),
                   env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_ENDPOINT_URL_STS": moto.url})
    send_and_find(d, client, n=1, prefix="base")
    assert moto.sts_calls("AssumeRole") == []
    uploads = moto.xray_calls("/TraceSegments")
    assert uploads
    for req in uploads:
        v = verify_sigv4(req["method"], req["url"], req["headers"], req["body"],
                         {"testing": "testing"}, harness.TEST_REGION, "xray")
        assert v.ok, v.reason
        assert "X-Amz-Security-Token" not in req["headers"]


# --------------------------------------------------------------------------- IAM enforced by moto


def _iam_setup(moto, external_id: str) -> dict:
    """Before enforcement: a user allowed only sts:AssumeRole, and the role `xray-writer`
    (trusting that user, on condition of `external_id`) allowed xray:*. Then moto starts
    verifying every call's SigV4 signature and IAM policy (/moto-api/reset-auth 0)."""
    import boto3

    iam = boto3.client("iam", endpoint_url=moto.url, region_name=harness.TEST_REGION,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    user = iam.create_user(UserName="xray-base")["User"]
    key = iam.create_access_key(UserName="xray-base")["AccessKey"]
    policy = lambda action, **extra: json.dumps({"Version": "2012-10-17", "Statement": [
        dict({"Effect": "Allow", "Action": action}, **extra)]})
    iam.put_user_policy(UserName="xray-base", PolicyName="assume-only",
                        PolicyDocument=policy("sts:AssumeRole", Resource="*"))
    iam.create_role(RoleName="xray-writer", AssumeRolePolicyDocument=policy(
        "sts:AssumeRole", Principal={"AWS": user["Arn"]},
        Condition={"StringEquals": {"sts:ExternalId": external_id}}))
    iam.put_role_policy(RoleName="xray-writer", PolicyName="xray",
                        PolicyDocument=policy("xray:*", Resource="*"))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(moto.url + "/moto-api/reset-auth", data=b"0", method="POST",
                                 headers={"Content-Type": "text/plain"})
    assert json.loads(opener.open(req, timeout=5).read())["status"] == "ok"
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_ENDPOINT_URL_STS": moto.url}


def _stored_segment_ids(moto) -> set[str]:
    """Segment ids moto stored (read from its state: BatchGetTraces would need IAM too)."""
    return {s["id"] for s in moto.data().get("xray", {}).get("TraceSegment", [])}


def test_iam_enforced_upload_needs_the_assumed_role(raw_daemon, moto):
    """moto verifies signatures and IAM: the base user may only assume the role, the role
    may write to X-Ray, and the trust policy requires the external id. Only the daemon that
    assumes the role with the right external id gets its segments in."""
    base = _iam_setup(moto, external_id="ext-4242")
    ok = raw_daemon(*upload_args(moto), "-r", ROLE_ARN, "--role-external-id", "ext-4242", env=base)
    no_role = raw_daemon(*upload_args(moto), "--shutdown-timeout", "1s", env=base)
    wrong_id = raw_daemon(*upload_args(moto), "-r", ROLE_ARN, "--role-external-id", "not-it",
                          "--shutdown-timeout", "1s", env=base)
    docs = {name: harness.segment_doc(f"iam-{name}-{uuid.uuid4().hex[:6]}")
            for name in ("ok", "no_role", "wrong_id")}
    for name, d in (("ok", ok), ("no_role", no_role), ("wrong_id", wrong_id)):
        d.send(harness.datagram(docs[name]))

    harness.poll(lambda: docs["ok"]["id"] in _stored_segment_ids(moto), 20, interval=0.2,
                 what="the role-assuming daemon's segment in moto")
    # moto stores the batch before answering; the daemon counts it sent once answered.
    harness.poll(lambda: harness.metric(ok.metrics(), "xray_segments_sent_total") == 1, 10,
                 interval=0.1, what="the role-assuming daemon counting its segment as sent")

    # The other two were refused: moto recorded their attempts (an upload signed with the
    # user's own key; an AssumeRole with the wrong external id), and stored nothing of theirs.
    user_key = base["AWS_ACCESS_KEY_ID"]
    harness.poll(lambda: any(f"Credential={user_key}/" in r["headers"].get("Authorization", "")
                             for r in moto.xray_calls("/TraceSegments")), 20, interval=0.2,
                 what="the no-role daemon's upload attempt (signed with the base user's key)")
    harness.poll(lambda: any(c["params"].get("ExternalId") == "not-it"
                             for c in moto.sts_calls("AssumeRole")), 20, interval=0.2,
                 what="the AssumeRole attempt with the wrong external id")
    time.sleep(1.0)  # let any (wrongly) successful upload land
    for name, d in (("no_role", no_role), ("wrong_id", wrong_id)):
        s = d.metrics()
        assert harness.metric(s, "xray_segments_sent_total") == 0, name
        assert harness.metric(s, "xray_upload_requests_total", outcome="ok") == 0, name
    stored = _stored_segment_ids(moto)
    assert docs["no_role"]["id"] not in stored and docs["wrong_id"]["id"] not in stored
    # The denied AssumeRole really carried the wrong external id.
    assert {c["params"].get("ExternalId") for c in moto.sts_calls("AssumeRole")} >= {"ext-4242", "not-it"}


# --------------------------------------------------------------------------- web identity (IRSA)


def test_web_identity_token_file_without_static_keys(raw_daemon, moto, client, tmp_path):
    token = "eyJhbGciOiJSUzI1NiJ9.irsa-test-" + uuid.uuid4().hex  # moto does not validate it
    token_file = tmp_path / "token"
    token_file.write_text(token)
    d = raw_daemon(*upload_args(moto), env={
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
        "AWS_ROLE_ARN": IRSA_ROLE_ARN,
        "AWS_ROLE_SESSION_NAME": "irsa-session",
        "AWS_ENDPOINT_URL_STS": moto.url,
    })
    try:
        send_and_find(d, client, n=2, prefix="irsa")
    except TimeoutError as e:
        raise AssertionError(
            f"{e}\nrecorded requests: {[(r['method'], r['path'], r['params'].get('Action')) for r in moto.requests()]}"
            f"\n--- daemon log ---\n{d.log()}") from None

    calls = moto.sts_calls("AssumeRoleWithWebIdentity")
    assert calls, ("the web identity provider did not call moto's STS (AWS_ENDPOINT_URL_STS not "
                   f"honoured?); recorded: {[r['path'] for r in moto.requests()]}")
    for call in calls:
        assert call["params"]["RoleArn"] == IRSA_ROLE_ARN
        assert call["params"]["RoleSessionName"] == "irsa-session"
        assert call["params"]["WebIdentityToken"] == token
    roles = moto.assumed_roles()
    for req in moto.xray_calls("/TraceSegments"):
        role = signer_of(req, roles)
        assert role["role_arn"] == IRSA_ROLE_ARN and role["session_name"] == "irsa-session"


# --------------------------------------------------------------------------- telemetry


def _telemetry_env() -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_INSTANCE_ID": "i-0123456789abcdef0", "AWS_HOSTNAME": "xray-tests-host"}


RESOURCE_ARN = "arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0"


def _check_telemetry(moto, n: int) -> list[dict]:
    stored = moto.telemetry()
    assert stored, ("moto holds no TelemetryRecords; PutTelemetryRecords calls recorded: "
                    f"{len(moto.xray_calls('/TelemetryRecords'))}")
    for call in stored:
        assert call["instance_id"] == "i-0123456789abcdef0", call
        assert call["hostname"] == "xray-tests-host", call
        assert call["resource_arn"] == RESOURCE_ARN, call
    records = [rec for call in stored for rec in call["records"]]
    assert sum(r.get("SegmentsReceivedCount", 0) for r in records) == n, records
    assert sum(r.get("SegmentsSentCount", 0) for r in records) == n, records
    assert sum(r.get("SegmentsRejectedCount", 0) for r in records) == 0, records
    for r in records:
        assert isinstance(r.get("Timestamp"), (int, float)) and abs(r["Timestamp"] - time.time()) < 600, r
        assert "BackendConnectionErrors" in r, r
    for req in moto.xray_calls("/TelemetryRecords"):
        v = verify_sigv4(req["method"], req["url"], req["headers"], req["body"],
                         {"testing": "testing"}, harness.TEST_REGION, "xray")
        assert v.ok, v.reason
    return records


def test_telemetry_record_sent_at_shutdown(raw_daemon, moto, client):
    """The reporter cuts a last record when the daemon stops and sends it (within 2 s):
    moto stores it (read back through /moto-api/data.json)."""
    d = raw_daemon(*upload_args(moto), "-a", RESOURCE_ARN, env=_telemetry_env())
    n = 4
    send_and_find(d, client, n=n, prefix="telemetry")
    res = d.stop()
    assert res.returncode == 0, res.log
    _check_telemetry(moto, n)


@_slow_mark()
@pytest.mark.timeout(150)
def test_telemetry_records_sent_every_interval(raw_daemon, moto, client):
    """The periodic record (60 s interval, no faster knob): while the daemon runs,
    `xray_telemetry_records_sent_total` goes above 0 and moto stores the record."""
    d = raw_daemon(*upload_args(moto), "-a", RESOURCE_ARN, env=_telemetry_env())
    n = 2
    send_and_find(d, client, n=n, prefix="telemetry-periodic")
    harness.poll(lambda: harness.metric(d.metrics(), "xray_telemetry_records_sent_total") > 0, 75,
                 interval=1.0, what="xray_telemetry_records_sent_total > 0")
    assert d.running()
    _check_telemetry(moto, n)


def test_disable_telemetry_sends_none(raw_daemon, moto, client):
    d = raw_daemon(*upload_args(moto), "--disable-telemetry", env=_telemetry_env())
    send_and_find(d, client, n=1, prefix="no-telemetry")
    res = d.stop()
    assert res.returncode == 0, res.log
    assert moto.xray_calls("/TelemetryRecords") == []
    assert moto.telemetry() == []

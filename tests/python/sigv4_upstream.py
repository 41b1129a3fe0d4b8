"""A fake X-Ray upstream that really verifies AWS Signature Version 4.

For the daemon's sampling proxy (its TCP address re-targets `POST /GetSamplingRules` and
`POST /SamplingTargets` to `--endpoint`, signed with the daemon's credentials). Every
request is recorded; its signature is recomputed with botocore's `SigV4Auth` from the
known secret: an `AWSRequest` is rebuilt from the received method, URL, the headers named
in `SignedHeaders` and the body, signed at the received `X-Amz-Date`, and the result is
compared with the received `Signature`. A mismatch (or no signature) is answered 403 and
the request is recorded as unverified, so a test sees both what the daemon answered its
client and why.

Requests that verify get canned X-Ray API answers (the JSON shapes of GetSamplingRules,
GetSamplingTargets and GetSamplingStatisticSummaries), or whatever a test set with
`respond()`.

Only loopback; a ThreadingHTTPServer in a daemon thread, stopped by `stop()` (or the
context manager).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from botocore.auth import SIGNED_HEADERS_BLACKLIST, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)


@dataclass
class Verification:
    ok: bool
    reason: str = ""
    access_key: Optional[str] = None
    region: Optional[str] = None
    service: Optional[str] = None
    signed_headers: list[str] = field(default_factory=list)


def verify_sigv4(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    secrets: dict[str, str],
    region: str,
    service: str,
) -> Verification:
    """Recompute the SigV4 signature of a received request; `headers` keys are any case,
    `secrets` maps access key id -> secret access key. `region`/`service` are what the
    signature must be scoped to."""
    h = {k.lower(): v for k, v in headers.items()}
    auth = h.get("authorization")
    if not auth:
        return Verification(False, "no Authorization header")
    m = AUTH_RE.match(auth.strip())
    if not m:
        return Verification(False, f"Authorization is not AWS4-HMAC-SHA256: {auth!r}")
    parts = m.group("credential").split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        return Verification(False, f"bad credential scope {m.group('credential')!r}")
    access_key, date, scope_region, scope_service, _ = parts
    signed = m.group("signed").split(";")
    v = Verification(False, "", access_key, scope_region, scope_service, signed)
    if scope_region != region or scope_service != service:
        v.reason = f"scoped to {scope_region}/{scope_service}, expected {region}/{service}"
        return v
    secret = secrets.get(access_key)
    if secret is None:
        v.reason = f"unknown access key {access_key!r}"
        return v
    amz_date = h.get("x-amz-date")
    if not amz_date or not amz_date.startswith(date):
        v.reason = f"X-Amz-Date {amz_date!r} does not match the credential date {date}"
        return v
    if "host" not in signed or "x-amz-date" not in signed:
        v.reason = f"host and x-amz-date must be signed (SignedHeaders={m.group('signed')})"
        return v
    missing = [name for name in signed if name not in h]
    if missing:
        v.reason = f"signed headers missing from the request: {missing}"
        return v
    unsignable = [name for name in signed if name in SIGNED_HEADERS_BLACKLIST]
    if unsignable:
        v.reason = f"signs headers that proxies may rewrite: {unsignable}"
        return v
    body_hash = hashlib.sha256(body).hexdigest()
    declared = h.get("x-amz-content-sha256")
    if declared is not None and declared != body_hash:
        v.reason = f"x-amz-content-sha256 {declared!r} is not the SHA-256 of the body ({body_hash})"
        return v
    if "x-amz-security-token" in h and "x-amz-security-token" not in signed:
        v.reason = "x-amz-security-token is sent but not signed"
        return v

    request = AWSRequest(method=method, url=url, data=body,
                         headers={name: h[name] for name in signed})
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(access_key, secret), service, region)
    canonical = signer.canonical_request(request)
    expected_signed = signer.signed_headers(signer.headers_to_sign(request))
    if expected_signed != m.group("signed"):
        v.reason = f"SignedHeaders {m.group('signed')!r} not canonical (expected {expected_signed!r})"
        return v
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, m.group("signature")):
        v.reason = f"signature mismatch; canonical request was:\n{canonical}"
        return v
    v.ok = True
    return v


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    verification: Verification
    status: int  # what the upstream answered
    response: bytes = b""  # the body it answered with
    at: float = field(default_factory=time.time)

    @property
    def verified(self) -> bool:
        return self.verification.ok

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


def sampling_rule(name: str = "xray-daemon-tests", fixed_rate: float = 1.0, reservoir: int = 1,
                  priority: int = 1, service_name: str = "*", **extra: Any) -> dict:
    """A SamplingRuleRecord in the X-Ray API shape, valid for the Python and Node SDKs
    (version 1, ResourceARN *, empty Attributes, non-zero priority)."""
    rule = {
        "RuleName": name,
        "RuleARN": f"arn:aws:xray:us-east-1:123456789012:sampling-rule/{name}",
        "ResourceARN": "*",
        "Priority": priority,
        "FixedRate": fixed_rate,
        "ReservoirSize": reservoir,
        "ServiceName": service_name,
        "ServiceType": "*",
        "Host": "*",
        "HTTPMethod": "*",
        "URLPath": "*",
        "Version": 1,
        "Attributes": {},
    }
    rule.update(extra)
    now = time.time()
    return {"SamplingRule": rule, "CreatedAt": now - 7200, "ModifiedAt": now - 3600}


class SigV4Upstream:
    """A SigV4-verifying fake X-Ray on 127.0.0.1; use as a context manager."""

    def __init__(self, secrets: Optional[dict[str, str]] = None, region: str = "us-east-1",
                 service: str = "xray", rules: Optional[list[dict]] = None):
        # Kept as given (not copied): a test may pass a mapping that looks keys up lazily.
        self.secrets = secrets if secrets is not None else {"testing": "testing"}
        self.region = region
        self.service = service
        self.rules = list(rules) if rules is not None else [sampling_rule()]
        self.requests: list[Recorded] = []
        self._overrides: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self._delays: dict[str, float] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle
    def start(self) -> "SigV4Upstream":
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                body = self._read_body()
                upstream._serve(self, body)

            def _read_body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            do_POST = do_GET = do_PUT = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "SigV4Upstream":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- test control
    def respond(self, path: str, status: int, body: bytes,
                headers: Optional[dict[str, str]] = None) -> None:
        """Answer verified requests to `path` with exactly this (instead of the canned one)."""
        with self._lock:
            self._overrides[path] = (status, dict(headers or {}), body)

    def delay(self, path: str, seconds: float) -> None:
        """Hold answers to `path` for `seconds` (bounded: at most 30)."""
        with self._lock:
            self._delays[path] = min(seconds, 30.0)

    def recorded(self, path: Optional[str] = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def wait_for(self, path: str, count: int = 1, timeout: float = 10.0) -> list[Recorded]:
        """Wait until at least `count` requests to `path` were recorded; TimeoutError else."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [r for r in self.requests if r.path == path]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(r.method, r.path, r.status) for r in self.requests]
                    raise TimeoutError(
                        f"{count} request(s) to {path} not seen within {timeout:.1f} s; seen: {seen}")
                self._cond.wait(left)

    # -- serving
    def canned(self, path: str, request: Any) -> tuple[int, dict[str, str], bytes]:
        now = time.time()
        if path == "/GetSamplingRules":
            doc = {"SamplingRuleRecords": self.rules}
        elif path == "/SamplingTargets":
            docs = request.get("SamplingStatisticsDocuments", []) if isinstance(request, dict) else []
            rates = {r["SamplingRule"]["RuleName"]: r["SamplingRule"] for r in self.rules}
            doc = {
                "SamplingTargetDocuments": [
                    {
                        "RuleName": d.get("RuleName"),
                        "FixedRate": rates.get(d.get("RuleName"), {}).get("FixedRate", 0.0),
                        "ReservoirQuota": rates.get(d.get("RuleName"), {}).get("ReservoirSize", 0),
                        "ReservoirQuotaTTL": now + 60,
                        "Interval": 10,
                    }
                    for d in docs
                ],
                # Older than the SDKs' rule cache: no out-of-band rule refresh.
                "LastRuleModification": now - 3600,
                "UnprocessedStatistics": [],
            }
        elif path == "/GetSamplingStatisticSummaries":
            doc = {"SamplingStatisticSummaries": []}
        else:
            return 404, {"Content-Type": "application/json",
                         "x-amzn-ErrorType": "UnknownOperationException"}, \
                json.dumps({"message": f"fake upstream: no {path}"}).encode()
        return 200, {"Content-Type": "application/json"}, json.dumps(doc).encode()

    def _serve(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        path = handler.path
        host = headers.get("host", f"127.0.0.1:{self.port}")
        verification = verify_sigv4(handler.command, f"http://{host}{path}", dict(handler.headers),
                                    body, self.secrets, self.region, self.service)
        route = path.split("?", 1)[0]
        if not verification.ok:
            status, extra, payload = 403, {"Content-Type": "application/json",
                                           "x-amzn-ErrorType": "InvalidSignatureException"}, \
                json.dumps({"message": f"fake upstream: {verification.reason}"}).encode()
        else:
            with self._lock:
                override = self._overrides.get(route)
            if override is not None:
                status, extra, payload = override
            else:
                try:
                    parsed = json.loads(body or b"{}")
                except ValueError:
                    parsed = None
                status, extra, payload = self.canned(route, parsed)
        with self._lock:
            hold = self._delays.get(route, 0.0)
        if hold:
            time.sleep(hold)
        with self._cond:
            self.requests.append(Recorded(handler.command, route, headers, body, verification, status,
                                         payload))
            self._cond.notify_all()
        handler.send_response(status)
        extra = {k: v for k, v in extra.items() if k.lower() not in ("content-length", "connection")}
        extra.setdefault("x-amzn-RequestId", "fake-%d" % len(self.requests))
        for k, v in extra.items():
            handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

"""Fixtures for the black-box tests of the `xray` binary.

- `free_port`   : helper fixture, free_port("tcp"|"udp") -> int (127.0.0.1).
- `moto_server` : a moto X-Ray backend on 127.0.0.1 (session scope).
- `xray_client` : a boto3 X-Ray client pointed at it.
- `xray_bin`    : path of the daemon binary (target/debug/xray, or $XRAY_BIN);
                  FAILS the test (does not skip) when it is missing.
- `daemon`      : factory, daemon(*extra_args, env=..., ...) -> harness.Daemon
                  started on ephemeral loopback ports; at teardown every daemon
                  still running gets SIGTERM and must exit 0.
- `python_sdk`  : factory configuring the real Python X-Ray SDK to send to an
                  address; returns (recorder, sent) where `sent` collects the
                  exact datagrams (str) the SDK emitted.
- `node_sdk`    : runs tests/node/send-segment.js (skips without node, except
                  under CI=true where it fails).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import harness
from harness import NODE_DIR, XRAY_BIN

# Tests and the boto3 client in this process never go through a proxy and never
# reach instance metadata.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,::1"
os.environ.pop("AWS_PROFILE", None)
for _k in ("AWS_XRAY_DAEMON_ADDRESS", "AWS_XRAY_CONTEXT_MISSING", "AWS_XRAY_TRACING_NAME",
           "AWS_XRAY_SDK_ENABLED", "AWS_XRAY_NOOP_ID"):
    os.environ.pop(_k, None)

DAEMON_FIXTURES = {"xray_bin", "daemon"}


def pytest_collection_modifyitems(config, items):
    # Tests that need the binary get the `daemon` marker, so `-m "not daemon"`
    # runs the harness self-tests alone.
    for item in items:
        if DAEMON_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.daemon)


@pytest.fixture(scope="session")
def free_port():
    return harness.free_port


@pytest.fixture(scope="session")
def xray_bin() -> Path:
    if not XRAY_BIN.is_file() or not os.access(XRAY_BIN, os.X_OK):
        pytest.fail(
            f"daemon binary {XRAY_BIN} is missing: run `cargo build --bin xray` first "
            "(scripts/test.sh does), or point XRAY_BIN at a binary",
            pytrace=False,
        )
    return XRAY_BIN


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("moto")
    server = harness.start_moto(log_dir / "moto_server.log")
    try:
        yield server
    finally:
        harness.stop_process(server.proc)


@pytest.fixture(scope="session")
def xray_client(moto_server):
    return harness.xray_client(moto_server.url)


@pytest.fixture
def daemon(xray_bin, tmp_path, request):
    """Factory: daemon(*extra_args, env=None, expect_exit=0, **start_kwargs)."""
    started: list[tuple[harness.Daemon, int | None]] = []

    def start(*extra_args: str, env: dict[str, str] | None = None, expect_exit: int | None = 0,
              **kwargs) -> harness.Daemon:
        n = len(started)
        workdir = tmp_path / f"daemon{n}"
        workdir.mkdir()
        full_env = harness.clean_env(env, tmp_dir=workdir)
        d = harness.start_daemon(xray_bin, list(extra_args), workdir, tmp_path / f"daemon{n}.log",
                                 env=full_env, **kwargs)
        started.append((d, expect_exit))
        return d

    yield start

    problems = []
    for d, expect_exit in started:
        res = d.stop()
        print(f"--- daemon log: {' '.join(d.args)} (exit {res.returncode}) ---\n{res.log}")
        if res.killed:
            problems.append(f"`{' '.join(d.args)}` did not exit within 30 s of SIGTERM (killed)")
        elif expect_exit is not None and res.returncode != expect_exit:
            problems.append(
                f"`{' '.join(d.args)}` exited {res.returncode} after SIGTERM, expected {expect_exit}"
            )
    if problems and not getattr(request.node, "_xray_failed", False):
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        item._xray_failed = True  # don't pile a teardown error onto a failed test


@pytest.fixture
def python_sdk(monkeypatch):
    """Factory: python_sdk("127.0.0.1:PORT", streaming_threshold=None) -> (recorder, sent)."""
    from aws_xray_sdk.core import xray_recorder
    from aws_xray_sdk.core.emitters.udp_emitter import UDPEmitter

    sent: list[str] = []
    original_send = UDPEmitter._send_data

    def recording_send(self, data):
        sent.append(data)
        return original_send(self, data)

    monkeypatch.setattr(UDPEmitter, "_send_data", recording_send)

    def configure(address: str, streaming_threshold: int | None = None):
        monkeypatch.setenv("AWS_XRAY_DAEMON_ADDRESS", address)
        kwargs = dict(daemon_address=address, sampling=False, context_missing="LOG_ERROR",
                      plugins=(), service="xray-daemon-tests")
        if streaming_threshold is not None:
            kwargs["streaming_threshold"] = streaming_threshold
        xray_recorder.configure(**kwargs)
        return xray_recorder, sent

    yield configure
    xray_recorder.clear_trace_entities()
    xray_recorder.configure(streaming_threshold=30)  # the SDK's default


@pytest.fixture
def node_sdk():
    """Factory: node_sdk(daemon_address, name) -> {"trace_id", "id", "name"}."""
    node = shutil.which("node")
    installed = (NODE_DIR / "node_modules" / "aws-xray-sdk-core" / "package.json").is_file()
    if not node or not installed:
        msg = ("node or tests/node/node_modules/aws-xray-sdk-core missing "
               "(scripts/setup-test-deps.sh installs them)")
        if os.environ.get("CI") == "true":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)

    def run(address: str, name: str) -> dict:
        env = harness.clean_env({"AWS_XRAY_DAEMON_ADDRESS": address})
        proc = subprocess.run([node, str(NODE_DIR / "send-segment.js"), name], cwd=NODE_DIR,
                              env=env, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"send-segment.js failed:\n{proc.stdout}\n{proc.stderr}"
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run

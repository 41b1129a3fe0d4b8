"""`--local-sink PATH|-`: every accepted datagram's body becomes one JSON line.

Replays the byte-exact datagrams captured from the real Python and Node.js
SDKs (../shared/fixtures/sdk-datagrams/*.raw).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import harness

LOCAL_ARGS = ("-o", "-n", harness.TEST_REGION)


def fixture_datagrams() -> list[tuple[str, bytes]]:
    if not harness.FIXTURES_DIR.is_dir():
        pytest.skip(f"SDK datagram fixtures not found at {harness.FIXTURES_DIR} "
                    "(expected beside the repository: <repo>/../shared/fixtures/sdk-datagrams)")
    files = sorted(harness.FIXTURES_DIR.glob("*.raw"))
    if not files:
        pytest.skip(f"no *.raw files in {harness.FIXTURES_DIR}")
    return [(f.name, f.read_bytes()) for f in files]


def sink_lines(path: Path) -> list[bytes]:
    """Complete lines written so far (a trailing partial line is ignored)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return data.split(b"\n")[:-1]


def wait_for_lines(path: Path, n: int, timeout: float = 10.0) -> list[bytes]:
    return harness.poll(lambda: (lambda ls: ls if len(ls) >= n else None)(sink_lines(path)),
                        timeout, what=f"{n} lines in {path}")


def assert_lines_match_bodies(lines: list[bytes], datagrams: list[tuple[str, bytes]]) -> None:
    bodies = {name: harness.split_datagram(raw)[1] for name, raw in datagrams}
    assert len(lines) == len(bodies), f"{len(lines)} sink lines for {len(bodies)} datagrams: {lines}"
    remaining = list(lines)
    for name, body in bodies.items():
        # Byte for byte: the line is exactly the body after the header's newline.
        assert body in remaining, (
            f"{name}: body not found verbatim in the sink\nbody: {body!r}\nlines: {remaining!r}")
        remaining.remove(body)
    for line, (name, body) in zip(sorted(lines), sorted(bodies.items(), key=lambda kv: kv[1])):
        assert json.loads(line) == json.loads(body), name


def test_sdk_fixture_datagrams_written_verbatim(daemon, tmp_path):
    datagrams = fixture_datagrams()
    sink = tmp_path / "segments.jsonl"
    d = daemon(*LOCAL_ARGS, "--local-sink", str(sink))
    for _, raw in datagrams:
        d.send(raw)
    lines = wait_for_lines(sink, len(datagrams))
    assert_lines_match_bodies(lines, datagrams)

    res = d.stop()
    assert res.returncode == 0, res.log
    assert_lines_match_bodies(sink_lines(sink), datagrams)
    assert sink.read_bytes().endswith(b"\n")


def test_sdk_fixture_datagrams_replayed_with_socat(daemon, tmp_path):
    socat = shutil.which("socat")
    if socat is None:
        pytest.fail("socat missing (scripts/setup-test-deps.sh installs it)", pytrace=False)
    datagrams = fixture_datagrams()
    sink = tmp_path / "segments.jsonl"
    d = daemon(*LOCAL_ARGS, "--local-sink", str(sink))
    for name, _ in datagrams:
        subprocess.run([socat, "-u", f"OPEN:{harness.FIXTURES_DIR / name}",
                        f"UDP-SENDTO:127.0.0.1:{d.udp_port}"], check=True, timeout=10)
    assert_lines_match_bodies(wait_for_lines(sink, len(datagrams)), datagrams)


def test_local_sink_to_stdout(daemon):
    datagrams = fixture_datagrams()
    d = daemon(*LOCAL_ARGS, "--local-sink", "-", separate_stdout=True)
    for _, raw in datagrams:
        d.send(raw)
    bodies = [harness.split_datagram(raw)[1] for _, raw in datagrams]

    def all_written():
        out = d.stdout_path.read_bytes().split(b"\n")
        return all(b in out for b in bodies)

    harness.poll(all_written, timeout=10, what="every body as a line on stdout")
    res = d.stop()
    assert res.returncode == 0, res.log
    out_lines = d.stdout_path.read_bytes().split(b"\n")
    for body in bodies:
        assert out_lines.count(body) == 1, f"body written {out_lines.count(body)} times: {body!r}"


def test_invalid_datagrams_are_not_written(daemon, tmp_path):
    sink = tmp_path / "segments.jsonl"
    d = daemon(*LOCAL_ARGS, "--local-sink", str(sink))
    valid = harness.segment_doc("valid-after-junk")
    junk = [
        b'{"format":"json","version":1}',                       # no newline: missing header
        b'{"format":"json","version":1}\n',                     # empty body
        b'{"format":"json","version":2}\n{"id":"x"}',           # invalid header (version)
        b'{"format":"xml","version":1}\n{"id":"x"}',            # invalid header (format)
        b'not json\n{"id":"x"}',                                # invalid header (not JSON)
        b"",                                                    # empty datagram
    ]
    for dg in junk:
        d.send(dg)
    d.send(harness.datagram(valid))
    lines = wait_for_lines(sink, 1)
    time.sleep(1.5)  # past the 1 s idle flush: nothing else may follow
    res = d.stop()
    assert res.returncode == 0, res.log
    lines = sink_lines(sink)
    assert [json.loads(x) for x in lines] == [valid], lines
    assert "[Warn] " in res.log, "no warning logged for refused datagrams:\n" + res.log


def test_invalid_datagrams_are_counted(daemon, tmp_path):
    d = daemon(*LOCAL_ARGS, "--local-sink", str(tmp_path / "segments.jsonl"))
    for dg in (b'{"format":"json","version":1}',             # missing_header
               b'{"format":"json","version":1}\n',           # empty_body
               b'{"format":"json","version":2}\n{"id":"x"}',  # invalid_header
               b'{"format":"xml","version":1}\n{"id":"x"}',   # invalid_header
               b'not json\n{"id":"x"}'):                      # invalid_header
        d.send(dg)

    want = {"missing_header": 1, "empty_body": 1, "invalid_header": 3}

    def rejected():
        m = d.metrics()
        return {r: harness.metric(m, "xray_segments_rejected_total", reason=r) for r in want}

    try:
        harness.poll(lambda: rejected() == want, timeout=10, what="the rejections to be counted")
    except TimeoutError:
        pass
    assert rejected() == want
    m = d.metrics()
    assert harness.metric(m, "xray_segments_received_total", transport="udp") == 5

"""Command-line compatibility with the Go daemon (v3.6.6): help text, version,
flag errors and start-up failures, with their exit codes.

Each run happens in an empty temporary directory (no ./cfg.yaml) with a clean
environment, and gets a deadline: a daemon that does not exit is killed and the
test fails.
"""

from __future__ import annotations

import re

import pytest

import harness

GO_USAGE_LINES = [
    "Usage: X-Ray [options]",
    "\t-a\t--resource-arn\tAmazon Resource Name (ARN) of the AWS resource running the daemon.",
    "\t-o\t--local-mode\tDon't check for EC2 instance metadata.",
    "\t-m\t--buffer-memory\tChange the amount of memory in MB that buffers can use (minimum 3).",
    "\t-n\t--region\tSend segments to X-Ray service in a specific region.",
    "\t-b\t--bind\t\tOverrides default UDP address (127.0.0.1:2000).",
    "\t-t\t--bind-tcp\tOverrides default TCP address (127.0.0.1:2000).",
    "\t-r\t--role-arn\tAssume the specified IAM role to upload segments to a different account.",
    "\t-c\t--config\tLoad a configuration file from the specified path.",
    "\t-f\t--log-file\tOutput logs to the specified file path.",
    "\t-l\t--log-level\tLog level, from most verbose to least: dev, debug, info, warn, error, prod (default).",
    "\t-p\t--proxy-address\tProxy address through which to upload segments.",
    "\t-v\t--version\tShow AWS X-Ray daemon version.",
    "\t-h\t--help\t\tShow this screen",
]

ERROR_LINE = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \[Error\] "


def run(xray_bin, tmp_path, *args, **kw):
    return harness.run_xray(xray_bin, list(args), tmp_path, **kw)


def describe(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout.decode(errors='replace')}" \
           f"\n--- stderr ---\n{proc.stderr.decode(errors='replace')}"


def assert_go_usage(text: str) -> None:
    lines = text.splitlines()
    assert lines and lines[0] == GO_USAGE_LINES[0], f"first line {lines[:1]!r}\n{text}"
    # Every Go line verbatim (tabs included) and in Go's order; lines for the
    # new long-only flags may be added between or after them.
    positions = []
    for want in GO_USAGE_LINES:
        assert want in lines, f"usage line missing or changed: {want!r}\n{text}"
        positions.append(lines.index(want))
    assert positions == sorted(positions), f"Go usage lines out of order\n{text}"


@pytest.mark.parametrize("flag", ["-h", "-help", "--help"])
def test_help_prints_go_usage_and_exits_0(xray_bin, tmp_path, flag):
    proc = run(xray_bin, tmp_path, flag)
    assert proc.returncode == 0, describe(proc)
    assert_go_usage(proc.stdout.decode())


@pytest.mark.parametrize("flag", ["-x", "--no-such-flag"])
def test_undefined_flag_exits_2(xray_bin, tmp_path, flag):
    proc = run(xray_bin, tmp_path, flag)
    assert proc.returncode == 2, describe(proc)
    # Go's flag package names the flag with one dash, however it was written.
    assert f"flag provided but not defined: -{flag.lstrip('-')}\n" in proc.stderr.decode(), \
        describe(proc)
    assert_go_usage(proc.stdout.decode())


def test_bad_int_value_exits_2(xray_bin, tmp_path):
    proc = run(xray_bin, tmp_path, "-m", "abc")
    assert proc.returncode == 2, describe(proc)
    assert 'invalid value "abc" for flag -m: parse error' in proc.stderr.decode(), describe(proc)


@pytest.mark.parametrize("flag", ["-v", "--version", "-version"])
def test_version(xray_bin, tmp_path, flag):
    proc = run(xray_bin, tmp_path, flag)
    assert proc.returncode == 0, describe(proc)
    out = proc.stdout.decode()
    assert re.fullmatch(r"AWS X-Ray daemon version: \S[^\n]*\n", out), describe(proc)


def test_config_without_version_exits_1(xray_bin, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("Region: us-east-1\nLocalMode: true\n")
    proc = run(xray_bin, tmp_path, "-c", str(cfg))
    assert proc.returncode == 1, describe(proc)
    stderr = proc.stderr.decode()
    msg = ("Config Version is missing. Use X-Ray Daemon Config Migration Script to update the "
           "config file. Please refer to AWS X-Ray Documentation for more information.")
    assert re.search(ERROR_LINE + re.escape(msg) + "$", stderr, re.M), describe(proc)


@pytest.mark.parametrize("mb", ["2", "1"])
def test_too_little_buffer_memory_exits_1(xray_bin, tmp_path, free_port, mb):
    proc = run(xray_bin, tmp_path, "-m", mb, "-o", "-n", harness.TEST_REGION,
               "-b", f"127.0.0.1:{free_port('udp')}", "-t", f"127.0.0.1:{free_port('tcp')}",
               "--admin-address", f"127.0.0.1:{free_port('tcp')}")
    assert proc.returncode == 1, describe(proc)
    output = proc.stdout.decode() + proc.stderr.decode()
    msg = "Not enough Buffers Memory Allocated. Min Buffers Memory required: 3 MB."
    assert re.search(ERROR_LINE + re.escape(msg) + "$", output, re.M), describe(proc)

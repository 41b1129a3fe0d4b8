"""`make dist`: the zip archive, its checksum, its GPG signature, the ARCHS handling."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest

from conftest import (
    BUILD_FACTS,
    REPO,
    VERSION,
    check_version_line,
    has_symtab,
    host_triple,
    make,
    require,
    run,
)

ARCH_LABEL = {"x86_64-unknown-linux-gnu": "linux-amd64", "aarch64-unknown-linux-gnu": "linux-arm64"}


def test_archive_name_and_contents(dist_zip: Path):
    label = ARCH_LABEL.get(host_triple())
    if label:
        assert dist_zip.name == f"xray-daemon-{VERSION}-{label}.zip"
    with zipfile.ZipFile(dist_zip) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        assert sorted(names) == ["LICENSE", "README.md", "cfg.yaml", "xray"], names
        assert zf.read("cfg.yaml") == (REPO / "config" / "cfg.yaml").read_bytes()
        assert zf.read("LICENSE") == (REPO / "LICENSE").read_bytes()
        assert zf.read("README.md") == (REPO / "README.md").read_bytes()
        modes = {i.filename: (i.external_attr >> 16) for i in zf.infolist()}
        assert stat.S_IMODE(modes["xray"]) == 0o755, oct(modes["xray"])
        assert stat.S_ISREG(modes["xray"])
        for name in ("cfg.yaml", "LICENSE", "README.md"):
            assert stat.S_IMODE(modes[name]) == 0o644, (name, oct(modes[name]))


def test_archived_binary_runs_and_reports_version_and_commit(dist_zip: Path, release_binary: Path, tmp_path: Path):
    require("unzip", "readelf")
    # Extract with the real unzip, as users do: it must restore the executable bit.
    run(["unzip", "-q", str(dist_zip), "-d", str(tmp_path / "x")])
    binary = tmp_path / "x" / "xray"
    assert os.access(binary, os.X_OK)
    assert check_version_line(binary, tmp_path / "cwd") == BUILD_FACTS["commit"]
    # The archive carries a stripped copy.
    assert not has_symtab(binary)


def test_checksum_file(dist_zip: Path):
    require("sha256sum")
    sums = dist_zip.with_name(dist_zip.name + ".sha256")
    assert sums.is_file()
    digest = hashlib.sha256(dist_zip.read_bytes()).hexdigest()
    # `sha256sum` format: "<hex>  <file name>", the name relative to the directory.
    assert sums.read_text() == f"{digest}  {dist_zip.name}\n"
    out = run(["sha256sum", "-c", sums.name], cwd=dist_zip.parent).stdout
    assert f"{dist_zip.name}: OK" in out


def test_archive_is_reproducible(dist_zip: Path, release_binary, tmp_path: Path):
    """Same commit and binary -> byte-identical zip (fixed mtimes, order, no extra fields)."""
    again = tmp_path / "again"
    make("dist", again)
    rebuilt = again / dist_zip.name
    assert rebuilt.read_bytes() == dist_zip.read_bytes()


def test_no_signature_without_key(dist_zip: Path):
    assert not dist_zip.with_name(dist_zip.name + ".asc").exists()


@pytest.fixture(scope="module")
def gpg_key(tmp_path_factory):
    """A throwaway signing key in a temporary GNUPGHOME (no passphrase)."""
    require("gpg", "gpg-agent")
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    uid = "xray-daemon packaging test <packaging-test@example.invalid>"
    run(
        ["gpg", "--homedir", str(home), "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "1d"],
        timeout=120,
    )
    listing = run(["gpg", "--homedir", str(home), "--batch", "--with-colons", "--list-secret-keys"]).stdout
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    yield {"home": home, "fpr": fpr, "uid": uid}
    # Stop the agent this key started (it would outlive the test otherwise).
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True)


def gpg_verify(home: Path, signature: Path, data: Path) -> subprocess.CompletedProcess:
    return run(
        ["gpg", "--homedir", str(home), "--batch", "--status-fd", "1", "--verify", str(signature), str(data)],
        check=False,
    )


def test_signed_dist_verifies(release_binary, gpg_key, tmp_path: Path):
    out_dir = tmp_path / "signed"
    proc = make("dist", out_dir, f"GPG_KEY_ID={gpg_key['fpr']}", f"GPG_HOMEDIR={gpg_key['home']}")
    assert "signed:" in proc.stdout + proc.stderr
    archives = sorted(out_dir.glob("*.zip"))
    assert len(archives) == 1
    archive = archives[0]
    asc = archive.with_name(archive.name + ".asc")
    text = asc.read_text()
    assert text.startswith("-----BEGIN PGP SIGNATURE-----"), text[:80]
    assert text.rstrip().endswith("-----END PGP SIGNATURE-----")

    proc = gpg_verify(gpg_key["home"], asc, archive)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[GNUPG:] GOODSIG" in proc.stdout
    assert f"[GNUPG:] VALIDSIG {gpg_key['fpr']}" in proc.stdout

    # The user-facing flow of docs/install.md: a fresh keyring that imports the public key.
    user_home = tmp_path / "user-gnupg"
    user_home.mkdir(mode=0o700)
    public = run(["gpg", "--homedir", str(gpg_key["home"]), "--batch", "--armor", "--export", gpg_key["fpr"]]).stdout
    run(["gpg", "--homedir", str(user_home), "--batch", "--import"], input=public)
    proc = gpg_verify(user_home, asc, archive)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Good signature from" in proc.stderr
    subprocess.run(["gpgconf", "--homedir", str(user_home), "--kill", "gpg-agent"], capture_output=True)

    # A changed archive no longer verifies.
    tampered = tmp_path / archive.name
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    proc = gpg_verify(gpg_key["home"], asc, tampered)
    assert proc.returncode != 0
    assert "[GNUPG:] BADSIG" in proc.stdout


def test_signing_with_unknown_key_fails_readably(release_binary, gpg_key, tmp_path: Path):
    proc = make(
        "dist",
        tmp_path / "out",
        "GPG_KEY_ID=no-such-key@example.invalid",
        f"GPG_HOMEDIR={gpg_key['home']}",
        check=False,
    )
    assert proc.returncode != 0
    assert "could not sign" in proc.stderr and "no-such-key@example.invalid" in proc.stderr, proc.stderr


def installed_targets() -> set[str]:
    proc = run(["rustup", "target", "list", "--installed"], check=False)
    return set(proc.stdout.split()) if proc.returncode == 0 else set()


def test_archs_skips_targets_that_are_not_installed(release_binary, tmp_path: Path):
    require("rustup")
    host = host_triple()
    other = "aarch64-unknown-linux-gnu" if host != "aarch64-unknown-linux-gnu" else "x86_64-unknown-linux-gnu"
    if other in installed_targets():
        pytest.skip(f"{other} is installed here: nothing to skip")
    out_dir = tmp_path / "multi"
    proc = make("dist", out_dir, f"ARCHS={host} {other}")
    assert f"SKIP {other}" in proc.stdout and f"rustup target add {other}" in proc.stdout, proc.stdout
    assert len(list(out_dir.glob("*.zip"))) == 1

    # Only targets that are not there: nothing to build is an error, not a silent success.
    proc = make("dist", tmp_path / "none", f"ARCHS={other}", check=False)
    assert proc.returncode != 0
    assert "no archive built" in proc.stderr, proc.stderr


def test_unknown_target_is_rejected(release_binary, tmp_path: Path):
    proc = make("dist", tmp_path / "bad", "ARCHS=riscv64gc-unknown-linux-gnu", check=False)
    assert proc.returncode != 0
    assert "unsupported target 'riscv64gc-unknown-linux-gnu'" in proc.stderr, proc.stderr

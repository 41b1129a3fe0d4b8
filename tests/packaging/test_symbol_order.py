"""The release binary's function layout (link/symbol-order.txt, applied by build.rs, made by
scripts/symbol-order.sh): the list must still name this build's functions, and the linker
must have followed it, or idle RSS quietly goes back up by about 4 MB."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from conftest import REPO, require, run

SCRIPT = REPO / "scripts" / "symbol-order.sh"


def check(binary: Path):
    require("nm")
    return run(["bash", str(SCRIPT), "check", str(binary)], check=False)


def list_toolchain() -> str:
    """The `rustc --version` line the list was generated with (its third header line)."""
    for line in (REPO / "link" / "symbol-order.txt").read_text().splitlines():
        if line.startswith("# rustc "):
            return line[2:]
    return ""


def test_release_binary_follows_the_symbol_order(release_binary: Path):
    """`make build` (XRAY_SYMBOL_ORDER=on) must lay the binary out as listed. The names are
    only valid for the toolchain and platform the list was made with: elsewhere, skip."""
    if (platform.system(), platform.machine()) != ("Linux", "x86_64"):
        pytest.skip("the list is for x86_64 Linux")
    toolchain = run(["rustc", "--version"]).stdout.strip()
    if toolchain != list_toolchain():
        pytest.skip(f"the list was made with {list_toolchain()!r}, this is {toolchain!r}")
    proc = check(release_binary)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_check_refuses_a_binary_the_list_does_not_fit():
    """A debug build has other symbol names (no LTO, other inlining): the check must say the
    list is stale for it rather than pass."""
    debug_binary = REPO / "target" / "debug" / "xray"
    if not debug_binary.is_file():
        pytest.skip("no debug build (scripts/test.sh builds one before this suite)")
    proc = check(debug_binary)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "is stale" in proc.stderr and "scripts/symbol-order.sh generate" in proc.stderr, proc.stderr

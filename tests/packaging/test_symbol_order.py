"""The release binary's function layout (link/symbol-order.txt, applied by build.rs, made by
scripts/symbol-order.sh): the list must still name this build's functions, and the linker
must have followed it, or idle RSS quietly goes back up by about 4 MB."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, require, run

SCRIPT = REPO / "scripts" / "symbol-order.sh"


def check(binary: Path):
    require("nm")
    return run(["bash", str(SCRIPT), "check", str(binary)], check=False)


def test_release_binary_follows_the_symbol_order(release_binary: Path):
    proc = check(release_binary)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "200 of its first 200 functions by address are listed" in proc.stdout, proc.stdout


def test_check_refuses_a_binary_the_list_does_not_fit():
    """A debug build has other symbol names (no LTO, other inlining): the check must say the
    list is stale for it rather than pass."""
    debug_binary = REPO / "target" / "debug" / "xray"
    if not debug_binary.is_file():
        pytest.skip("no debug build (scripts/test.sh builds one before this suite)")
    proc = check(debug_binary)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "is stale" in proc.stderr and "scripts/symbol-order.sh generate" in proc.stderr, proc.stderr

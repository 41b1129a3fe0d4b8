"""The configuration the daemon receives from the chart parses with the daemon's own loader.

Like the Go daemon, ours validates the config file (and the flags) before it honours -v, so
`xray -c <cfg.yaml> -v` exits 0 and prints its version only for a file it would start with.
The second test runs the container's exact command line (args from the rendered pod, the
config path pointed at the extracted file, and the container's literal env) plus -v."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import VALUE_SETS, daemon_env, render

VERSION_LINE = "AWS X-Ray daemon version:"
SETS_WITH_CONFIGMAP = [s for s in VALUE_SETS if "ConfigMap" in render(s).kinds()]


def run_daemon(xray_bin: Path, args: list[str], cwd: Path, env: dict[str, str] | None = None):
    return subprocess.run([str(xray_bin), *args], capture_output=True, text=True, timeout=30,
                          cwd=cwd, env=daemon_env(env), stdin=subprocess.DEVNULL)


def test_some_sets_have_a_configmap():
    assert len(SETS_WITH_CONFIGMAP) >= 7


@pytest.mark.parametrize("value_set", SETS_WITH_CONFIGMAP)
def test_daemon_loads_rendered_config(value_set, xray_bin, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(render(value_set).cfg_yaml)
    proc = run_daemon(xray_bin, ["-c", str(cfg), "-v"], tmp_path)
    assert proc.returncode == 0, f"{cfg.read_text()}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert VERSION_LINE in proc.stdout, proc.stdout


@pytest.mark.parametrize("value_set", SETS_WITH_CONFIGMAP)
def test_daemon_accepts_container_command_line(value_set, xray_bin, tmp_path):
    m = render(value_set)
    c = m.daemon
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(m.cfg_yaml)
    args = list(c["args"])
    assert args[0] == "-c"
    args[1] = str(cfg)
    env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    proc = run_daemon(xray_bin, [*args, "-v"], tmp_path, env)
    assert proc.returncode == 0, f"{args}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert VERSION_LINE in proc.stdout, proc.stdout


def test_daemon_refuses_a_bad_config(xray_bin, tmp_path):
    """The check above has teeth: the same loader refuses an unknown key."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(render().cfg_yaml + "Concurency: 8\n")
    proc = run_daemon(xray_bin, ["-c", str(cfg), "-v"], tmp_path)
    assert proc.returncode == 1, proc
    assert VERSION_LINE not in proc.stdout
    assert "Concurency flag is invalid" in proc.stderr, proc.stderr

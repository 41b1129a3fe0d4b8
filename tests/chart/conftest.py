"""Shared helpers of the chart, manifest and Dockerfile tests.

Everything here runs offline: helm (v3 as `helm`, v4 as `helm4`, both installed into the test
venv by scripts/install-k8s-tools.sh), kubernetes-validate and hadolint from the venv, promtool
from Debian's prometheus package, and the daemon binary (target/debug/xray or $XRAY_BIN).

Value sets: `default` (the chart's values.yaml alone) plus every helm/xray-daemon/ci/*-values.yaml
(the chart-testing convention), named by the file name without `-values.yaml`.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "xray-daemon"
CI_VALUES = CHART / "ci"
DEPLOY = REPO / "deploy"
HERE = Path(__file__).resolve().parent
VENV = Path(os.environ.get("XRAY_TEST_VENV", REPO / ".venv-test"))
XRAY_BIN = Path(os.environ.get("XRAY_BIN", REPO / "target" / "debug" / "xray"))

RELEASE = "xray"
NAMESPACE = "observability"

# helm majors the chart is proven with: name used in test ids -> executable in the venv
HELMS = {"helm3": "helm", "helm4": "helm4"}

# Oldest Kubernetes the tests validate against (native sidecars are on by default from 1.29),
# and the newest schema kubernetes-validate ships.
KUBE_OLDEST = "1.29.0"


def _newest_kube() -> str:
    from kubernetes_validate import utils

    return utils.latest_version()


KUBE_NEWEST = _newest_kube()
KUBE_VERSIONS = [KUBE_OLDEST, KUBE_NEWEST]

VALUE_SETS: dict[str, Path | None] = {"default": None}
VALUE_SETS.update(
    {p.name[: -len("-values.yaml")]: p for p in sorted(CI_VALUES.glob("*-values.yaml"))}
)

# Prometheus Operator kinds: CRDs, so kubernetes-validate has no schema for them; the tests
# check them structurally instead.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}

# The metric names of DESIGN.md section 4 (an API: never renamed).
DESIGN_METRICS = {
    "xray_segments_received_total",
    "xray_received_bytes_total",
    "xray_segments_rejected_total",
    "xray_segments_dropped_total",
    "xray_segments_sent_total",
    "xray_segments_unprocessed_total",
    "xray_upload_requests_total",
    "xray_upload_duration_seconds",
    "xray_batch_segments",
    "xray_buffer_used_bytes",
    "xray_buffer_limit_bytes",
    "xray_upload_in_flight_batches",
    "xray_proxy_requests_total",
    "xray_proxy_duration_seconds",
    "xray_telemetry_records_sent_total",
    "xray_config_reloads_total",
    "xray_config_last_reload_successful",
    "xray_config_last_reload_timestamp_seconds",
    "xray_build_info",
}


def tool(name: str) -> str:
    """Path of a test tool: the venv's first, then PATH; fails the test when missing."""
    candidate = VENV / "bin" / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(
        f"{name} not found in {VENV / 'bin'} or on PATH: run scripts/setup-test-deps.sh "
        "(or scripts/install-k8s-tools.sh for helm/helm4)",
        pytrace=False,
    )


class HelmError(Exception):
    """helm exited non-zero; the message is its stderr."""


@functools.lru_cache(maxsize=None)
def _helm_template(helm: str, value_files: tuple[str, ...], extra_yaml: str, kube: str) -> str:
    args = [tool(HELMS[helm]), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
            "--kube-version", kube]
    for f in value_files:
        args += ["-f", f]
    tmp = None
    if extra_yaml:
        tmp = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        tmp.write(extra_yaml)
        tmp.close()
        args += ["-f", tmp.name]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    finally:
        if tmp:
            os.unlink(tmp.name)
    if proc.returncode != 0:
        raise HelmError(proc.stderr.strip())
    return proc.stdout


def value_files(value_set: str) -> tuple[str, ...]:
    path = VALUE_SETS[value_set]
    return () if path is None else (str(path),)


def template_text(
    value_set: str = "default",
    helm: str = "helm3",
    kube: str = KUBE_NEWEST,
    values: dict[str, Any] | None = None,
) -> str:
    """`helm template` output for a value set plus optional extra values (cached)."""
    extra = yaml.safe_dump(values, sort_keys=True) if values else ""
    return _helm_template(helm, value_files(value_set), extra, kube)


class Manifests:
    """The parsed documents of a rendering, with lookups for the objects the tests inspect."""

    def __init__(self, text: str):
        self.text = text
        self.docs: list[dict] = [d for d in yaml.safe_load_all(text) if d]

    def kinds(self) -> list[str]:
        return [d["kind"] for d in self.docs]

    def all(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> dict:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, found {len(found)}: {self.kinds()}"
        return found[0]

    def maybe(self, kind: str) -> dict | None:
        found = self.all(kind)
        assert len(found) <= 1, f"expected at most one {kind}: {self.kinds()}"
        return found[0] if found else None

    @property
    def workload(self) -> dict:
        found = [d for d in self.docs if d["kind"] in ("DaemonSet", "Deployment")]
        assert len(found) == 1, f"expected one DaemonSet or Deployment: {self.kinds()}"
        return found[0]

    @property
    def pod(self) -> dict:
        return self.workload["spec"]["template"]["spec"]

    @property
    def daemon(self) -> dict:
        return container(self.pod, "xray-daemon")

    @property
    def cfg_yaml(self) -> str:
        return self.one("ConfigMap")["data"]["cfg.yaml"]


def render(
    value_set: str = "default",
    helm: str = "helm3",
    kube: str = KUBE_NEWEST,
    values: dict[str, Any] | None = None,
) -> Manifests:
    return Manifests(template_text(value_set, helm, kube, values))


def container(pod_spec: dict, name: str) -> dict:
    for c in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name!r} in the pod spec")


def container_port(c: dict, name: str) -> dict:
    for p in c.get("ports", []):
        if p["name"] == name:
            return p
    raise AssertionError(f"container {c['name']} has no port named {name!r}: {c.get('ports')}")


def resolve_port(c: dict, port: int | str) -> int:
    """A probe's or target's port (number or container port name) as a number."""
    if isinstance(port, int):
        return port
    return container_port(c, port)["containerPort"]


def flag_values(args: list[str], flag: str) -> list[str]:
    """Values of a `-flag value` / `-flag=value` option in an argument list, in order."""
    out = []
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            out.append(args[i + 1])
        elif a.startswith(flag + "="):
            out.append(a.split("=", 1)[1])
    return out


def flag_value(args: list[str], flag: str) -> str:
    values = flag_values(args, flag)
    assert values, f"{flag} missing from {args}"
    return values[-1]


def load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def run_kubernetes_validate(docs: Iterable[dict], kube: str, tmp_path: Path, label: str) -> str:
    """Validates manifests with the kubernetes-validate CLI (--strict) for one Kubernetes
    version; fails on any error, on a kind it has no schema for, or on a missing document."""
    docs = list(docs)
    assert docs, f"{label}: nothing to validate"
    path = tmp_path / f"{label}-{kube}.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    proc = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", kube, str(path)],
        capture_output=True, text=True, timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{label} against Kubernetes {kube}:\n{out}"
    assert "WARN" not in out and "ERROR" not in out, f"{label} against Kubernetes {kube}:\n{out}"
    passed = [line for line in out.splitlines() if " passed for resource " in line]
    assert len(passed) == len(docs), f"{label}: {len(docs)} documents, {len(passed)} passed:\n{out}"
    return out


def daemon_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment for running the daemon: no XRAY_* or AWS_* from the caller."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XRAY_", "AWS_")) and k not in ("HTTPS_PROXY",)}
    env.update(extra or {})
    return env


@pytest.fixture(scope="session")
def xray_bin() -> Path:
    if not XRAY_BIN.is_file() or not os.access(XRAY_BIN, os.X_OK):
        pytest.fail(
            f"daemon binary {XRAY_BIN} is missing: run `cargo build --bin xray` first "
            "(scripts/test.sh does), or point XRAY_BIN at a binary",
            pytrace=False,
        )
    return XRAY_BIN

"""`helm lint --strict` and `helm template` for every value set, with helm v3 and v4, and the
rendered manifests validated by kubernetes-validate --strict for the oldest and the newest
Kubernetes version covered."""

from __future__ import annotations

import subprocess

import pytest

from conftest import (
    CHART,
    CRD_KINDS,
    HELMS,
    KUBE_VERSIONS,
    VALUE_SETS,
    render,
    run_kubernetes_validate,
    tool,
    value_files,
)

# The issue asks for these value sets at least; each must exist as ci/<name>-values.yaml.
REQUIRED_SETS = {"daemonset", "deployment", "hostnetwork", "service", "monitoring", "irsa",
                 "sidecar-style"}


def test_required_value_sets_exist():
    assert REQUIRED_SETS <= set(VALUE_SETS), sorted(REQUIRED_SETS - set(VALUE_SETS))


@pytest.mark.parametrize("helm", HELMS)
def test_helm_versions(helm):
    proc = subprocess.run([tool(HELMS[helm]), "version", "--template", "{{.Version}}"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith({"helm3": "v3.", "helm4": "v4."}[helm]), proc.stdout


@pytest.mark.parametrize("value_set", VALUE_SETS)
@pytest.mark.parametrize("helm", HELMS)
def test_lint_strict(helm, value_set):
    args = [tool(HELMS[helm]), "lint", "--strict", str(CHART)]
    for f in value_files(value_set):
        args += ["-f", f]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "0 chart(s) failed" in out, out
    # --strict turns warnings into failures; make sure none are even reported.
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("value_set", VALUE_SETS)
@pytest.mark.parametrize("helm", HELMS)
def test_template_validates(helm, value_set, kube, tmp_path):
    m = render(value_set, helm=helm, kube=kube)
    core = [d for d in m.docs if d["kind"] not in CRD_KINDS]
    run_kubernetes_validate(core, kube, tmp_path, f"{helm}-{value_set}")
    for d in m.docs:
        if d["kind"] in CRD_KINDS:
            assert d["apiVersion"] == "monitoring.coreos.com/v1", d


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm3_and_helm4_render_the_same(value_set):
    assert render(value_set, helm="helm3").docs == render(value_set, helm="helm4").docs


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_object_is_namespaced_and_labelled(value_set):
    m = render(value_set)
    for d in m.docs:
        meta = d["metadata"]
        assert meta["namespace"] in ("observability", "monitoring"), (d["kind"], meta)
        labels = meta["labels"]
        for key in ("helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                    "app.kubernetes.io/managed-by"):
            assert key in labels, (d["kind"], key, labels)
        assert labels["app.kubernetes.io/instance"] == "xray"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"

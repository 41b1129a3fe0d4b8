"""NOTES.txt tells the user how to point applications at the daemon and how to reach its
diagnostics. `helm template` does not render NOTES; helm 4's client-side dry-run install does,
offline."""

from __future__ import annotations

import subprocess

import pytest

from conftest import CHART, NAMESPACE, RELEASE, VALUE_SETS, tool, value_files


def notes(value_set: str = "default", *set_args: str) -> str:
    args = [tool("helm4"), "install", RELEASE, str(CHART), "--dry-run=client",
            "--namespace", NAMESPACE]
    for f in value_files(value_set):
        args += ["-f", f]
    for s in set_args:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "NOTES:" in proc.stdout, proc.stdout[-2000:]
    return proc.stdout.split("NOTES:", 1)[1]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_notes_render(value_set):
    text = notes(value_set)
    assert "AWS_XRAY_DAEMON_ADDRESS" in text
    assert "kubectl -n observability port-forward" in text
    assert "/debug/status" in text and "/metrics" in text
    assert "<no value>" not in text and "%!" not in text, text


def test_notes_node_local_address():
    text = notes()
    assert "fieldPath: status.hostIP" in text
    assert 'value: "$(HOST_IP):2000"' in text
    assert "HOST_IP must come before AWS_XRAY_DAEMON_ADDRESS" in text
    assert "kubectl -n observability port-forward pod/<pod-name> 2100:2100" in text
    assert "curl -s http://127.0.0.1:2100/debug/status" in text
    assert "curl -s http://127.0.0.1:2100/metrics" in text
    assert "Segment buffer budget: 64 MB (-m), 50% of the memory limit." in text
    assert "No config.Region set" in text
    assert "EKS Pod Identity association" in text


def test_notes_split_ports_and_service():
    text = notes("hostnetwork", "service.enabled=true")
    assert 'value: "udp:$(HOST_IP):2002 tcp:$(HOST_IP):2003"' in text
    assert "xray-xray-daemon.observability.svc.cluster.local:2000" in text
    assert "through hostNetwork" in text
    assert "No config.Region set" not in text


def test_notes_deployment():
    text = notes("deployment")
    assert "status.hostIP" not in text
    assert 'value: "xray-xray-daemon.observability.svc.cluster.local:2000"' in text
    assert "internalTrafficPolicy Cluster" in text
    assert "port-forward deployment/xray-xray-daemon 2100:2100" in text


def test_notes_warnings():
    text = notes("default", "resources.limits=null")
    assert "WARNING: no memory limit" in text
    text = notes("irsa")
    assert "no IRSA role annotation" not in text

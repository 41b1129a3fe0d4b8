"""ServiceMonitor, PodMonitor and PrometheusRule are CRDs (no schema in kubernetes-validate):
checked structurally, against the Service and pods they must match, against the metric names
of DESIGN.md section 4 and the daemon's source, and with promtool."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from conftest import DESIGN_METRICS, REPO, container_port, render, tool

MONITORING_KEYS = {"apiVersion", "kind", "metadata", "spec"}


def test_nothing_from_prometheus_operator_by_default():
    kinds = render().kinds()
    assert not {"ServiceMonitor", "PodMonitor", "PrometheusRule"} & set(kinds)


def test_service_monitor():
    m = render("monitoring")
    sm = m.one("ServiceMonitor")
    assert set(sm) == MONITORING_KEYS
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = sm["spec"]
    assert set(spec) == {"namespaceSelector", "selector", "endpoints"}
    svc = m.one("Service")
    assert spec["namespaceSelector"] == {"matchNames": [svc["metadata"]["namespace"]]}
    assert spec["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics"
    assert endpoint["scheme"] == "http"
    assert endpoint["interval"] == "15s" and endpoint["scrapeTimeout"] == "10s"
    assert endpoint["metricRelabelings"][0]["action"] == "drop"
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}


def test_pod_monitor():
    m = render("podmonitor")
    assert "Service" not in m.kinds()
    pm = m.one("PodMonitor")
    assert set(pm) == MONITORING_KEYS
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["namespace"] == "monitoring"
    spec = pm["spec"]
    assert set(spec) == {"namespaceSelector", "selector", "podMetricsEndpoints"}
    assert spec["namespaceSelector"] == {"matchNames": ["observability"]}
    pod_labels = m.workload["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics"
    container_port(m.daemon, endpoint["port"])
    assert endpoint["relabelings"][0]["targetLabel"] == "node"


def rules_of(m):
    rule = m.one("PrometheusRule")
    assert set(rule) == MONITORING_KEYS
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    (group,) = rule["spec"]["groups"]
    return group["rules"]


def test_prometheus_rule_alerts():
    rules = rules_of(render("monitoring"))
    alerts = {r["alert"]: r for r in rules}
    assert set(alerts) == {"XRayDaemonSegmentsDropped", "XRayDaemonKernelDrops",
                           "XRayDaemonSegmentsRejected",
                           "XRayDaemonUploadErrors", "XRayDaemonBufferNearlyFull",
                           "XRayDaemonConfigReloadFailed", "XRayDaemonNoSegments"}
    assert "xray_segments_dropped_total" in alerts["XRayDaemonSegmentsDropped"]["expr"]
    assert "xray_segments_rejected_total" in alerts["XRayDaemonSegmentsRejected"]["expr"]
    assert "xray_udp_kernel_drops_total" in alerts["XRayDaemonKernelDrops"]["expr"]
    upload = alerts["XRayDaemonUploadErrors"]["expr"]
    assert 'outcome!="ok"' in upload and "> 0.1" in upload
    assert "xray_config_last_reload_successful" in alerts["XRayDaemonConfigReloadFailed"]["expr"]
    for name, r in alerts.items():
        if name == "XRayDaemonNoSegments":  # the extra rule of the value set
            assert r["labels"] == {"severity": "info"}
            continue
        assert r["labels"] == {"severity": "critical"}
        assert r["for"]
        assert 'namespace="observability"' in r["expr"]
        assert r["annotations"]["summary"] and "{{ $labels.pod }}" in r["annotations"]["description"]


def test_default_rules_can_be_turned_off():
    rules = rules_of(render("monitoring", values={"prometheusRule": {"defaultRules": False}}))
    assert [r["alert"] for r in rules] == ["XRayDaemonNoSegments"]


def test_rules_use_only_documented_metrics_the_daemon_exports():
    rules = rules_of(render("monitoring", values={"prometheusRule": {"extraRules": []}}))
    source = "\n".join(p.read_text() for p in (REPO / "src").rglob("*.rs"))
    # DESIGN.md's names, and those the README's metrics table adds to them.
    readme = (REPO / "README.md").read_text()
    documented = DESIGN_METRICS | set(re.findall(r"^\| `(xray_[a-z_]+)` \|", readme, re.M))
    assert "xray_udp_kernel_drops_total" in documented
    used = set()
    for r in rules:
        used |= set(re.findall(r"\bxray_[a-z_]+", r["expr"]))
    assert used, rules
    assert used <= documented, used - documented
    missing = {name for name in used if f'"{name}"' not in source}
    assert not missing, f"alert metrics the daemon's source never registers: {missing}"


def test_promtool_accepts_the_rules(tmp_path):
    rule = render("monitoring").one("PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    proc = subprocess.run([tool("promtool"), "check", "rules", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 7 rules found" in proc.stdout, proc.stdout


@pytest.mark.parametrize("key", ["serviceMonitor", "podMonitor", "prometheusRule"])
def test_monitoring_namespace_override(key):
    values = {"service": {"enabled": True}, key: {"enabled": True, "namespace": "prom"}}
    m = render(values=values)
    kind = key[0].upper() + key[1:]
    assert m.one(kind)["metadata"]["namespace"] == "prom"

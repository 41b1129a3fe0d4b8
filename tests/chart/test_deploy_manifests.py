"""The plain manifests in deploy/: valid for the oldest and newest Kubernetes covered, the
properties that matter for each pattern, their configs accepted by the daemon, and the
DaemonSet example kept in step with what the chart renders by default."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from conftest import (
    DEPLOY,
    KUBE_VERSIONS,
    container,
    container_port,
    daemon_env,
    flag_value,
    load_yaml_docs,
    render,
    resolve_port,
    run_kubernetes_validate,
)

MANIFESTS = sorted(DEPLOY.glob("*.yaml"))
VERSION_LINE = "AWS X-Ray daemon version:"


def docs_of(name: str) -> dict[str, dict]:
    return {d["kind"]: d for d in load_yaml_docs(DEPLOY / name)}


def pod_and_daemon(name: str):
    docs = docs_of(name)
    workload = docs.get("DaemonSet") or docs["Deployment"]
    pod = workload["spec"]["template"]["spec"]
    return docs, workload, pod, container(pod, "xray-daemon")


def test_expected_manifests():
    assert {p.name for p in MANIFESTS} == {"daemonset.yaml", "sidecar-native.yaml",
                                           "sidecar-classic.yaml", "fargate.yaml"}
    assert (DEPLOY / "README.md").is_file()


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.stem)
def test_manifest_validates(manifest, kube, tmp_path):
    run_kubernetes_validate(load_yaml_docs(manifest), kube, tmp_path, manifest.stem)


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.stem)
def test_common_daemon_properties(manifest):
    docs, workload, pod, c = pod_and_daemon(manifest.name)
    # config: mounted as a directory from the manifest's own ConfigMap, read with -c
    cm = docs["ConfigMap"]
    mount = next(vm for vm in c["volumeMounts"] if vm["mountPath"] == "/etc/xray-daemon")
    assert "subPath" not in mount and mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    assert flag_value(c["args"], "-c") == "/etc/xray-daemon/cfg.yaml"
    # security
    sc = {**pod.get("securityContext", {}), **c["securityContext"]}
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # probes on the admin port and paths; admin reachable by the kubelet
    admin = flag_value(c["args"], "--admin-address")
    assert admin == "0.0.0.0:2100"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] in ("/healthz", "/readyz")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in c:
            assert resolve_port(c, c[probe]["httpGet"]["port"]) == 2100
    # shutdown within the grace period, buffer within the memory limit
    timeout = int(flag_value(c["args"], "--shutdown-timeout").rstrip("s"))
    assert timeout < pod["terminationGracePeriodSeconds"]
    limit_mi = int(c["resources"]["limits"]["memory"].rstrip("Mi"))
    assert int(flag_value(c["args"], "-m")) == limit_mi // 2
    assert "cpu" not in c["resources"].get("limits", {})


def test_daemonset_manifest():
    docs, ds, pod, c = pod_and_daemon("daemonset.yaml")
    assert ds["kind"] == "DaemonSet"
    assert docs["Namespace"]["metadata"]["name"] == "xray-system"
    assert container_port(c, "xray-udp") == {"name": "xray-udp", "containerPort": 2000,
                                              "hostPort": 2000, "protocol": "UDP"}
    assert container_port(c, "xray-tcp") == {"name": "xray-tcp", "containerPort": 2000,
                                              "hostPort": 2000, "protocol": "TCP"}
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "maxSurge" not in ds["spec"]["updateStrategy"]["rollingUpdate"]
    svc = docs["Service"]["spec"]
    assert svc["internalTrafficPolicy"] == "Local"
    assert {(p["port"], p["protocol"]) for p in svc["ports"]} == {
        (2000, "UDP"), (2000, "TCP"), (2100, "TCP")}
    assert svc["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]


def test_daemonset_manifest_matches_chart_defaults():
    """deploy/daemonset.yaml is the chart's default rendering written out by hand: same
    command line, ports, probes, resources, security and scheduling."""
    _, ds, pod, c = pod_and_daemon("daemonset.yaml")
    chart = render()
    cc = chart.daemon
    for key in ("command", "args", "ports", "livenessProbe", "readinessProbe", "startupProbe",
                "resources", "securityContext"):
        assert c[key] == cc[key], key
    for key in ("securityContext", "terminationGracePeriodSeconds", "nodeSelector",
                "tolerations", "affinity", "automountServiceAccountToken"):
        assert pod[key] == chart.pod[key], key
    assert ds["spec"]["updateStrategy"] == chart.workload["spec"]["updateStrategy"]
    assert yaml.safe_load(docs_of("daemonset.yaml")["ConfigMap"]["data"]["cfg.yaml"]) == \
        yaml.safe_load(chart.cfg_yaml)


def test_native_sidecar():
    _, deploy, pod, c = pod_and_daemon("sidecar-native.yaml")
    assert c in pod["initContainers"] and c["restartPolicy"] == "Always"
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz", "app starts once the daemon is ready"
    assert "readinessProbe" not in c, "tracing trouble must not make the app unready"
    assert flag_value(c["args"], "-b") == "127.0.0.1:2000"
    assert flag_value(c["args"], "-t") == "127.0.0.1:2000"
    assert all("hostPort" not in p for p in c.get("ports", []))
    app = container(pod, "app")
    assert {"name": "AWS_XRAY_DAEMON_ADDRESS", "value": "127.0.0.1:2000"} in app["env"]


def test_classic_sidecar():
    _, deploy, pod, c = pod_and_daemon("sidecar-classic.yaml")
    assert "initContainers" not in pod
    assert pod["containers"][0]["name"] == "xray-daemon", "started before the app"
    assert "restartPolicy" not in c
    assert "readinessProbe" not in c
    assert flag_value(c["args"], "-b") == "127.0.0.1:2000"


def test_fargate():
    docs, deploy, pod, c = pod_and_daemon("fargate.yaml")
    assert c in pod["initContainers"] and c["restartPolicy"] == "Always"
    assert "hostNetwork" not in pod
    assert all("hostPort" not in p for x in pod["containers"] + pod["initContainers"]
               for p in x.get("ports", []))
    assert docs["ServiceAccount"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    cfg = yaml.safe_load(docs["ConfigMap"]["data"]["cfg.yaml"])
    assert cfg["LocalMode"] is True and cfg["Region"]
    for x in pod["containers"] + pod["initContainers"]:
        assert x["resources"]["requests"]["cpu"] and x["resources"]["requests"]["memory"]
    namespaces = {d["metadata"].get("namespace") for d in docs.values() if d["kind"] != "Namespace"}
    assert namespaces == {docs["Namespace"]["metadata"]["name"]}


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.stem)
def test_daemon_accepts_manifest_config_and_args(manifest, xray_bin, tmp_path):
    docs, _, _, c = pod_and_daemon(manifest.name)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(docs["ConfigMap"]["data"]["cfg.yaml"])
    for args in (["-c", str(cfg)], [str(cfg) if a == "/etc/xray-daemon/cfg.yaml" else a
                                    for a in c["args"]]):
        proc = subprocess.run([str(xray_bin), *args, "-v"], capture_output=True, text=True,
                              timeout=30, cwd=tmp_path, env=daemon_env(),
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
        assert VERSION_LINE in proc.stdout

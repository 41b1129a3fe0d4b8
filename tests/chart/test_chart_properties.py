"""What the rendered manifests must say: ports and protocols, probes on the admin paths, the
ConfigMap mounted as a directory, the security context, buffer and shutdown sizing, and each
option's effect."""

from __future__ import annotations

import tomllib

import pytest
import yaml

from conftest import (
    CHART,
    KUBE_OLDEST,
    REPO,
    VALUE_SETS,
    HelmError,
    container_port,
    flag_value,
    flag_values,
    render,
    resolve_port,
)

# ------------------------------------------------------------------ invariants of every set


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_ports_and_protocols(value_set):
    m = render(value_set)
    c = m.daemon
    args = c["args"]
    udp, tcp, admin = (container_port(c, n) for n in ("xray-udp", "xray-tcp", "admin"))
    assert udp["protocol"] == "UDP"
    assert tcp["protocol"] == "TCP"
    assert admin["protocol"] == "TCP"
    # the daemon binds exactly the ports the pod declares
    assert flag_value(args, "-b").endswith(f":{udp['containerPort']}")
    assert flag_value(args, "-t").endswith(f":{tcp['containerPort']}")
    assert flag_value(args, "--admin-address").endswith(f":{admin['containerPort']}")
    for flag in ("-b", "-t", "--admin-address"):
        host = flag_value(args, flag).rsplit(":", 1)[0]
        assert host in ("0.0.0.0", "[::]"), f"{flag} must bind every interface, got {host}"
    if m.pod.get("hostNetwork"):
        for p in (udp, tcp, admin):
            assert p["hostPort"] == p["containerPort"], p
    assert "hostPort" not in admin or m.pod.get("hostNetwork"), "admin is never a hostPort"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_probes_on_admin_paths(value_set):
    c = render(value_set).daemon
    admin = container_port(c, "admin")["containerPort"]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                        ("startupProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path, (probe, get)
        assert resolve_port(c, get["port"]) == admin, (probe, get)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_config_mounted_as_directory(value_set):
    m = render(value_set)
    c = m.daemon
    volumes = {v["name"]: v for v in m.pod["volumes"]}
    cfg_volumes = {name for name, v in volumes.items() if "configMap" in v}
    assert "config" in cfg_volumes
    mount = next(vm for vm in c["volumeMounts"] if vm["name"] == "config")
    assert mount["mountPath"] == "/etc/xray-daemon"
    assert mount.get("readOnly") is True
    for vm in c["volumeMounts"]:
        if vm["name"] in cfg_volumes:
            assert "subPath" not in vm and "subPathExpr" not in vm, vm
    assert flag_value(c["args"], "-c") == "/etc/xray-daemon/cfg.yaml"
    cm = m.maybe("ConfigMap")
    if cm is not None:
        assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
        assert list(cm["data"]) == ["cfg.yaml"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_security_context(value_set):
    m = render(value_set)
    pod_sc = m.pod["securityContext"]
    sc = m.daemon["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == 10001 and pod_sc["runAsGroup"] == 10001
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert not sc["capabilities"].get("add")
    assert m.pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_graceful_shutdown_fits_the_grace_period(value_set):
    m = render(value_set)
    grace = m.pod["terminationGracePeriodSeconds"]
    timeout = flag_value(m.daemon["args"], "--shutdown-timeout")
    assert timeout.endswith("s")
    assert 0 < int(timeout[:-1]) < grace


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_selector_matches_pods(value_set):
    m = render(value_set)
    selector = m.workload["spec"]["selector"]["matchLabels"]
    labels = m.workload["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/instance"}
    svc = m.maybe("Service")
    if svc:
        assert svc["spec"]["selector"] == selector


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_no_surge_with_node_ports(value_set):
    m = render(value_set)
    if m.workload["kind"] != "DaemonSet":
        return
    ports = m.daemon["ports"]
    if m.pod.get("hostNetwork") or any("hostPort" in p for p in ports):
        rolling = m.workload["spec"].get("updateStrategy", {}).get("rollingUpdate", {})
        assert rolling.get("maxSurge", 0) in (0, "0", "0%"), rolling


# ------------------------------------------------------------------ the defaults


def test_default_is_a_node_local_daemonset():
    m = render()
    assert sorted(m.kinds()) == ["ConfigMap", "DaemonSet", "ServiceAccount"]
    c = m.daemon
    assert c["command"] == ["/usr/bin/xray"]
    args = c["args"]
    assert args[:10] == ["-c", "/etc/xray-daemon/cfg.yaml", "-b", "0.0.0.0:2000",
                         "-t", "0.0.0.0:2000", "--admin-address", "0.0.0.0:2100",
                         "--shutdown-timeout", "25s"]
    assert container_port(c, "xray-udp") == {"name": "xray-udp", "containerPort": 2000,
                                              "protocol": "UDP", "hostPort": 2000}
    assert container_port(c, "xray-tcp") == {"name": "xray-tcp", "containerPort": 2000,
                                              "protocol": "TCP", "hostPort": 2000}
    assert container_port(c, "admin") == {"name": "admin", "containerPort": 2100,
                                           "protocol": "TCP"}
    assert "hostNetwork" not in m.pod
    assert m.pod["dnsPolicy"] == "ClusterFirst"
    assert m.pod["terminationGracePeriodSeconds"] == 30
    assert m.workload["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    assert c["resources"]["limits"]["memory"] == "128Mi"
    assert "cpu" not in c["resources"]["limits"], "no CPU limit on a UDP receiver"
    assert m.pod["tolerations"] == [{"operator": "Exists", "effect": "NoSchedule"}]
    assert "checksum/config" not in m.workload["spec"]["template"]["metadata"].get(
        "annotations", {})
    assert yaml.safe_load(m.cfg_yaml) == {"Version": 2, "Concurrency": 8,
                                          "Logging": {"LogLevel": "prod"}}


def test_default_keeps_off_fargate():
    terms = render().pod["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "eks.amazonaws.com/compute-type", "operator": "NotIn",
            "values": ["fargate"]} in terms[0]["matchExpressions"]


# ------------------------------------------------------------------ buffer sizing


@pytest.mark.parametrize(
    "limit,expected",
    [("128Mi", "64"), ("1Gi", "512"), ("256M", "122"), ("0.5Gi", "256"), (268435456, "128"),
     ("64Mi", "32"), ("5Mi", "3")],
)
def test_buffer_sized_from_memory_limit(limit, expected):
    args = render(values={"resources": {"limits": {"memory": limit}}}).daemon["args"]
    assert flag_values(args, "-m") == [expected]


def test_buffer_percent_and_explicit_size():
    args = render(values={"bufferMemory": {"limitPercent": 25}}).daemon["args"]
    assert flag_value(args, "-m") == "32"
    args = render(values={"bufferMemory": {"sizeMB": 40}}).daemon["args"]
    assert flag_value(args, "-m") == "40"


def test_no_memory_limit_leaves_sizing_to_the_daemon():
    m = render(values={"resources": {"limits": None}})
    assert "limits" not in m.daemon["resources"]
    assert flag_values(m.daemon["args"], "-m") == []


# ------------------------------------------------------------------ shutdown


@pytest.mark.parametrize("grace,explicit,expected",
                         [(30, 0, "25s"), (60, 0, "55s"), (60, 20, "20s"), (3, 0, "1s")])
def test_shutdown_timeout(grace, explicit, expected):
    m = render(values={"terminationGracePeriodSeconds": grace,
                       "shutdownTimeoutSeconds": explicit})
    assert m.pod["terminationGracePeriodSeconds"] == grace
    assert flag_value(m.daemon["args"], "--shutdown-timeout") == expected


# ------------------------------------------------------------------ value sets


def test_hostnetwork():
    m = render("hostnetwork")
    assert m.pod["hostNetwork"] is True
    assert m.pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    c = m.daemon
    assert container_port(c, "xray-udp")["hostPort"] == 2002
    assert container_port(c, "xray-tcp")["hostPort"] == 2003
    assert flag_value(c["args"], "-b") == "0.0.0.0:2002"
    assert flag_value(c["args"], "-t") == "0.0.0.0:2003"
    assert flag_value(c["args"], "--admin-address") == "0.0.0.0:2102"
    assert render("hostnetwork", values={"dnsPolicy": "Default"}).pod["dnsPolicy"] == "Default"


def test_deployment():
    m = render("deployment")
    assert m.workload["kind"] == "Deployment"
    assert m.workload["spec"]["replicas"] == 3
    assert m.workload["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1,
                                                               "maxUnavailable": 0}
    assert all("hostPort" not in p for p in m.daemon["ports"])
    assert "hostNetwork" not in m.pod
    assert m.pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    svc = m.one("Service")
    assert svc["spec"]["internalTrafficPolicy"] == "Cluster"


def test_service():
    m = render("service")
    svc = m.one("Service")["spec"]
    assert svc["type"] == "ClusterIP"
    assert svc["internalTrafficPolicy"] == "Local"
    assert svc["trafficDistribution"] == "PreferClose"
    ports = {p["name"]: p for p in svc["ports"]}
    assert ports["xray-udp"] == {"name": "xray-udp", "port": 2000, "targetPort": "xray-udp",
                                 "protocol": "UDP"}
    assert ports["xray-tcp"] == {"name": "xray-tcp", "port": 2000, "targetPort": "xray-tcp",
                                 "protocol": "TCP"}
    assert ports["admin"]["port"] == 2100 and ports["admin"]["targetPort"] == "admin"
    for p in svc["ports"]:
        container_port(m.daemon, p["targetPort"])
    # trafficDistribution needs Kubernetes 1.31+
    assert "trafficDistribution" not in render("service", kube=KUBE_OLDEST).one("Service")["spec"]
    # IPv6 bind address
    assert flag_value(m.daemon["args"], "-b") == "[::]:2000"
    assert flag_value(m.daemon["args"], "--admin-address") == "[::]:2100"
    # helm test pod reaches the Service's /readyz, and is not selected by the Service
    test_pod = m.one("Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert test_pod["spec"]["containers"][0]["args"] == [
        "healthcheck", "--url", "http://xray-xray-daemon.observability.svc:2100/readyz"]
    assert not svc["selector"].items() <= test_pod["metadata"]["labels"].items()


def test_irsa():
    m = render("irsa")
    sa = m.one("ServiceAccount")
    assert sa["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/xray-daemon",
        "eks.amazonaws.com/sts-regional-endpoints": "true",
    }
    assert sa["automountServiceAccountToken"] is False
    assert m.pod["serviceAccountName"] == sa["metadata"]["name"]
    cfg = yaml.safe_load(m.cfg_yaml)
    assert cfg["RoleARN"] == "arn:aws:iam::210987654321:role/xray-cross-account-writer"
    assert cfg["Region"] == "eu-central-1"


def test_daemonset_scheduling():
    m = render("daemonset")
    assert m.pod["priorityClassName"] == "system-node-critical"
    assert m.pod["tolerations"] == [{"operator": "Exists"}]
    assert m.pod["nodeSelector"]["node.kubernetes.io/role"] == "worker"
    assert m.workload["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": "10%"}
    assert m.workload["spec"]["minReadySeconds"] == 5
    tmpl = m.workload["spec"]["template"]["metadata"]
    assert tmpl["annotations"] == {"cluster-autoscaler.kubernetes.io/safe-to-evict": "true"}
    assert tmpl["labels"]["team"] == "observability"
    for d in m.docs:
        assert d["metadata"]["labels"]["cost-center"] == "platform"
    assert flag_value(m.daemon["args"], "-m") == "128"


def test_sidecar_style_extras():
    m = render("sidecar-style")
    c = m.daemon
    assert all("hostPort" not in p for p in c["ports"])
    assert [x["name"] for x in m.pod["containers"]] == ["xray-daemon", "app"]
    assert c["args"][-2:] == ["--log-level", "info"], "extraArgs come last (flags win)"
    assert flag_value(c["args"], "-m") == "16"
    assert flag_value(c["args"], "--shutdown-timeout") == "15s"
    assert {"name": "XRAY_CONCURRENCY", "value": "4"} in c["env"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": 2}}}
    cfg = yaml.safe_load(m.cfg_yaml)
    assert cfg["LocalMode"] is True and cfg["Admin"] == {"EnableLifecycle": False}


def test_checksum_rollout_switch():
    def checksum(values):
        meta = render("sidecar-style", values=values).workload["spec"]["template"]["metadata"]
        return meta["annotations"]["checksum/config"]

    first = checksum(None)
    assert len(first) == 64
    assert checksum({"config": {"Concurrency": 2}}) != first
    assert checksum({"resources": {"requests": {"cpu": "30m"}}}) == first


def test_existing_resources():
    m = render("existing-resources")
    assert "ConfigMap" not in m.kinds() and "ServiceAccount" not in m.kinds()
    assert m.pod["serviceAccountName"] == "xray-daemon-shared"
    config = next(v for v in m.pod["volumes"] if v["name"] == "config")
    assert config["configMap"]["name"] == "xray-daemon-config"
    assert m.daemon["image"] == ("ghcr.io/xray-daemon/xray-daemon@sha256:"
                                 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    assert m.pod["imagePullSecrets"] == [{"name": "regcred"}]


def test_image_tag_defaults_to_app_version():
    assert render().daemon["image"] == "ghcr.io/xray-daemon/xray-daemon:0.1.0"
    assert render(values={"image": {"tag": "1.2.3"}}).daemon["image"].endswith(":1.2.3")


def test_daemon_config_keys_pass_through():
    m = render(values={"config": {"Region": "us-east-2", "Endpoint": "https://xray.example.com",
                                  "LocalSink": "-", "NoVerifySSL": True,
                                  "ProxyAddress": "http://proxy:3128"}})
    cfg = yaml.safe_load(m.cfg_yaml)
    assert cfg["Version"] == 2
    assert cfg["Region"] == "us-east-2" and cfg["LocalSink"] == "-"
    assert cfg["Endpoint"] == "https://xray.example.com" and cfg["NoVerifySSL"] is True


# ------------------------------------------------------------------ chart metadata


def test_kubernetes_floor():
    with pytest.raises(HelmError) as err:
        render(kube="1.25.0")
    assert "incompatible with Kubernetes" in str(err.value) or "kubeVersion" in str(err.value)


def test_app_version_is_the_crate_version():
    """The default image tag is the chart's appVersion: it must name this source's release."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    crate = tomllib.loads((REPO / "Cargo.toml").read_text())["package"]["version"]
    assert chart["appVersion"] == crate

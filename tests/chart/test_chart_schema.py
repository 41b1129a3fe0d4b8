"""Bad values are refused before anything is rendered: by values.schema.json (one file per kind
of mistake in bad-values/, each naming the value path the error must point at), or, for
mistakes that span several values, by the chart's own checks with a message naming them."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from conftest import CHART, HELMS, HERE, HelmError, render, tool

BAD_VALUES = sorted((HERE / "bad-values").glob("*.yaml"))
SCHEMA_ERROR = "values don't meet the specifications of the schema"


def expected_path(path) -> str:
    m = re.search(r"^# expect-path: (\S+)$", path.read_text(), re.M)
    assert m, f"{path.name} needs a '# expect-path: <dotted.value.path>' line"
    return m.group(1)


def test_enough_kinds_of_bad_values():
    assert len(BAD_VALUES) >= 5


@pytest.mark.parametrize("bad", BAD_VALUES, ids=lambda p: p.stem)
@pytest.mark.parametrize("helm", HELMS)
def test_schema_rejects(helm, bad):
    proc = subprocess.run(
        [tool(HELMS[helm]), "template", "xray", str(CHART), "-f", str(bad)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0, f"{bad.name} was accepted"
    err = proc.stderr
    assert SCHEMA_ERROR in err, err
    dotted = expected_path(bad)
    # helm 3 names the path dotted ("- config.Logging.LogLevel: ..."), helm 4 as a JSON
    # pointer ("at '/config/Logging/LogLevel': ..."); an unknown top-level key is named in the
    # root's "additional property" message.
    pointer = "/" + dotted.replace(".", "/")
    assert (
        f"- {dotted}:" in err
        or f"at '{pointer}'" in err
        or f"Additional property {dotted} is not allowed" in err
        or f"additional properties '{dotted}' not allowed" in err
    ), err


@pytest.mark.parametrize("bad", BAD_VALUES, ids=lambda p: p.stem)
def test_lint_strict_rejects(bad):
    proc = subprocess.run(
        [tool("helm"), "lint", "--strict", str(CHART), "-f", str(bad)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0, proc.stdout
    assert "1 chart(s) failed" in proc.stdout + proc.stderr


# Mistakes across several values: caught by the chart's checks (templates/validate.yaml and
# _helpers.tpl) with a message that names what to change.
CROSS_FIELD = {
    "deployment-without-service": ({"mode": "deployment"}, "service.enabled=true"),
    "hostnetwork-for-deployment": ({"mode": "deployment", "service": {"enabled": True},
                                    "hostNetwork": True}, "hostNetwork is for mode=daemonset"),
    "servicemonitor-without-service": ({"serviceMonitor": {"enabled": True}},
                                       "serviceMonitor.enabled needs service.enabled=true"),
    "maxsurge-with-hostport": (
        {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}},
        "maxSurge (1) cannot be used with hostPort or hostNetwork"),
    "maxsurge-with-hostnetwork": (
        {"hostNetwork": True, "ports": {"udp": {"hostPort": 0}, "tcp": {"hostPort": 0}},
         "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}}},
        "maxSurge (25%) cannot be used"),
    "shutdown-not-below-grace": ({"terminationGracePeriodSeconds": 20,
                                  "shutdownTimeoutSeconds": 20},
                                 "must be below terminationGracePeriodSeconds"),
    "buffer-above-memory-limit": ({"bufferMemory": {"sizeMB": 128}},
                                  "must be below the container memory limit (128 MiB)"),
    "checksum-of-foreign-configmap": (
        {"configMap": {"create": False, "existingName": "mine", "rollOnChange": True}},
        "configMap.rollOnChange needs configMap.create=true"),
    "existing-configmap-without-name": ({"configMap": {"create": False}},
                                        "configMap.existingName is required"),
    "ondelete-for-deployment": (
        {"mode": "deployment", "service": {"enabled": True},
         "updateStrategy": {"type": "OnDelete"}}, "OnDelete is for mode=daemonset"),
    "recreate-for-daemonset": ({"updateStrategy": {"type": "Recreate"}},
                               "Recreate is for mode=deployment"),
}


@pytest.mark.parametrize("case", CROSS_FIELD)
@pytest.mark.parametrize("helm", HELMS)
def test_chart_checks_reject(helm, case):
    values, message = CROSS_FIELD[case]
    with pytest.raises(HelmError) as err:
        render(helm=helm, values=values)
    assert message in str(err.value), str(err.value)


def test_maxsurge_allowed_without_node_ports():
    m = render(values={"ports": {"udp": {"hostPort": 0}, "tcp": {"hostPort": 0}},
                       "updateStrategy": {"type": "RollingUpdate",
                                          "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}})
    assert m.workload["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] == 1


def test_schema_covers_every_value():
    """Every key of values.yaml is declared in values.schema.json wherever the schema refuses
    unknown keys (everywhere but the Kubernetes API objects passed through)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(v, s, path):
        if not isinstance(v, dict) or s.get("type") != "object" or "properties" not in s:
            return
        for key, sub in v.items():
            if s.get("additionalProperties") is False:
                assert key in s["properties"], f"{path}{key} is not in values.schema.json"
            if key in s["properties"]:
                walk(sub, s["properties"][key], f"{path}{key}.")

    walk(values, schema, "")

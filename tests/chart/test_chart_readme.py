"""The values table of helm/xray-daemon/README.md is generated from the `# --` comments of
values.yaml and must stay in step with it. To print the table after editing values.yaml:

    .venv-test/bin/python tests/chart/test_chart_readme.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "xray-daemon"


def documented_values(values_text: str) -> list[tuple[str, object, str]]:
    """(dotted key, default, description) for every key preceded by a `# --` comment."""
    values = yaml.safe_load(values_text)
    rows = []
    stack: list[tuple[int, str]] = []
    comment: list[str] | None = None
    for line in values_text.splitlines():
        if m := re.match(r"^\s*# -- (.*)$", line):
            comment = [m.group(1)]
            continue
        if (m := re.match(r"^\s*# (.*)$", line)) and comment is not None:
            comment.append(m.group(1))
            continue
        if m := re.match(r"^(\s*)([A-Za-z][\w.-]*):", line):
            indent = len(m.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, m.group(2)))
            if comment is not None:
                value = values
                for _, key in stack:
                    value = value[key]
                rows.append((".".join(k for _, k in stack), value, " ".join(comment)))
            comment = None
        elif line.strip() and not line.lstrip().startswith("#"):
            comment = None
    return rows


def table(values_text: str) -> str:
    out = ["| Key | Default | Description |", "|---|---|---|"]
    for key, value, description in documented_values(values_text):
        default = json.dumps(value, separators=(", ", ": "))
        default = "see [values.yaml](values.yaml)" if len(default) > 90 else f"`{default}`"
        out.append(f"| `{key}` | {default} | {description.replace('|', chr(92) + '|')} |")
    return "\n".join(out) + "\n"


def test_every_value_is_documented():
    text = (CHART / "values.yaml").read_text()
    documented = {key for key, _, _ in documented_values(text)}
    values = yaml.safe_load(text)

    def leaves(v, prefix=""):
        for k, sub in v.items():
            path = f"{prefix}{k}"
            if path in documented:
                continue
            assert isinstance(sub, dict) and sub, f"{path} has no '# --' comment in values.yaml"
            yield from leaves(sub, path + ".")

    list(leaves(values))


def test_readme_values_table_is_current():
    readme = (CHART / "README.md").read_text()
    expected = table((CHART / "values.yaml").read_text())
    assert expected in readme, (
        "the values table in helm/xray-daemon/README.md is out of date; regenerate it with "
        "`.venv-test/bin/python tests/chart/test_chart_readme.py`")


if __name__ == "__main__":
    sys.stdout.write(table((CHART / "values.yaml").read_text()))

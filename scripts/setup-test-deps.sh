#!/usr/bin/env bash
# Installs everything the test suites need, idempotently:
#   - a Python venv at .venv-test with tests/requirements.txt (and, if present,
#     tests/chart/requirements.txt and tests/packaging/requirements.txt);
#   - Debian packages: prometheus (for promtool) and socat;
#   - the Node.js X-Ray SDK (aws-xray-sdk-core@3) into tests/node/node_modules;
#   - the Kubernetes tooling, through scripts/install-k8s-tools.sh if it exists;
#   - the rustfmt and clippy components.
# A second run with nothing changed takes a second or two: every step checks a
# stamp (hash of its inputs) or the presence of its tool before installing.
#
# Environment:
#   XRAY_TEST_VENV   venv path (default: <repo>/.venv-test)
#   CI=true          missing node/npm is installed with apt instead of skipped
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

VENV="${XRAY_TEST_VENV:-$REPO/.venv-test}"
export XRAY_TEST_VENV="$VENV"
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

SETUP_START=$(date +%s)
log() { printf '[setup-test-deps] %s\n' "$*"; }
die() { printf '[setup-test-deps] ERROR: %s\n' "$*" >&2; exit 1; }

# Runs a command as root (directly when we are root, else through sudo).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -E "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    log "apt-get install --no-install-recommends $*"
    as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

hash_files() {
    # Hash of the names and contents of the given files (missing ones are skipped).
    local f
    for f in "$@"; do
        if [ -f "$f" ]; then
            printf '%s\n' "$f"
            cat "$f"
        fi
    done | sha256sum | cut -d' ' -f1
}

step_start() { STEP_T0=$(date +%s); log "== $1"; }
step_end() { log "   done in $(($(date +%s) - STEP_T0)) s"; }

# ---------------------------------------------------------------- apt packages
step_start "Debian packages (prometheus/promtool, socat)"
APT_PKGS=()
command -v promtool >/dev/null 2>&1 || APT_PKGS+=(prometheus)
command -v socat >/dev/null 2>&1 || APT_PKGS+=(socat)
# python3 -m venv needs ensurepip; Debian's python3 ships it separately.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    APT_PKGS+=(python3-venv)
fi
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
    if [ "${CI:-}" = "true" ]; then
        APT_PKGS+=(nodejs npm)
    else
        log "node/npm not found: the Node.js SDK tests will be skipped (CI installs them)"
    fi
fi
if [ "${#APT_PKGS[@]}" -gt 0 ]; then
    apt_install "${APT_PKGS[@]}"
else
    log "already installed"
fi
command -v promtool >/dev/null 2>&1 || die "promtool still missing after installing prometheus"
command -v socat >/dev/null 2>&1 || die "socat still missing after installing it"
step_end

# ---------------------------------------------------------------- Python venv
step_start "Python venv at $VENV"
if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "creating venv"
    python3 -m venv --clear "$VENV"
fi
REQ_FILES=(tests/requirements.txt)
for f in tests/chart/requirements.txt tests/packaging/requirements.txt; do
    [ -f "$f" ] && REQ_FILES+=("$f")
done
PY_VERSION="$("$VENV/bin/python" -c 'import sys; print(sys.version)')"
WANT_STAMP="$(printf '%s\n%s\n' "$PY_VERSION" "$(hash_files "${REQ_FILES[@]}")" | sha256sum | cut -d' ' -f1)"
STAMP_FILE="$VENV/.xray-test-deps.stamp"
if [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$WANT_STAMP" ]; then
    log "requirements unchanged (${REQ_FILES[*]})"
else
    PIP_ARGS=()
    for f in "${REQ_FILES[@]}"; do PIP_ARGS+=(-r "$f"); done
    log "pip install ${PIP_ARGS[*]}"
    "$VENV/bin/python" -m pip install -q "${PIP_ARGS[@]}"
    "$VENV/bin/python" -m pip check || die "pip check found inconsistent requirements"
    printf '%s\n' "$WANT_STAMP" > "$STAMP_FILE"
fi
step_end

# ---------------------------------------------------------------- Node.js SDK
step_start "Node.js X-Ray SDK into tests/node"
if command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then
    NODE_STAMP_FILE="tests/node/node_modules/.xray-test-deps.stamp"
    NODE_WANT="$(printf '%s\n%s\n' "$(node --version)" "$(hash_files tests/node/package.json)" | sha256sum | cut -d' ' -f1)"
    if [ -f "$NODE_STAMP_FILE" ] && [ "$(cat "$NODE_STAMP_FILE")" = "$NODE_WANT" ] \
        && [ -f tests/node/node_modules/aws-xray-sdk-core/package.json ]; then
        log "aws-xray-sdk-core already installed"
    else
        # No lock file is written: the one direct dependency is pinned exactly
        # in package.json.
        (cd tests/node && npm install --no-audit --no-fund --no-package-lock --loglevel=error)
        printf '%s\n' "$NODE_WANT" > "$NODE_STAMP_FILE"
    fi
    log "aws-xray-sdk-core $(node -p 'require("./tests/node/node_modules/aws-xray-sdk-core/package.json").version')"
else
    log "skipped: node/npm not available"
fi
step_end

# ---------------------------------------------------------------- Kubernetes tools
if [ -f scripts/install-k8s-tools.sh ]; then
    step_start "scripts/install-k8s-tools.sh"
    bash scripts/install-k8s-tools.sh
    step_end
fi

# ---------------------------------------------------------------- packaging tools
# cargo-deb and cargo-generate-rpm are compiled on first use (several minutes, cached).
if [ -f scripts/install-packaging-tools.sh ]; then
    step_start "scripts/install-packaging-tools.sh"
    bash scripts/install-packaging-tools.sh
    step_end
fi

# ---------------------------------------------------------------- Rust components
step_start "rustup components (rustfmt, clippy)"
if command -v rustup >/dev/null 2>&1; then
    INSTALLED_COMPONENTS="$(rustup component list --installed 2>/dev/null || true)"
    for comp in rustfmt clippy; do
        if printf '%s\n' "$INSTALLED_COMPONENTS" | grep -q "^${comp}"; then
            log "$comp present"
        else
            rustup component add "$comp"
        fi
    done
else
    cargo fmt --version >/dev/null 2>&1 || die "cargo fmt missing and no rustup to install it"
    cargo clippy --version >/dev/null 2>&1 || die "cargo clippy missing and no rustup to install it"
fi
step_end

log "all test dependencies ready in $(($(date +%s) - SETUP_START)) s"

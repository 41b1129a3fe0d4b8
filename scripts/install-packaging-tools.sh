#!/usr/bin/env bash
# Installs the tools behind `make dist`, `make deb`, `make rpm` and tests/packaging,
# idempotently (a second run with nothing to do takes about a second and needs no network):
#
#   - Debian packages: zip, unzip, gnupg (gpg, gpg-agent), rpm (rpm, rpm2archive),
#     systemd (systemd-analyze, systemd-sysusers), dpkg-dev (dpkg-shlibdeps, used by cargo-deb
#     for Depends: $auto), binutils (strip, readelf), make;
#   - cargo-deb and cargo-generate-rpm, pinned, built with `cargo install --locked` into a
#     repo-local root (<repo>/.tools, gitignored): `make` puts <repo>/.tools/bin first on PATH.
#
# Environment:
#   XRAY_TOOLS_ROOT             install root for the cargo tools (default: <repo>/.tools)
#   CARGO_DEB_VERSION           default 3.8.0
#   CARGO_GENERATE_RPM_VERSION  default 0.21.1
#   XRAY_TOOLS_CACHE            where a copy of each cargo tool is kept, keyed by crate and
#                               version, so that a fresh clone on the same machine (CI) copies
#                               it instead of compiling it again (default:
#                               ${XDG_CACHE_HOME:-~/.cache}/xray-daemon/packaging-tools;
#                               empty: no cache)
#   XRAY_SKIP_APT=1             don't touch apt (report what is missing and go on)
#
# Timings on this project's 2-core machines (cold, nothing cached): see docs/install.md
# ("Building the packages yourself"); the script prints each step's duration.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

TOOLS_ROOT="${XRAY_TOOLS_ROOT:-$REPO/.tools}"
CARGO_DEB_VERSION="${CARGO_DEB_VERSION:-3.8.0}"
CARGO_GENERATE_RPM_VERSION="${CARGO_GENERATE_RPM_VERSION:-0.21.1}"
if [ -n "${XDG_CACHE_HOME:-}" ]; then
    DEFAULT_CACHE="$XDG_CACHE_HOME/xray-daemon/packaging-tools"
elif [ -n "${HOME:-}" ]; then
    DEFAULT_CACHE="$HOME/.cache/xray-daemon/packaging-tools"
else
    DEFAULT_CACHE=""
fi
TOOLS_CACHE="${XRAY_TOOLS_CACHE-$DEFAULT_CACHE}"
export DEBIAN_FRONTEND=noninteractive

START=$(date +%s)
log() { printf '[install-packaging-tools] %s\n' "$*"; }
die() { printf '[install-packaging-tools] ERROR: %s\n' "$*" >&2; exit 1; }
step_start() { STEP_T0=$(date +%s); log "== $1"; }
step_end() { log "   done in $(($(date +%s) - STEP_T0)) s"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -E "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# ---------------------------------------------------------------- Debian packages
step_start "Debian packages"
# command -> package that provides it
declare -A WANT=(
    [zip]=zip
    [unzip]=unzip
    [gpg]=gnupg
    [gpg-agent]=gnupg
    [rpm]=rpm
    [rpm2archive]=rpm
    [systemd-analyze]=systemd
    [systemd-sysusers]=systemd
    [dpkg-deb]=dpkg
    [dpkg-shlibdeps]=dpkg-dev
    [strip]=binutils
    [readelf]=binutils
    [make]=make
)
MISSING=()
for cmd in "${!WANT[@]}"; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        pkg="${WANT[$cmd]}"
        case " ${MISSING[*]:-} " in *" $pkg "*) ;; *) MISSING+=("$pkg") ;; esac
    fi
done
if [ "${#MISSING[@]}" -eq 0 ]; then
    log "already installed"
elif [ "${XRAY_SKIP_APT:-}" = "1" ]; then
    log "XRAY_SKIP_APT=1: not installing missing packages: ${MISSING[*]}"
else
    log "apt-get update"
    as_root apt-get update -qq
    log "apt-get install --no-install-recommends ${MISSING[*]}"
    as_root apt-get install -y -qq --no-install-recommends "${MISSING[@]}" >/dev/null
    for cmd in "${!WANT[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || die "$cmd still missing after installing ${WANT[$cmd]}"
    done
fi
step_end

# ---------------------------------------------------------------- cargo tools
command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain first (rustup)"

# tool_version BINARY: the version a cargo tool reports ("cargo-deb 3.8.0" -> 3.8.0), or nothing.
tool_version() {
    [ -x "$1" ] || return 0
    "$1" --version 2>/dev/null | awk '{print $NF}' || true
}

# cargo_tool CRATE VERSION: installs CRATE@VERSION into $TOOLS_ROOT unless that exact version
# is already there; takes it from $TOOLS_CACHE when it holds that version.
cargo_tool() {
    local crate="$1" version="$2" have="" cached=""
    step_start "$crate $version into $TOOLS_ROOT"
    have="$(tool_version "$TOOLS_ROOT/bin/$crate")"
    [ -n "$TOOLS_CACHE" ] && cached="$TOOLS_CACHE/$crate-$version/$crate"
    if [ "$have" = "$version" ]; then
        log "already installed"
    elif [ -n "$cached" ] && [ "$(tool_version "$cached")" = "$version" ]; then
        install -D -m 0755 "$cached" "$TOOLS_ROOT/bin/$crate"
        log "copied from the cache $cached"
    else
        [ -n "$have" ] && log "replacing $crate $have"
        # A private target dir: never the project's target/ (which CARGO_TARGET_DIR may name).
        local build_dir
        build_dir="$(mktemp -d "${TMPDIR:-/tmp}/xray-tools-build.XXXXXX")"
        if ! env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET cargo install --locked --quiet \
            --root "$TOOLS_ROOT" --target-dir "$build_dir" --force \
            "$crate" --version "=$version"; then
            rm -rf "$build_dir"
            die "cargo install $crate@$version failed"
        fi
        rm -rf "$build_dir"
        have="$(tool_version "$TOOLS_ROOT/bin/$crate")"
        [ "$have" = "$version" ] || die "$TOOLS_ROOT/bin/$crate reports version '$have', wanted $version"
        if [ -n "$cached" ]; then
            if install -D -m 0755 "$TOOLS_ROOT/bin/$crate" "$cached" 2>/dev/null; then
                log "kept a copy in $cached"
            else
                log "note: could not write the cache $cached"
            fi
        fi
    fi
    step_end
}

cargo_tool cargo-deb "$CARGO_DEB_VERSION"
cargo_tool cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"

log "packaging tools ready in $(($(date +%s) - START)) s (cargo tools in $TOOLS_ROOT/bin)"

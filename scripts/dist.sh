#!/usr/bin/env bash
# Builds the release archives behind `make dist`:
#
#   dist/xray-daemon-<version>-<os>-<arch>.zip         xray (or xray.exe), cfg.yaml, LICENSE, README.md
#   dist/xray-daemon-<version>-<os>-<arch>.zip.sha256  its SHA-256, in `sha256sum -c` format
#   dist/xray-daemon-<version>-<os>-<arch>.zip.asc     detached ASCII-armoured GPG signature
#                                                      (only when GPG_KEY_ID is set)
#
# Usage: scripts/dist.sh [TRIPLE...]      (default: $ARCHS, else the host's Rust target)
#
# Each TRIPLE is a Rust target triple. The host's own target is always available; any other is
# built only when `rustup target list --installed` lists it, and skipped with a message
# otherwise (docs/install.md has the cross-build set-up). The script fails if no archive at all
# was produced.
#
# Environment:
#   ARCHS               space-separated Rust target triples (used when no argument is given)
#   DIST_DIR            output directory (default: <repo>/dist)
#   SKIP_BUILD=1        don't run cargo: package the release binary already built (fails
#                       with a message when it is missing)
#   CARGO               cargo command (default: cargo)
#   CARGO_BUILD_FLAGS   extra flags for `cargo build` (default: --locked)
#   CARGO_TARGET_DIR    honoured, as cargo does
#   STRIP               strip command for binaries of the host's target (default: strip; empty:
#                       don't strip). Cross-built Linux binaries use <gnu-triple>-strip if found.
#   SOURCE_DATE_EPOCH   timestamp of the files inside the archive (default: the commit time of
#                       HEAD, else now), so that rebuilding the same commit gives the same zip
#   GPG_KEY_ID          key (id, fingerprint or e-mail) that signs each archive
#   GPG_HOMEDIR         gpg home directory holding that key (default: $GNUPGHOME or ~/.gnupg)
#   GPG_PASSPHRASE_FILE file holding the key's passphrase, for unattended signing
#   GPG                 gpg command (default: gpg)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

log() { printf '[dist] %s\n' "$*"; }
die() { printf '[dist] ERROR: %s\n' "$*" >&2; exit 1; }
need() {
    # need CMD HINT: fail with a readable message when CMD is not on PATH.
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found: $2"
}

DIST_DIR="${DIST_DIR:-$REPO/dist}"
CARGO="${CARGO:-cargo}"
CARGO_BUILD_FLAGS="${CARGO_BUILD_FLAGS---locked}"
STRIP="${STRIP-strip}"
GPG="${GPG:-gpg}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$REPO/$TARGET_DIR" ;; esac
TOOLS_HINT="install it with 'bash scripts/install-packaging-tools.sh' (or apt-get install"

# ---------------------------------------------------------------- inputs and tools
VERSION="$(awk -F'"' '/^\[/ { in_pkg = ($0 == "[package]") } in_pkg && /^version *=/ { print $2; exit }' Cargo.toml)"
[ -n "$VERSION" ] || die "cannot read the package version from Cargo.toml"

for f in LICENSE README.md config/cfg.yaml; do
    [ -f "$f" ] || die "$f is missing: every archive ships it (LICENSE, README.md, config/cfg.yaml as cfg.yaml)"
done

need zip "$TOOLS_HINT zip)"
need sha256sum "part of coreutils"
if [ -n "${GPG_KEY_ID:-}" ]; then
    need "$GPG" "$TOOLS_HINT gnupg), or unset GPG_KEY_ID to skip signing"
fi

HOST_TRIPLE=""
if command -v rustc >/dev/null 2>&1; then
    HOST_TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
fi
if [ "${SKIP_BUILD:-}" != "1" ]; then
    need "$CARGO" "install a Rust toolchain (rustup), or set SKIP_BUILD=1 to package an existing build"
    [ -n "$HOST_TRIPLE" ] || die "rustc not found: cannot tell the host target"
fi

if [ "$#" -gt 0 ]; then
    TRIPLES=("$@")
else
    read -r -a TRIPLES <<< "${ARCHS:-$HOST_TRIPLE}"
fi
[ "${#TRIPLES[@]}" -gt 0 ] || die "no target given (ARCHS is empty and rustc is not there to name the host target)"

INSTALLED_TARGETS=""
if command -v rustup >/dev/null 2>&1; then
    INSTALLED_TARGETS="$(rustup target list --installed 2>/dev/null || true)"
fi

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH="$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)"
fi
export SOURCE_DATE_EPOCH

# label TRIPLE: prints "<os>-<arch>" for the archive name (the Go daemon's names: linux-amd64,
# linux-arm64, macos-..., windows-...).
label() {
    case "$1" in
        x86_64-unknown-linux-gnu) echo linux-amd64 ;;
        aarch64-unknown-linux-gnu) echo linux-arm64 ;;
        x86_64-unknown-linux-musl) echo linux-amd64-musl ;;
        aarch64-unknown-linux-musl) echo linux-arm64-musl ;;
        x86_64-apple-darwin) echo macos-amd64 ;;
        aarch64-apple-darwin) echo macos-arm64 ;;
        x86_64-pc-windows-msvc | x86_64-pc-windows-gnu) echo windows-amd64 ;;
        aarch64-pc-windows-msvc) echo windows-arm64 ;;
        *) return 1 ;;
    esac
}

# ---------------------------------------------------------------- one archive per target
mkdir -p "$DIST_DIR"
STAGE_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/xray-dist.XXXXXX")"
trap 'rm -rf "$STAGE_ROOT"' EXIT

BUILT=()
SKIPPED=()
for triple in "${TRIPLES[@]}"; do
    if ! lbl="$(label "$triple")"; then
        die "unsupported target '$triple' (known: x86_64/aarch64-unknown-linux-gnu|musl, x86_64/aarch64-apple-darwin, x86_64-pc-windows-msvc|gnu, aarch64-pc-windows-msvc)"
    fi
    exe=xray
    case "$triple" in *windows*) exe=xray.exe ;; esac

    if [ "$triple" = "$HOST_TRIPLE" ]; then
        # The host build lives in target/release (the binary `make build` and the tests use),
        # not target/<triple>/release: asking for --target would compile everything again.
        bin="$TARGET_DIR/release/$exe"
        build_args=()
    else
        if ! printf '%s\n' "$INSTALLED_TARGETS" | grep -qx "$triple"; then
            log "SKIP $triple: the Rust target is not installed (rustup target add $triple; see docs/install.md)"
            SKIPPED+=("$triple")
            continue
        fi
        bin="$TARGET_DIR/$triple/release/$exe"
        build_args=(--target "$triple")
    fi

    if [ "${SKIP_BUILD:-}" = "1" ]; then
        [ -x "$bin" ] || die "SKIP_BUILD=1 but $bin does not exist: run 'make build' (or 'cargo build --release ${build_args[*]:-}') first"
    else
        (
            # Cross-linking glibc targets: use Debian's cross gcc when it is installed and the
            # caller has not configured a linker.
            case "$triple" in
                aarch64-unknown-linux-gnu)
                    if [ "$HOST_TRIPLE" != "$triple" ] && [ -z "${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER:-}" ] \
                        && command -v aarch64-linux-gnu-gcc >/dev/null 2>&1; then
                        export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
                        export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
                        export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
                    fi
                    ;;
                x86_64-unknown-linux-gnu)
                    if [ "$HOST_TRIPLE" != "$triple" ] && [ -z "${CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER:-}" ] \
                        && command -v x86_64-linux-gnu-gcc >/dev/null 2>&1; then
                        export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=x86_64-linux-gnu-gcc
                        export CC_x86_64_unknown_linux_gnu=x86_64-linux-gnu-gcc
                        export AR_x86_64_unknown_linux_gnu=x86_64-linux-gnu-ar
                    fi
                    ;;
            esac
            # shellcheck disable=SC2086 # CARGO_BUILD_FLAGS is a list of flags
            log "+ $CARGO build --release $CARGO_BUILD_FLAGS --bin xray ${build_args[*]:-}"
            # shellcheck disable=SC2086
            "$CARGO" build --release $CARGO_BUILD_FLAGS --bin xray "${build_args[@]}"
        ) || die "cargo build for $triple failed"
        [ -x "$bin" ] || die "cargo build for $triple succeeded but $bin is missing"
    fi

    stage="$STAGE_ROOT/$lbl"
    mkdir -p "$stage"
    cp "$bin" "$stage/$exe"
    chmod 0755 "$stage/$exe"
    if [ "$triple" = "$HOST_TRIPLE" ]; then
        strip_cmd="$STRIP"
        # Check that the binary is stamped with the version it is packaged as.
        v_line="$("$stage/$exe" -v 2>&1 || true)"
        case "$v_line" in
            *"version: $VERSION "*) log "$v_line" ;;
            *) die "$bin prints '$v_line', expected version $VERSION (stale build? run 'make build')" ;;
        esac
    else
        strip_cmd=""
        case "$triple" in
            aarch64-unknown-linux-gnu) command -v aarch64-linux-gnu-strip >/dev/null 2>&1 && strip_cmd=aarch64-linux-gnu-strip ;;
            x86_64-unknown-linux-gnu) command -v x86_64-linux-gnu-strip >/dev/null 2>&1 && strip_cmd=x86_64-linux-gnu-strip ;;
        esac
    fi
    if [ -n "$strip_cmd" ]; then
        if command -v "$strip_cmd" >/dev/null 2>&1; then
            "$strip_cmd" "$stage/$exe"
        else
            log "note: '$strip_cmd' not found, the binary keeps its symbol table"
        fi
    fi
    cp config/cfg.yaml "$stage/cfg.yaml"
    cp LICENSE "$stage/LICENSE"
    cp README.md "$stage/README.md"
    chmod 0644 "$stage/cfg.yaml" "$stage/LICENSE" "$stage/README.md"
    touch -h -d "@$SOURCE_DATE_EPOCH" "$stage"/*

    name="xray-daemon-$VERSION-$lbl.zip"
    out="$DIST_DIR/$name"
    rm -f "$out" "$out.sha256" "$out.asc"
    # -X: no extra attributes (uid/gid, extended timestamps), -D: no directory entries; fixed
    # order and mtimes, so the same inputs give the same bytes.
    (cd "$stage" && TZ=UTC zip -X -D -q -9 "$out" "$exe" cfg.yaml LICENSE README.md)
    (cd "$DIST_DIR" && sha256sum "$name" > "$name.sha256")
    log "wrote $out ($(wc -c < "$out") bytes), sha256 $(cut -d' ' -f1 "$out.sha256")"

    if [ -n "${GPG_KEY_ID:-}" ]; then
        gpg_args=(--batch --yes)
        [ -n "${GPG_HOMEDIR:-}" ] && gpg_args+=(--homedir "$GPG_HOMEDIR")
        if [ -n "${GPG_PASSPHRASE_FILE:-}" ]; then
            gpg_args+=(--pinentry-mode loopback --passphrase-file "$GPG_PASSPHRASE_FILE")
        fi
        "$GPG" "${gpg_args[@]}" --local-user "$GPG_KEY_ID" --armor --detach-sign \
            --output "$out.asc" "$out" \
            || die "gpg could not sign $out with key '$GPG_KEY_ID'${GPG_HOMEDIR:+ in $GPG_HOMEDIR}"
        # A signature that does not verify must not be published.
        verify_args=(--batch)
        [ -n "${GPG_HOMEDIR:-}" ] && verify_args+=(--homedir "$GPG_HOMEDIR")
        "$GPG" "${verify_args[@]}" --verify "$out.asc" "$out" >/dev/null 2>&1 \
            || die "the new signature $out.asc does not verify"
        log "signed: $out.asc (key $GPG_KEY_ID)"
    fi
    BUILT+=("$name")
done

[ "${#BUILT[@]}" -gt 0 ] || die "no archive built (skipped: ${SKIPPED[*]:-none})"
log "done: ${BUILT[*]}${SKIPPED[*]:+ (skipped: ${SKIPPED[*]})}"

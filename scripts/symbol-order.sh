#!/usr/bin/env bash
# The release binary's function layout (link/symbol-order.txt, read by build.rs).
#
#   scripts/symbol-order.sh generate   rebuild the list from what the daemon really runs
#   scripts/symbol-order.sh check [BIN]
#                                      does BIN (default target/release/xray) follow the list?
#
# Why: the kernel maps a program's code 64 KB at a time around every page it touches
# (fault-around). Scattered over 9 MB of code, the ~1.3 MB that start-up runs made ~6 MB of
# it resident at idle. Laid out first and contiguous, only about that much is. The list names
# the functions start-up and an idle daemon run first, then those that receiving and
# uploading add, each group sorted by name. Functions not listed follow in the linker's order.
#
# `generate` runs the release binary under valgrind (callgrind, which records every function
# executed) twice: started with the bench's options and left idle, then under the bench
# harness at 1,000 segments/s. It needs valgrind and takes about 3 minutes plus the builds.
#
# The names carry the hashes rustc derives from each crate's version, features and the
# toolchain: after `cargo update` or a new Rust, regenerate; also after changing start-up
# code, whose closures are named by position (a change that renamed 24 of them cost 0.5 MB). A stale list costs memory,
# never correctness (the linker ignores names it does not know); `check` fails when fewer
# than 90 % of the names are in the binary, and tests/packaging runs it on the release build.
set -euo pipefail
export LC_ALL=C  # sort and comm must agree on one collation
# A binary named relative to where the script was called from.
if [[ "${1:-}" == "check" && -n "${2:-}" ]]; then
    set -- check "$(realpath -- "$2")"
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ORDER=link/symbol-order.txt
MIN_COVERAGE_PCT=90

# text_symbols BIN: the names of BIN's function symbols, one per line, in address order.
text_symbols() {
    nm --defined-only --numeric-sort "$1" | awk '$2 == "t" || $2 == "T" { print $3 }'
}

# listed FILE: the symbol names of an order file (comments and blank lines dropped).
listed() {
    grep -v -e '^#' -e '^$' "$1" || true
}

check() {
    local bin="${1:-target/release/xray}"
    [[ -x "$bin" ]] || { echo "symbol-order: no binary at $bin (cargo build --release --bin xray)" >&2; return 1; }
    local work
    work="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" RETURN
    listed "$ORDER" | sort -u >"$work/listed"
    text_symbols "$bin" >"$work/by-address"
    sort -u "$work/by-address" >"$work/present"
    local total found coverage_pct
    total=$(wc -l <"$work/listed")
    found=$(comm -12 "$work/listed" "$work/present" | wc -l)
    coverage_pct=$((total == 0 ? 0 : found * 100 / total))
    # Laid out as listed: the lowest-addressed functions of .text are listed ones (a few of
    # the C runtime's own may come before them).
    local head_listed
    head_listed=$(head -n 200 "$work/by-address" | sort -u | comm -12 - "$work/listed" | wc -l)
    echo "symbol-order: $found of $total listed functions are in $bin (${coverage_pct} %);" \
        "$head_listed of its first 200 functions by address are listed"
    if ((coverage_pct < MIN_COVERAGE_PCT)); then
        echo "symbol-order: $ORDER is stale (under ${MIN_COVERAGE_PCT} %): run scripts/symbol-order.sh generate" >&2
        return 1
    fi
    if ((head_listed < 190)); then
        echo "symbol-order: $bin was not linked in the listed order (see build.rs)" >&2
        return 1
    fi
}

# executed CALLGRIND_OUT: the (mangled) names of every function the profile saw run.
executed() {
    sed -n -E 's/^c?fn=\([0-9]+\) (.+)$/\1/p' "$1" | sort -u
}

generate() {
    command -v valgrind >/dev/null || { echo "symbol-order: needs valgrind (apt-get install valgrind)" >&2; return 1; }
    XRAY_SYMBOL_ORDER=on cargo build --release --bin xray
    cargo build --release --example xray_bench
    local work
    work="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" RETURN
    cp target/release/xray "$work/xray"

    # 1. Start-up and idle: the bench's daemon options, no traffic, then SIGTERM.
    AWS_ACCESS_KEY_ID=AKIDSYMBOLORDER AWS_SECRET_ACCESS_KEY=symbol-order \
        valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/idle.out" \
        "$work/xray" -o -n us-east-1 --endpoint http://127.0.0.1:9 -b 127.0.0.1:0 \
        -t 127.0.0.1:0 --admin-address 127.0.0.1:0 -m 16 -l error >"$work/idle.log" 2>&1 &
    local pid=$!
    sleep 15
    kill -TERM "$pid"
    wait "$pid" || true

    # 2. Receiving and uploading: the bench harness at 1,000/s (callgrind slows the daemon
    # about 50 times; batches are still full).
    target/release/examples/xray_bench --daemon "$work/xray" --rate 1000 --count 5000 --runs 1 \
        --scenarios daemon --idle 3 --nice 0 --logs "$work" \
        --daemon-prefix "valgrind --tool=callgrind --demangle=no --callgrind-out-file=$work/traffic.out"

    text_symbols "$work/xray" | sort -u >"$work/present"
    executed "$work/idle.out" | comm -12 - "$work/present" >"$work/idle"
    executed "$work/traffic.out" | comm -12 - "$work/present" | comm -23 - "$work/idle" >"$work/traffic"
    {
        echo "# Function layout of the release binary: generated by scripts/symbol-order.sh, read"
        echo "# by build.rs (lld --symbol-ordering-file). Start-up and idle first, then traffic."
        echo "# $(rustc --version)"
        cat "$work/idle" "$work/traffic"
    } >"$ORDER"
    echo "symbol-order: wrote $ORDER: $(wc -l <"$work/idle") start-up and idle functions," \
        "$(wc -l <"$work/traffic") more for traffic"
}

case "${1:-}" in
    generate) generate ;;
    check) shift; check "$@" ;;
    *) sed -n '2,6p' "$0" >&2; exit 2 ;;
esac

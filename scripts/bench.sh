#!/usr/bin/env bash
# Benchmarks of the xray daemon (issue 7); figures and method in docs/performance.md.
#
#   scripts/bench.sh                 the standard set: 5,000, 20,000 and 100,000 segments/s,
#                                    10 s each, 1,000-byte documents, -m 16, 3 runs, daemon,
#                                    minimal forwarder and signing floor interleaved; medians
#                                    and target checks
#   scripts/bench.sh --rate 20000 --count 200000 --size 1000 --runs 3
#                                    any flags of the harness (scripts/bench.sh --help lists them)
#   scripts/bench.sh micro [ARGS]    the criterion micro-benchmarks (benches/hot_paths.rs)
#
# Everything runs on loopback; the harness kills its children on exit and stops itself after
# --timeout seconds (default 1800); this script adds an outer limit (XRAY_BENCH_TIMEOUT, s).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

limit="${XRAY_BENCH_TIMEOUT:-2400}"

if [[ "${1:-}" == "micro" ]]; then
    shift
    # `micro -- FILTER` and `micro FILTER` both work: cargo adds its own `--bench` after our
    # arguments, which criterion would take as a filter after a second `--`.
    [[ "${1:-}" == "--" ]] && shift
    exec timeout --kill-after=30 "$limit" cargo bench --bench hot_paths -- "$@"
fi

if [[ $# -eq 0 ]]; then
    set -- --rate 5000,20000,100000 --duration 10 --size 1000 --runs 3 --budget 16
fi

# The daemon is built on its own, exactly as it ships: building it together with examples
# would turn on dev-dependency features in its dependencies (tokio's test-util).
XRAY_SYMBOL_ORDER=on cargo build --release --bin xray
# Measure a snapshot, so a concurrent build cannot swap the binary in the middle of a run.
mkdir -p target/xray-bench
cp -f target/release/xray target/xray-bench/xray
exec timeout --signal=INT --kill-after=30 "$limit" \
    cargo run --release --example xray_bench -- --daemon target/xray-bench/xray "$@"

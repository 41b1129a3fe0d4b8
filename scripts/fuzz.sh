#!/usr/bin/env bash
# Fuzzing (issue 8): libFuzzer through cargo-fuzz on the daemon's input parsers, each target for
# a bounded time. Not part of the default test run.
#
#   scripts/fuzz.sh                       every target, 60 s each
#   scripts/fuzz.sh 300                   every target, 300 s each
#   scripts/fuzz.sh 120 datagram cli_flags
#
# Targets (fuzz/fuzz_targets/):
#   datagram     segment::split_datagram: the UDP header/document split
#   tcp_stream   ingest::tcp::{read_line, RecordFramer}: the TCP segment stream, against a model
#   config_file  config::file::parse and config::load with a -c file; describe() round trip
#   cli_flags    cli::parse (Go flag rules), then config::load; describe() round trip
#
# cargo-fuzz needs nightly-only flags (-Zsanitizer, -Cpasses=sancov...). This machine has only
# the stable toolchain, and RUSTC_BOOTSTRAP=1 lets stable accept them. cargo-fuzz is installed
# into .tools/ on first use. The corpus grows in fuzz/corpus/<target> (seeded from
# fuzz/seeds/<target>, the repository's sample configs and the SDK datagram captures); a crash
# leaves its input in fuzz/artifacts/<target>/ and fails the script: keep it in
# fuzz/regressions/<target>/ and turn it into a regression test in tests/integration/hostile.rs.
#
# Environment: FUZZ_SANITIZER (address, the default, or none: faster, finds panics only);
# FUZZ_JOBS (parallel fuzzing processes per target, default 1); XRAY_FUZZ_TIMEOUT (s) bounds
# each target's build and run (default: its time + 1800).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$PWD"

seconds="${1:-${FUZZ_SECONDS:-60}}"
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(datagram tcp_stream config_file cli_flags)
fi
sanitizer="${FUZZ_SANITIZER:-address}"
jobs="${FUZZ_JOBS:-1}"
limit="${XRAY_FUZZ_TIMEOUT:-$((seconds + 1800))}"

export PATH="$repo/.tools/bin:$PATH"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz into .tools/"
    cargo install cargo-fuzz --locked --root "$repo/.tools"
fi

# Seeds: the committed ones, plus inputs the repository already has.
seed() {
    local target="$1" dir="fuzz/corpus/$1"
    mkdir -p "$dir" "fuzz/artifacts/$target"
    cp -n fuzz/seeds/"$target"/* "$dir"/ 2>/dev/null || true
    case "$target" in
        datagram)
            for f in ../shared/fixtures/sdk-datagrams/*.raw; do
                [[ -f "$f" ]] && cp -n "$f" "$dir/sdk-$(basename "$f")"
            done ;;
        config_file)
            for f in config/*.yaml; do cp -n "$f" "$dir/repo-$(basename "$f")"; done ;;
    esac
    return 0
}

# Dictionaries from the option table, so they follow new options.
dictionary() {
    local target="$1" out="fuzz/corpus/$1.dict"
    local options=src/config/options.rs
    case "$target" in
        datagram|tcp_stream)
            printf '%s\n' '"\"format\""' '"\"json\""' '"\"version\""' '"\"JSON\""' '":"' '","' \
                '"\x0a"' '"\x0d\x0a"' '"{\"format\":\"json\",\"version\":1}"' '"null"' '"1e0"' \
                '"\"\\u0073\""' > "$out" ;;
        config_file)
            grep -o 'key: "[^"]*"' "$options" | cut -d'"' -f2 | tr '.' '\n' | sort -u \
                | sed 's/.*/"&:"/' > "$out"
            printf '%s\n' '"Version: 2"' '"\x0a  "' '"true"' '"0"' '"25s"' '"\"127.0.0.1:2000\""' \
                '"- "' '"[]"' '"~"' '"&a"' '"*a"' '"!!str"' '"<<:"' >> "$out" ;;
        cli_flags)
            { grep -o 'long: "[^"]*"' "$options" | cut -d'"' -f2 | sed 's/.*/"--&"\n"-&="/'
              grep -o 'short: Some("[a-z]")' "$options" | cut -d'"' -f2 | sed 's/.*/"-&"/'
              printf '%s\n' '"\x00"' '"="' '"-c"' '"-v"' '"-h"' '"--"' '"healthcheck"' '"--url"' \
                  '"true"' '"false"' '"0.0.0.0:2000"' '"25s"'; } > "$out" ;;
    esac
}

# One build of every target (the runs below reuse it).
(cd fuzz && timeout --kill-after=30 "$limit" cargo fuzz build --sanitizer "$sanitizer")

summary=()
failed=0
for target in "${targets[@]}"; do
    seed "$target"
    dictionary "$target"
    log="fuzz/artifacts/$target/last-run.log"
    echo "fuzz: $target for ${seconds}s (sanitizer $sanitizer, $jobs job(s)); log $log"
    started=$(date +%s)
    parallel=()
    if [[ "$jobs" -gt 1 ]]; then parallel=(-jobs="$jobs" -workers="$jobs"); fi
    set +e
    (cd fuzz && timeout --kill-after=30 "$limit" cargo fuzz run --sanitizer "$sanitizer" \
        "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -dict="corpus/$target.dict" -rss_limit_mb=2048 \
        -timeout=10 -max_len=70000 -print_final_stats=1 "${parallel[@]}" \
        -artifact_prefix="artifacts/$target/") >"$log" 2>&1
    rc=$?
    set -e
    took=$(($(date +%s) - started))
    runs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{s+=$2} END {print s+0}')
    corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
    if [[ $rc -eq 0 ]]; then
        summary+=("$(printf 'ok    %-12s %10s executions in %4ss, corpus %s inputs' "$target" "$runs" "$took" "$corpus")")
    else
        failed=1
        summary+=("$(printf 'FAIL  %-12s exit %s after %ss; crash inputs: %s' "$target" "$rc" "$took" \
            "$(ls "fuzz/artifacts/$target" | grep -v last-run.log | tr '\n' ' ')")")
        grep -a -m1 -A15 'panicked\|ERROR: AddressSanitizer\|ERROR: libFuzzer' "$log" || tail -20 "$log"
    fi
done

echo
echo "fuzz summary (${seconds}s per target):"
printf '%s\n' "${summary[@]}"
exit "$failed"

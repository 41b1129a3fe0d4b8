#!/usr/bin/env bash
# The project's test command (CI runs it through .ci/run).
#
#   1. scripts/setup-test-deps.sh        (skipped with XRAY_TEST_SKIP_SETUP=1)
#   2. cargo fmt --all -- --check
#   3. cargo clippy --all-targets -- -D warnings
#   4. cargo test --all-targets --no-fail-fast, then cargo test --doc (if there is a lib)
#   5. cargo build --bin xray
#   6. pytest tests/python, and tests/chart and tests/packaging when present
#
# Every step runs even when an earlier one failed (except a failed set-up, which
# stops everything), so one run reports all problems. The script prints a
# summary and exits non-zero if any step failed.
#
# Environment:
#   XRAY_TEST_SKIP_SETUP=1  don't install anything (use what is there)
#   XRAY_TEST_VENV          venv path (default: <repo>/.venv-test)
#   PYTEST_ADDOPTS          extra pytest options (pytest reads it itself)
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1
export XRAY_TEST_VENV="${XRAY_TEST_VENV:-$REPO/.venv-test}"
PY="$XRAY_TEST_VENV/bin/python"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export PYTHONDONTWRITEBYTECODE=1

RUN_START=$(date +%s)
SUMMARY=()
FAILED=0

banner() { printf '\n==================== %s ====================\n' "$*"; }

# step NAME CMD...: runs CMD, records PASS/FAIL and its duration.
step() {
    local name="$1"; shift
    banner "$name"
    printf '+ %s\n' "$*"
    local t0 rc
    t0=$(date +%s)
    "$@"
    rc=$?
    local secs=$(($(date +%s) - t0))
    if [ "$rc" -eq 0 ]; then
        SUMMARY+=("$(printf 'PASS  %-48s %5ss' "$name" "$secs")")
    else
        SUMMARY+=("$(printf 'FAIL  %-48s %5ss  (exit %s)' "$name" "$secs" "$rc")")
        FAILED=1
    fi
    return "$rc"
}

skip() {
    SUMMARY+=("$(printf 'SKIP  %-48s        %s' "$1" "$2")")
}

summary() {
    banner "summary"
    local line
    for line in "${SUMMARY[@]}"; do printf '%s\n' "$line"; done
    printf 'total %ss\n' "$(($(date +%s) - RUN_START))"
    if [ "$FAILED" -ne 0 ]; then
        printf 'RESULT: FAILED\n'
    else
        printf 'RESULT: OK\n'
    fi
}

# pytest on one suite. Exit 5 ("no tests collected") fails tests/python, which
# must always have tests, and is reported as a skip for the optional suites.
pytest_suite() {
    local dir="$1" required="$2"
    local name="pytest $dir"
    banner "$name"
    printf '+ %s -m pytest %s\n' "$PY" "$dir"
    local t0 rc
    t0=$(date +%s)
    "$PY" -m pytest "$dir" -p no:cacheprovider
    rc=$?
    local secs=$(($(date +%s) - t0))
    if [ "$rc" -eq 0 ]; then
        SUMMARY+=("$(printf 'PASS  %-48s %5ss' "$name" "$secs")")
    elif [ "$rc" -eq 5 ] && [ "$required" = "optional" ]; then
        skip "$name" "(no tests collected)"
    else
        SUMMARY+=("$(printf 'FAIL  %-48s %5ss  (exit %s)' "$name" "$secs" "$rc")")
        FAILED=1
    fi
}

# 1. dependencies
if [ "${XRAY_TEST_SKIP_SETUP:-}" = "1" ]; then
    skip "setup-test-deps" "(XRAY_TEST_SKIP_SETUP=1)"
else
    if ! step "setup-test-deps" bash scripts/setup-test-deps.sh; then
        summary
        exit 1
    fi
fi

# 2-4. Rust checks and tests
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy -D warnings" cargo clippy --all-targets -- -D warnings
step "cargo test --all-targets" cargo test --all-targets --no-fail-fast
if [ -f src/lib.rs ] || grep -q '^\[lib\]' Cargo.toml; then
    step "cargo test --doc" cargo test --doc
else
    skip "cargo test --doc" "(no lib target)"
fi

# 5. the binary the Python suites drive
step "cargo build --bin xray" cargo build --bin xray

# 6. Python suites
if [ ! -x "$PY" ]; then
    SUMMARY+=("$(printf 'FAIL  %-48s        %s' "pytest" "(no venv at $XRAY_TEST_VENV: run scripts/setup-test-deps.sh)")")
    FAILED=1
else
    pytest_suite tests/python required
    for suite in tests/chart tests/packaging; do
        if [ -d "$suite" ]; then
            pytest_suite "$suite" optional
        fi
    done
fi

summary
exit "$FAILED"

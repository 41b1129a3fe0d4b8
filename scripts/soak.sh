#!/usr/bin/env bash
# Soak test (issue 8): the release daemon at a steady rate for a bounded time, with periodic
# reloads (SIGHUP and POST /-/reload changing Concurrency and the log level) and backend
# hiccups (periods of 503), against a fake X-Ray on loopback. Prints RSS, open fds, threads
# and the daemon's counters at intervals, then a verdict (exit 0 = PASS, 1 = FAIL).
#
#   scripts/soak.sh                     10 minutes, 300 segments/s
#   scripts/soak.sh --duration 180      any option of scripts/soak.py (--help lists them):
#                                       --rate, --size, --budget, --interval, --reload-every,
#                                       --hiccup-every, --hiccup-seconds, --warmup
#
# Environment: XRAY_SOAK_TIMEOUT (s) bounds the whole run (default: duration + 300);
# XRAY_TEST_VENV names the Python venv (default .venv-test; python3 if it is missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release --bin xray
# A snapshot, so a concurrent build cannot swap the binary during the run.
mkdir -p target/xray-soak
cp -f target/release/xray target/xray-soak/xray

venv="${XRAY_TEST_VENV:-.venv-test}"
python="$venv/bin/python"
[[ -x "$python" ]] || python=python3

duration=600
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --duration) duration="${args[i + 1]:-600}" ;;
        --duration=*) duration="${args[i]#--duration=}" ;;
    esac
done
limit="${XRAY_SOAK_TIMEOUT:-$(( ${duration%.*} + 300 ))}"
exec timeout --kill-after=30 "$limit" "$python" scripts/soak.py --daemon target/xray-soak/xray "$@"

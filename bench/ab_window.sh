#!/bin/sh
# bench/ab_window.sh -- A/B of the consistency window between two builds:
# ROUNDS rounds (default 5), each build in turn on a fresh server (data
# dir of its own, a free port), the order swapped every round (A B, B A,
# ...) so that a drift in the machine's load does not favour one build.
# One line per run: the build, cmd/s and the window's p50 / p90 / p99 from
# `bench_window --workers W` (bench/window.c), and the server's CPU time
# (utime + stime, ms) over the whole run.
#
# Usage: sh bench/ab_window.sh BUILD_A BUILD_B [WORKERS] [ROUNDS] [COMMANDS]
#   BUILD_*: build directories with cqrsd and bench/bench_window (each
#   cqrsd loads its own libcqrs). Needs curl. Every server is bounded by
#   `timeout` and stopped after its run.
set -u
A=$1 B=$2 W=${3:-8} ROUNDS=${4:-5} N=${5:-5000}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh" # ab_server

one() { # one BUILD
    d=$(mktemp -d "${TMPDIR:-/tmp}/ab_window.XXXXXX")
    ab_server "$1" "$d" || { rm -rf "$d"; return 1; }
    p=$ab_port s=$ab_pid
    line=$(timeout 240 "$1/bench/bench_window" --port "$p" --workers "$W" \
        --commands "$N" --rtt 1000 2>&1 | grep 'BENCH kind=window')
    c=$(pgrep -P $s cqrsd)
    cpu=$([ -n "$c" ] && awk '{print ($14 + $15) * 10}' "/proc/$c/stat")
    kill $s 2>/dev/null
    wait $s 2>/dev/null
    rm -rf "$d"
    echo "$line" | sed -n "s|.*cmd_per_sec=\([0-9.]*\) p50_us=\([0-9]*\) p90_us=\([0-9]*\) p99_us=\([0-9]*\).*|$1 cmd/s \1 p50 \2 p90 \3 p99 \4 cpu_ms ${cpu:-?}|p"
}

r=1
while [ $r -le "$ROUNDS" ]; do
    if [ $((r % 2)) -eq 1 ]; then one "$A"; one "$B"; else one "$B"; one "$A"; fi
    r=$((r + 1))
done

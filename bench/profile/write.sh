#!/bin/sh
# bench/profile/write.sh -- where the time of a PlaceOrder goes (see
# bench/README.md, "Where the time goes"). Starts `cqrsd serve` on a fresh
# data dir, warms it up, then runs wrk PlaceOrder twice: once under
# `perf record -g` of the server (CPU), once under a system-wide
# `perf record` of sched_switch/sched_wakeup with kernel stacks (off-CPU:
# what each thread waits for), and prints per-command CPU by thread and
# function (cpu.py) and off-CPU time and wake-ups by thread (offcpu.py).
#
#   sh bench/profile/write.sh [CONNECTIONS [THREADS [SECONDS]]]
#
# Environment: BUILD_DIR (build), BENCH_CQRSD ($BUILD_DIR/cqrsd),
# OUT (a new temp dir; the perf.data files stay there), PERF (perf).
# Needs perf (linux-perf), wrk, curl, python3 and root (or
# perf_event_paranoid <= 1) for the sched tracepoints.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD_DIR=${BUILD_DIR:-build}
case $BUILD_DIR in /*) ;; *) BUILD_DIR=$ROOT/$BUILD_DIR ;; esac
CQRSD=${BENCH_CQRSD:-$BUILD_DIR/cqrsd}
PERF=${PERF:-perf}
C=${1:-1} T=${2:-1} DUR=${3:-8}
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/cqrsd-prof.XXXXXX")}
D=$OUT/data
mkdir -p "$D"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
"$CQRSD" serve --data "$D" --listen "127.0.0.1:$PORT" >"$OUT/server.log" 2>&1 &
SP=$!
trap 'kill -TERM $SP 2>/dev/null; wait $SP 2>/dev/null; rm -rf "$D"' EXIT INT TERM PIPE HUP
i=0
until curl -s -o /dev/null --max-time 1 "$URL/healthz"; do
    i=$((i + 1)); [ $i -lt 100 ] || { echo "server did not start" >&2; exit 1; }
    sleep 0.1
done
P=$(date +%s)
wrk -t1 -c1 -d2s -s "$ROOT/bench/placeorder.lua" "$URL" -- "w$P" >/dev/null 2>&1
"$PERF" record -F 2999 -g --call-graph dwarf,16384 -p $SP -o "$OUT/cpu.data" \
    -- sleep "$DUR" >/dev/null 2>&1 &
PP=$!
wrk -t"$T" -c"$C" -d"${DUR}s" --latency -s "$ROOT/bench/placeorder.lua" "$URL" \
    -- "c$P" >"$OUT/wrk-cpu.out" 2>&1
wait $PP
"$PERF" record -e sched:sched_switch -e sched:sched_wakeup -g -a \
    -o "$OUT/sched.data" -- sleep "$DUR" >/dev/null 2>&1 &
PP=$!
wrk -t"$T" -c"$C" -d"${DUR}s" --latency -s "$ROOT/bench/placeorder.lua" "$URL" \
    -- "s$P" >"$OUT/wrk-sched.out" 2>&1
wait $PP
n1=$(sed -n 's/.*accepted=\([0-9]*\).*/\1/p' "$OUT/wrk-cpu.out")
n2=$(sed -n 's/.*accepted=\([0-9]*\).*/\1/p' "$OUT/wrk-sched.out")
echo "== wrk -t$T -c$C -d${DUR}s, load average $(cut -d' ' -f1-3 /proc/loadavg)"
grep BENCH "$OUT/wrk-cpu.out" "$OUT/wrk-sched.out"
echo "== CPU per command ($n1 commands; perf record -F 2999 -g)"
python3 "$ROOT/bench/profile/cpu.py" "$OUT/cpu.data" "${n1:-1}"
echo "== off-CPU per command ($n2 commands; sched_switch/sched_wakeup)"
python3 "$ROOT/bench/profile/offcpu.py" "$OUT/sched.data" $SP "${n2:-1}"
echo "(perf data in $OUT)"

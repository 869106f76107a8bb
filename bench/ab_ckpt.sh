#!/bin/sh
# bench/ab_ckpt.sh -- A/B of what the checkpoint threads (src/store/wal.c)
# cost between two builds: ROUNDS rounds (default 4), each build in turn on
# a fresh server (data dir of its own, a free port), the order swapped
# every round (A B, B A, ...). One line per run and load:
#   c1   wrk -t1 -c1 -d8s PlaceOrder (bench/placeorder.lua)
#   win  bench_window --workers 8 --commands 5000 (bench/window.c)
#   c64  wrk -t2 -c64 -d8s PlaceOrder
# Each line: the load average at the start, commands, p50 / p99 (us), the
# server's CPU per command (utime + stime of all its threads over the run)
# and cq-ckpt-read's part of it, fsyncs (fsync + fdatasync) per 1,000
# commands and cq-ckpt-read's part, and the writer's fdatasync (events.db's
# commit) p99 and how many of them took over 1 ms per 1,000 commands.
# Syscalls are taken with `perf trace` (needs perf and the rights for it).
#
# Usage: sh bench/ab_ckpt.sh BUILD_A BUILD_B [ROUNDS] [LOAD...]
#   BUILD_*: build directories with cqrsd and bench/bench_window (each
#   cqrsd loads its own libcqrs). Run from the source tree. Needs wrk, curl,
#   python3, perf. Every server is bounded by `timeout` and stopped.
set -u
A=$1 B=$2 ROUNDS=${3:-4}
shift 2
[ $# -gt 0 ] && shift
LOADS=${*:-c1 win}
LUA=$(pwd)/bench/placeorder.lua

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh" # ab_server

cpu() { # PID: "TID NAME CPU_MS" per thread
    for t in /proc/"$1"/task/*; do
        echo "${t##*/} $(cat "$t/comm") $(awk '{print ($14 + $15) * 10}' "$t/stat")"
    done | sort
}

one() { # BUILD LOAD
    d=$(mktemp -d "${TMPDIR:-/tmp}/ab_ckpt.XXXXXX")
    ab_server "$1" "$d" || { rm -rf "$d"; return 1; }
    p=$ab_port s=$ab_pid
    c=$(pgrep -P $s cqrsd)
    load=$(cut -d' ' -f1 /proc/loadavg)
    cpu "$c" >"$d/cpu0"
    perf trace -p "$c" -e fsync,fdatasync -o "$d/trace" 2>/dev/null &
    t=$!
    sleep 0.5
    case $2 in
    c1 | c64)
        [ "$2" = c1 ] && conns="-t1 -c1" || conns="-t2 -c64"
        # shellcheck disable=SC2086
        wrk $conns -d8s -s "$LUA" "http://127.0.0.1:$p" >"$d/out" 2>&1
        n=$(sed -n 's/.*accepted=\([0-9]*\).*/\1/p' "$d/out" | head -1)
        lat=$(sed -n 's/.* p50_us=\([0-9]*\).* p99_us=\([0-9]*\).*/\1 \2/p' "$d/out" | head -1)
        ;;
    win)
        timeout 240 "$1/bench/bench_window" --port "$p" --workers 8 \
            --commands 5000 --rtt 200 >"$d/out" 2>&1
        n=5000
        lat=$(grep 'kind=window' "$d/out" | sed -n 's/.* p50_us=\([0-9]*\).* p99_us=\([0-9]*\).*/\1 \2/p')
        ;;
    esac
    cpu "$c" >"$d/cpu1"
    kill -INT $t
    wait $t 2>/dev/null
    kill $s 2>/dev/null
    wait $s 2>/dev/null
    if [ -z "$n" ] || [ "$n" -le 0 ]; then
        echo "$1 $2: no commands" >&2
        rm -rf "$d"
        return 1
    fi
    c=$(join "$d/cpu0" "$d/cpu1" | awk -v n="$n" '{d = $5 - $3; all += d; if ($2 == "cq-ckpt-read") r += d}
        END {printf "cpu/cmd %.0f us (ckpt-read %.1f)", all * 1000 / n, r * 1000 / n}')
    sed -n 's/.*( *\([0-9.]*\) ms): \([^/]*\)\/.*/\2 \1/p' "$d/trace" >"$d/calls"
    f=$(awk -v n="$n" '{all++; if ($1 == "cq-ckpt-read") r++}
        END {printf "fsync/1000 %.0f (ckpt-read %.0f)", all * 1000 / n, r * 1000 / n}' "$d/calls")
    w=$(awk '$1 == "cq-writer" {print $2}' "$d/calls" | sort -n | awk -v n="$n" '
        {w[NR] = $1; if ($1 > 1) o++}
        END {printf "writer fdatasync p99 %.0f us, >1 ms %.1f/1000", w[int(NR * .99)] * 1000, o * 1000 / n}')
    echo "${1%/} $2 load $load n $n p50/p99 ${lat:-? ?} us $c $f $w"
    rm -rf "$d"
}

r=1
while [ $r -le "$ROUNDS" ]; do
    for l in $LOADS; do
        if [ $((r % 2)) -eq 1 ]; then one "$A" "$l"; one "$B" "$l"; else one "$B" "$l"; one "$A" "$l"; fi
    done
    r=$((r + 1))
done

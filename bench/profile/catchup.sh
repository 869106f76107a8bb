#!/bin/sh
# bench/profile/catchup.sh -- CPU of an asynchronous catch-up (see
# bench/README.md, "Catch-up: where the time goes"): the projector
# thread's own CPU (perf stat -i: not its child threads) and the whole
# server's, over a catch-up of 4 x ORDERS events, next to its wall-clock
# rate. For A/B runs of two builds, alternating (each loads libcqrs from
# its own build dir):
#
#   sh bench/profile/catchup.sh ROUNDS ONLY BUILD_DIR [BUILD_DIR...]
#
# ONLY: os (order_summaries alone), sd (sales_dashboard alone) or both.
# The store is filled once (bench_fill_events of the first build) and a
# server brings its inline projection up to date on it once, so that
# every timed server starts its projector at once; each run gets a fresh
# copy without read.db. Prints one line per run: build, events/s, the
# projector's CPU s, the process's CPU s.
#
# Environment: ORDERS (250000), OUT (a new temp dir, removed at the end),
# PERF (perf). Needs perf, curl and python3.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PERF=${PERF:-perf}
ROUNDS=${1:?rounds}
ONLY=${2:?os, sd or both}
shift 2
[ $# -ge 1 ] || { echo "usage: $0 ROUNDS os|sd|both BUILD_DIR..." >&2; exit 2; }
ORDERS=${ORDERS:-250000}
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/cqrsd-catchup.XXXXXX")}
SP=
trap '[ -n "$SP" ] && kill -TERM $SP 2>/dev/null; rm -rf "$OUT"' EXIT INT TERM HUP
abs() { case $1 in /*) echo "$1" ;; *) echo "$ROOT/$1" ;; esac; }
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
FIRST=$(abs "$1")
case $ONLY in
    os) OPT="--only order_summaries" ;;
    sd) OPT="--only sales_dashboard" ;;
    both) OPT= ;;
    *) echo "ONLY: os, sd or both" >&2; exit 2 ;;
esac

# the store, and its inline projection brought up to date once
"$FIRST/bench/bench_fill_events" --dir "$OUT/fill" --orders "$ORDERS" \
    >"$OUT/fill.out" 2>&1 || { cat "$OUT/fill.out" >&2; exit 1; }
LAST=$(sed -n 's/.*last_position=\([0-9]*\).*/\1/p' "$OUT/fill.out")
LORDER=$(sed -n 's/.*last_order=\([^ ]*\).*/\1/p' "$OUT/fill.out")
FORDER=$(sed -n 's/.*first_order=\([^ ]*\).*/\1/p' "$OUT/fill.out")
P=$(port)
timeout 600 "$FIRST/cqrsd" serve --data "$OUT/fill" --listen "127.0.0.1:$P" \
    >"$OUT/inline.log" 2>&1 &
SP=$!
i=0
until curl -s --max-time 1 "http://127.0.0.1:$P/projections" 2>/dev/null |
    grep -q '"projections"' &&
    ! curl -s --max-time 1 "http://127.0.0.1:$P/projections" | grep -q catching_up; do
    i=$((i + 1)); [ $i -lt 3000 ] || { echo "inline catch-up: no end" >&2; exit 1; }
    sleep 0.2
done
kill -TERM $SP; wait $SP; SP=
rm -f "$OUT"/fill/read.db*
sync "$OUT"/fill/events.db*

r=1
while [ $r -le "$ROUNDS" ]; do
    for b in "$@"; do
        B=$(abs "$b")
        D=$OUT/run
        rm -rf "$D"; mkdir -p "$D"
        cp "$OUT"/fill/events.db* "$D"/ && sync "$D"/events.db*
        P=$(port)
        "$B/cqrsd" serve --data "$D" --listen "127.0.0.1:$P" >"$OUT/server.log" 2>&1 &
        SP=$!
        # shellcheck disable=SC2086  # OPT is meant to split
        timeout 600 "$FIRST/bench/bench_catchup" --port "$P" --order-id "$LORDER" \
            --probe-order "$FORDER" --position "$LAST" --timeout 500 --pid $SP \
            $OPT >"$OUT/catchup.out" 2>&1 &
        CP=$!
        i=0
        until T=$(grep -l '^cq-projector$' /proc/$SP/task/*/comm 2>/dev/null | head -n 1) &&
            [ -n "$T" ]; do
            i=$((i + 1)); [ $i -lt 5000 ] || { echo "no projector thread" >&2; exit 1; }
            sleep 0.01
        done
        TID=$(basename "$(dirname "$T")")
        C0=$(ticks $SP)
        "$PERF" stat -i -e task-clock -t "$TID" -o "$OUT/stat.txt" >/dev/null 2>&1 &
        PS=$!
        wait $CP
        C1=$(ticks $SP)
        kill -INT $PS; wait $PS
        kill -TERM $SP; wait $SP; SP=
        line=$(grep BENCH "$OUT/catchup.out")
        case $ONLY in
            both) eps=$(echo "$line" | sed -n 's/.*both_events_per_sec=\([0-9.-]*\).*/\1/p') ;;
            *) eps=$(echo "$line" | sed -n 's/.* events_per_sec=\([0-9.-]*\).*/\1/p') ;;
        esac
        proj=$(awk '/task-clock/ {gsub(",", "", $1); printf "%.2f", $1 / 1000}' "$OUT/stat.txt")
        printf 'round %d %s %s: %s events/s, projector %s s CPU, process %s s CPU\n' \
            $r "$ONLY" "$b" "${eps:-?}" "${proj:-?}" \
            "$(awk -v a="$C0" -v b="$C1" -v hz="$HZ" 'BEGIN {printf "%.2f", (b - a) / hz}')"
    done
    r=$((r + 1))
done

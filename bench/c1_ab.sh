#!/bin/sh
# bench/c1_ab.sh -- A/B of two builds at one client (or C connections):
# rounds of `wrk -tT -cC -dSs --latency` PlaceOrder on a fresh server of
# each build in turn (the order alternates from round to round), each run
# next to a `bench_raw_sqlite --batch 1` floor run on the same disk, and
# the server's CPU (utime+stime over the wrk run) per command. One line
# per run:
#
#   AB build=NAME round=R cmd_s=… p50_us=… p99_us=… floor_txn_s=…
#      beyond_us=(1/cmd_s - 1/floor_txn_s) floor_p50_us=(the raw COMMIT's
#      p50) beyond_p50_us=(p50_us - floor_p50_us) cpu_us_per_cmd=… load=…
#
# beyond_us is the sweep's figure (rates); beyond_p50_us moves less when
# a neighbour's I/O burst hits one of the two runs of a round.
#
#   sh bench/c1_ab.sh BUILD_A BUILD_B [ROUNDS [SECONDS [CONNS [THREADS]]]]
#
# BUILD_x is a build dir holding cqrsd (with its own libcqrs) and
# bench/bench_raw_sqlite. Servers listen on 127.0.0.1 and are killed at
# the end of each run; data dirs go in a temp dir removed at exit.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh" # free_port, wait_healthz (field is this script's own)
A=$1 B=$2 ROUNDS=${3:-5} SECS=${4:-5} C=${5:-1} T=${6:-1}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/c1ab.XXXXXX")
SP=
trap '[ -n "$SP" ] && kill -TERM $SP 2>/dev/null; rm -rf "$TMP"' EXIT INT TERM HUP
TICK=$(getconf CLK_TCK)

field() { sed -n "s/.*[ ]$1=\([0-9.]*\).*/\1/p" "$2" | head -n 1; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

run() { # build-dir name round
    bd=$1 name=$2 r=$3
    rm -rf "$TMP/raw" "$TMP/d"; mkdir -p "$TMP/raw" "$TMP/d"
    "$bd/bench/bench_raw_sqlite" --seconds 2 --batch 1 --dir "$TMP/raw" \
        >"$TMP/raw.out" 2>&1
    floor=$(field rows_per_sec "$TMP/raw.out")
    floor_p50=$(field commit_p50_us "$TMP/raw.out")
    port=$(free_port)
    url=http://127.0.0.1:$port
    "$bd/cqrsd" serve --data "$TMP/d" --listen "127.0.0.1:$port" \
        >"$TMP/server.log" 2>&1 &
    SP=$!
    wait_healthz "$url" 10 $SP || { echo "server did not start" >&2; exit 1; }
    p=$(date +%s)
    timeout 60 wrk -t"$T" -c"$C" -d2s -s "$ROOT/bench/placeorder.lua" "$url" \
        -- "w$p$name" >/dev/null 2>&1
    c0=$(cpu_ticks $SP)
    timeout $((SECS + 60)) wrk -t"$T" -c"$C" -d"${SECS}s" --latency \
        -s "$ROOT/bench/placeorder.lua" "$url" -- "r$p$name" >"$TMP/wrk.out" 2>&1
    c1=$(cpu_ticks $SP)
    kill -TERM $SP; wait $SP 2>/dev/null; SP=
    n=$(field accepted "$TMP/wrk.out") rps=$(field accepted_per_sec "$TMP/wrk.out")
    awk -v name="$name" -v r="$r" -v rps="$rps" -v n="$n" -v floor="$floor" \
        -v p50="$(field p50_us "$TMP/wrk.out")" -v p99="$(field p99_us "$TMP/wrk.out")" \
        -v fp50="$floor_p50" -v ticks=$((c1 - c0)) -v hz="$TICK" -v load="$(cut -d' ' -f1 /proc/loadavg)" \
        'BEGIN { printf "AB build=%s round=%d cmd_s=%.0f p50_us=%s p99_us=%s floor_txn_s=%.0f beyond_us=%.0f floor_p50_us=%s beyond_p50_us=%d cpu_us_per_cmd=%.0f load=%s\n",
                 name, r, rps, p50, p99, floor, 1e6 / rps - 1e6 / floor,
                 fp50, p50 - fp50, ticks / hz * 1e6 / n, load }'
}

r=1
while [ $r -le "$ROUNDS" ]; do
    if [ $((r % 2)) -eq 1 ]; then
        run "$A" A $r; run "$B" B $r
    else
        run "$B" B $r; run "$A" A $r
    fi
    r=$((r + 1))
done

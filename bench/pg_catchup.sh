#!/bin/sh
# bench/pg_catchup.sh — how fast the asynchronous projections catch up when
# their read store is PostgreSQL. Runs alone (not a step of bench/run.sh):
#
#   sh bench/pg_catchup.sh
#   BENCH_CQRSD="/tmp/base/build/cqrsd build/cqrsd" sh bench/pg_catchup.sh
#
#   1. a throwaway cluster (scripts/pg.sh: loopback, fsync and
#      synchronous_commit on), or BENCH_PG_URI (a superuser URI: the script
#      makes and drops its own databases there);
#   2. bench_fill_events fills one events.db (SQLite) with
#      BENCH_PG_CATCHUP_ORDERS orders x 4 events;
#   3. BENCH_PG_CATCHUP_ROUNDS rounds; each runs, for every cqrsd binary of
#      BENCH_CQRSD in turn (an A/B alternates its builds), order_summaries
#      alone then sales_dashboard alone: `cqrsd serve --data COPY
#      --read-store URI` on a fresh copy of the store and a fresh database,
#      and bench_catchup --only NAME (the other paused as soon as the
#      server is up) until the projection has applied the last event;
#   4. prints each run's events/s and the CPU time per event of cqrsd
#      (user + system, from /proc, over the whole run: decoding and the
#      projector's libpq work) and, on the throwaway cluster, of
#      PostgreSQL (every process of the cluster, the exited backends
#      included: the postmaster's own and its children's times), then the
#      medians per binary and projection. On a machine shared with other
#      work the CPU times move much less than the rates.
#
# Environment (defaults): BUILD_DIR=build, BENCH_CQRSD=$BUILD_DIR/cqrsd (one
# or more binaries, space-separated), BENCH_PG_CATCHUP_ORDERS=25000,
# BENCH_PG_CATCHUP_ROUNDS=3, BENCH_PG_CATCHUP_TIMEOUT=600 (seconds per
# catch-up), BENCH_PG_URI (none: a throwaway cluster),
# BENCH_TMPDIR=$TMPDIR|/tmp. Exit status: 0 when every figure was measured,
# 1 when one could not be.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-build}
case $BUILD_DIR in /*) ;; *) BUILD_DIR=$ROOT/$BUILD_DIR ;; esac
CQRSDS=${BENCH_CQRSD:-$BUILD_DIR/cqrsd}
ORDERS=${BENCH_PG_CATCHUP_ORDERS:-25000}
ROUNDS=${BENCH_PG_CATCHUP_ROUNDS:-3}
CU_TIMEOUT=${BENCH_PG_CATCHUP_TIMEOUT:-600}
TMP_PARENT=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}

BENCH_WHO="bench pg_catchup"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

for v in "$ORDERS" "$ROUNDS" "$CU_TIMEOUT"; do
    case $v in '' | *[!0-9]*) die "BENCH_PG_CATCHUP_ORDERS, _ROUNDS and _TIMEOUT take whole numbers, got '$v'" ;; esac
done
if [ "$ORDERS" -lt 10 ] || [ "$ROUNDS" -lt 1 ]; then
    die "BENCH_PG_CATCHUP_ORDERS must be at least 10 and BENCH_PG_CATCHUP_ROUNDS at least 1"
fi
for b in $CQRSDS; do [ -x "$b" ] || die "$b not found: run 'make build' (or set BUILD_DIR)"; done
for t in psql curl python3; do
    command -v $t >/dev/null 2>&1 || die "$t not found (sh scripts/deps.sh postgresql)"
done
FILL=$BUILD_DIR/bench/bench_fill_events
[ -x "$FILL" ] || die "no $FILL (built with CQ_BENCH=OFF?)"

mkdir -p "$TMP_PARENT" || die "cannot create $TMP_PARENT"
TMP=$(mktemp -d "$TMP_PARENT/cqrsd-bench-pgcu.XXXXXX") || die "mktemp failed"
CU=$(tool bench_catchup catchup.c none)
[ -n "$CU" ] || die "could not build bench_catchup"
PG_STATE=
ADMIN=
SERVER_PID=
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
    [ -n "$SERVER_PID" ] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    pg_down
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

STATUS=0

# --- 1. the cluster ----------------------------------------------------------
pg_up
pgv=$(psql -X -A -t -d "$ADMIN" -c 'SHOW server_version' 2>/dev/null) || die "cannot reach PostgreSQL"
say "   server $pgv; $(nproc) CPUs; load average $(loadavg)"

# --- 2. the store --------------------------------------------------------------
say "-- filling $TMP/fill/events.db: $ORDERS orders x 4 events (SQLite)"
bounded 300 "$FILL" --dir "$TMP/fill" --orders "$ORDERS" >"$TMP/fill.out" 2>&1 ||
    { cat "$TMP/fill.out"; die "bench_fill_events failed"; }
cat "$TMP/fill.out"
last_order=$(field fill last_order "$TMP/fill.out")
first_order=$(field fill first_order "$TMP/fill.out")
last_pos=$(field fill last_position "$TMP/fill.out")
[ -n "$last_pos" ] || die "bench_fill_events printed no last position"
sync "$TMP/fill"/events.db*
say

# --- 3. the runs -----------------------------------------------------------------
# CPU time (user + system, seconds) of process $1 so far, or empty.
cpu_s() {
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' \
        "/proc/$1/stat" 2>/dev/null
}

# CPU time (seconds) of the throwaway cluster so far: the postmaster's
# own, its reaped children's and its live children's; empty with
# BENCH_PG_URI.
pg_cpu_s() {
    [ -n "$PG_STATE" ] || return 0
    pm=$(head -n 1 "$(cat "$PG_STATE/pgdata")/postmaster.pid" 2>/dev/null) || return 0
    for f in /proc/[0-9]*/stat; do cat "$f" 2>/dev/null; echo; done |
        awk -v pm="$pm" -v hz="$(getconf CLK_TCK)" '
            NF { pid = $1; sub(/.*\) /, "")
                 # now $2 is the parent, $12..$15 utime stime cutime cstime
                 if (pid == pm) t += $12 + $13 + $14 + $15
                 else if ($2 == pm) t += $12 + $13 }
            END { print t / hz }'
}

# One catch-up: run number, binary's index, binary, projection.
catchup() {
    n=$1 bi=$2 bin=$3 only=$4
    db=bench_pgcu_$n
    uri=$(pg_mkdb "$db") || { STATUS=1; return 1; }
    dir=$TMP/run-$n
    if ! { mkdir -p "$dir" && cp "$TMP/fill"/events.db* "$dir"/ && sync "$dir"/events.db*; }; then
        warn "cannot copy the filled store to $dir"; STATUS=1; return 1
    fi
    port=$(free_port)
    pg0=$(pg_cpu_s)
    "$bin" serve --data "$dir" --read-store "$uri" --listen "127.0.0.1:$port" \
        --insecure-no-auth >"$TMP/server-$n.log" 2>&1 &
    SERVER_PID=$!
    bounded $((CU_TIMEOUT + 30)) "$CU" --port "$port" --order-id "$last_order" \
        --probe-order "$first_order" --position "$last_pos" \
        --timeout "$CU_TIMEOUT" --pid "$SERVER_PID" --only "$only" \
        >"$TMP/catchup-$n.out" 2>&1
    rc=$?
    cpu=$(cpu_s "$SERVER_PID")
    kill -TERM "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=
    sleep 1 # its backends exit and are reaped
    pg1=$(pg_cpu_s)
    eps=$(field catchup_alone events_per_sec "$TMP/catchup-$n.out")
    if [ $rc -ne 0 ] || [ -z "$eps" ]; then
        warn "run $n ($bin, $only) failed (exit $rc)"
        tail -n 5 "$TMP/catchup-$n.out" "$TMP/server-$n.log" >&2
        STATUS=1
        return 1
    fi
    us_ev=$(calc 'printf "%.1f", a * 1e6 / b' "$cpu" "$last_pos")
    pg_ev=n/a
    [ -n "$pg0" ] && [ -n "$pg1" ] &&
        pg_ev=$(calc 'printf "%.1f", (b - a) * 1e6 / c' "$pg0" "$pg1" "$last_pos")
    say "   run $n: $only, $bin: $(num "$eps") events/s, CPU us/event: cqrsd $us_ev, PostgreSQL $pg_ev"
    echo "$bi $only $eps $us_ev $pg_ev" >>"$TMP/results"
    psql -X -q -d "$ADMIN" -c "DROP DATABASE $db WITH (FORCE)" >/dev/null 2>&1
    rm -rf "$dir"
}

n=0 r=1
while [ $r -le "$ROUNDS" ]; do
    say "-- round $r of $ROUNDS (load average $(loadavg))"
    bi=0
    for bin in $CQRSDS; do
        for only in order_summaries sales_dashboard; do
            n=$((n + 1))
            catchup "$n" "$bi" "$bin" "$only"
        done
        bi=$((bi + 1))
    done
    r=$((r + 1))
done

# --- 4. medians --------------------------------------------------------------------
say
say "-- medians over $ROUNDS rounds ($last_pos events; events/s, CPU us/event of cqrsd and of PostgreSQL)"
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
bi=0
for bin in $CQRSDS; do
    for only in order_summaries sales_dashboard; do
        eps=$(awk -v b=$bi -v o=$only '$1 == b && $2 == o { print $3 }' "$TMP/results" 2>/dev/null | median)
        cpu=$(awk -v b=$bi -v o=$only '$1 == b && $2 == o { print $4 }' "$TMP/results" 2>/dev/null | median)
        pgc=$(awk -v b=$bi -v o=$only '$1 == b && $2 == o && $5 != "n/a" { print $5 }' "$TMP/results" 2>/dev/null | median)
        printf '  %-16s %9s events/s  cqrsd %6s  PostgreSQL %6s us/event   %s\n' "$only" "$(num "$eps")" "${cpu:-n/a}" "${pgc:-n/a}" "$bin"
        echo "BENCH kind=pg_catchup projection=$only events_per_sec=${eps:-} cqrsd_cpu_us_per_event=${cpu:-} pg_cpu_us_per_event=${pgc:-} binary=$bin"
    done
    bi=$((bi + 1))
done
exit $STATUS

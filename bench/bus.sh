#!/bin/sh
# bench/bus.sh — the bus: 3 API nodes on one PostgreSQL store, the relay
# to NATS JetStream and 2 projector workers, all on loopback. The `bus` step
# of bench/run.sh (`make bench`); runs alone too:
#
#   sh bench/bus.sh
#
#   1. a throwaway PostgreSQL cluster (scripts/pg.sh) and nats-server with
#      JetStream (scripts/nats.sh);
#   2. 3 nodes (`serve --store URI`); when `cqrsd project` exists, the
#      nodes leave the asynchronous projections to 2 workers
#      (`cqrsd project --bus … --read-store URI`); the relay is started
#      only after the fill;
#   3. fill: wrk PlaceOrder on the 3 nodes for BENCH_BUS_FILL_SECONDS with
#      no relay running;
#   4. relay publish rate: `cqrsd relay` starts behind the whole fill;
#      bench_nats_pub --info waits until the stream holds every event and
#      reads the time between its first and last message (JetStream's
#      timestamps): rate = (messages - 1) / span;
#   5. raw libnats on the same server in the same run: bench_nats_pub
#      publishes copies of the relay's first message (same subject shape,
#      headers and body) to a stream of its own, in rounds of 256 awaited
#      acknowledgements like the relay, and as one stream of async publishes;
#   6. consistency window: bench_window with its commands to node A and its
#      queries (min_position = the 202's position) to node B, at a stated
#      command rate (BENCH_BUS_RATE, paced), then unpaced;
#   7. end-to-end: wrk PlaceOrder on the 3 nodes for BENCH_BUS_SECONDS
#      with the relay and workers running; then the time until order_summary
#      on node C is fresh at the head: events / (run + drain);
#   8. prints the figures next to the seeds' Kafka window (50–200 ms), and
#      the target (window p99 <= 20 ms).
#
# Environment (defaults): BUILD_DIR=build, BENCH_CQRSD=$BUILD_DIR/cqrsd,
# BENCH_BUS_FILL_SECONDS=5, BENCH_BUS_SECONDS=10, BENCH_BUS_RATE=200
# (commands/s of the paced window run), BENCH_BUS_WINDOW_COMMANDS=2000,
# BENCH_BUS_WINDOW_SECONDS=15, BENCH_BUS_CONNECTIONS=32 (wrk, over the 3
# nodes), BENCH_TMPDIR=$TMPDIR|/tmp, BENCH_STRICT=0 (1: exit 1 when the
# target is missed). Bounded: every step has a timeout.
# Exit status: 0 when every figure was measured, 1 when one could not be.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-build}
case $BUILD_DIR in /*) ;; *) BUILD_DIR=$ROOT/$BUILD_DIR ;; esac
CQRSD=${BENCH_CQRSD:-$BUILD_DIR/cqrsd}
FILL=${BENCH_BUS_FILL_SECONDS:-5}
SECS=${BENCH_BUS_SECONDS:-10}
RATE=${BENCH_BUS_RATE:-200}
WCMDS=${BENCH_BUS_WINDOW_COMMANDS:-2000}
WSECS=${BENCH_BUS_WINDOW_SECONDS:-15}
CONNS=${BENCH_BUS_CONNECTIONS:-32}
TMP_PARENT=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}
STRICT=${BENCH_STRICT:-0}
TARGET_P99_US=20000
NATS_PUB=$BUILD_DIR/bench/bench_nats_pub
WINDOW=$BUILD_DIR/bench/bench_window

BENCH_WHO="bench bus"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

for v in "$FILL" "$SECS" "$RATE" "$WCMDS" "$WSECS" "$CONNS"; do
    case $v in '' | *[!0-9]*) die "BENCH_BUS_* take whole numbers, got '$v'" ;; esac
done
[ "$FILL" -ge 1 ] && [ "$SECS" -ge 1 ] && [ "$CONNS" -ge 3 ] ||
    die "BENCH_BUS_FILL_SECONDS, BENCH_BUS_SECONDS >= 1, BENCH_BUS_CONNECTIONS >= 3"
[ -x "$CQRSD" ] || die "$CQRSD not found: run 'make build' (or set BUILD_DIR)"
[ -x "$NATS_PUB" ] && [ -x "$WINDOW" ] || die "bench tools not built in $BUILD_DIR/bench"
for t in wrk psql curl nats-server timeout; do
    command -v $t >/dev/null 2>&1 || die "$t not found (sh scripts/deps.sh wrk postgresql nats-server)"
done

mkdir -p "$TMP_PARENT" || die "cannot create $TMP_PARENT"
TMP=$(mktemp -d "$TMP_PARENT/cqrsd-bench-bus.XXXXXX") || die "mktemp failed"
PIDS=
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
    for p in $PIDS; do kill -TERM "$p" 2>/dev/null; done
    for p in $PIDS; do wait "$p" 2>/dev/null; done
    sh "$ROOT/scripts/nats.sh" stop "$TMP/nats" >/dev/null 2>&1
    sh "$ROOT/scripts/pg.sh" stop "$TMP/pg" >/dev/null 2>&1
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

STATUS=0
# background process bounded to the whole script's length, logged
spawn() {
    log=$1; shift
    timeout -k 5 1800 "$@" >"$log" 2>&1 &
    PIDS="$PIDS $!"
    LAST_PID=$!
}
head_of() {
    curl -s --max-time 10 "$1/streams/\$all?limit=1" |
        sed -n 's/.*"head_position":\([0-9]*\).*/\1/p'
}

# --- 1. PostgreSQL and NATS ---------------------------------------------------
ADMIN=$(sh "$ROOT/scripts/pg.sh" start "$TMP/pg") || die "scripts/pg.sh start failed"
NATS=$(sh "$ROOT/scripts/nats.sh" start "$TMP/nats") || die "scripts/nats.sh start failed"
psql -X -q -d "$ADMIN" -c "CREATE DATABASE bench_bus" >/dev/null || die "CREATE DATABASE failed"
URI="${ADMIN%/*}/bench_bus"
say "-- the bus: PostgreSQL $(psql -X -A -t -d "$ADMIN" -c 'SHOW server_version'), $(nats-server --version 2>&1 | head -n 1);" \
    "$(nproc) CPUs; load average $(cut -d ' ' -f 1-3 /proc/loadavg)"

# --- 2. nodes (and workers) ---------------------------------------------------
WORKERS=0
NODE_ARGS=
if "$CQRSD" --help 2>&1 | grep -qE 'cqrsd project( |$)'; then
    WORKERS=2
    NODE_ARGS=${BENCH_BUS_NODE_ARGS:---projector off}
fi
URLS=
for i in 1 2 3; do
    port=$(free_port)
    # shellcheck disable=SC2086  # NODE_ARGS are meant to split
    spawn "$TMP/node$i.log" "$CQRSD" serve --store "$URI" --listen "127.0.0.1:$port" $NODE_ARGS
    URLS="$URLS http://127.0.0.1:$port"
    eval "PORT$i=$port"
done
for url in $URLS; do
    wait_healthz "$url" 30 || { tail -n 5 "$TMP"/node*.log >&2; die "$url did not come up"; }
done
A=http://127.0.0.1:$PORT1
C=http://127.0.0.1:$PORT3
w=0
while [ "$w" -lt "$WORKERS" ]; do
    w=$((w + 1))
    spawn "$TMP/worker$w.log" "$CQRSD" project --bus "$NATS" --read-store "$URI"
done
if [ "$WORKERS" -eq 0 ]; then
    say "   3 nodes; no projector workers (this cqrsd has no 'project'): each node's" \
        "asynchronous projections run in the nodes (one node each, LISTEN/NOTIFY)"
else
    say "   3 nodes ($NODE_ARGS), $WORKERS projector workers"
fi

# wrk on the 3 nodes for $2 s, $CONNS connections; output $TMP/$1.N.out;
# prints the summed 202/s and non-202 count.
wrk3() {
    name=$1 secs=$2
    i=0 pids=
    for url in $URLS; do
        c=$((CONNS / 3))
        bounded $((secs + 40)) wrk -t 1 -c "$c" -d "${secs}s" --timeout 5s --latency \
            -s "$ROOT/bench/placeorder.lua" "$url" -- "$name$i$(date +%s)" \
            >"$TMP/$name.$i.out" 2>&1 &
        pids="$pids $!"
        i=$((i + 1))
    done
    for p in $pids; do wait "$p"; done
    sum=0 bad=0
    for j in 0 1 2; do
        a=$(field placeorder accepted_per_sec "$TMP/$name.$j.out")
        b=$(field placeorder non202 "$TMP/$name.$j.out")
        [ -n "$a" ] || { echo; return 1; }
        sum=$(calc 'printf "%.1f", a + b' "$sum" "$a")
        bad=$((bad + ${b:-0}))
    done
    echo "$sum $bad"
}

# --- 3. fill, no relay ------------------------------------------------------------
say "-- fill: wrk PlaceOrder on 3 nodes, $CONNS connections, ${FILL}s, no relay running"
set -- $(wrk3 fill "$FILL")
fill_rate=${1:-}
FILLED=$(head_of "$A")
say "   $(num "$fill_rate") cmd/s, ${FILLED:-?} events in the store (non-202: ${2:-?})"
[ -n "$FILLED" ] && [ "$FILLED" -gt 1 ] || { warn "the fill wrote nothing"; exit 1; }

# --- 4. the relay's publish rate --------------------------------------------------
say "-- relay: cqrsd relay --store … --bus $NATS, starting $FILLED events behind"
spawn "$TMP/relay.log" "$CQRSD" relay --store "$URI" --bus "$NATS"
RELAY_PID=$LAST_PID
bounded 200 "$NATS_PUB" --url "$NATS" --info CQRS_EVENTS --wait-msgs "$FILLED" \
    --timeout 180 >"$TMP/relay.out" 2>&1 || { cat "$TMP/relay.out"; STATUS=1; }
relay_rate=$(field stream rate "$TMP/relay.out")
relay_span=$(field stream span_secs "$TMP/relay.out")
relay_wait=$(field stream waited_secs "$TMP/relay.out")
say "   $(num "$relay_rate") events/s ($FILLED events published in ${relay_span:-?} s between" \
    "the stream's first and last message; ${relay_wait:-?} s from the relay's start)"

# --- 5. raw libnats ------------------------------------------------------------------
RAW_N=$FILLED
[ "$RAW_N" -gt 50000 ] && RAW_N=50000
say "-- raw libnats: $RAW_N copies of the relay's first message, same server"
bounded 300 "$NATS_PUB" --url "$NATS" --like CQRS_EVENTS --count "$RAW_N" \
    >"$TMP/raw.out" 2>&1 || STATUS=1
sed 's/^/   /' "$TMP/raw.out" | grep -v '^   BENCH'
raw_rounds=$(awk '/kind=nats_raw mode=rounds/' "$TMP/raw.out" | sed 's/.* rate=\([0-9.]*\).*/\1/')
raw_stream=$(awk '/kind=nats_raw mode=stream/' "$TMP/raw.out" | sed 's/.* rate=\([0-9.]*\).*/\1/')

# --- 6. the consistency window ---------------------------------------------------------
say "-- consistency window: PlaceOrder on node A -> order_summary on node B" \
    "(min_position = the 202's position)"
bounded $((WSECS + 120)) "$WINDOW" --port "$PORT1" --query-port "$PORT2" --workers 4 \
    --commands "$WCMDS" --seconds "$WSECS" --warmup 100 --rtt 1000 --rate "$RATE" \
    --prefix "busp$(date +%s)" >"$TMP/window.out" 2>&1 || STATUS=1
sed 's/^/   /' "$TMP/window.out" | grep -v '^   BENCH'
bounded $((WSECS + 120)) "$WINDOW" --port "$PORT1" --query-port "$PORT2" --workers 8 \
    --commands "$WCMDS" --seconds "$WSECS" --warmup 100 --rtt 1000 \
    --prefix "busu$(date +%s)" >"$TMP/window8.out" 2>&1 || STATUS=1
sed 's/^/   /' "$TMP/window8.out" | grep -v '^   BENCH'

# --- 7. end to end -------------------------------------------------------------------------
say "-- end to end: wrk PlaceOrder on 3 nodes, $CONNS connections, ${SECS}s, then until" \
    "order_summary on node C is fresh at the head"
h0=$(head_of "$A")
t0=$(date +%s.%N)
set -- $(wrk3 e2e "$SECS")
e2e_cmd=${1:-}
t1=$(date +%s.%N)
h1=$(head_of "$A")
code=$(curl -s -o "$TMP/fresh.json" -w '%{http_code}' --max-time 40 \
    "$C/queries/sales_dashboard?min_position=$h1&wait_ms=30000")
t2=$(date +%s.%N)
if [ "$code" = 200 ] && grep -q '"stale":false' "$TMP/fresh.json"; then
    drain=$(calc 'printf "%.3f", a - b' "$t2" "$t1")
    e2e=$(calc 'printf "%.1f", (a - b) / c' "$h1" "$h0" "$(calc 'printf "%.3f", a - b' "$t2" "$t0")")
else
    warn "node C was not fresh at $h1 within 30 s: $code $(head -c 300 "$TMP/fresh.json")"
    drain= e2e=
    STATUS=1
fi
say "   $(num "$e2e_cmd") cmd/s accepted; $((h1 - h0)) events; read model fresh at the head" \
    "${drain:-?} s after the run; end to end $(num "$e2e") events/s"
kill -0 "$RELAY_PID" 2>/dev/null || { warn "the relay died"; tail -n 20 "$TMP/relay.log" >&2; STATUS=1; }

# --- 8. summary ------------------------------------------------------------------------------
w_p50=$(field window p50_us "$TMP/window.out")
w_p99=$(field window p99_us "$TMP/window.out")
w_rate=$(field window cmd_per_sec "$TMP/window.out")
w_bad=$(calc 'printf "%d", a + b + c' "$(field window cmd_fail "$TMP/window.out")" \
    "$(field window query_fail "$TMP/window.out")" "$(field window io_fail "$TMP/window.out")")
u_p50=$(field window p50_us "$TMP/window8.out")
u_p99=$(field window p99_us "$TMP/window8.out")
u_rate=$(field window cmd_per_sec "$TMP/window8.out")
met=$(calc "if (a <= $TARGET_P99_US) print \"met\"; else print \"NOT MET\"" "$w_p99")
pct=$(calc 'if (b > 0) printf "%.0f %%", 100 * a / b; else print "n/a"' "$relay_rate" "$raw_rounds")
pcts=$(calc 'if (b > 0) printf "%.0f %%", 100 * a / b; else print "n/a"' "$relay_rate" "$raw_stream")
say
say "= bus summary ="
line() { printf '  %-44s %12s %12s %s\n' "$@"; }
line "consistency window, A -> B" "p50" "p99" ""
line "  at $(num "$w_rate") cmd/s (paced, 4 conns)" "$(ms "$w_p50")" "$(ms "$w_p99")" \
    "target p99 <= 20 ms: $met"
line "  at $(num "$u_rate") cmd/s (unpaced, 8 conns)" "$(ms "$u_p50")" "$(ms "$u_p99")" ""
line "  PlaceOrder 202 latency, paced run (info)" "$(ms "$(field window cmd_p50_us "$TMP/window.out")")" \
    "$(ms "$(field window cmd_p99_us "$TMP/window.out")")" "(the machine's noise floor)"
line "  the seeds' Kafka pipeline" "50-200 ms" "" ""
printf '  %-44s %12s\n' "  answers not 202 / not fresh" "${w_bad:-n/a}"
printf '  %-44s %12s\n' "end to end (3 nodes -> relay -> read model)" "$(num "$e2e") ev/s"
printf '  %-44s %12s   (%s events)\n' "relay publish rate" "$(num "$relay_rate") ev/s" "$FILLED"
printf '  %-44s %12s   relay = %s\n' "raw libnats, rounds of 256 like the relay" \
    "$(num "$raw_rounds") msg/s" "$pct"
printf '  %-44s %12s   relay = %s\n' "raw libnats, async stream (window 256)" \
    "$(num "$raw_stream") msg/s" "$pcts"
if [ "$WORKERS" -eq 0 ]; then
    say "  (no projector workers in this build: the read side is the nodes' own projections)"
fi
say "====="
[ -n "$w_p99" ] && [ -n "$relay_rate" ] && [ -n "$raw_rounds" ] && [ -n "$e2e" ] || STATUS=1
[ "$STRICT" = 1 ] && [ "$met" = "NOT MET" ] && STATUS=1
exit $STATUS

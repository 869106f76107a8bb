#!/bin/sh
# bench/pg.sh — PlaceOrder on PostgreSQL against Message DB and a raw
# one-INSERT-per-transaction loop, on the same cluster in the same run.
# The `pg` step of bench/run.sh (`make bench`); runs alone too:
#
#   sh bench/pg.sh
#
#   1. a throwaway cluster (scripts/pg.sh: loopback, fsync and
#      synchronous_commit on), or BENCH_PG_URI (a superuser URI: the script
#      makes and drops its own databases there);
#   2. set-up: cqrsd as 1 node on one database and as 3 nodes on another
#      (`serve --store URI`, both groups up all along); Message DB
#      (`npm install @eventide/message-db` in a temp dir; its schema, table,
#      functions and indexes on a database of its own); for the raw loop a
#      table like cqrsd's events table on a fourth;
#   3. BENCH_PG_ROUNDS rounds; each runs every configuration once for
#      BENCH_PG_SECONDS, starting one further along the list each round
#      (the machine's other load then falls on all of them alike):
#        cqrsd 1 and 3 nodes — wrk placeorder.lua (a new order per
#          request) at 1 and 64 keep-alive connections; with 3 nodes the
#          connections are spread over the nodes (one wrk per node, their
#          accepted commands/s added up; 1 connection goes to the first);
#          afterwards the script waits until the projections have applied
#          everything, so that their catch-up does not weigh on the next run;
#        Message DB — pgbench calling message_store.write_message (a new
#          stream of the category `order` per call, expected_version -1,
#          an OrderPlaced-sized payload), 1 and 64 clients;
#        raw — pgbench, one INSERT of the same row per transaction;
#      the first round runs each configuration for BENCH_WARMUP seconds
#      first, not counted;
#   4. prints each round's figures, then the median per configuration and
#      the ratio of cqrsd at 64 connections to Message DB at 64 clients (the
#      issue's target: >= 10x) and to the raw loop.
#
# Environment (defaults): BUILD_DIR=build, BENCH_CQRSD=$BUILD_DIR/cqrsd,
# BENCH_PG_SECONDS=5, BENCH_PG_ROUNDS=3, BENCH_WARMUP=2, BENCH_PG_URI (none:
# a throwaway cluster), BENCH_TMPDIR=$TMPDIR|/tmp, BENCH_STRICT=0 (1: exit 1
# when the target is missed). Exit status: 0 when every figure was measured,
# 1 when one could not be.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-build}
case $BUILD_DIR in /*) ;; *) BUILD_DIR=$ROOT/$BUILD_DIR ;; esac
CQRSD=${BENCH_CQRSD:-$BUILD_DIR/cqrsd}
SECS=${BENCH_PG_SECONDS:-5}
ROUNDS=${BENCH_PG_ROUNDS:-3}
WARMUP=${BENCH_WARMUP:-2}
TMP_PARENT=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}
STRICT=${BENCH_STRICT:-0}
TARGET_RATIO=10
CONFIGS="cq1:1 cq1:64 cq3:1 cq3:64 mdb:1 mdb:64 raw:1 raw:64"

BENCH_WHO="bench pg"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

for v in "$SECS" "$ROUNDS" "$WARMUP"; do
    case $v in '' | *[!0-9]*) die "BENCH_PG_SECONDS, BENCH_PG_ROUNDS and BENCH_WARMUP take whole numbers, got '$v'" ;; esac
done
if [ "$SECS" -lt 1 ] || [ "$ROUNDS" -lt 1 ]; then
    die "BENCH_PG_SECONDS and BENCH_PG_ROUNDS must be at least 1"
fi
[ -x "$CQRSD" ] || die "$CQRSD not found: run 'make build' (or set BUILD_DIR)"
for t in wrk pgbench psql curl python3; do
    command -v $t >/dev/null 2>&1 || die "$t not found (sh scripts/deps.sh wrk postgresql)"
done
# the whole run, bounded: the nodes cannot outlive a killed script for long
BUDGET=$(( (8 * (SECS + 40)) * ROUNDS + 8 * WARMUP + 600 ))
# plain timeout(1) passes our SIGTERM on to the node; --foreground would not
TIMEOUT=
[ $HAVE_TIMEOUT -eq 1 ] && TIMEOUT="timeout -k 10 $BUDGET"

mkdir -p "$TMP_PARENT" || die "cannot create $TMP_PARENT"
TMP=$(mktemp -d "$TMP_PARENT/cqrsd-bench-pg.XXXXXX") || die "mktemp failed"
PG_STATE=
NODE_PIDS=
ADMIN=
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
    for p in $NODE_PIDS; do kill -TERM "$p" 2>/dev/null; done
    for p in $NODE_PIDS; do wait "$p" 2>/dev/null; done
    pg_down
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

STATUS=0
load() { cut -d ' ' -f 1 /proc/loadavg 2>/dev/null || echo '?'; }

# --- 1. the cluster ----------------------------------------------------------
pg_up
pgv=$(psql -X -A -t -d "$ADMIN" -c 'SHOW server_version' 2>/dev/null) || die "cannot reach PostgreSQL"
fs=$(df -PT "$TMP" 2>/dev/null | awk 'NR == 2 { print $2 }')
say "   server $pgv; $(nproc) CPUs; temp files on ${fs:-?}; load average $(load)"
say "   $ROUNDS rounds of ${SECS}s per configuration (+${WARMUP}s warm-up in the first)"
say

# --- 2. set-up -----------------------------------------------------------------
# cqrsd: $1 nodes on a database of their own; sets URLS_$1.
start_group() {
    n=$1
    uri=$(pg_mkdb "bench_cqrsd_$n") || return 1
    urls='' pids=''
    i=0
    while [ "$i" -lt "$n" ]; do
        port=$(free_port)
        $TIMEOUT "$CQRSD" serve --store "$uri" --listen "127.0.0.1:$port" \
            >"$TMP/node$n.$i.log" 2>&1 &
        pids="$pids $!"
        urls="$urls http://127.0.0.1:$port"
        i=$((i + 1))
    done
    NODE_PIDS="$NODE_PIDS$pids"
    for url in $urls; do
        # shellcheck disable=SC2086  # one argument per pid
        if ! wait_healthz "$url" 30 $pids; then
            warn "cqrsd at $url did not come up (a node exited, or no 200 from /healthz in 30s):"
            tail -n 5 "$TMP"/node"$n".*.log >&2
            return 1
        fi
    done
    eval "URLS_$n=\$urls"
    say "-- cqrsd, $n node(s) on one database:$urls"
}
# shellcheck disable=SC2034  # read through eval (run_config)
URLS_1='' URLS_3=''
start_group 1 || STATUS=1
start_group 3 || STATUS=1

DATA='{"order_id":"b-000001","customer_id":"c-00042","currency":"EUR","items":[{"sku":"SKU-MUG-RED-350ML","quantity":2,"unit_price_cents":1299},{"sku":"SKU-NOTEBOOK-A5-DOTTED","quantity":1,"unit_price_cents":899}],"total_cents":3497,"item_count":3}'
META='{"event_id":"0193a0c0-0000-7000-8000-000000000001","command_id":"0193a0c0-0000-7000-8000-000000000002","correlation_id":"0193a0c0-0000-7000-8000-000000000002","causation_id":"0193a0c0-0000-7000-8000-000000000002","time":"2026-11-23T14:28:20.737Z"}'

say "-- Message DB: message_store.write_message through pgbench, a new stream of" \
    "category 'order' per call (expected_version -1)"
MDB=
mdb_sql=
if command -v npm >/dev/null 2>&1; then
    mkdir -p "$TMP/npm"
    if (cd "$TMP/npm" && bounded 300 npm install --no-audit --no-fund --silent \
            @eventide/message-db >"$TMP/npm.log" 2>&1); then
        mdb_sql=$TMP/npm/node_modules/@eventide/message-db/database
    else
        warn "npm install @eventide/message-db failed:"; tail -n 5 "$TMP/npm.log" >&2
    fi
else
    warn "npm not found (apt-get install npm): Message DB is not measured"
fi
if [ -n "$mdb_sql" ] && MDB=$(pg_mkdb bench_message_db); then
    say "   @eventide/message-db $(cat "$mdb_sql/VERSION.txt"), installed from npm"
    psql -X -q -d "$MDB" -c "ALTER DATABASE bench_message_db SET search_path = message_store, public" \
        || MDB=
    # install.sh's order, without the role and the privileges (we are the owner)
    for f in schema/message-store.sql extensions/pgcrypto.sql tables/messages.sql \
             types/message.sql functions/message-store-version.sql functions/hash-64.sql \
             functions/acquire-lock.sql functions/category.sql functions/is-category.sql \
             functions/id.sql functions/cardinal-id.sql functions/stream-version.sql \
             functions/write-message.sql functions/get-stream-messages.sql \
             functions/get-category-messages.sql functions/get-last-stream-message.sql \
             indexes/messages-id.sql indexes/messages-stream.sql \
             indexes/messages-category.sql; do
        [ -n "$MDB" ] || break
        PGOPTIONS='-c client_min_messages=warning' psql -X -q -v ON_ERROR_STOP=1 \
            -d "$MDB" -f "$mdb_sql/$f" >/dev/null || { warn "Message DB: $f failed"; MDB=; }
    done
    cat >"$TMP/mdb.sql" <<EOF
\\set id random(1, 1000000000000000)
SELECT message_store.write_message(gen_random_uuid()::varchar, 'order-b' || :id, 'OrderPlaced', '$DATA'::jsonb, '$META'::jsonb, -1);
EOF
fi
[ -n "$MDB" ] || STATUS=1

say "-- raw: one INSERT per transaction into a table like cqrsd's events, through pgbench"
if RAW=$(pg_mkdb bench_raw_insert); then
    psql -X -q -v ON_ERROR_STOP=1 -d "$RAW" -c "CREATE TABLE events (
        position BIGSERIAL PRIMARY KEY, stream_id TEXT NOT NULL, version BIGINT NOT NULL,
        type TEXT NOT NULL, schema_version INTEGER NOT NULL, data TEXT NOT NULL,
        metadata TEXT NOT NULL, recorded_at BIGINT NOT NULL, UNIQUE (stream_id, version))" \
        >/dev/null || RAW=
    cat >"$TMP/raw.sql" <<EOF
\\set id random(1, 1000000000000000)
INSERT INTO events (stream_id, version, type, schema_version, data, metadata, recorded_at) VALUES ('order-b' || :id, 1, 'OrderPlaced', 2, '$DATA', '$META', 1795443300737);
EOF
fi
[ -n "$RAW" ] || STATUS=1
say

# --- 3. the rounds ------------------------------------------------------------
# wrk on $3 connections for $2 s against the URLs $4..; one wrk per node
# used. Prints "accepted/s non-202 p50_us" (p50 of the first node's wrk).
wrk_nodes() {
    name=$1 secs=$2 conns=$3; shift 3
    nn=$#
    [ "$conns" -lt "$nn" ] && nn=$conns
    i=0 pids=''
    for url in "$@"; do
        [ "$i" -lt "$nn" ] || break
        c=$((conns / nn))
        [ "$i" -lt $((conns % nn)) ] && c=$((c + 1))
        t=2
        [ "$c" -lt 2 ] || [ "$nn" -gt 1 ] && t=1
        bounded $((secs + 40)) wrk -t "$t" -c "$c" -d "${secs}s" --timeout 5s --latency \
            -s "$ROOT/bench/placeorder.lua" "$url" -- "${name}n${i}t$(date +%s)" \
            >"$TMP/$name.$i.out" 2>&1 &
        pids="$pids $!"
        i=$((i + 1))
    done
    for p in $pids; do wait "$p" || warn "wrk ($name) exited with status $?"; done
    sum=0 bad=0 p50=''
    j=0
    while [ "$j" -lt "$nn" ]; do
        a=$(field placeorder accepted_per_sec "$TMP/$name.$j.out")
        b=$(field placeorder non202 "$TMP/$name.$j.out")
        [ -n "$a" ] || { cat "$TMP/$name.$j.out" >&2; return 1; }
        sum=$(calc 'printf "%.1f", a + b' "$sum" "$a")
        bad=$((bad + ${b:-0}))
        [ -n "$p50" ] || p50=$(field placeorder p50_us "$TMP/$name.$j.out")
        [ "${b:-0}" = 0 ] || grep '!!!' "$TMP/$name.$j.out" >&2
        j=$((j + 1))
    done
    echo "$sum $bad ${p50:-0}"
}

# Wait (bounded) until the projections of the node at $1 have applied
# everything: the next run then does not pay for this one's catch-up.
settle() {
    head=$(curl -s --max-time 5 "$1/healthz" |
        sed -n 's/.*"head_position"[[:space:]]*:[[:space:]]*\([0-9]*\).*/\1/p')
    [ -n "$head" ] || return 0
    for q in sales_dashboard order_summary?order_id=none; do
        case $q in *\?*) sep='&' ;; *) sep='?' ;; esac
        curl -s -o /dev/null --max-time 40 \
            "$1/queries/$q${sep}min_position=$head&wait_ms=30000"
    done
}

# pgbench: uri script clients seconds out; prints "per_sec failed latency_ms".
run_pgbench() {
    j=2; [ "$3" -lt 2 ] && j=1
    bounded $(($4 + 60)) pgbench -n -c "$3" -j "$j" -T "$4" -f "$2" "$1" >"$5" 2>&1
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*without initial connection.*/\1/p' "$5")
    fails=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$5")
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$5")
    [ -n "$tps" ] || { warn "pgbench gave no figure:"; tail -n 5 "$5" >&2; return 1; }
    echo "$tps ${fails:-0} ${lat:-0}"
}

# One run of configuration $1 (kind:connections) for $2 s; round $3.
run_config() {
    kind=${1%:*} conns=${1#*:} secs=$2 round=$3
    tag="$kind.$conns.r$round"
    case $kind in
    cq1 | cq3)
        eval "urls=\$URLS_${kind#cq}"
        [ -n "$urls" ] || return 1
        # shellcheck disable=SC2086  # the URLs are meant to split
        r=$(wrk_nodes "$(echo "$tag" | tr -c 'A-Za-z0-9\n' _)" "$secs" "$conns" $urls) ||
            return 1
        # shellcheck disable=SC2086
        settle $urls
        ;;
    mdb) [ -n "$MDB" ] || return 1
        r=$(run_pgbench "$MDB" "$TMP/mdb.sql" "$conns" "$secs" "$TMP/$tag.out") || return 1 ;;
    raw) [ -n "$RAW" ] || return 1
        r=$(run_pgbench "$RAW" "$TMP/raw.sql" "$conns" "$secs" "$TMP/$tag.out") || return 1 ;;
    esac
    [ "$round" = 0 ] && return 0
    # shellcheck disable=SC2086  # three figures, meant to split
    set -- $r
    echo "BENCH kind=pg_run config=$kind:$conns round=$round per_sec=$1 failed=$2" \
        "p50_or_avg=$3 load=$(load)" >>"$TMP/results"
    printf '   round %d  %-30s %10s /s   %s %s\n' "$round" "$(label "$kind" "$conns")" \
        "$(num "$1")" "$([ "$2" = 0 ] || echo "failed/non-2xx: $2,")" "load $(load)"
}

label() {
    case $1 in
    cq1) echo "cqrsd 1 node, $2 conn" ;;
    cq3) echo "cqrsd 3 nodes, $2 conn" ;;
    mdb) echo "Message DB, $2 client" ;;
    raw) echo "raw INSERT, $2 client" ;;
    esac
}

: >"$TMP/results"
if [ "$WARMUP" -gt 0 ]; then
    say "-- warm-up: every configuration for ${WARMUP}s"
    for cf in $CONFIGS; do run_config "$cf" "$WARMUP" 0 || true; done
fi
say "-- measured: $ROUNDS rounds"
rn=1
while [ "$rn" -le "$ROUNDS" ]; do
    # start one configuration further along each round
    # shellcheck disable=SC2086  # the list is meant to split
    list=$(echo $CONFIGS | awk -v s=$((rn - 1)) '{ for (i = 0; i < NF; i++) printf "%s ", $((i + s) % NF + 1) }')
    for cf in $list; do
        run_config "$cf" "$SECS" "$rn" || { warn "$(label "${cf%:*}" "${cf#*:}"): no figure"; STATUS=1; }
    done
    rn=$((rn + 1))
done
if [ -n "$MDB" ]; then
    say "   Message DB messages written: $(psql -X -A -t -d "$MDB" -c 'SELECT count(*) FROM message_store.messages')"
fi
say

# --- 4. summary -------------------------------------------------------------------
# median (and min-max) of the rounds' per_sec of configuration $1
stat() {
    awk -v cf="config=$1" -v what="$2" '
        $2 == "kind=pg_run" && $3 == cf {
            for (i = 4; i <= NF; i++) if (index($i, "per_sec=") == 1) v[n++] = substr($i, 9) + 0
        }
        END {
            if (n == 0) { print ""; exit }
            for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
            m = (n % 2) ? v[int(n / 2)] : (v[n / 2 - 1] + v[n / 2]) / 2
            if (what == "median") printf "%.1f", m
            else printf "%.0f-%.0f", v[0], v[n - 1]
        }' "$TMP/results"
}
say "=========================== PostgreSQL summary ==========================="
say "  median of $ROUNDS rounds of ${SECS}s (range)      1 conn/client             64 conns/clients"
for k in cq1 cq3 mdb raw; do
    case $k in
    cq1) name="cqrsd PlaceOrder, 1 node (cmd/s)" ;;
    cq3) name="cqrsd PlaceOrder, 3 nodes (cmd/s)" ;;
    mdb) name="Message DB write_message (msg/s)" ;;
    raw) name="raw INSERT, 1 per transaction (rows/s)" ;;
    esac
    printf '  %-40s %7s %-14s %7s %-14s\n' "$name" \
        "$(num "$(stat "$k:1" median)")" "($(stat "$k:1" range))" \
        "$(num "$(stat "$k:64" median)")" "($(stat "$k:64" range))"
    echo "BENCH kind=pg_median config=$k c1=$(stat "$k:1" median) c64=$(stat "$k:64" median)" \
        >>"$TMP/results"
done
say
mdb64=$(stat mdb:64 median)
raw64=$(stat raw:64 median)
for k in cq1 cq3; do
    cq=$(stat "$k:64" median)
    n=${k#cq}
    ratio=$(calc 'if (b > 0) printf "%.1fx", a / b; else print "n/a"' "$cq" "$mdb64")
    met=$(calc "if (b <= 0) print \"n/a\"; else if (a / b >= $TARGET_RATIO) print \"met\"; else print \"NOT MET\"" "$cq" "$mdb64")
    printf '  %-46s %8s   target >= %sx: %s\n' "cqrsd $n node(s) / Message DB, 64 conns" \
        "$ratio" "$TARGET_RATIO" "$met"
    printf '  %-46s %8s\n' "cqrsd $n node(s) / raw INSERT, 64 conns" \
        "$(calc 'if (b > 0) printf "%.1fx", a / b; else print "n/a"' "$cq" "$raw64")"
    echo "BENCH kind=pg_ratio nodes=$n vs_message_db=$(calc 'if (b > 0) printf "%.2f", a / b; else print "n/a"' "$cq" "$mdb64") vs_raw=$(calc 'if (b > 0) printf "%.2f", a / b; else print "n/a"' "$cq" "$raw64") met=$met" >>"$TMP/results"
    [ "$STRICT" = 1 ] && [ "$met" = "NOT MET" ] && STATUS=1
done
say "=========================================================================="
grep '^BENCH' "$TMP/results"

# the nodes must stop cleanly
for p in $NODE_PIDS; do kill -TERM "$p" 2>/dev/null; done
for p in $NODE_PIDS; do
    wait "$p"; rc=$?
    [ $rc -eq 0 ] || { warn "a cqrsd node exited with status $rc"; STATUS=1; }
done
NODE_PIDS=
exit $STATUS

#!/bin/sh
# bench/pg.sh — PlaceOrder on PostgreSQL against Message DB and a raw
# one-INSERT-per-transaction loop, on the same cluster in the same run.
# The `pg` step of bench/run.sh (`make bench`); runs alone too:
#
#   sh bench/pg.sh
#
#   1. a throwaway cluster (scripts/pg.sh: loopback, fsync and
#      synchronous_commit on), or BENCH_PG_URI (a superuser URI: the script
#      creates and drops its own databases there);
#   2. cqrsd: 1 node, then 3 nodes on one database (`serve --store URI`);
#      wrk placeorder.lua (a new order per request) at 1 and 64 keep-alive
#      connections; with 3 nodes the connections are spread over the nodes
#      (one wrk per node, their accepted commands/s added up; 1 connection
#      goes to the first node);
#   3. Message DB: `npm install @eventide/message-db` in a temp dir, its SQL
#      (schema, table, functions, indexes) on a database of its own, and
#      pgbench calling message_store.write_message (a new stream of the
#      category `order` per call, expected_version -1, an OrderPlaced-sized
#      payload) with 1 and 64 clients;
#   4. raw: pgbench, one INSERT of the same row into a table like cqrsd's
#      events table per transaction, 1 and 64 clients;
#   5. prints the figures and the ratio of cqrsd at 64 connections to Message
#      DB at 64 clients (the target: >= 10x).
#
# Environment (defaults): BUILD_DIR=build, BENCH_CQRSD=$BUILD_DIR/cqrsd,
# BENCH_PG_SECONDS=10 (each run), BENCH_WARMUP=2, BENCH_PG_URI (none: a
# throwaway cluster), BENCH_TMPDIR=$TMPDIR|/tmp, BENCH_PG_CONNECTIONS="1 64",
# BENCH_PG_NODES="1 3", BENCH_STRICT=0 (1: exit 1 when the target is missed).
# Exit status: 0 when every figure was measured, 1 when one could not be.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-build}
case $BUILD_DIR in /*) ;; *) BUILD_DIR=$ROOT/$BUILD_DIR ;; esac
CQRSD=${BENCH_CQRSD:-$BUILD_DIR/cqrsd}
SECS=${BENCH_PG_SECONDS:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNS_LIST=${BENCH_PG_CONNECTIONS:-1 64}
NODES_LIST=${BENCH_PG_NODES:-1 3}
TMP_PARENT=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}
STRICT=${BENCH_STRICT:-0}
TARGET_RATIO=10

say() { printf '%s\n' "$*"; }
warn() { printf 'bench pg: %s\n' "$*" >&2; }
die() { warn "$*"; exit 1; }

for v in "$SECS" "$WARMUP" $CONNS_LIST $NODES_LIST; do
    case $v in '' | *[!0-9]*) die "BENCH_PG_SECONDS, BENCH_WARMUP, BENCH_PG_CONNECTIONS and BENCH_PG_NODES take whole numbers, got '$v'" ;; esac
done
[ "$SECS" -ge 1 ] || die "BENCH_PG_SECONDS must be at least 1"
[ -x "$CQRSD" ] || die "$CQRSD not found: run 'make build' (or set BUILD_DIR)"
for t in wrk pgbench psql curl; do
    command -v $t >/dev/null 2>&1 || die "$t not found (sh scripts/deps.sh wrk postgresql)"
done
if command -v timeout >/dev/null 2>&1; then
    bounded() { secs=$1; shift; timeout --foreground -k 5 "$secs" "$@"; }
    TIMEOUT="timeout -k 10 $((SECS * 4 + WARMUP * 4 + 240))"
else
    bounded() { shift; "$@"; }
    TIMEOUT=
fi

mkdir -p "$TMP_PARENT" || die "cannot create $TMP_PARENT"
TMP=$(mktemp -d "$TMP_PARENT/cqrsd-bench-pg.XXXXXX") || die "mktemp failed"
PG_STATE=
NODE_PIDS=
ADMIN=
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
    for p in $NODE_PIDS; do kill -TERM "$p" 2>/dev/null; done
    for p in $NODE_PIDS; do wait "$p" 2>/dev/null; done
    if [ -n "$PG_STATE" ]; then
        sh "$ROOT/scripts/pg.sh" stop "$PG_STATE" >/dev/null 2>&1
    elif [ -n "$ADMIN" ]; then
        # shellcheck disable=SC2013  # database names: one word each
        for d in $(cat "$TMP/dbs" 2>/dev/null); do
            psql -X -q -d "$ADMIN" -c "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1
        done
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

STATUS=0
# Field $2 of the "BENCH kind=$1 ..." line in file $3, or empty.
field() {
    awk -v kind="kind=$1" -v key="$2" '
        $1 == "BENCH" && $2 == kind {
            for (i = 3; i <= NF; i++) {
                n = index($i, "=")
                if (substr($i, 1, n - 1) == key) v = substr($i, n + 1)
            }
        }
        END { print v }' "$3" 2>/dev/null
}
calc() {
    expr=$1; shift
    for a in "$@"; do [ -n "$a" ] || { echo n/a; return; }; done
    awk -v a="${1:-0}" -v b="${2:-0}" "BEGIN { $expr }"
}
num() { calc 'printf "%.0f", a' "${1:-}"; }

free_port() {
    python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- 1. the cluster ----------------------------------------------------------
if [ -n "${BENCH_PG_URI:-}" ]; then
    ADMIN=$BENCH_PG_URI
    say "-- PostgreSQL: BENCH_PG_URI"
else
    PG_STATE=$TMP/pg
    ADMIN=$(sh "$ROOT/scripts/pg.sh" start "$PG_STATE") || die "scripts/pg.sh start failed"
    say "-- PostgreSQL: a throwaway cluster (scripts/pg.sh: fsync=on, synchronous_commit=on," \
        "data in $(cat "$PG_STATE/pgdata"))"
fi
pgv=$(psql -X -A -t -d "$ADMIN" -c 'SHOW server_version' 2>/dev/null) || die "cannot reach PostgreSQL"
say "   server $pgv; $(nproc) CPUs; runs of ${SECS}s (+${WARMUP}s warm-up)"
fs=$(df -PT "$TMP" 2>/dev/null | awk 'NR == 2 { print $2 }')
say "   temp files on ${fs:-?}"
say

# A new database; prints its URI (the name is kept for the cleanup).
mkdb() {
    psql -X -q -d "$ADMIN" -c "CREATE DATABASE $1" >&2 || return 1
    echo "$1" >>"$TMP/dbs"
    echo "${ADMIN%/*}/$1"
}

# --- 2. cqrsd ------------------------------------------------------------------
# wrk on $1 connections against the node URLs $2..; one wrk per node used.
# Output: $TMP/$name.N.out; prints the summed accepted/s.
wrk_nodes() {
    name=$1 secs=$2 conns=$3; shift 3
    nn=$#
    [ "$conns" -lt "$nn" ] && nn=$conns
    i=0 pids=
    for url in "$@"; do
        [ "$i" -lt "$nn" ] || break
        c=$((conns / nn))
        [ "$i" -lt $((conns % nn)) ] && c=$((c + 1))
        t=2; [ "$c" -lt 2 ] && t=1
        [ "$nn" -gt 1 ] && t=1
        bounded $((secs + 40)) wrk -t "$t" -c "$c" -d "${secs}s" --timeout 5s --latency \
            -s "$ROOT/bench/placeorder.lua" "$url" -- "$(echo "$name" | tr -c 'A-Za-z0-9\n' _)$i$(date +%s)" \
            >"$TMP/$name.$i.out" 2>&1 &
        pids="$pids $!"
        i=$((i + 1))
    done
    for p in $pids; do wait "$p" || warn "wrk ($name) exited with status $?"; done
    sum=0 bad=0 p50=
    j=0
    while [ "$j" -lt "$nn" ]; do
        a=$(field placeorder accepted_per_sec "$TMP/$name.$j.out")
        b=$(field placeorder non202 "$TMP/$name.$j.out")
        l=$(field placeorder p50_us "$TMP/$name.$j.out")
        [ -n "$a" ] || { echo; return 1; }
        sum=$(calc 'printf "%.1f", a + b' "$sum" "$a")
        bad=$((bad + ${b:-0}))
        [ -z "$p50" ] && p50=$l
        j=$((j + 1))
    done
    echo "$sum $bad ${p50:-0}"
}

run_cqrsd() {
    nodes=$1
    uri=$(mkdb "bench_cqrsd_$nodes") || { STATUS=1; return; }
    urls=''
    NODE_PIDS=''
    i=0
    while [ "$i" -lt "$nodes" ]; do
        port=$(free_port)
        # timeout(1) bounds it (so it cannot outlive a killed script for
        # long) and passes our SIGTERM on; the exit status is the node's
        $TIMEOUT "$CQRSD" serve --store "$uri" \
            --listen "127.0.0.1:$port" >"$TMP/node$nodes.$i.log" 2>&1 &
        NODE_PIDS="$NODE_PIDS $!"
        urls="$urls http://127.0.0.1:$port"
        i=$((i + 1))
    done
    for url in $urls; do
        t0=$(date +%s)
        until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url/healthz")" = 200 ]; do
            gone=0
            for p in $NODE_PIDS; do kill -0 "$p" 2>/dev/null || gone=1; done
            if [ $gone -eq 1 ] || [ $(($(date +%s) - t0)) -ge 30 ]; then
                warn "cqrsd at $url did not come up (a node exited, or no 200 from /healthz in 30s):"
                tail -n 5 "$TMP"/node"$nodes".*.log >&2
                STATUS=1; stop_nodes; return
            fi
            sleep 0.1
        done
    done
    say "-- cqrsd, $nodes node(s) on one database:$urls"
    for c in $CONNS_LIST; do
        # shellcheck disable=SC2086  # the URLs are meant to split
        [ "$WARMUP" -gt 0 ] && (wrk_nodes "warm$nodes.$c" "$WARMUP" "$c" $urls >/dev/null)
        # shellcheck disable=SC2086
        r=$(wrk_nodes "cq$nodes.$c" "$SECS" "$c" $urls)
        if [ -z "$r" ]; then
            warn "wrk gave no figure for $nodes node(s), $c connection(s)"
            cat "$TMP/cq$nodes.$c.0.out" >&2
            STATUS=1
            continue
        fi
        # shellcheck disable=SC2086  # three figures, meant to split
        set -- $r
        say "   $c connection(s): $(num "$1") PlaceOrder/s accepted (202), non-202: $2," \
            "p50 $(calc 'printf "%.2f ms", a / 1000' "$3")"
        [ "$2" = 0 ] || { warn "non-202 answers:"; grep '!!!' "$TMP/cq$nodes.$c".*.out >&2; }
        echo "BENCH kind=pg_cqrsd nodes=$nodes conns=$c accepted_per_sec=$1 non202=$2 p50_us=$3" \
            >>"$TMP/results"
    done
    stop_nodes
    say
}

stop_nodes() {
    for p in $NODE_PIDS; do kill -TERM "$p" 2>/dev/null; done
    for p in $NODE_PIDS; do
        wait "$p"; rc=$?
        [ $rc -eq 0 ] || { warn "a node exited with status $rc"; STATUS=1; }
    done
    NODE_PIDS=
}

: >"$TMP/results"
for n in $NODES_LIST; do
    run_cqrsd "$n"
done

# --- pgbench ---------------------------------------------------------------
DATA='{"order_id":"b-000001","customer_id":"c-00042","currency":"EUR","items":[{"sku":"SKU-MUG-RED-350ML","quantity":2,"unit_price_cents":1299},{"sku":"SKU-NOTEBOOK-A5-DOTTED","quantity":1,"unit_price_cents":899}],"total_cents":3497,"item_count":3}'
META='{"event_id":"0193a0c0-0000-7000-8000-000000000001","command_id":"0193a0c0-0000-7000-8000-000000000002","correlation_id":"0193a0c0-0000-7000-8000-000000000002","causation_id":"0193a0c0-0000-7000-8000-000000000002","time":"2026-11-23T14:28:20.737Z"}'

# pgbench: name uri script clients; prints tps (excluding connection time).
run_pgbench() {
    name=$1 uri=$2 script=$3 c=$4
    j=2; [ "$c" -lt 2 ] && j=1
    if [ "$WARMUP" -gt 0 ]; then
        bounded $((WARMUP + 60)) pgbench -n -c "$c" -j "$j" -T "$WARMUP" -f "$script" "$uri" \
            >/dev/null 2>&1
    fi
    bounded $((SECS + 60)) pgbench -n -c "$c" -j "$j" -T "$SECS" -f "$script" "$uri" \
        >"$TMP/$name.out" 2>&1
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*without initial connection.*/\1/p' "$TMP/$name.out")
    fails=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$TMP/$name.out")
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$TMP/$name.out")
    if [ -z "$tps" ]; then
        warn "pgbench ($name) gave no figure:"
        tail -n 5 "$TMP/$name.out" >&2
        return 1
    fi
    echo "$tps ${fails:-0} ${lat:-0}"
}

bench_sql() {
    label=$1 kind=$2 uri=$3 script=$4
    for c in $CONNS_LIST; do
        r=$(run_pgbench "$kind.$c" "$uri" "$script" "$c") || { STATUS=1; continue; }
        # shellcheck disable=SC2086  # three figures, meant to split
        set -- $r
        say "   $c client(s): $(num "$1") $label/s, failed: $2, latency average $3 ms"
        echo "BENCH kind=$kind conns=$c per_sec=$1 failed=$2" >>"$TMP/results"
    done
}

# --- 3. Message DB ------------------------------------------------------------
say "-- Message DB: message_store.write_message, pgbench, a new stream of category" \
    "'order' per call (expected_version -1)"
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
if [ -n "$mdb_sql" ] && mdb=$(mkdb bench_message_db); then
    say "   @eventide/message-db $(cat "$mdb_sql/VERSION.txt"), installed from npm"
    ok=1
    psql -X -q -d "$mdb" -c "ALTER DATABASE bench_message_db SET search_path = message_store, public" \
        || ok=0
    for f in schema/message-store.sql extensions/pgcrypto.sql tables/messages.sql \
             types/message.sql functions/message-store-version.sql functions/hash-64.sql \
             functions/acquire-lock.sql functions/category.sql functions/is-category.sql \
             functions/id.sql functions/cardinal-id.sql functions/stream-version.sql \
             functions/write-message.sql functions/get-stream-messages.sql \
             functions/get-category-messages.sql functions/get-last-stream-message.sql \
             indexes/messages-id.sql indexes/messages-stream.sql \
             indexes/messages-category.sql; do
        [ $ok -eq 1 ] || break
        PGOPTIONS='-c client_min_messages=warning' psql -X -q -v ON_ERROR_STOP=1 \
            -d "$mdb" -f "$mdb_sql/$f" >/dev/null || { warn "Message DB: $f failed"; ok=0; }
    done
    cat >"$TMP/mdb.sql" <<EOF
\\set id random(1, 1000000000000000)
SELECT message_store.write_message(gen_random_uuid()::varchar, 'order-b' || :id, 'OrderPlaced', '$DATA'::jsonb, '$META'::jsonb, -1);
EOF
    if [ $ok -eq 1 ]; then
        bench_sql "write_message" mdb "$mdb" "$TMP/mdb.sql"
        n=$(psql -X -A -t -d "$mdb" -c "SELECT count(*) FROM message_store.messages")
        say "   messages written: $n"
    else
        STATUS=1
    fi
else
    STATUS=1
fi
say

# --- 4. raw inserts -------------------------------------------------------------
say "-- raw: one INSERT per transaction into a table like cqrsd's events, pgbench"
if raw=$(mkdb bench_raw_insert); then
    psql -X -q -v ON_ERROR_STOP=1 -d "$raw" -c "CREATE TABLE events (
        position BIGSERIAL PRIMARY KEY, stream_id TEXT NOT NULL, version BIGINT NOT NULL,
        type TEXT NOT NULL, schema_version INTEGER NOT NULL, data TEXT NOT NULL,
        metadata TEXT NOT NULL, recorded_at BIGINT NOT NULL, UNIQUE (stream_id, version))" \
        >/dev/null || STATUS=1
    cat >"$TMP/raw.sql" <<EOF
\\set id random(1, 1000000000000000)
INSERT INTO events (stream_id, version, type, schema_version, data, metadata, recorded_at) VALUES ('order-b' || :id, 1, 'OrderPlaced', 2, '$DATA', '$META', 1795443300737);
EOF
    bench_sql "INSERT" raw "$raw" "$TMP/raw.sql"
else
    STATUS=1
fi
say

# --- 5. summary -------------------------------------------------------------------
res=$TMP/results
get() { # kind key=value... -> field
    awk -v kind="kind=$1" -v a="$2" -v b="$3" -v key="$4" '
        $2 == kind && index($0, " " a " ") && index($0, " " b " ") {
            for (i = 3; i <= NF; i++) { n = index($i, "="); if (substr($i, 1, n - 1) == key) v = substr($i, n + 1) }
        }
        END { print v }' "$res"
}
say "=========================== PostgreSQL summary ==========================="
printf '  %-46s %12s %12s\n' "" "1 conn" "64 conns"
for n in $NODES_LIST; do
    printf '  %-46s %12s %12s\n' "cqrsd PlaceOrder, $n node(s) (cmd/s)" \
        "$(num "$(get pg_cqrsd "nodes=$n" "conns=1" accepted_per_sec)")" \
        "$(num "$(get pg_cqrsd "nodes=$n" "conns=64" accepted_per_sec)")"
done
printf '  %-46s %12s %12s\n' "Message DB write_message (msg/s)" \
    "$(num "$(get mdb "conns=1" "conns=1" per_sec)")" "$(num "$(get mdb "conns=64" "conns=64" per_sec)")"
printf '  %-46s %12s %12s\n' "raw INSERT, one per transaction (rows/s)" \
    "$(num "$(get raw "conns=1" "conns=1" per_sec)")" "$(num "$(get raw "conns=64" "conns=64" per_sec)")"
say
mdb64=$(get mdb "conns=64" "conns=64" per_sec)
raw64=$(get raw "conns=64" "conns=64" per_sec)
for n in $NODES_LIST; do
    cq=$(get pg_cqrsd "nodes=$n" "conns=64" accepted_per_sec)
    ratio=$(calc 'if (b > 0) printf "%.1fx", a / b; else print "n/a"' "$cq" "$mdb64")
    met=$(calc "if (b <= 0) print \"n/a\"; else if (a / b >= $TARGET_RATIO) print \"met\"; else print \"NOT MET\"" "$cq" "$mdb64")
    printf '  %-46s %12s   target >= %sx: %s\n' "cqrsd $n node(s) / Message DB, 64 conns" \
        "$ratio" "$TARGET_RATIO" "$met"
    printf '  %-46s %12s\n' "cqrsd $n node(s) / raw INSERT, 64 conns" \
        "$(calc 'if (b > 0) printf "%.1fx", a / b; else print "n/a"' "$cq" "$raw64")"
    echo "BENCH kind=pg_ratio nodes=$n vs_message_db=$(calc 'if (b > 0) printf "%.2f", a / b; else print "n/a"' "$cq" "$mdb64") met=$met" >>"$res"
    [ "$STRICT" = 1 ] && [ "$met" = "NOT MET" ] && STATUS=1
done
say "=========================================================================="
grep '^BENCH' "$res"
exit $STATUS

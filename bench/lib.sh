# shellcheck shell=sh
# bench/lib.sh — helpers shared by bench/run.sh, bench/pg.sh and bench/bus.sh.
# POSIX sh; sourced, not run:
#
#   BENCH_WHO="bench pg"          # the prefix of warnings (default "bench")
#   . "$ROOT/bench/lib.sh"
#
# Reads (when the helper needs them): ROOT, BUILD_DIR, TMP (tool),
# HAVE_TIMEOUT is set here. Defines:
#   say MSG / warn MSG / die MSG  stdout; stderr with the prefix; warn + exit 1
#   bounded SECS CMD...           CMD under timeout(1) --foreground (Ctrl-C
#                                 still works), or plain when there is none
#   field KIND KEY FILE           KEY of the last "BENCH kind=KIND ..." line
#   calc 'AWK' [A [B [C]]]        awk arithmetic on a, b, c; "n/a" when one
#                                 given is empty
#   num X / ms US / us US / sec S formatted figures (n/a when empty)
#   loadavg                       the three load averages
#   free_port                     a free loopback TCP port
#   wait_healthz URL SECS [PID..] until GET URL/healthz answers 200: 0; 1
#                                 after SECS or when one of the PIDs is gone
#   tool NAME SRC LIBS            path of bench tool NAME: $BUILD_DIR/bench/NAME
#                                 or compiled into $TMP from bench/SRC
#                                 (LIBS: sqlite3 | pthread | none)
#   pg_up / pg_mkdb NAME / pg_down
#                                 PostgreSQL for pg.sh and pg_catchup.sh: a
#                                 throwaway cluster in $TMP/pg (scripts/pg.sh)
#                                 or BENCH_PG_URI; sets ADMIN (and PG_STATE);
#                                 a new database (its URI); stop the cluster
#                                 or drop the databases made

say() { printf '%s\n' "$*"; }
warn() { printf '%s: %s\n' "${BENCH_WHO:-bench}" "$*" >&2; }
die() { warn "$*"; exit 1; }

# Bound every run even if it hangs; --foreground keeps Ctrl-C working.
# shellcheck disable=SC2034  # HAVE_TIMEOUT: read by the scripts that source this
if command -v timeout >/dev/null 2>&1; then
    bounded() { secs=$1; shift; timeout --foreground -k 5 "$secs" "$@"; }
    HAVE_TIMEOUT=1
else
    bounded() { shift; "$@"; }
    HAVE_TIMEOUT=0
fi

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
# awk arithmetic on possibly-empty figures: prints "n/a" when any is empty.
calc() {
    expr=$1; shift
    for a in "$@"; do [ -n "$a" ] || { echo n/a; return; }; done
    awk -v a="${1:-0}" -v b="${2:-0}" -v c="${3:-0}" "BEGIN { $expr }"
}
num() { calc 'printf "%.0f", a' "${1:-}"; }
ms() { calc 'printf "%.2f ms", a / 1000' "${1:-}"; }
us() { calc 'printf "%.0f us", a' "${1:-}"; }
sec() { calc 'printf "%.1f s", a' "${1:-}"; }
loadavg() { cut -d ' ' -f 1-3 /proc/loadavg 2>/dev/null || echo '?'; }

free_port() {
    p=$(python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
        2>/dev/null) || p=
    [ -n "$p" ] || p=$(awk 'BEGIN { srand(); print 20000 + int(rand() * 30000) }')
    echo "$p"
}

wait_healthz() {
    wh_url=$1 wh_secs=$2; shift 2
    wh_t0=$(date +%s)
    until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$wh_url/healthz" 2>/dev/null)" = 200 ]; do
        for wh_p in "$@"; do kill -0 "$wh_p" 2>/dev/null || return 1; done
        [ $(($(date +%s) - wh_t0)) -ge "$wh_secs" ] && return 1
        sleep 0.1
    done
    return 0
}

# For the A/B scripts: BUILD's cqrsd (its own libcqrs) serving DIR/data on
# a free port, bounded to 300 s, once /healthz answers (10 s at most); sets
# ab_port and ab_pid. 1 (the server killed, said why) if it did not start.
ab_server() {
    ab_port=$(free_port)
    timeout -k 5 300 "$1/cqrsd" serve --data "$2/data" --listen "127.0.0.1:$ab_port" \
        >"$2/log" 2>&1 &
    ab_pid=$!
    wait_healthz "http://127.0.0.1:$ab_port" 10 $ab_pid && return 0
    echo "$1: server did not start" >&2
    kill $ab_pid 2>/dev/null
    return 1
}

# A bench tool: $BUILD_DIR/bench/NAME, or (not built: CQ_BENCH=OFF, or the
# library does not build) compiled here from bench/SRC with the given
# libraries (sqlite3 | pthread | none). Prints the path, or nothing.
tool() {
    name=$1 src=$2 libs=$3
    if [ -x "$BUILD_DIR/bench/$name" ]; then
        echo "$BUILD_DIR/bench/$name"; return
    fi
    case $libs in
        sqlite3) flags=$(pkg-config --cflags --libs sqlite3 2>/dev/null || echo -lsqlite3) ;;
        pthread) flags=-pthread ;;
        *) flags= ;;
    esac
    warn "compiling bench/$src (no $BUILD_DIR/bench/$name)"
    # shellcheck disable=SC2086  # the flags are meant to split
    ${CC:-cc} -O2 -std=c17 -D_GNU_SOURCE -o "$TMP/$name" "$ROOT/bench/$src" \
        $flags >&2 && echo "$TMP/$name"
}

# PostgreSQL for a bench script: BENCH_PG_URI (a superuser URI: the script
# makes and drops its own databases there, listed in $TMP/dbs), or a
# throwaway cluster in $TMP/pg (scripts/pg.sh: loopback, fsync and
# synchronous_commit on). pg_up sets ADMIN, and PG_STATE for the cluster
# (empty otherwise), and says which; it dies when neither works.
pg_up() {
    PG_STATE=
    if [ -n "${BENCH_PG_URI:-}" ]; then
        ADMIN=$BENCH_PG_URI
        say "-- PostgreSQL: BENCH_PG_URI"
    else
        PG_STATE=$TMP/pg
        ADMIN=$(sh "$ROOT/scripts/pg.sh" start "$PG_STATE") || die "scripts/pg.sh start failed"
        say "-- PostgreSQL: a throwaway cluster (scripts/pg.sh: fsync=on, synchronous_commit=on," \
            "data in $(cat "$PG_STATE/pgdata"))"
    fi
}
# A new database NAME; prints its URI (the name is kept for pg_down).
pg_mkdb() {
    psql -X -q -d "$ADMIN" -c "CREATE DATABASE $1" >&2 || return 1
    echo "$1" >>"$TMP/dbs"
    echo "${ADMIN%/*}/$1"
}
# Stop the throwaway cluster, or drop the databases pg_mkdb made (for the
# EXIT trap: quiet, never fails).
pg_down() {
    if [ -n "${PG_STATE:-}" ]; then
        sh "$ROOT/scripts/pg.sh" stop "$PG_STATE" >/dev/null 2>&1
    elif [ -n "${ADMIN:-}" ]; then
        # shellcheck disable=SC2013  # database names: one word each
        for d in $(cat "$TMP/dbs" 2>/dev/null); do
            psql -X -q -d "$ADMIN" -c "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1
        done
    fi
    return 0
}

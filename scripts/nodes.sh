#!/bin/sh
# N cqrsd nodes on one PostgreSQL database, on 127.0.0.1 ports 8081.. .
#
#   sh scripts/nodes.sh [-n N] [-p FIRST_PORT] [URI] [-- SERVE OPTIONS...]
#
# URI: the database the nodes share (postgresql://user:pw@host:port/db).
# Without one, a throwaway cluster is started with scripts/pg.sh (loopback
# only, its files under /tmp) and a database "cqrsd" made on it; it is
# removed again when the nodes stop. Prints each node's URL, then waits:
# Ctrl-C (or SIGTERM) stops every node with SIGTERM (each finishes what it
# has accepted) and the throwaway cluster. Anything after `--` goes to every
# `cqrsd serve` (for example --pg-connections 4 or --projections DIR).
#
# Environment: CQRSD (default build/cqrsd), NODES_LOG_DIR (default a temp
# dir; one log per node, kept when the nodes stop).
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CQRSD=${CQRSD:-$ROOT/build/cqrsd}
n=3
first=8081
uri=
while [ $# -gt 0 ]; do
    case $1 in
    -n) n=${2:?-n needs a number}; shift 2 ;;
    -p) first=${2:?-p needs a port}; shift 2 ;;
    --) shift; break ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "nodes.sh: unknown option $1" >&2; exit 2 ;;
    *) uri=$1; shift ;;
    esac
done
case $n in '' | *[!0-9]*) echo "nodes.sh: -n must be a number" >&2; exit 2 ;; esac
case $first in '' | *[!0-9]*) echo "nodes.sh: -p must be a port" >&2; exit 2 ;; esac
[ "$n" -ge 1 ] || { echo "nodes.sh: -n must be at least 1" >&2; exit 2; }
[ -x "$CQRSD" ] || { echo "nodes.sh: $CQRSD not found: run 'make build' (or set CQRSD)" >&2; exit 1; }
command -v curl >/dev/null 2>&1 || { echo "nodes.sh: curl not found" >&2; exit 1; }

# Every port free, so that no other server answers in a node's place.
i=0
while [ "$i" -lt "$n" ]; do
    port=$((first + i))
    if ! python3 -c 'import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$port" 2>/dev/null; then
        echo "nodes.sh: port $port is in use (choose others with -p)" >&2
        exit 1
    fi
    i=$((i + 1))
done

logs=${NODES_LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/cqrsd-nodes.XXXXXX")}
mkdir -p "$logs"
pg_state=
pids=

stop_all() {
    trap - INT TERM EXIT
    for pid in $pids; do kill -TERM "$pid" 2>/dev/null; done
    for pid in $pids; do wait "$pid" 2>/dev/null; done
    pids=
    if [ -n "$pg_state" ]; then
        sh "$ROOT/scripts/pg.sh" stop "$pg_state" >/dev/null 2>&1
        rm -rf "$pg_state"
        echo "nodes.sh: stopped the nodes and the throwaway cluster (logs in $logs)"
    else
        echo "nodes.sh: stopped the nodes (logs in $logs)"
    fi
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "$uri" ]; then
    pg_state=$(mktemp -d "${TMPDIR:-/tmp}/cqrsd-nodes-pg.XXXXXX")
    echo "nodes.sh: starting a throwaway PostgreSQL cluster (scripts/pg.sh)"
    admin=$(sh "$ROOT/scripts/pg.sh" start "$pg_state") || exit 1
    psql -X -q -d "$admin" -c 'CREATE DATABASE cqrsd' || exit 1
    uri=${admin%/*}/cqrsd
fi
shown=$(printf '%s' "$uri" | sed 's|^\([a-z]*://[^:/@]*\):[^@]*@|\1:***@|')

i=0
while [ "$i" -lt "$n" ]; do
    port=$((first + i))
    "$CQRSD" serve --store "$uri" --listen "127.0.0.1:$port" "$@" \
        >"$logs/node$((i + 1)).log" 2>&1 &
    pids="$pids $!"
    i=$((i + 1))
done

# every node up (GET /healthz -> 200), or say which did not come up
i=0
for pid in $pids; do
    port=$((first + i))
    i=$((i + 1))
    t0=$(date +%s)
    until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 \
              "http://127.0.0.1:$port/healthz" 2>/dev/null)" = 200 ]; do
        if ! kill -0 "$pid" 2>/dev/null || [ $(($(date +%s) - t0)) -ge 30 ]; then
            echo "nodes.sh: node $i (port $port) did not come up; its log:" >&2
            tail -n 20 "$logs/node$i.log" >&2
            exit 1
        fi
        sleep 0.1
    done
done

for pid in $pids; do
    kill -0 "$pid" 2>/dev/null || { echo "nodes.sh: a node (pid $pid) exited at start; see $logs" >&2; exit 1; }
done
echo "nodes.sh: $n nodes on $shown"
i=0
while [ "$i" -lt "$n" ]; do
    echo "  http://127.0.0.1:$((first + i))   (log $logs/node$((i + 1)).log)"
    i=$((i + 1))
done
echo "nodes.sh: Ctrl-C stops them"
# Wait for Ctrl-C; a node that exits on its own is reported and ends the rest.
while :; do
    for pid in $pids; do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid"
            echo "nodes.sh: a node (pid $pid) exited with status $?; stopping the others" >&2
            pids=$(echo "$pids" | sed "s/ $pid\b//")
            exit 1
        fi
    done
    sleep 1
done

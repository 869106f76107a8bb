#!/bin/sh
# A throwaway PostgreSQL cluster for the tests and benchmarks: loopback
# only, a free port, its files in a temporary directory, run by an
# unprivileged user (initdb refuses root; CI runs as root).
#
#   pg.sh start STATE   initdb + start; writes STATE/uri (the superuser's
#                       URI, password included) and STATE/pgdata (where the
#                       cluster lives); prints the URI
#   pg.sh down STATE    stop the server, keep its files (fault tests)
#   pg.sh up STATE      start it again on the same port
#   pg.sh stop STATE    stop the server and remove its files
#
# STATE is any directory of ours (e.g. build/pg); the cluster itself lives
# under /tmp so that the unprivileged user can reach it whatever the
# permissions of the checkout's parents.
set -eu

cmd=${1:?usage: pg.sh start|down|up|stop STATE}
state=${2:?usage: pg.sh start|down|up|stop STATE}
bindir=$(pg_config --bindir 2>/dev/null || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
fi
[ -x "$bindir/initdb" ] || { echo "pg.sh: initdb not found (apt-get install postgresql)" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
    if id postgres >/dev/null 2>&1; then runas=postgres; else runas=nobody; fi
    as() { runuser -u "$runas" -- "$@"; }
else
    runas=$(id -un)
    as() { "$@"; }
fi

pgctl() { as "$bindir/pg_ctl" -D "$pgdata" -l "$pgdata/log" -w -t 60 "$@"; }

server_opts() {
    echo "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$pgdata" \
         "-c max_connections=400 -c shared_buffers=64MB -c fsync=on" \
         "-c synchronous_commit=on -c max_locks_per_transaction=256"
}

case "$cmd" in
start)
    mkdir -p "$state"
    [ -f "$state/pgdata" ] && sh "$0" stop "$state" || true
    pgdata=$(mktemp -d /tmp/cqrsd-pg.XXXXXX)
    chmod 700 "$pgdata"
    [ "$(id -u)" -eq 0 ] && chown "$runas" "$pgdata"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    pw="$pgdata.pw"
    echo cqrs-test > "$pw"
    [ "$(id -u)" -eq 0 ] && chown "$runas" "$pw"
    as "$bindir/initdb" -D "$pgdata" -U cqrs --pwfile="$pw" -A scram-sha-256 \
        --auth-local=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pw"
    echo "$pgdata" > "$state/pgdata"
    echo "$port" > "$state/port"
    pgctl -o "$(server_opts)" start >/dev/null
    uri="postgresql://cqrs:cqrs-test@127.0.0.1:$port/postgres"
    echo "$uri" > "$state/uri"
    echo "$uri"
    ;;
down|up|stop)
    [ -f "$state/pgdata" ] || { [ "$cmd" = stop ] && exit 0; echo "pg.sh: no cluster in $state" >&2; exit 1; }
    pgdata=$(cat "$state/pgdata")
    port=$(cat "$state/port")
    case "$cmd" in
    down) pgctl -m fast stop >/dev/null ;;
    up) pgctl -o "$(server_opts)" start >/dev/null ;;
    stop)
        pgctl -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$pgdata"
        rm -f "$state/pgdata" "$state/port" "$state/uri"
        ;;
    esac
    ;;
*) echo "pg.sh: unknown command $cmd" >&2; exit 2 ;;
esac

#!/bin/sh
# A throwaway NATS server with JetStream for the tests and benchmarks:
# loopback only, a free port, its store in a temporary directory.
#
#   nats.sh start STATE   start it; writes STATE/url (nats://127.0.0.1:PORT),
#                         STATE/port, STATE/dir (store + log + pid); prints
#                         the URL
#   nats.sh down STATE    stop the server, keep its store (fault tests)
#   nats.sh up STATE      start it again on the same port and store
#   nats.sh stop STATE    stop the server and remove its files
#
# STATE is any directory of ours (e.g. build/nats).
set -eu

cmd=${1:?usage: nats.sh start|down|up|stop STATE}
state=${2:?usage: nats.sh start|down|up|stop STATE}
server=$(command -v nats-server || true)
[ -n "$server" ] || { echo "nats.sh: nats-server not found (apt-get install nats-server)" >&2; exit 1; }

launch() {
    # -js: JetStream; -sd: its store; no cluster, no monitoring port.
    "$server" -a 127.0.0.1 -p "$port" -js -sd "$dir/js" -l "$dir/log" \
        -P "$dir/pid" >/dev/null 2>&1 &
    i=0
    while [ $i -lt 200 ]; do
        if python3 - "$port" <<'PY' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5)
ok = s.recv(4096).startswith(b"INFO ")
sys.exit(0 if ok else 1)
PY
        then return 0; fi
        i=$((i + 1))
        sleep 0.1
    done
    echo "nats.sh: nats-server did not start (see $dir/log)" >&2
    exit 1
}

halt() {
    [ -f "$dir/pid" ] || return 0
    pid=$(cat "$dir/pid")
    kill "$pid" 2>/dev/null || return 0
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do
        i=$((i + 1))
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/pid"
}

case "$cmd" in
start)
    mkdir -p "$state"
    [ -f "$state/dir" ] && sh "$0" stop "$state" || true
    dir=$(mktemp -d /tmp/cqrsd-nats.XXXXXX)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    echo "$dir" > "$state/dir"
    echo "$port" > "$state/port"
    launch
    url="nats://127.0.0.1:$port"
    echo "$url" > "$state/url"
    echo "$url"
    ;;
down|up|stop)
    [ -f "$state/dir" ] || { [ "$cmd" = stop ] && exit 0; echo "nats.sh: no server in $state" >&2; exit 1; }
    dir=$(cat "$state/dir")
    port=$(cat "$state/port")
    case "$cmd" in
    down) halt ;;
    up) launch ;;
    stop)
        halt
        rm -rf "$dir"
        rm -f "$state/dir" "$state/port" "$state/url"
        ;;
    esac
    ;;
*) echo "nats.sh: unknown command $cmd" >&2; exit 2 ;;
esac

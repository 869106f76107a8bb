#!/bin/sh
# bench/startup.sh — how soon `cqrsd serve` answers after exec, on a store
# whose inline projection must be built from scratch and on a caught-up one.
#
#   sh bench/startup.sh [--cqrsd PATH] [--fill PATH] [--events N]
#                       [--rounds R] [--dir DIR] [--timeout S]
#
#   --cqrsd PATH   the server (default $BUILD_DIR/cqrsd, BUILD_DIR=build)
#   --fill PATH    bench_fill_events (default $BUILD_DIR/bench/bench_fill_events)
#   --events N     events in the store, 4 per order (default 1000000:
#                  250,000 streams)
#   --rounds R     starts of each kind, the median is reported (default 3)
#   --dir DIR      where the stores go (default a temp dir, removed at exit;
#                  the disk being measured); a DIR/base/events.db left by an
#                  earlier run is used again (same --events), not refilled
#   --timeout S    most seconds one start may take to be ready (default 600)
#
# bench_fill_events writes the events straight into a new events.db, which
# has no inline projection tables yet: every "fresh" round starts cqrsd on
# a copy of it, so payment_confirmation (inline) is replayed from position
# 0. Each round measures from exec: healthz_ms, the first GET /healthz 200;
# inline_ms, the first GET /projections/payment_confirmation whose position
# is the head (commands are answered from then on); readyz_ms, the first
# GET /readyz 200 (every projection within the lag bound: the asynchronous
# ones have caught up too). Then the server stops (SIGTERM) and is started
# again on the same, caught-up store ("warm" rounds). Polls every 2 ms.
#
# Prints each round, then one summary line (medians, in milliseconds):
#   BENCH kind=startup events=N rounds=R fresh_healthz_ms=.. fresh_inline_ms=..
#     fresh_readyz_ms=.. warm_healthz_ms=.. warm_inline_ms=.. warm_readyz_ms=..
# Exit 0 when every figure was measured, 1 otherwise.
set -u
BUILD_DIR=${BUILD_DIR:-build}
CQRSD=$BUILD_DIR/cqrsd
FILL=$BUILD_DIR/bench/bench_fill_events
EVENTS=1000000
ROUNDS=3
DIR=
TIMEOUT=600
while [ $# -gt 0 ]; do
    case $1 in
    --cqrsd) CQRSD=$2 ;;
    --fill) FILL=$2 ;;
    --events) EVENTS=$2 ;;
    --rounds) ROUNDS=$2 ;;
    --dir) DIR=$2 ;;
    --timeout) TIMEOUT=$2 ;;
    *) echo "usage: sh bench/startup.sh [--cqrsd PATH] [--fill PATH]" \
            "[--events N] [--rounds R] [--dir DIR] [--timeout S]" >&2
       exit 2 ;;
    esac
    [ $# -ge 2 ] || { echo "startup.sh: $1 needs a value" >&2; exit 2; }
    shift 2
done
OWN=0
if [ -z "$DIR" ]; then
    DIR=$(mktemp -d "${TMPDIR:-/tmp}/cqrsd-startup.XXXXXX") || exit 1
    OWN=1
fi
trap '[ $OWN = 1 ] && rm -rf "$DIR"' EXIT
trap 'exit 1' INT TERM
mkdir -p "$DIR" || exit 1
if [ ! -f "$DIR/base/events.db" ]; then
    rm -rf "$DIR/base"
    "$FILL" --dir "$DIR/base" --orders $((EVENTS / 4)) | grep -v '^BENCH' ||
        exit 1
fi

python3 - "$CQRSD" "$DIR" "$EVENTS" "$ROUNDS" "$TIMEOUT" <<'EOF'
import http.client, json, os, shutil, signal, socket, statistics, subprocess
import sys, time

cqrsd, top, events, rounds, timeout = sys.argv[1], sys.argv[2], \
    int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port

def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        return r.status, json.loads(body) if body else None
    except (OSError, http.client.HTTPException, ValueError):
        return None, None
    finally:
        c.close()

def one_start(data):
    """ms from exec to /healthz 200, inline current, /readyz 200."""
    port = free_port()
    log = open(os.path.join(top, "cqrsd.log"), "ab")
    t0 = time.monotonic()
    p = subprocess.Popen([cqrsd, "serve", "--data", data, "--listen",
                          "127.0.0.1:%d" % port], stdout=log, stderr=log)
    got = {}
    try:
        while len(got) < 3:
            now = time.monotonic()
            if now - t0 > timeout or p.poll() is not None:
                break
            if "healthz" not in got:
                if get(port, "/healthz")[0] == 200:
                    got["healthz"] = (time.monotonic() - t0) * 1000
            else:
                if "inline" not in got:
                    st, b = get(port, "/projections/payment_confirmation")
                    if st == 200 and b["position"] >= b["head"] and \
                            b["status"] == "running":
                        got["inline"] = (time.monotonic() - t0) * 1000
                if get(port, "/readyz")[0] == 200:
                    t = (time.monotonic() - t0) * 1000
                    got.setdefault("inline", t)
                    got["readyz"] = t
            time.sleep(0.002)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()
    return got

res = {"fresh": [], "warm": []}
for r in range(rounds):
    data = os.path.join(top, "run")
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(os.path.join(top, "base"), data)
    for kind in ("fresh", "warm"):
        got = one_start(data)
        res[kind].append(got)
        print("round %d %s: %s" % (r + 1, kind, " ".join(
            "%s_ms=%.1f" % (k, got[k]) for k in ("healthz", "inline", "readyz")
            if k in got)), flush=True)
shutil.rmtree(os.path.join(top, "run"), ignore_errors=True)

fields, ok = [], True
for kind in ("fresh", "warm"):
    for k in ("healthz", "inline", "readyz"):
        vals = [g[k] for g in res[kind] if k in g]
        ok &= len(vals) == rounds
        fields.append("%s_%s_ms=%s" % (kind, k, "%.1f" % statistics.median(vals)
                                       if vals else "NA"))
print("BENCH kind=startup events=%d rounds=%d %s" % (events, rounds,
                                                     " ".join(fields)))
sys.exit(0 if ok else 1)
EOF
exit $?

#!/bin/sh
# bench/memory.sh — the resident memory of `cqrsd serve` with default
# settings on a large store: events over many streams, and many
# idempotency keys in the command log.
#
#   sh bench/memory.sh [--cqrsd PATH] [--fill PATH] [--events N]
#                      [--keys K] [--commands C] [--dir DIR] [--timeout S]
#                      [-- SERVE-OPTION...]
#
#   --cqrsd PATH   the server (default $BUILD_DIR/cqrsd, BUILD_DIR=build)
#   --fill PATH    bench_fill_events (default $BUILD_DIR/bench/bench_fill_events)
#   --events N     events in the store, 4 per order (default 1000000:
#                  250,000 streams)
#   --keys K       idempotency keys in the command log (default 1000000)
#   --commands C   keyed commands sent through the server once it is ready
#                  (default 20000: PlaceOrder, each a new stream, and
#                  RecordPayment on C/2 of the filled orders, which the
#                  writer folds from the store into its aggregate cache)
#   --dir DIR      where the store goes (default a temp dir, removed at exit)
#   --timeout S    most seconds to wait for GET /readyz 200 (default 900)
#   -- ...         anything after -- is passed to `cqrsd serve` (e.g.
#                  --cache-entries 100000, to see what a bigger cache costs)
#
# The events are written by bench_fill_events straight into events.db; the
# keys straight into its command_log table, as the writer stores them
# (src/store/store_sqlite_cmdlog.c: the key, the SHA-256 of the command in
# hex, the status, the answer's JSON, created_at and expires_at in ms,
# unexpired). The server starts on that store, replays its projections
# (inline and asynchronous: all of them are built from scratch) until
# GET /readyz is 200, and VmRSS/VmHWM are read from /proc/PID/status:
#   ready  — every projection caught up over all the events;
#   load   — after the commands (the aggregate cache full, keys looked up).
# VmHWM is the peak RSS since exec (the catch-up included).
#
# Prints the figures, then one summary line (kB):
#   BENCH kind=memory events=N streams=S keys=K commands=C rss_ready_kb=..
#     hwm_ready_kb=.. rss_load_kb=.. hwm_load_kb=.. target_kb=65536
# Exit 0 when every figure was measured, 1 otherwise.
set -u
BUILD_DIR=${BUILD_DIR:-build}
CQRSD=$BUILD_DIR/cqrsd
FILL=$BUILD_DIR/bench/bench_fill_events
EVENTS=1000000
KEYS=1000000
COMMANDS=20000
DIR=
TIMEOUT=900
while [ $# -gt 0 ]; do
    case $1 in
    --) shift; break ;;
    --cqrsd) CQRSD=$2 ;;
    --fill) FILL=$2 ;;
    --events) EVENTS=$2 ;;
    --keys) KEYS=$2 ;;
    --commands) COMMANDS=$2 ;;
    --dir) DIR=$2 ;;
    --timeout) TIMEOUT=$2 ;;
    *) echo "usage: sh bench/memory.sh [--cqrsd PATH] [--fill PATH]" \
            "[--events N] [--keys K] [--commands C] [--dir DIR]" \
            "[--timeout S] [-- SERVE-OPTION...]" >&2
       exit 2 ;;
    esac
    [ $# -ge 2 ] || { echo "memory.sh: $1 needs a value" >&2; exit 2; }
    shift 2
done
OWN=0
if [ -z "$DIR" ]; then
    DIR=$(mktemp -d "${TMPDIR:-/tmp}/cqrsd-memory.XXXXXX") || exit 1
    OWN=1
fi
trap '[ $OWN = 1 ] && rm -rf "$DIR"' EXIT
trap 'exit 1' INT TERM
mkdir -p "$DIR" || exit 1
rm -rf "$DIR/data"
"$FILL" --dir "$DIR/data" --orders $((EVENTS / 4)) | grep -v '^BENCH' || exit 1

python3 - "$CQRSD" "$DIR" "$EVENTS" "$KEYS" "$COMMANDS" "$TIMEOUT" "$@" <<'EOF'
import hashlib, http.client, json, os, signal, socket, sqlite3, subprocess
import sys, time, uuid

cqrsd, top = sys.argv[1], sys.argv[2]
events, keys, commands = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
timeout, extra = float(sys.argv[6]), sys.argv[7:]
data = os.path.join(top, "data")
orders = events // 4

# the command log as the writer fills it, unexpired
t = time.monotonic()
db = sqlite3.connect(os.path.join(data, "events.db"))
now = int(time.time() * 1000)
def rows():
    for i in range(keys):
        cid = str(uuid.UUID(int=i + 1, version=4))
        answer = json.dumps({"command_id": cid, "stream_id": "order-k%d" % i,
                             "version": 1, "position": i + 1,
                             "events": [{"type": "OrderPlaced", "version": 1,
                                         "position": i + 1}]},
                            separators=(",", ":"))
        yield ("key-%d" % i, hashlib.sha256(b"%d" % i).hexdigest(), 202,
               answer, now, now + 86400 * 1000)
db.execute("BEGIN")
db.executemany("INSERT INTO command_log (idem_key, command_hash, status,"
               " response, created_at, expires_at) VALUES (?,?,?,?,?,?)",
               rows())
db.execute("COMMIT")
db.close()
print("filled %d idempotency keys in %.1f s" % (keys, time.monotonic() - t),
      flush=True)

def status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    return out

s = socket.socket()
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
s.close()
log = open(os.path.join(top, "cqrsd.log"), "ab")
p = subprocess.Popen([cqrsd, "serve", "--data", data, "--listen",
                      "127.0.0.1:%d" % port] + extra, stdout=log, stderr=log)
conn = None
def req(method, path, body=None, headers=None):
    global conn
    for attempt in range(2):
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = None
    return None, b""

res = {}
try:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and p.poll() is None:
        if req("GET", "/readyz")[0] == 200:
            break
        time.sleep(0.2)
    else:
        raise SystemExit("memory.sh: GET /readyz was not 200 within %.0f s"
                         % timeout)
    m = status(p.pid)
    res["rss_ready_kb"], res["hwm_ready_kb"] = m["VmRSS"], m["VmHWM"]
    print("ready after %.1f s: VmRSS %d kB, VmHWM %d kB"
          % (time.monotonic() - t0, m["VmRSS"], m["VmHWM"]), flush=True)
    bad = 0
    hdr = {"Content-Type": "application/json"}
    for i in range(commands):
        if i % 2 == 0:
            body = {"order_id": "mem-%d" % i, "customer_id": "c-%d" % (i % 997),
                    "currency": "EUR",
                    "items": [{"sku": "sku-%d" % (i % 50), "quantity": 1 + i % 3,
                               "unit_price_cents": 100 + i}]}
            path = "/commands/PlaceOrder"
        else:
            # a filled order: its state is folded from the store
            body = {"order_id": "fill-%d" % (1 + (i * 7919) % orders),
                    "payment_id": "mem-pay-%d" % i, "amount_cents": 1}
            path = "/commands/RecordPayment"
        h = dict(hdr, **{"Idempotency-Key": "mem-%d" % i})
        st, _ = req("POST", path, json.dumps(body), h)
        bad += st is None or st >= 500
    # keys looked up again: each answer is replayed from the command log
    for i in range(0, min(commands, 2000)):
        req("POST", "/commands/PlaceOrder",
            json.dumps({"order_id": "mem-%d" % (2 * i), "customer_id": "c",
                        "currency": "EUR", "items": []}),
            dict(hdr, **{"Idempotency-Key": "key-%d" % (i * 397 % keys)}))
    m = status(p.pid)
    res["rss_load_kb"], res["hwm_load_kb"] = m["VmRSS"], m["VmHWM"]
    print("after %d commands (%d failed with 5xx or no answer): VmRSS %d kB, "
          "VmHWM %d kB" % (commands, bad, m["VmRSS"], m["VmHWM"]), flush=True)
finally:
    if conn is not None:
        conn.close()
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()
    log.close()

print("BENCH kind=memory events=%d streams=%d keys=%d commands=%d %s "
      "target_kb=65536" % (events, orders, keys, commands, " ".join(
          "%s=%s" % (k, res.get(k, "NA")) for k in
          ("rss_ready_kb", "hwm_ready_kb", "rss_load_kb", "hwm_load_kb"))))
sys.exit(0 if len(res) == 4 else 1)
EOF
exit $?

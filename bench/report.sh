#!/bin/sh
# bench/report.sh — docs/benchmarks.md and its figures from one bench run.
#
#   sh bench/report.sh RESULTS_DIR DOCS_DIR
#
# bench/run.sh calls it at the end (BENCH_DOCS=1, the default of
# `make bench`) with the data files the run wrote; to redraw a kept run:
# `BENCH_RESULTS=DIR sh bench/run.sh ...` then `sh bench/report.sh DIR docs`.
# RESULTS_DIR holds (each optional; a figure whose data is missing is left
# out and the page says so):
#   machine.txt      key=value: date, commit, cpu, cores, memory, disk,
#                    kernel, load (at the start), settings
#   figures.env      key=value: the summary's figures (bench/run.sh)
#   sweep.dat        conns, healthz and PlaceOrder rate and percentiles
#   emmett.dat       the peer's PlaceOrder per connection count
#   emmett-errors.txt  the peer's log lines with errors, counted
#   raw.out raw1.out bench_raw_sqlite at 64 and 1 rows per transaction
#   window-N.dat     bench_window --samples: one window a line, us, sorted
#   catchup.dat      bench_catchup --samples: seconds position
#   rebuild.dat      bench_rebuild --samples: seconds done total
#   memory.txt startup.txt  the kind=memory / kind=startup line
# Writes DOCS_DIR/benchmarks.md, DOCS_DIR/img/bench-*.png (gnuplot, pngcairo
# or png terminal) and copies RESULTS_DIR to DOCS_DIR/img/bench-data/ so the
# figures can be checked and redrawn: sh bench/report.sh docs/img/bench-data docs
# Exit 1 when gnuplot is missing or fails.
set -u
RES=${1:?usage: report.sh RESULTS_DIR DOCS_DIR}
DOCS=${2:?usage: report.sh RESULTS_DIR DOCS_DIR}
BENCH_WHO="bench report"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

command -v gnuplot >/dev/null 2>&1 || die "gnuplot not found (sh scripts/deps.sh gnuplot-nox)"
[ -d "$RES" ] || die "no directory $RES"
IMG=$DOCS/img
mkdir -p "$IMG" || die "cannot create $IMG"
# the results, copied first: RESULTS_DIR may be DOCS_DIR/img/bench-data
# itself (redrawing a committed set), which is replaced below
SRC=$(mktemp -d "${TMPDIR:-/tmp}/cqrsd-report.XXXXXX") || die "mktemp failed"
trap 'rm -rf "$SRC"' EXIT
cp -R "$RES"/. "$SRC"/ || die "cannot read $RES"
RES=$SRC
rm -rf "${IMG:?}"/bench-*
if ! { mkdir -p "$IMG/bench-data" && cp -R "$RES"/. "$IMG/bench-data"/; }; then
    die "cannot write $IMG/bench-data"
fi

# value of key $1 in key=value file $2 (the rest of the line), or empty
kv() { sed -n "s/^$1=//p" "$2" 2>/dev/null | head -n 1; }
M=$RES/machine.txt F=$RES/figures.env
fig() { kv "$1" "$F"; }
has() { [ -s "$RES/$1" ] && [ "$(grep -vc '^#' "$RES/$1")" -gt 0 ]; }

if gnuplot -e 'set terminal pngcairo' >/dev/null 2>&1; then
    TERM_PNG="pngcairo size 900,540 font 'Sans,10'"
else
    TERM_PNG="png size 900,540"
fi
LOADTAG="load $(kv load "$M") at start$( [ "$(kv quick "$M")" = 1 ] && echo ', BENCH_QUICK=1')"
plot() { # name, gnuplot body
    { printf 'set terminal %s noenhanced\nset output "%s"\nset grid\nset key below reverse Left\n' \
          "$TERM_PNG" "$IMG/bench-$1.png"
      printf '%s\n' "$2"; } | gnuplot || die "gnuplot failed on bench-$1.png"
}

r64=$(field raw_sqlite rows_per_sec "$RES/raw.out")
r1=$(field raw_sqlite rows_per_sec "$RES/raw1.out")

# --- the figures ------------------------------------------------------------------
if has sweep.dat; then
    lines=
    [ -n "$r64" ] && lines="$lines, $r64 title 'raw SQLite, 64 rows/commit' dt 2 lw 2 lc rgb '#777777'"
    [ -n "$r1" ] && lines="$lines, $r1 title 'raw SQLite, 1 row/commit (fsync each)' dt 3 lw 2 lc rgb '#444444'"
    em=
    has emmett.dat && em=", '$RES/emmett.dat' using 1:(\$3 > 0 ? \$3 : NaN) with linespoints lw 2 pt 13 ps 1.5 title 'Emmett 0.38.5 (SQLite), 202/s', '$RES/emmett.dat' using 1:(\$3 > 0 ? NaN : 12) with points pt 2 ps 2 lw 2 lc rgb '#cc0000' title 'Emmett: not one 202 in the run'"
    plot throughput "set title 'Commands/s against connections ($LOADTAG)'
set logscale x 2
set logscale y 10
set xlabel 'wrk keep-alive connections'
set ylabel 'per second'
set xrange [0.8:320]
plot '$RES/sweep.dat' using 1:8 with linespoints lw 2 pt 7 title 'cqrsd PlaceOrder, 202/s', \
     '$RES/sweep.dat' using 1:2 with linespoints lw 2 pt 5 title 'cqrsd GET /healthz, 200/s'$em$lines"
    plot latency "set title 'PlaceOrder latency against connections ($LOADTAG)'
set logscale x 2
set logscale y 10
set xlabel 'wrk keep-alive connections'
set ylabel 'ms (wrk --latency)'
set xrange [0.8:320]
plot '$RES/sweep.dat' using 1:(\$9/1000) with linespoints lw 2 pt 7 title 'p50', \
     '$RES/sweep.dat' using 1:(\$10/1000) with linespoints lw 2 pt 5 title 'p90', \
     '$RES/sweep.dat' using 1:(\$11/1000) with linespoints lw 2 pt 9 title 'p99', \
     '$RES/sweep.dat' using 1:(\$12/1000) with linespoints lw 1 pt 1 title 'max'"
fi
wins=
for f in "$RES"/window-*.dat; do [ -s "$f" ] && wins="$wins $f"; done
if [ -n "$wins" ]; then
    body=
    for f in $wins; do
        n=$(wc -l <"$f")
        k=$(basename "$f" .dat); k=${k#window-}
        body="$body${body:+, }'$f' using 1:(\$0 + 1) / $n with lines lw 2 title '$k connection(s), $n samples'"
    done
    plot window "set title 'Consistency window: 202 -> fresh order_summary (CDF, $LOADTAG)'
set logscale x 10
set xlabel 'window, microseconds (log)'
set ylabel 'fraction of commands'
set yrange [0:1.02]
set arrow from 1000, graph 0 to 1000, graph 1 nohead dt 2 lc rgb '#aa0000'
set label 'target p99 1 ms' at 1050, graph 0.05 tc rgb '#aa0000'
set arrow from graph 0, first 0.99 to graph 1, first 0.99 nohead dt 3 lc rgb '#777777'
set label 'p99' at graph 0.01, first 0.975 tc rgb '#777777'
plot $body"
fi
if has catchup.dat || has rebuild.dat; then
    body=
    has catchup.dat && body="'$RES/catchup.dat' using 1:2 with linespoints pt 7 ps 0.5 lw 2 title 'catch-up: order_summaries alone, position (s since server start)'"
    has rebuild.dat && body="$body${body:+, }'$RES/rebuild.dat' using 1:2 with linespoints pt 5 ps 0.5 lw 2 title 'rebuild: events replayed (s since POST)'"
    plot progress "set title 'Catch-up and rebuild progress ($LOADTAG)'
set xlabel 'seconds'
set ylabel 'events'
set format y '%.0s%c'
plot $body"
fi

# --- the page ---------------------------------------------------------------------
md=$DOCS/benchmarks.md
img() { # name, alt
    if [ -s "$IMG/bench-$1.png" ]; then
        printf '![%s](img/bench-%s.png)\n' "$2" "$1"
    else
        printf '_(not measured in this run: no figure)_\n'
    fi
}
table_sweep() {
    printf '| connections | /healthz 200/s | PlaceOrder 202/s | p50 ms | p90 ms | p99 ms | max ms | not 202 | socket errors | sent, no answer by the end (in flight included) |\n'
    printf '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
    awk 'NR > 1 { printf "| %d | %.0f | %.0f | %.2f | %.2f | %.2f | %.2f | %d | %d | %d |\n",
                  $1, $2, $8, $9 / 1000, $10 / 1000, $11 / 1000, $12 / 1000, $13, $14, $16 - $15 }' \
        "$RES/sweep.dat"
}
table_emmett() {
    printf '| connections | sent | answered | 202/s | p50 ms | p99 ms | max ms | not 202 | socket errors | sent, no answer by the end (in flight included) | peer exited |\n'
    printf '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|\n'
    awk 'function t(x) { return $10 > 0 ? sprintf("%.2f", x / 1000) : "—" }
         NR > 1 { printf "| %d | %d | %d | %.0f | %s | %s | %s | %d | %d | %d | %s |\n",
                  $1, $11, $10, $3, t($4), t($6), t($7), $8, $9, $11 - $10,
                  ($12 == 1 ? "yes" : "no") }' "$RES/emmett.dat"
}
kvtable() { # a "kind=X k=v ..." line as a table, with what the known keys mean
    printf '| figure | value | meaning |\n|---|---:|---|\n'
    tr ' ' '\n' <"$1" | awk -F= '
        BEGIN {
            m["events"] = "events in the store (4 per order)"
            m["streams"] = "streams (orders)"
            m["keys"] = "idempotency keys in the command log"
            m["commands"] = "keyed commands sent once ready"
            m["rss_ready_kb"] = "VmRSS, kB, every projection caught up"
            m["hwm_ready_kb"] = "VmHWM (peak RSS since exec), kB, at that point"
            m["rss_load_kb"] = "VmRSS, kB, after the commands"
            m["hwm_load_kb"] = "VmHWM, kB, after the commands"
            m["target_kb"] = "the issue'"'"'s target for RSS, kB"
            m["rounds"] = "starts of each kind (medians reported)"
            m["fresh_healthz_ms"] = "inline projection built from scratch: exec to first GET /healthz 200"
            m["fresh_inline_ms"] = "... to the inline projection at the head (commands answered)"
            m["fresh_readyz_ms"] = "... to GET /readyz 200 (every projection current)"
            m["warm_healthz_ms"] = "caught-up store: exec to first GET /healthz 200"
            m["warm_inline_ms"] = "... to the inline projection at the head"
            m["warm_readyz_ms"] = "... to GET /readyz 200"
        }
        NF == 2 && $1 != "kind" { printf "| %s | %s | %s |\n", $1, $2, m[$1] }'
}
na() { [ -n "$1" ] && echo "$1" || echo "n/a"; }

{
cat <<EOF
# Benchmarks

<!-- Generated by bench/report.sh from one run of \`make bench\` (bench/run.sh).
     Do not edit by hand: run \`make bench\` again. -->

Every figure on this page comes from one run of \`make bench\` on the machine
below; each comparison is a ratio taken in the same run (the reference is
measured minutes apart on the same disk), because absolute numbers move
between machines and with the machine's other load. How each figure is taken
is said under it; [bench/README.md](../bench/README.md) explains the tools.
The data behind the figures and tables is in
[docs/img/bench-data/](img/bench-data/) (\`sh bench/report.sh
docs/img/bench-data docs\` draws this page again from it).

| machine | |
|---|---|
| date | $(kv date "$M") |
| commit | $(kv commit "$M") |
| CPU | $(kv cpu "$M") |
| cores | $(kv cores "$M") |
| memory | $(kv memory "$M") |
| disk (data dirs) | $(kv disk "$M") |
| kernel | $(kv kernel "$M") |
| load average at start (1, 5, 15 min) | $(kv load "$M") |
| settings | $(kv durations "$M"); $(kv wrk "$M")$( [ "$(kv quick "$M")" = 1 ] && echo '; **BENCH_QUICK=1** (short runs)') |

EOF
if [ "$(kv quick "$M")" = 1 ]; then
cat <<EOF
> **These figures come from a quick run (BENCH_QUICK=1: ${SW_NOTE:-short wrk runs, a small catch-up store}) on a
> shared, loaded machine (load average $(kv load "$M") at the start).** They prove
> the pipeline; they are not the project's figures. Run \`make bench\` on a
> quiet machine for those.

EOF
fi
cat <<EOF
## Commands/s against connections

$(img throughput "PlaceOrder and /healthz per second against connections, with the raw SQLite lines")

How: one fresh \`cqrsd serve\` (SQLite, defaults: \`synchronous=FULL\` on
events.db, a 202 only after the fsync); for each connection count, wrk
(\`-t min(2, c) -c c --latency\`) on \`GET /healthz\` (bench/healthz.lua, the
server's own ceiling for a trivial request) and then on
\`POST /commands/PlaceOrder\` (bench/placeorder.lua: a new order per request,
1–3 items, every answer counted by status), each after a warm-up. The lines are
bench_raw_sqlite (bench/raw_sqlite.c) in the same run: the rows one PlaceOrder
writes, in WAL mode with \`synchronous=FULL\`, 64 per transaction (the
disk's ceiling: $(na "$(num "$r64")") rows/s) and 1 per transaction (one insert
and one WAL fsync per COMMIT, the durable single-transaction floor:
$(na "$(num "$r1")") txn/s). The peer is below.

EOF
if has sweep.dat; then
    table_sweep
    cat <<EOF

| ratio (same run) | value | target (issue 16) |
|---|---:|---|
| 1 connection: PlaceOrder/s ÷ raw SQLite 1 row/commit txn/s | $(na "$(fig s1_raw)") | ≥ 0.60 |
| 1 connection: work per command beyond the floor's transaction (1/rate − 1/floor rate) | $(na "$(us "$(fig s1_beyond)")") | ≤ ~250 µs (the issue's reading of 0.60) |
| 1 connection: p99 ÷ p50 | $(na "$(fig s1_ratio)") | p99 ≤ 2 ms |
| 64 connections: PlaceOrder/s ÷ GET /healthz/s | $(na "$(fig s64_ratio)") | ≥ 0.50 |

EOF
fi
cat <<EOF
## Latency percentiles

$(img latency "PlaceOrder p50, p90, p99 and max against connections")

How: wrk's \`--latency\` percentiles (request sent → whole answer received)
of the PlaceOrder runs above; the table above has the numbers. At one
connection the p99/p50 ratio is the tail the single client sees:
**$(na "$(fig s1_ratio)")** (p50 $(ms "$(fig s1_p50)"), p99 $(ms "$(fig s1_p99)")).

## The peer: Emmett on SQLite

How: bench/emmett/server.mjs, a small Node app: \`POST /commands/PlaceOrder\`
with the same body, Emmett's \`CommandHandler\` on its SQLite event store
(\`@event-driven-io/emmett-sqlite\` $(na "$(fig em_version)") on Node $(na "$(fig em_node)"), Emmett's defaults:
WAL, SQLite's default \`synchronous\`), a new stream per order appended with
an expected version (\`STREAM_DOES_NOT_EXIST\`), 202 on success; Express 4 as
the HTTP layer (Emmett's own \`emmett-expressjs\` has no 0.38.5 on npm).
Installed from npm by the bench into \`build/emmett\` (versions pinned in
bench/emmett/package.json), never by the tests. The same wrk sweep, a fresh
peer and database for each connection count, warmed up at 1 connection; answers that are not 202 and
socket errors are counted, and so are the requests sent that had no answer
when the run ended (wrk counts a request as a timeout only after
\`--timeout\`, 5 s; a run shorter than that shows a hung server as
"no answer"); a peer that exits is said so.

EOF
if has emmett.dat; then
    table_emmett
    awk 'NR > 1 { if ($3 > 0) ok = ok (ok == "" ? "" : ", ") $1; else bad = bad (bad == "" ? "" : ", ") $1 }
         END { printf "\nIn this run the peer answered 202s at %s connection(s)", (ok == "" ? "no" : ok)
               if (bad != "") printf " and not one 202 at %s", bad
               print "." }' "$RES/emmett.dat"
    echo
    echo "Its 202/s is the diamond line in the first figure; a red cross at the bottom marks a connection count where it answered not one 202."
    if [ -s "$RES/emmett-errors.txt" ]; then
        echo
        echo "The peer's errors in this run (its log, counted):"
        echo
        echo '```'
        cat "$RES/emmett-errors.txt"
        echo '```'
    fi
else
    echo "_(not measured in this run)_"
fi
cat <<EOF

## Consistency window

$(img window "Distribution of the consistency window")

How: bench_window (bench/window.c) on the server of the PlaceOrder runs:
$(fig WIN_WORKERS) connections (and then 1), each a closed loop of
\`POST /commands/PlaceOrder\` → on the 202, at once,
\`GET /queries/order_summary?order_id=…&min_position=<the 202's position>\`
on the same connection; the window is from the 202 received to the fresh
answer received (the asynchronous projection order_summaries must have
applied the position). Every answer must be 200 and fresh. The reference is
the \`GET /healthz\` round trip on the same connections in the same run.

| $(fig WIN_WORKERS) connections | p50 | p90 | p99 | max |
|---|---:|---:|---:|---:|
| window, 202 → fresh order_summary ($(na "$(num "$(fig w_n)")") commands) | $(us "$(fig w_p50)") | $(us "$(fig w_p90)") | $(us "$(fig w_p99)") | $(us "$(fig w_max)") |
| GET /healthz round trip (floor) | $(us "$(fig t_p50)") | | $(us "$(fig t_p99)") | |
| PlaceOrder latency in that run | $(us "$(fig w_c50)") | | $(us "$(fig w_c99)") | |

Target (issue 16): p99 ≤ 1 ms at 8 connections. Answers not 200/fresh:
$(na "$(fig w_qfail)"), commands not 202: $(na "$(fig w_cfail)"), connection errors: $(na "$(fig w_iofail)").

## Catch-up and rebuild

$(img progress "Catch-up and rebuild progress over time")

How: bench_fill_events writes $(na "$(num "$(fig f_events)")") events
($(fig CU_ORDERS) orders × 4) straight into a new events.db, once. Three
catch-ups follow (repeated for each round), each on its own fresh copy of that file: \`cqrsd serve\`
starts on it and bench_catchup (bench/catchup.c) waits for \`GET /healthz\`,
then until the inline projection is current (its replay by the writer comes
first; the projector starts then, and the catch-up is timed from there),
then polls until the projection has applied the last event. *Alone*: right
after the server is up, bench_catchup pauses the other asynchronous
projection (\`POST /projections/OTHER/pause\`, \`--only\`), so the one timed
has the projector to itself; *both*: nothing paused, the time until both
have applied the last event. Each catch-up's reference is
bench_raw_upsert (bench/raw_upsert.c), run just before it: the same
projection's .sql statements (both files for *both*) on the same events'
values with plain SQLite, 1000 events per transaction and projection,
WAL with \`synchronous=NORMAL\` (read.db's settings). Then bench_rebuild
(bench/rebuild.c) POSTs \`/projections/order_summaries/rebuild\` on the
server of the last *both*, caught up, and polls its progress every 50 ms while a
reader queries an order all along. The figure shows order_summaries'
position in its catch-up alone (the first round).

| catch-up ($(na "$(num "$(fig f_events)")") events) | cqrsd events/s | raw SQLite events/s | ratio | each round's ratio | raw SQLite on CPU | target (issue 16) |
|---|---:|---:|---:|---:|---:|---|
| order_summaries alone | $(na "$(num "$(fig ka_os)")") | $(na "$(num "$(fig u_os)")") | **$(na "$(fig pct_os)")** | $(na "$(fig l_os)") | $(na "$(fig u_os_cpu)") | ≥ $(fig TARGET_CATCHUP_PCT) %: $(na "$(fig met_os)") |
| sales_dashboard alone | $(na "$(num "$(fig ka_sd)")") | $(na "$(num "$(fig u_sd)")") | **$(na "$(fig pct_sd)")** | $(na "$(fig l_sd)") | $(na "$(fig u_sd_cpu)") | ≥ $(fig TARGET_CATCHUP_PCT) %: $(na "$(fig met_sd)") |
| both together (events both have applied) | $(na "$(num "$(fig k_both)")") | $(na "$(num "$(fig u_both)")") | **$(na "$(fig pct_both)")** | $(na "$(fig l_both)") | $(na "$(fig u_both_cpu)") | ≥ $(fig TARGET_CATCHUP_PCT) %: $(na "$(fig met_both)") |

$(na "$(fig CU_ROUNDS)") round(s) of the three catch-ups, each with its
reference; the rates are the medians of the rounds, the ratio is the median
of the rounds' ratios (each round's two sides run back to back). *Raw
SQLite on CPU* is the reference's CPU time as a share of its timed part,
per round: below ~90 % it waited (for the disk, or for a CPU the machine's
other work held), and the ratio of that round is flattered. In the last
run of both, order_summaries reached the head at
$(na "$(num "$(fig k_shared)")") events/s (sharing the projector with
sales_dashboard; for reading, no target).

| rebuild, order_summaries | events/s | of catch-up alone | of raw SQLite |
|---|---:|---:|---:|
| replay into shadow tables and swap (server's clock) | $(na "$(num "$(fig b_rate)")") | $(na "$(fig b_pct_k)") | $(na "$(fig b_pct_u)") |

Server up (store opened) $(sec "$(fig k_up)") after start in the last run of
both, inline projection current (payment_confirmation replayed by the
writer; the projector starts then, and the catch-up is timed from there)
$(sec "$(fig k_inline)") after that; both projections current $(sec "$(fig k_sd)")
after that. Queries during
the rebuild: $(na "$(num "$(fig b_q)")"), p50 $(us "$(fig b_p50)"), p99
$(us "$(fig b_p99)") (before it: p50 $(us "$(fig b_bp50)"), p99 $(us "$(fig b_bp99)")),
not 200 or wrong: $(na "$(fig b_bad)").

## Memory and start-up

How: bench/memory.sh and bench/startup.sh, standalone tools that
\`make bench\` runs as the steps \`memory\` and \`startup\` (their headers
say how they measure). memory.sh fills a store with
$(kv memory_events "$M") events and as many idempotency keys straight into
SQLite, starts \`cqrsd serve\` with default settings on it, reads VmRSS and
VmHWM from /proc once \`GET /readyz\` is 200 and again after keyed commands;
startup.sh times exec → \`GET /healthz\` 200, → the inline projection at the
head, → \`GET /readyz\` 200, on a store whose inline projection must be built
from scratch and on a caught-up one.

EOF
for kind in memory startup; do
    printf '### %s\n\n' "$kind"
    if [ -s "$RES/$kind.txt" ]; then
        kvtable "$RES/$kind.txt"
    else
        printf '_(not measured in this run: no bench/%s.sh in this tree, or it printed no kind=%s line)_\n' "$kind" "$kind"
    fi
    echo
done
cat <<EOF
## Reproducing

\`make bench\` installs wrk, gnuplot and the other tools (scripts/deps.sh),
builds, runs bench/run.sh and rewrites this page and \`docs/img/bench-*\`.
\`BENCH_QUICK=1 make bench\` is a short run (a few minutes) for a try-out;
\`BENCH_STEPS\`, \`BENCH_SWEEP\` and the other settings are in bench/run.sh's
header. \`BENCH_DOCS=0\` leaves this page alone.
EOF
} >"$md" || die "cannot write $md"

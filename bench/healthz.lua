-- wrk script: GET /healthz, the server's own ceiling for a trivial request.
--
-- No request()/response() hooks, so wrk sends its pre-built request at full
-- speed; done() only prints one machine-readable line for bench/run.sh
-- (latencies in microseconds) next to wrk's usual report.
-- Run as:  wrk -t2 -c64 -d10s --latency -s bench/healthz.lua URL/healthz

function done(summary, latency, requests)
   local e = summary.errors
   local sock = e.connect + e.read + e.write + e.timeout
   local secs = summary.duration / 1e6
   io.write(string.format(
      "BENCH kind=healthz seconds=%.3f answered=%d non2xx=%d sockerr=%d " ..
      "rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d\n",
      secs, summary.requests, e.status, sock, summary.requests / secs,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max))
end

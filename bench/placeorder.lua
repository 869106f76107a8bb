-- wrk script: durable PlaceOrder commands.
--
-- Every request is POST /commands/PlaceOrder with a new order id, so every
-- request creates a new stream and, if the server is right, answers 202.
-- Run as:  wrk -t2 -c64 -d10s --latency -s bench/placeorder.lua URL -- PREFIX
-- PREFIX (optional) keeps ids unique across runs against the same data dir;
-- it defaults to the clock.
--
-- wrk runs one Lua state per thread plus one for setup()/done(), so the
-- per-thread counters are read back in done() through the thread objects
-- that setup() collected (thread:get), as wrk's SCRIPTING doc describes.

local threads = {}          -- setup()/done() state only
local next_id = 0

function setup(thread)
   next_id = next_id + 1
   thread:set("id", next_id)
   table.insert(threads, thread)
end

-- Per-thread state (each thread has its own copy of these globals).
id = 0
counter = 0
accepted = 0               -- responses with status 202
not_accepted = 0           -- any other status
statuses = {}              -- status -> count, for the report
first_bad = ""             -- first non-202 answer, to show what went wrong

local prefix
local headers = { ["Content-Type"] = "application/json" }
-- Same SKUs and value ranges as bench/raw_sqlite.c.
local skus = { "SKU-MUG-RED-350ML", "SKU-TSHIRT-BLUE-L", "SKU-NOTEBOOK-A5-DOTTED",
               "SKU-CABLE-USB-C-2M", "SKU-COFFEE-BEANS-1KG" }
local currencies = { "EUR", "USD", "GBP" }

function init(args)
   prefix = args[1] or tostring(os.time())
   math.randomseed(os.time() * 1000 + id)
end

function request()
   counter = counter + 1
   local order_id = string.format("b%s-t%d-%d", prefix, id, counter)
   local n = math.random(1, 3)
   local items = {}
   for i = 1, n do
      items[i] = string.format(
         '{"sku":"%s","quantity":%d,"unit_price_cents":%d}',
         skus[math.random(#skus)], math.random(1, 5), math.random(199, 99999))
   end
   local body = string.format(
      '{"order_id":"%s","customer_id":"c-%05d","currency":"%s","items":[%s]}',
      order_id, math.random(1, 5000), currencies[math.random(#currencies)],
      table.concat(items, ","))
   return wrk.format("POST", "/commands/PlaceOrder", headers, body)
end

function response(status, hdrs, body)
   if status == 202 then
      accepted = accepted + 1
   else
      not_accepted = not_accepted + 1
      if first_bad == "" then
         first_bad = tostring(status) .. " " .. string.sub(body or "", 1, 300)
      end
   end
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local ok, bad, sent = 0, 0, 0
   local by_status = {}
   local sample = ""
   for _, t in ipairs(threads) do
      ok = ok + (t:get("accepted") or 0)
      bad = bad + (t:get("not_accepted") or 0)
      sent = sent + (t:get("counter") or 0)
      local s = t:get("statuses") or {}
      for k, v in pairs(s) do by_status[k] = (by_status[k] or 0) + v end
      local fb = t:get("first_bad") or ""
      if sample == "" then sample = fb end
   end
   local e = summary.errors
   local sock = e.connect + e.read + e.write + e.timeout
   local secs = summary.duration / 1e6
   local parts = {}
   for k, v in pairs(by_status) do
      table.insert(parts, string.format("%s=%d", tostring(k), v))
   end
   table.sort(parts)

   io.write("------------------------------------------------------------\n")
   io.write(string.format(
      "PlaceOrder: %d answered, %d x 202 (%d sent; the rest were in flight at the end)\n",
      summary.requests, ok, sent))
   io.write(string.format("answers by status: %s\n",
                          #parts > 0 and table.concat(parts, " ") or "(none)"))
   io.write(string.format("non-202: %d\n", bad))
   if bad > 0 then
      io.write(string.format("!!! %d PlaceOrder answers were not 202; first: %s\n",
                             bad, sample))
   end
   io.write(string.format(
      "socket errors: connect %d, read %d, write %d, timeout %d\n",
      e.connect, e.read, e.write, e.timeout))
   if sock > 0 then
      io.write(string.format("!!! %d requests got no answer (socket errors)\n", sock))
   end
   -- One machine-readable line for bench/run.sh. Latencies in microseconds.
   io.write(string.format(
      "BENCH kind=placeorder seconds=%.3f answered=%d accepted=%d non202=%d " ..
      "sockerr=%d rps=%.1f accepted_per_sec=%.1f p50_us=%d p90_us=%d " ..
      "p99_us=%d max_us=%d sent=%d\n",
      secs, summary.requests, ok, bad, sock, summary.requests / secs,
      ok / secs, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, sent))
end

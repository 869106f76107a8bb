// Node's test runner on clients/js/cqrsd.js against a live cqrsd
// (CQRSD_URL; tests/blackbox/test_js_client.py starts the server).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Cqrsd, ProblemError, readSSE } from "../../clients/js/cqrsd.js";

const URL_ = process.env.CQRSD_URL;
assert.ok(URL_, "CQRSD_URL must name a running cqrsd");
const c = new Cqrsd(URL_, { backoffMs: 20 });
let n = 0;
const oid = () => `js-${process.pid}-${Date.now().toString(36)}-${++n}`;
const order = (id) => ({ order_id: id, customer_id: "c-js", currency: "EUR",
  items: [{ sku: "s-1", quantity: 2, unit_price_cents: 500 }] });

let hasSubscribe = null;
async function subscribeServed() {
  if (hasSubscribe === null) {
    const r = await fetch(`${URL_}/subscribe?projection=order_summaries`,
                          { signal: AbortSignal.timeout(30000) });
    hasSubscribe = r.status !== 404;
    await r.body?.cancel();
  }
  return hasSubscribe;
}

function streamOf(...chunks) {
  const enc = new TextEncoder();
  return new ReadableStream({
    start(ctl) { for (const ch of chunks) ctl.enqueue(enc.encode(ch)); ctl.close(); },
  });
}

test("readSSE: fields, multi-line data, comments, CRLF and chunks split anywhere", async () => {
  const text = ": hello\r\nretry: 250\r\n\r\nevent: progress\r\nid: 7\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n" +
               "data: plain\n\nid\ndata: x\r\rdata:nospace\n\n";
  for (const size of [1, 2, 3, 7, text.length]) {
    const parts = [];
    for (let i = 0; i < text.length; i += size) parts.push(text.slice(i, i + size));
    const got = [];
    for await (const ev of readSSE(streamOf(...parts))) got.push(ev);
    assert.deepEqual(got, [
      { retry: 250 },
      { event: "progress", id: "7", data: "{\"a\":\n1}" },
      { data: "plain" },
      { id: "", data: "x" },
      { data: "nospace" },
    ], `chunk size ${size}`);
  }
});

test("command: an idempotency key is made and sent; the same key replays", async () => {
  const id = oid();
  const r = await c.command("PlaceOrder", order(id));
  assert.match(r.idempotencyKey, /^[0-9a-f-]{36}$/);
  assert.equal(r.stream_id, `order-${id}`);
  assert.equal(r.version, 1);
  assert.equal(r.etag, "\"1\"");
  assert.equal(r.replayed, false);
  const again = await c.command("PlaceOrder", order(id), { idempotencyKey: r.idempotencyKey });
  assert.equal(again.replayed, true);
  assert.equal(again.command_id, r.command_id);
});

test("command: resent with the same key when the answer is lost; applied once", async () => {
  const id = oid();
  const keys = [];
  let calls = 0;
  // the request reaches the server, its answer is lost on the first try
  const lossy = async (url, init) => {
    calls++;
    keys.push(init.headers["Idempotency-Key"]);
    const res = await fetch(url, init);
    if (calls === 1) { await res.text(); throw new TypeError("fetch failed (answer lost)"); }
    return res;
  };
  const lc = new Cqrsd(URL_, { fetch: lossy, backoffMs: 10 });
  const r = await lc.command("PlaceOrder", order(id));
  assert.equal(calls, 2);
  assert.equal(keys[0], keys[1]);
  assert.equal(r.replayed, true, "the second try is the first one's replay");
  const s = await (await fetch(`${URL_}/streams/order-${id}`)).json();
  assert.equal(s.events.length, 1, "one OrderPlaced, not two");
});

test("command: network failures are retried a bounded number of times", async () => {
  let calls = 0;
  const down = async () => { calls++; throw new TypeError("fetch failed"); };
  const dc = new Cqrsd(URL_, { fetch: down, retries: 3, backoffMs: 5 });
  await assert.rejects(dc.command("PlaceOrder", order(oid())), TypeError);
  assert.equal(calls, 4);
});

test("command: If-Match is sent as an ETag; a mismatch is a 412 problem", async () => {
  const id = oid();
  await c.command("PlaceOrder", order(id));
  const err = await c.command("RecordPayment",
    { order_id: id, payment_id: "p1", amount_cents: 100 }, { ifMatch: 5 }).catch(e => e);
  assert.ok(err instanceof ProblemError);
  assert.equal(err.status, 412);
  assert.equal(err.slug, "precondition-failed");
  const ok = await c.command("RecordPayment",
    { order_id: id, payment_id: "p1", amount_cents: 100 }, { ifMatch: 1 });
  assert.equal(ok.version, 2);
});

test("problems surface as ProblemError with status, type, detail and errors", async () => {
  const bad = await c.command("PlaceOrder", { order_id: "x" }).catch(e => e);
  assert.ok(bad instanceof ProblemError);
  assert.equal(bad.status, 400);
  assert.equal(bad.type, "urn:cqrsd:problem:validation-failed");
  assert.ok(bad.errors.length > 0 && bad.errors.every(e => typeof e.field === "string"));
  const id = oid();
  await c.command("PlaceOrder", order(id));
  const refused = await c.command("ShipOrder",
    { order_id: id, carrier: "DHL", tracking_number: "T1" }).catch(e => e);
  assert.equal(refused.status, 422);
  assert.equal(refused.slug, "refused");
  assert.ok(refused.detail.length > 0);
  assert.equal(refused.message, refused.detail);
  const missing = await c.query("order_summary", { order_id: "no-such-order" }).catch(e => e);
  assert.equal(missing.status, 404);
});

test("query: data with meta; minPosition waits; strong reads", async () => {
  const id = oid();
  const r = await c.command("PlaceOrder", order(id));
  const q = await c.query("order_summary", { order_id: id },
                          { minPosition: r.position, waitMs: 20000 });
  assert.equal(q.data.order_id, id);
  assert.equal(q.data.total_cents, 1000);
  assert.ok(q.meta.position >= r.position);
  assert.equal(q.meta.stale, false);
  assert.equal(q.etag, `"${q.meta.position}"`);
  const v = await c.query("order_summary", { order_id: id }, { minVersion: 1, waitMs: 20000 });
  assert.equal(v.data.version, 1);
  const s = await c.query("order_summary", { order_id: id }, { consistency: "strong" });
  assert.equal(s.meta.consistency, "strong");
  assert.equal(s.data.status, "placed");
});

test("optimistic: a refusal rolls back with the problem's message", async () => {
  const id = oid();
  await c.command("PlaceOrder", order(id));
  const seen = [];
  const out = await c.optimistic({
    type: "ShipOrder", body: { order_id: id, carrier: "DHL", tracking_number: "T" },
    projections: ["order_summaries"],
    apply: () => seen.push("apply"),
    confirm: () => seen.push("confirm"),
    rollback: (e) => seen.push(`rollback:${e.message}`),
  });
  assert.equal(out.outcome, "rolled-back");
  assert.equal(out.error.status, 422);
  assert.equal(seen.length, 2);
  assert.equal(seen[0], "apply");
  assert.equal(seen[1], `rollback:${out.error.detail}`);
});

test("subscribe: projection progress is pushed", async (t) => {
  if (!(await subscribeServed())) return t.skip("this server has no GET /subscribe");
  const got = [];
  let resolve;
  const reached = new Promise(r => { resolve = r; });
  const target = { position: Infinity };
  const sub = c.subscribe({ projection: "order_summaries" }, ev => {
    got.push(ev);
    if (ev.data?.position >= target.position) resolve();
  }, { transport: "fetch" });
  const r = await c.command("PlaceOrder", order(oid()));
  target.position = r.position;
  if (got.some(ev => ev.data?.position >= r.position)) resolve();
  let timer;
  await Promise.race([reached, new Promise((_, rej) => {
    timer = setTimeout(() => rej(new Error(`no progress to ${r.position}: ${JSON.stringify(got)}`)),
                       30000);
  })]).finally(() => clearTimeout(timer));
  sub.close();
  await sub.closed;
  const last = got[got.length - 1];
  assert.equal(last.data.projection, "order_summaries");
  assert.ok(last.id, "events carry ids");
});

test("optimistic: applied at once, confirmed when the push says visible", async (t) => {
  if (!(await subscribeServed())) return t.skip("this server has no GET /subscribe");
  const id = oid();
  const seen = [];
  const out = await c.optimistic({
    type: "PlaceOrder", body: order(id), projections: ["order_summaries"],
    apply: () => seen.push("apply"),
    confirm: (result) => seen.push(`confirm:${result.stream_id}`),
    rollback: (e) => seen.push(`rollback:${e.message}`),
  });
  assert.equal(out.outcome, "confirmed", JSON.stringify(out));
  assert.deepEqual(seen, ["apply", `confirm:order-${id}`]);
  // visible means the read model has it: an eventual read sees it now
  const q = await c.query("order_summary", { order_id: id }, { waitMs: 0 });
  assert.equal(q.data.order_id, id);
});

test("subscribe (Node reader): a cut stream resumes with Last-Event-ID, no gap, no repeat", async (t) => {
  if (!(await subscribeServed())) return t.skip("this server has no GET /subscribe");
  const id = oid();
  await c.command("PlaceOrder", order(id));
  await c.command("RecordPayment", { order_id: id, payment_id: "p1", amount_cents: 300 });
  await c.command("RecordPayment", { order_id: id, payment_id: "p2", amount_cents: 200 });
  const sent = [];
  // the first connection is cut right after its first event
  const cutting = async (url, init) => {
    sent.push(init.headers["Last-Event-ID"] ?? null);
    const res = await fetch(url, init);
    if (sent.length > 1 || !res.ok) return res;
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let text = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += dec.decode(value, { stream: true });
      const m = /\ndata:[^\n]*\n\n/.exec(text);
      if (m) { text = text.slice(0, m.index + m[0].length); break; }
    }
    await reader.cancel();
    return new Response(new Blob([text]).stream(), { status: 200, headers: res.headers });
  };
  const sc = new Cqrsd(URL_, { fetch: cutting, EventSource: null });
  const got = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => { sub.close(); reject(new Error(`got ${JSON.stringify(got)}`)); },
                             30000);
    const sub = sc.subscribe({ stream: `order-${id}`, after: 0 }, ev => {
      got.push(ev);
      if (got.length === 3) { clearTimeout(timer); sub.close(); resolve(); }
    });
    sub.closed.catch(reject);
  });
  assert.deepEqual(got.map(e => e.id), ["1", "2", "3"]);
  assert.deepEqual(got.map(e => e.data.type), ["OrderPlaced", "PaymentReceived", "PaymentReceived"]);
  assert.equal(sent.length >= 2, true);
  assert.equal(sent[0], null);
  assert.equal(sent[1], "1", "the reconnect names the last event seen");
});

test("visible: a command subscription ends with one terminal event", async (t) => {
  if (!(await subscribeServed())) return t.skip("this server has no GET /subscribe");
  const r = await c.command("PlaceOrder", order(oid()));
  const v = await c.visible(r.command_id, ["order_summaries", "sales_dashboard"]);
  assert.equal(v.outcome, "visible");
  assert.deepEqual([...v.data.projections].sort(), ["order_summaries", "sales_dashboard"]);
  assert.equal(v.data.command_id, r.command_id);
  const bad = await c.command("PlaceOrder", { ...order(oid()), currency: "eur" }).catch(e => e);
  assert.equal(bad.status, 400);
});

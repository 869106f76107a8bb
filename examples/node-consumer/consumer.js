#!/usr/bin/env node
// cqrsd-node-consumer: another service reading cqrsd's events from NATS
// JetStream (docs/bus.md). It keeps revenue per currency -- payments
// received less refunds, as cqrsd's own sales_dashboard counts it -- in a
// JSON state file, and shows the three things every consumer of the bus
// needs:
//
//   1. a durable pull consumer: the server remembers what it acknowledged,
//      so a restart goes on where the last run stopped;
//   2. ack after commit: a batch's effects and the position of its last
//      event (the consumer's own inbox checkpoint) are saved in one atomic
//      write (temp file, fsync, rename) and only then acknowledged;
//   3. deduplication by position: delivery is at-least-once (a crash
//      between the save and the ack, the relay re-publishing after a
//      takeover), so an event at or below the checkpoint is acknowledged
//      and skipped. max_ack_pending = the batch size keeps redeliveries in
//      order: nothing newer is handed out while a batch is unacknowledged.
//
// Usage:
//   node consumer.js --nats nats://127.0.0.1:4222 [--stream CQRS_EVENTS]
//        [--subject 'cqrs.events.>'] [--durable node-revenue]
//        [--state revenue.json] [--batch 100] [--ack-wait 5]
//        [--until POSITION] [--quiet] [--crash-after-save N]
//
// It prints one line per batch it applied, and on exit (SIGINT, SIGTERM,
// or --until reached) the state as one JSON line. --crash-after-save N
// (for tests: the inbox at work) kills the process with SIGKILL right
// after the N-th batch's state is saved, before it is acknowledged.
"use strict";

const fs = require("fs");
const path = require("path");
const { connect, AckPolicy, DeliverPolicy, nanos } = require("nats");

// The headers cqrsd's relay puts on every message (docs/bus.md).
const H_POSITION = "Cqrs-Position";
const H_TYPE = "Cqrs-Type";

function usage(msg) {
  if (msg) process.stderr.write(`consumer: ${msg}\n`);
  process.stderr.write(
    "usage: node consumer.js --nats URL [--stream NAME] [--subject SUBJECT]\n" +
      "       [--durable NAME] [--state FILE] [--batch N] [--ack-wait SECONDS]\n" +
      "       [--until POSITION] [--quiet] [--crash-after-save N]\n");
  process.exit(2);
}

function parseArgs(argv) {
  const o = {
    nats: null, stream: "CQRS_EVENTS", subject: "cqrs.events.>",
    durable: "node-revenue", state: "revenue.json", batch: 100, ackWait: 5,
    until: null, quiet: false, crashAfterSave: 0,
  };
  const num = (name, v, min) => {
    if (v === undefined || !/^[0-9]+$/.test(v) || Number(v) < min) {
      usage(`${name} takes a whole number >= ${min}`);
    }
    return Number(v);
  };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    const take = () => {
      if (v === undefined) usage(`${a} needs a value`);
      i++;
      return v;
    };
    switch (a) {
      case "--nats": o.nats = take(); break;
      case "--stream": o.stream = take(); break;
      case "--subject": o.subject = take(); break;
      case "--durable": o.durable = take(); break;
      case "--state": o.state = take(); break;
      case "--batch": o.batch = num(a, take(), 1); break;
      case "--ack-wait": o.ackWait = num(a, take(), 1); break;
      case "--until": o.until = num(a, take(), 0); break;
      case "--crash-after-save": o.crashAfterSave = num(a, take(), 1); break;
      case "--quiet": o.quiet = true; break;
      case "-h": case "--help": usage(); break;
      default: usage(`unknown argument ${a}`);
    }
  }
  if (!o.nats) usage("--nats is required");
  if (!/^[A-Za-z0-9_-]+$/.test(o.durable)) usage("--durable: letters, digits, _ and - only");
  return o;
}

// ---- state: the read model and its checkpoint, saved atomically ----------

function emptyState() {
  return {
    checkpoint: 0,        // position of the last event applied
    events: 0,            // events applied (each once)
    position_sum: 0,      // sum of their positions (lets a test compare)
    duplicates: 0,        // deliveries skipped: at or below the checkpoint
    order_currency: {},   // order_id -> currency (from OrderPlaced)
    revenue_cents: {},    // currency -> payments received less refunds
    orders: {},           // currency -> orders placed
  };
}

function loadState(file) {
  let text;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    if (e.code === "ENOENT") return emptyState();
    throw e;
  }
  const s = JSON.parse(text);
  if (typeof s !== "object" || s === null || !Number.isSafeInteger(s.checkpoint)) {
    throw new Error(`${file}: not a state file of this consumer`);
  }
  return Object.assign(emptyState(), s);
}

function saveState(file, state) {
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, "w", 0o644);
  try {
    fs.writeSync(fd, JSON.stringify(state));
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  const dir = fs.openSync(path.dirname(path.resolve(file)), "r");
  try {
    fs.fsyncSync(dir);
  } finally {
    fs.closeSync(dir);
  }
}

// ---- applying one event -----------------------------------------------------

function isCents(v) {
  return Number.isSafeInteger(v) && v >= 0;
}

// The event's effect on the state. Untrusted input: anything that is not
// the shape we expect is counted as an event but changes no figure.
function apply(state, type, data) {
  if (typeof data !== "object" || data === null) return;
  const oid = typeof data.order_id === "string" ? data.order_id : null;
  switch (type) {
    case "OrderPlaced":
      if (oid && typeof data.currency === "string" && /^[A-Z]{3}$/.test(data.currency)) {
        state.order_currency[oid] = data.currency;
        state.orders[data.currency] = (state.orders[data.currency] || 0) + 1;
      }
      break;
    case "PaymentReceived":
    case "OrderCancelled": {
      const cur = oid ? state.order_currency[oid] : undefined;
      if (!cur) break;
      const delta = type === "PaymentReceived"
        ? (isCents(data.amount_cents) ? data.amount_cents : 0)
        : -(isCents(data.refund_cents) ? data.refund_cents : 0);
      state.revenue_cents[cur] = (state.revenue_cents[cur] || 0) + delta;
      break;
    }
    default:
      break;
  }
}

// Header values are text with control bytes and '%' written as %XX.
function unescapeHeader(v) {
  return v.replace(/%([0-9A-Fa-f]{2})/g, (_, x) => String.fromCharCode(parseInt(x, 16)));
}

// position, type and data of one message; null when it is not one of
// cqrsd's events (it is then acknowledged and left alone). The body is
// the event's data as JSON; everything else is in the headers.
function decode(m) {
  const h = m.headers;
  const pos = h ? h.get(H_POSITION) : "";
  if (!/^[1-9][0-9]{0,15}$/.test(pos)) return null;
  let data;
  try {
    data = m.json();
  } catch (e) {
    data = null;        // not JSON: counted, changes no figure
  }
  return { position: Number(pos), type: unescapeHeader(h.get(H_TYPE)), data };
}

function summary(state) {
  const cur = Object.keys(state.revenue_cents).sort()
    .map((c) => `${c} ${(state.revenue_cents[c] / 100).toFixed(2)}`).join(", ");
  return `checkpoint=${state.checkpoint} events=${state.events} ` +
    `duplicates=${state.duplicates} revenue: ${cur || "none yet"}`;
}

// ---- the loop ---------------------------------------------------------------

async function ensureConsumer(nc, o) {
  const jsm = await nc.jetstreamManager();
  try {
    await jsm.consumers.info(o.stream, o.durable);
  } catch (e) {
    if (!/consumer not found/i.test(String(e.message))) throw e;
    await jsm.consumers.add(o.stream, {
      durable_name: o.durable,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      filter_subject: o.subject,
      max_ack_pending: o.batch,
      ack_wait: nanos(o.ackWait * 1000),
    });
  }
}

async function main() {
  const o = parseArgs(process.argv);
  const state = loadState(o.state);
  let stopping = false;
  const stop = () => { stopping = true; };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);

  const nc = await connect({
    servers: o.nats, name: `cqrsd-node-consumer:${o.durable}`,
    maxReconnectAttempts: -1, reconnectTimeWait: 250,
  });
  let saves = 0;
  try {
    // JetStream may be briefly unavailable (a server restarting): retry.
    for (;;) {
      try {
        await ensureConsumer(nc, o);
        break;
      } catch (e) {
        if (stopping) return;
        process.stderr.write(`consumer: ${e.message}; retrying\n`);
        await new Promise((r) => setTimeout(r, 500));
      }
    }
    const js = nc.jetstream();
    let consumer = null;
    while (!stopping && (o.until === null || state.checkpoint < o.until)) {
      let batch = [];
      try {
        if (!consumer) consumer = await js.consumers.get(o.stream, o.durable);
        const msgs = await consumer.fetch({ max_messages: o.batch, expires: 1000 });
        for await (const m of msgs) batch.push(m);
      } catch (e) {
        // a server restart, a lost connection: fetch again
        process.stderr.write(`consumer: fetch: ${e.message}\n`);
        consumer = null;
        batch = [];
        await new Promise((r) => setTimeout(r, 250));
        continue;
      }
      if (batch.length === 0) continue;
      let applied = 0;
      for (const m of batch) {
        const ev = decode(m);
        if (!ev) continue;
        if (ev.position <= state.checkpoint) {
          state.duplicates++;        // redelivered: already applied
          continue;
        }
        apply(state, ev.type, ev.data);
        state.checkpoint = ev.position;
        state.events++;
        state.position_sum += ev.position;
        applied++;
      }
      // Commit, then acknowledge: a crash in between redelivers the batch,
      // and the checkpoint makes that change nothing.
      saveState(o.state, state);
      saves++;
      if (o.crashAfterSave && saves === o.crashAfterSave) {
        process.kill(process.pid, "SIGKILL");
      }
      for (const m of batch) m.ack();
      await nc.flush();
      if (!o.quiet && applied > 0) process.stdout.write(summary(state) + "\n");
    }
  } finally {
    process.stdout.write(JSON.stringify({
      checkpoint: state.checkpoint, events: state.events,
      position_sum: state.position_sum, duplicates: state.duplicates,
      revenue_cents: state.revenue_cents, orders: state.orders,
    }) + "\n");
    await nc.drain();
  }
}

main().catch((e) => {
  process.stderr.write(`consumer: ${e.stack || e}\n`);
  process.exit(1);
});

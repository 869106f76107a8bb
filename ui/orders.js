// The orders demo: place, pay and ship orders optimistically.
//
// A command's row changes at once (state "pending"); the page then waits
// for the push that says order_summaries has the command's events
// (GET /subscribe?command=ID&projection=order_summaries) and shows the
// read model's row ("confirmed"). A refused command is rolled back and
// its reason shown. While order_summaries lags (paused, or behind) the
// header shows the stale badge and the lag, and rows are read with
// consistency=strong (replayed from the event store) instead; new
// commands then do not wait for the push.
import { Cqrsd } from "./cqrsd.js";
import { $, say } from "./page.js";

const PROJECTION = "order_summaries";
const STALE_MS = 2000; // lag beyond which the read model counts as stale
const api = new Cqrsd("");
const rows = new Map(); // order id -> {tr, summary}
let stale = false;

const money = (c, cur) => `${(c / 100).toFixed(2)} ${cur || ""}`;

function cell(tr, i) { return tr.children[i]; }

function render(id) {
  const r = rows.get(id);
  const s = r.summary;
  const tr = r.tr;
  tr.dataset.state = r.state;
  tr.dataset.status = s.status || "";
  cell(tr, 0).textContent = id;
  cell(tr, 1).textContent = money(s.total_cents, s.currency);
  cell(tr, 2).textContent = s.status || "";
  cell(tr, 3).textContent = s.payment_status || "";
  const b = cell(tr, 4).firstChild;
  b.className = `badge ${r.state}`;
  b.textContent = r.state;
  cell(tr, 5).textContent = r.read || "";
  const [pay, ship] = cell(tr, 6).children;
  pay.disabled = r.state === "pending" || s.status !== "placed";
  ship.disabled = r.state === "pending" || s.status === "shipped" || s.status === "cancelled";
}

function addRow(id, summary, state) {
  const tr = document.createElement("tr");
  tr.dataset.order = id;
  for (let i = 0; i < 7; i++) tr.append(document.createElement("td"));
  cell(tr, 1).className = "num";
  cell(tr, 4).append(document.createElement("span"));
  const pay = document.createElement("button");
  pay.textContent = "Pay";
  pay.className = "pay";
  pay.addEventListener("click", () => pay_(id));
  const ship = document.createElement("button");
  ship.textContent = "Ship";
  ship.className = "ship";
  ship.addEventListener("click", () => ship_(id));
  cell(tr, 6).append(pay, " ", ship);
  $("#orders tbody").prepend(tr);
  rows.set(id, { tr, summary, state });
  render(id);
}

// The read model's row of the order, once it has `position`; strongly
// (from the event store) while the projection is stale.
async function refresh(id, position) {
  const r = rows.get(id);
  try {
    const q = stale
      ? await api.query("order_summary", { order_id: id }, { consistency: "strong" })
      : await api.query("order_summary", { order_id: id }, { minPosition: position, waitMs: 2000 });
    r.summary = q.data;
    r.read = `${q.meta.consistency} @${q.meta.position}${q.meta.stale ? " (stale)" : ""}`;
  } catch (e) {
    r.read = `read failed: ${e.message}`;
  }
}

// Run `type` optimistically: guess() changes the row's summary at once.
async function run(id, type, body, guess, options) {
  const r = rows.get(id);
  const before = r ? { ...r.summary } : null;
  const out = await api.optimistic({
    // while the read model lags, do not wait for it: read strongly
    type, body, options, projections: stale ? [] : [PROJECTION],
    apply: () => guess(),
    confirm: async (result) => {
      await refresh(id, result.position);
      rows.get(id).state = "confirmed";
      render(id);
    },
    timeout: async (result) => {
      // the read model did not get there in time: read strongly
      stale = true;
      await refresh(id, result.position);
      rows.get(id).state = "confirmed";
      rows.get(id).read += " (fallback)";
      render(id);
    },
    rollback: (err) => {
      if (before === null) {
        rows.get(id)?.tr.remove();
        rows.delete(id);
      } else {
        const x = rows.get(id);
        x.summary = before;
        x.state = "rolled-back";
        render(id);
      }
      say(`${type} ${id}: ${err.message}`, "error");
    },
  });
  return out;
}

function place(form) {
  const f = new FormData(form);
  const id = `o-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
  const item = { sku: f.get("sku"), quantity: Number(f.get("quantity")),
                 unit_price_cents: Number(f.get("price")) };
  const body = { order_id: id, customer_id: f.get("customer"), currency: "EUR", items: [item] };
  return run(id, "PlaceOrder", body, () => addRow(id, {
    order_id: id, status: "placed", payment_status: "unpaid", currency: "EUR",
    total_cents: item.quantity * item.unit_price_cents }, "pending"));
}

function pay_(id) {
  const r = rows.get(id);
  const due = r.summary.total_cents - (r.summary.paid_cents || 0);
  return run(id, "RecordPayment",
    { order_id: id, payment_id: `p-${Date.now().toString(36)}`, amount_cents: due }, () => {
      Object.assign(r.summary, { status: "paid", payment_status: "paid", paid_cents: r.summary.total_cents });
      r.state = "pending";
      render(id);
    });
}

function ship_(id) {
  const r = rows.get(id);
  return run(id, "ShipOrder", { order_id: id, carrier: "DHL", tracking_number: `T${Date.now()}` },
    () => {
      r.summary = { ...r.summary, status: "shipped" };
      r.state = "pending";
      render(id);
    });
}

// Freshness of order_summaries: its status, pushed on every checkpoint
// move and read again every second (lag grows while nothing moves).
async function freshness() {
  try {
    const p = await api.projection(PROJECTION);
    const lagMs = p.lag_seconds == null ? null : Math.round(p.lag_seconds * 1000);
    // a projection is a few ms behind after every commit: that is not
    // stale; paused, failed, rebuilding or more than STALE_MS behind is
    stale = p.status !== "running" || (lagMs !== null && lagMs > STALE_MS);
    $("#stale").hidden = !stale;
    $("#freshness").hidden = stale;
    $("#stale").textContent = p.status === "running" ? "stale" : `stale (${p.status})`;
    $("#lag").textContent = stale
      ? `${PROJECTION}: ${p.lag_events} events behind${lagMs == null ? "" : `, ${lagMs} ms`} - reading strongly`
      : `${PROJECTION} @${p.position}`;
    document.body.dataset.stale = String(stale);
  } catch (e) {
    $("#lag").textContent = `status unavailable: ${e.message}`;
  }
}

async function loadCustomer(customer) {
  $("#customer-name").textContent = customer;
  try {
    const q = await api.query("customer_orders", { customer_id: customer, limit: 20 });
    for (const o of q.data.orders.slice().reverse())
      if (!rows.has(o.order_id)) {
        addRow(o.order_id, o, "confirmed");
        rows.get(o.order_id).read = `${q.meta.consistency} @${q.meta.position}`;
        render(o.order_id);
      }
  } catch (e) {
    say(`could not load orders: ${e.message}`, "error");
  }
}

$("#place").addEventListener("submit", ev => {
  ev.preventDefault();
  place(ev.target);
});
$("#place").customer.addEventListener("change", ev => loadCustomer(ev.target.value));

let queued = false; // at most one status read in flight for the pushes
api.subscribe({ projection: PROJECTION }, () => {
  if (queued) return;
  queued = true;
  setTimeout(() => { queued = false; freshness(); }, 200);
}, {
  onError: () => { $("#lag").textContent = "push interrupted; reconnecting"; },
});
setInterval(freshness, 1000);
freshness();
loadCustomer($("#place").customer.value);

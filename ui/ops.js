// The operations page: every projection's status, position and lag, live
// (pushed over GET /subscribe?projection=P and read again every second, as
// lag grows while a projection stands still), a sparkline of the lag, the
// control buttons with rebuild progress, the tail of $all and the command
// rate (from /metrics).
import { Cqrsd } from "./cqrsd.js";
import { $, say } from "./page.js";

const api = new Cqrsd("");
const HISTORY = 120;          // samples of lag kept per projection (1/s)
const rows = new Map();       // name -> {tr, lag: [..]}
const subs = new Map();       // name -> subscription
let lastCommands = null;      // {t, total}
let lastHead = null;          // {t, head}
let tailFrom = null;

function sparkline(values) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", `0 0 ${HISTORY} 24`);
  svg.setAttribute("preserveAspectRatio", "none");
  const max = Math.max(1, ...values);
  const pts = values.map((v, i) =>
    `${HISTORY - values.length + i},${(22 - (v / max) * 20).toFixed(1)}`).join(" ");
  const line = document.createElementNS(NS, "polyline");
  line.setAttribute("points", pts);
  svg.append(line);
  const title = document.createElementNS(NS, "title");
  title.textContent = `max ${max} events behind`;
  svg.append(title);
  return svg;
}

function button(label, name, op) {
  const b = document.createElement("button");
  b.textContent = label;
  b.className = op;
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      const st = await api.control(name, op);
      say(`${op} ${name}: ${st.status}`);
      update(st);
    } catch (e) {
      say(`${op} ${name} refused: ${e.message}`, "error");
    } finally {
      b.disabled = false;
    }
  });
  return b;
}

function row(name) {
  let r = rows.get(name);
  if (r) return r;
  const tr = document.createElement("tr");
  tr.dataset.projection = name;
  for (let i = 0; i < 9; i++) tr.append(document.createElement("td"));
  for (const i of [3, 4, 5]) tr.children[i].className = "num";
  tr.children[8].append(button("pause", name, "pause"), " ", button("resume", name, "resume"),
                        " ", button("rebuild", name, "rebuild"));
  $("#projections tbody").append(tr);
  r = { tr, lag: [] };
  rows.set(name, r);
  // pushed: each time the checkpoint passes a position
  subs.set(name, api.subscribe({ projection: name }, () => refreshOne(name), {
    onOpen: () => { $("#conn").textContent = "live"; $("#conn").className = "badge live"; },
    onError: () => { $("#conn").textContent = "reconnecting"; $("#conn").className = "badge stale"; },
  }));
  return r;
}

function update(p) {
  const r = row(p.name);
  const c = r.tr.children;
  r.tr.dataset.status = p.status;
  c[0].textContent = p.name;
  c[1].textContent = p.mode;
  c[2].replaceChildren(Object.assign(document.createElement("span"),
    { className: `badge ${p.status}`, textContent: p.status }));
  if (p.last_error) c[2].title = p.last_error.message;
  c[3].textContent = p.position;
  c[4].textContent = p.lag_events;
  c[5].textContent = p.lag_seconds == null ? "?" : Math.round(p.lag_seconds * 1000);
  c[6].replaceChildren(sparkline(r.lag));
  if (p.rebuild) {
    const pr = document.createElement("progress");
    pr.max = Math.max(1, p.rebuild.events_total);
    pr.value = p.rebuild.events_done;
    const eta = p.rebuild.eta_seconds == null ? "" : `, ${Math.round(p.rebuild.eta_seconds)} s left`;
    c[7].replaceChildren(pr, ` ${p.rebuild.events_done}/${p.rebuild.events_total}${eta}`);
  } else if (p.last_rebuild) {
    c[7].textContent = `${p.last_rebuild.outcome} ${p.last_rebuild.finished_at || ""}`;
  } else c[7].textContent = "";
}

const pendingOne = new Set();
function refreshOne(name) {
  if (pendingOne.has(name)) return;
  pendingOne.add(name);
  setTimeout(async () => {
    pendingOne.delete(name);
    try { update(await api.projection(name)); } catch { /* next tick */ }
  }, 200);
}

async function tick() {
  try {
    const list = await api.projections();
    for (const p of list) {
      const r = row(p.name);
      r.lag.push(p.lag_events);
      if (r.lag.length > HISTORY) r.lag.shift();
      update(p);
    }
  } catch (e) {
    $("#conn").textContent = `unreachable: ${e.message}`;
    $("#conn").className = "badge failed";
  }
  await Promise.all([rates(), tail()]);
}

async function rates() {
  try {
    const res = await fetch("/metrics");
    const text = await res.text();
    let total = 0;
    for (const line of text.split("\n"))
      if (line.startsWith("cqrsd_commands_total{")) total += Number(line.split(" ").pop()) || 0;
    const now = performance.now();
    if (lastCommands) {
      const dt = (now - lastCommands.t) / 1000;
      $("#rate").textContent = ((total - lastCommands.total) / dt).toFixed(1);
    }
    lastCommands = { t: now, total };
  } catch { /* metrics unavailable: keep the last value */ }
}

function addTail(e) {
  const body = $("#tail tbody");
  const tr = document.createElement("tr");
  for (const v of [e.position, e.recorded_at, e.stream_id, e.type]) {
    const td = document.createElement("td");
    td.textContent = v;
    tr.append(td);
  }
  tr.children[0].className = "num";
  tailFrom = Math.max(tailFrom, e.position + 1);
  body.prepend(tr);
  while (body.children.length > 50) body.lastChild.remove();
}

// The head and the event rate, and the tail of $all: pushed
// (GET /subscribe?stream=$all, from 20 events back), or read page by page
// each second if this server cannot push it.
let tailSub = null;
async function tail() {
  try {
    const h = await api.health();
    const now = performance.now();
    $("#head").textContent = h.head_position;
    if (lastHead) {
      const dt = (now - lastHead.t) / 1000;
      $("#erate").textContent = ((h.head_position - lastHead.head) / dt).toFixed(1);
    }
    lastHead = { t: now, head: h.head_position };
    if (tailFrom === null) {
      tailFrom = Math.max(1, h.head_position - 19);
      tailSub = api.subscribe({ stream: "$all", after: tailFrom - 1 }, ev => addTail(ev.data),
                              { events: ["event"] });
      tailSub.closed.catch(() => { tailSub = null; });
      return;
    }
    if (tailSub !== null || tailFrom > h.head_position) return;
    const page = await api.events(tailFrom, 100);
    page.events.forEach(addTail);
    tailFrom = page.next_position;
  } catch { /* next tick */ }
}

tick();
setInterval(tick, 1000);

// cqrsd.js -- a client for cqrsd's HTTP API, for browsers and Node >= 18.
//
// One ES module, no dependencies, no build step:
//
//   import { Cqrsd, ProblemError } from "./cqrsd.js";
//   const c = new Cqrsd("http://127.0.0.1:8080");      // "" in a page cqrsd serves
//   const r = await c.command("PlaceOrder", body);      // {command_id, position, ...}
//   const q = await c.query("order_summary", {order_id}, {minPosition: r.position});
//   const sub = c.subscribe({projection: "order_summaries"}, ev => ...);
//   await c.optimistic({type, body, projections, apply, confirm, rollback});
//
// Errors: every answer that is not 2xx (or 304) throws a ProblemError with
// the problem's status, type, title, detail and errors (RFC 9457); network
// failures throw what fetch threw, after the retries below.
//
// Commands are sent with an Idempotency-Key (crypto.randomUUID() unless
// given) and sent again with the SAME key when the network fails or the
// server answers 503 (nothing was written then): the server answers a
// repeated key with the first answer, so a command is never carried out
// twice however often it is resent. Bounded: `retries` (default 4) more
// tries, waiting backoffMs * 2^n (default 250 ms, at most 8 s) with jitter.
//
// Subscriptions (GET /subscribe, Server-Sent Events) use the browser's
// EventSource when there is one, and otherwise (Node) a small SSE reader
// over fetch that reconnects with Last-Event-ID, so no event is missed.

const DEFAULT_EVENTS = ["message", "progress", "event", "visible", "refused",
                        "timeout", "lag", "status"];
const TERMINAL = new Set(["visible", "refused", "timeout"]);

/** An answer that is not a success, as the server's problem+json says. */
export class ProblemError extends Error {
  constructor(status, problem, headers) {
    const p = problem && typeof problem === "object" ? problem : {};
    super(p.detail || p.title || `HTTP ${status}`);
    this.name = "ProblemError";
    this.status = status;
    this.type = p.type || "about:blank";
    this.title = p.title || "";
    this.detail = p.detail || "";
    this.errors = Array.isArray(p.errors) ? p.errors : [];
    this.problem = problem;
    this.headers = headers;
  }
  /** The last part of the type: "refused" for urn:cqrsd:problem:refused. */
  get slug() {
    const i = this.type.lastIndexOf(":");
    return i >= 0 ? this.type.slice(i + 1) : this.type;
  }
}

const sleep = (ms, signal) => new Promise((resolve, reject) => {
  if (signal?.aborted) return reject(signal.reason);
  const t = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(t); reject(signal.reason); },
                          { once: true });
});

function uuid() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  const b = new Uint8Array(16);
  globalThis.crypto.getRandomValues(b);
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map(x => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

async function parseBody(res) {
  const text = await res.text();
  if (!text) return null;
  const ct = res.headers.get("content-type") || "";
  if (ct.includes("json")) {
    try { return JSON.parse(text); } catch { return text; }
  }
  return text;
}

function parseData(s) {
  try { return JSON.parse(s); } catch { return s; }
}

export class Cqrsd {
  /**
   * baseUrl: "http://host:port" ("" or omitted: the page's own origin).
   * options: {fetch, EventSource (null: never use it), headers (added to
   * every request, e.g. Authorization), retries, backoffMs}.
   */
  constructor(baseUrl = "", options = {}) {
    this.base = String(baseUrl).replace(/\/+$/, "");
    this.fetch = options.fetch || globalThis.fetch.bind(globalThis);
    this.EventSource = options.EventSource === undefined ? globalThis.EventSource
                                                         : options.EventSource;
    this.headers = options.headers || {};
    this.retries = options.retries ?? 4;
    this.backoffMs = options.backoffMs ?? 250;
  }

  url(path, params) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {}))
      for (const x of [].concat(v))  // an array: the parameter repeated
        if (x !== undefined && x !== null) qs.append(k, String(x));
    const s = qs.toString();
    return this.base + path + (s ? "?" + s : "");
  }

  /** One request; the parsed body of a 2xx, else a ProblemError. */
  async request(method, path, { params, body, headers, signal } = {}) {
    const h = { Accept: "application/json", ...this.headers, ...headers };
    const init = { method, headers: h, signal };
    if (body !== undefined) {
      h["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await this.fetch(this.url(path, params), init);
    const data = await parseBody(res);
    if (!res.ok && res.status !== 304) throw new ProblemError(res.status, data, res.headers);
    return { status: res.status, headers: res.headers, body: data };
  }

  /**
   * POST /commands/{type}. options: {idempotencyKey, ifMatch (a version),
   * waitFor (a projection), waitMs, signal}. Returns the 202 body
   * ({command_id, stream_id, version, position, events, ...}) with
   * `idempotencyKey`, `etag` and `replayed` added.
   */
  async command(type, body, options = {}) {
    const key = options.idempotencyKey || uuid();
    const headers = { "Idempotency-Key": key };
    if (options.ifMatch !== undefined && options.ifMatch !== null)
      headers["If-Match"] = `"${options.ifMatch}"`;
    const params = { wait_for: options.waitFor, wait_ms: options.waitMs };
    for (let attempt = 0; ; attempt++) {
      let res;
      try {
        res = await this.request("POST", `/commands/${encodeURIComponent(type)}`,
                                 { params, body, headers, signal: options.signal });
      } catch (err) {
        const again = err instanceof ProblemError ? err.status === 503 : !options.signal?.aborted;
        if (!again || attempt >= this.retries) throw err;
        let wait = Math.min(this.backoffMs * 2 ** attempt, 8000);
        const ra = err instanceof ProblemError ? Number(err.headers?.get("retry-after")) : NaN;
        if (ra > 0) wait = Math.max(wait, Math.min(ra * 1000, 8000));
        await sleep(wait * (0.75 + Math.random() / 2), options.signal);
        continue;
      }
      return { ...res.body, idempotencyKey: key, etag: res.headers.get("etag"),
               replayed: res.headers.get("idempotency-replayed") === "true" };
    }
  }

  /**
   * GET /queries/{name}. options: {minPosition, minVersion, consistency
   * ("strong"), waitMs, signal}. Returns {data, meta, etag}.
   */
  async query(name, params = {}, options = {}) {
    const p = { ...params, min_position: options.minPosition, min_version: options.minVersion,
                consistency: options.consistency, wait_ms: options.waitMs };
    const res = await this.request("GET", `/queries/${encodeURIComponent(name)}`,
                                   { params: p, signal: options.signal });
    return { data: res.body.data, meta: res.body.meta, etag: res.headers.get("etag") };
  }

  /** GET /projections: the status of every projection. */
  async projections() {
    return (await this.request("GET", "/projections")).body.projections;
  }

  /** GET /projections/{name}. */
  async projection(name) {
    return (await this.request("GET", `/projections/${encodeURIComponent(name)}`)).body;
  }

  /** POST /projections/{name}/{op}: pause, resume, rebuild, reset, retry, skip. */
  async control(name, op) {
    return (await this.request("POST",
      `/projections/${encodeURIComponent(name)}/${encodeURIComponent(op)}`)).body;
  }

  /** GET /streams/$all from a position: {events, next_position, head_position}. */
  async events(fromPosition = 1, limit = 100) {
    return (await this.request("GET", "/streams/$all",
      { params: { from_position: fromPosition, limit } })).body;
  }

  /** GET /healthz. */
  async health() {
    return (await this.request("GET", "/healthz")).body;
  }

  /**
   * GET /subscribe with params ({projection, after} | {stream} |
   * {command, projection}). onEvent({type, id, data}) is called for each
   * event (data parsed as JSON when it is JSON). options: {lastEventId,
   * onError(err), onOpen(), events (names to listen to with EventSource),
   * transport ("eventsource" | "fetch")}.
   * Returns {close(), closed (a promise settled when it ends: after a
   * terminal event of a command subscription, close(), or a refusal such
   * as 404/503, which rejects it with a ProblemError)}.
   */
  subscribe(params, onEvent, options = {}) {
    const ES = options.transport === "fetch" ? null : this.EventSource;
    if (ES && Object.keys(this.headers).length === 0)
      return this.#subscribeES(ES, params, onEvent, options);
    return this.#subscribeFetch(params, onEvent, options);
  }

  #subscribeES(ES, params, onEvent, options) {
    const es = new ES(this.url("/subscribe", params));
    let settle;
    const closed = new Promise((resolve, reject) => { settle = { resolve, reject }; });
    const close = () => { es.close(); settle.resolve(); };
    for (const name of options.events || DEFAULT_EVENTS)
      es.addEventListener(name, e => {
        onEvent({ type: name, id: e.lastEventId, data: parseData(e.data) });
        if (params.command && TERMINAL.has(name)) close();
      });
    es.onopen = () => options.onOpen?.();
    es.onerror = () => {
      // CLOSED: the server refused (EventSource does not say why); else
      // the browser reconnects by itself with Last-Event-ID.
      if (es.readyState === 2) {
        settle.reject(new ProblemError(0, { detail: "subscription refused" }));
      } else options.onError?.(new Error("subscription interrupted; reconnecting"));
    };
    return { close, closed };
  }

  #subscribeFetch(params, onEvent, options) {
    const ac = new AbortController();
    let lastId = options.lastEventId ?? null;
    let retryMs = 1000;
    let done = false;
    const close = () => { done = true; ac.abort(); };
    const run = async () => {
      while (!done) {
        const headers = { Accept: "text/event-stream", ...this.headers };
        if (lastId !== null) headers["Last-Event-ID"] = String(lastId);
        let res;
        try {
          res = await this.fetch(this.url("/subscribe", params), { headers, signal: ac.signal });
        } catch (err) {
          if (done) return;
          options.onError?.(err);
          await sleep(retryMs, ac.signal).catch(() => {});
          continue;
        }
        if (!res.ok) {
          const p = await parseBody(res).catch(() => null);
          const err = new ProblemError(res.status, p, res.headers);
          if (res.status === 503 && !done) {       // full: come back later
            options.onError?.(err);
            const ra = Number(res.headers.get("retry-after")) || 1;
            await sleep(Math.min(ra * 1000, 30000), ac.signal).catch(() => {});
            continue;
          }
          throw err;
        }
        options.onOpen?.();
        try {
          for await (const ev of readSSE(res.body)) {
            if (ev.retry !== undefined) { retryMs = ev.retry; continue; }
            if (ev.id !== undefined) lastId = ev.id;
            if (ev.data === undefined) continue;
            onEvent({ type: ev.event || "message", id: ev.id ?? lastId, data: parseData(ev.data) });
            if (params.command && TERMINAL.has(ev.event)) { close(); return; }
          }
        } catch (err) {
          if (done) return;
          options.onError?.(err);
        }
        if (done) return;
        await sleep(retryMs, ac.signal).catch(() => {});
      }
    };
    const closed = run();
    closed.catch(() => {});
    return { close, closed };
  }

  /**
   * Wait until every projection in `projections` has applied the events
   * of command `commandId` (GET /subscribe?command=ID&projection=P&projection=Q).
   * Resolves {outcome: "visible" | "refused" | "timeout", data}.
   */
  visible(commandId, projections, options = {}) {
    return new Promise((resolve, reject) => {
      let got = null;
      const sub = this.subscribe({ command: commandId, projection: [].concat(projections) },
        ev => { if (TERMINAL.has(ev.type) && !got) got = { outcome: ev.type, data: ev.data }; },
        { ...options, events: ["visible", "refused", "timeout"] });
      sub.closed.then(() => got ? resolve(got) : reject(new Error("subscription ended"))
                      , reject);
    });
  }

  /**
   * An optimistic command:
   *   apply()          called at once with no argument: show the expected state;
   *   the command `type`/`body` (with `options` as for command()) is sent;
   *   confirm(result, visible)  when the push says every projection in
   *                    `projections` has the command's events;
   *   rollback(error)  on a refusal (a ProblemError: error.message is the
   *                    problem's detail) or when the command could not be sent;
   *   timeout(result)  the server gave up waiting (the read model lags):
   *                    read strongly instead.
   * Resolves {outcome: "confirmed" | "rolled-back" | "timeout", result, error}.
   */
  async optimistic({ type, body, options, projections = [], apply, confirm, rollback, timeout }) {
    const undo = apply?.();
    let result;
    try {
      result = await this.command(type, body, options);
    } catch (error) {
      rollback?.(error, undo);
      return { outcome: "rolled-back", error };
    }
    if (projections.length === 0) {
      confirm?.(result, null);
      return { outcome: "confirmed", result };
    }
    let v;
    try {
      v = await this.visible(result.command_id, projections);
    } catch (error) {
      timeout?.(result, error);
      return { outcome: "timeout", result, error };
    }
    if (v.outcome === "visible") {
      confirm?.(result, v.data);
      return { outcome: "confirmed", result, visible: v.data };
    }
    if (v.outcome === "refused") {
      const error = new ProblemError(422, v.data, null);
      rollback?.(error, undo);
      return { outcome: "rolled-back", result, error };
    }
    timeout?.(result, v.data);
    return { outcome: "timeout", result };
  }
}

/**
 * Parse a text/event-stream body (a web ReadableStream of bytes) into
 * events {event, data, id, retry} as the HTML standard says: lines end in
 * CR, LF or CRLF; "field: value"; data lines joined with "\n"; a blank line
 * dispatches; comments (":") are skipped.
 */
export async function* readSSE(body) {
  const reader = body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  let ev = {};
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += dec.decode(value, { stream: true });
      let m;
      while ((m = /\r\n|\r|\n/.exec(buf)) !== null) {
        if (m[0] === "\r" && m.index === buf.length - 1) break; // maybe CRLF
        const line = buf.slice(0, m.index);
        buf = buf.slice(m.index + m[0].length);
        if (line === "") {
          if (data.length > 0) ev.data = data.join("\n");
          if (ev.data !== undefined || ev.retry !== undefined) yield ev;
          ev = {}; data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const c = line.indexOf(":");
        const field = c < 0 ? line : line.slice(0, c);
        let value = c < 0 ? "" : line.slice(c + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") data.push(value);
        else if (field === "event") ev.event = value;
        else if (field === "id" && !value.includes("\0")) ev.id = value;
        else if (field === "retry" && /^\d+$/.test(value)) ev.retry = Number(value);
      }
    }
  } finally {
    reader.releaseLock?.();
    body.cancel?.().catch?.(() => {});
  }
}

export default Cqrsd;

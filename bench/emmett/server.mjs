// bench/emmett/server.mjs — the peer in cqrsd's benchmarks: PlaceOrder on
// Emmett 0.38.5's SQLite event store (@event-driven-io/emmett-sqlite) behind
// Express 4, as Emmett's samples write a command endpoint: CommandHandler
// (aggregate the stream, decide, append with an expected version). Emmett's
// own Express layer (@event-driven-io/emmett-expressjs) has no 0.38.5 on npm
// (0.20.0 and 0.35.0-alpha.2 only), so the few lines of it used here (send
// 202, map an Emmett error's errorCode to the status) are written out below.
//
// POST /commands/PlaceOrder takes the body cqrsd takes (bench/placeorder.lua
// sends it): {"order_id", "customer_id", "currency", "items":[{"sku",
// "quantity", "unit_price_cents"}]}; it appends one OrderPlaced event to a
// new stream order-ORDER_ID, expecting the stream not to exist
// (STREAM_DOES_NOT_EXIST), and answers 202 as cqrsd does. A repeated order id
// is a conflict (Emmett's IllegalStateError, 403, or its version conflict,
// 412); a bad body a 400. GET /healthz answers 200 (used to wait for start-up).
//
// Run as:  node server.mjs PORT DB_FILE  (listens on 127.0.0.1;  bench/run.sh installs the
// packages from package.json into BUILD_DIR/emmett with npm and starts it).
// Emmett's defaults are kept: its connection per operation, WAL, SQLite's
// default synchronous (FULL); nothing is tuned.
import {
  CommandHandler,
  IllegalStateError,
  STREAM_DOES_NOT_EXIST,
  ValidationError,
} from '@event-driven-io/emmett';
import express from 'express';
import http from 'node:http';
import { getSQLiteEventStore } from '@event-driven-io/emmett-sqlite';

const port = Number(process.argv[2] ?? 3000);
const fileName = process.argv[3] ?? 'emmett.db';

const eventStore = getSQLiteEventStore({
  fileName,
  schema: { autoMigration: 'CreateOrUpdate' },
});

const handle = CommandHandler({
  evolve: (state, event) =>
    event.type === 'OrderPlaced' ? { placed: true } : state,
  initialState: () => ({ placed: false }),
  mapToStreamId: (id) => `order-${id}`,
});

const text = (v, what) => {
  if (typeof v !== 'string' || v.length === 0 || v.length > 200)
    throw new ValidationError(`${what} must be a non-empty string`);
  return v;
};
const whole = (v, what) => {
  if (!Number.isInteger(v) || v < 1)
    throw new ValidationError(`${what} must be a positive whole number`);
  return v;
};

const placeOrder = (body) => {
  if (body === null || typeof body !== 'object')
    throw new ValidationError('the body must be a JSON object');
  if (!Array.isArray(body.items) || body.items.length === 0)
    throw new ValidationError('items must be a non-empty array');
  return {
    order_id: text(body.order_id, 'order_id'),
    customer_id: text(body.customer_id, 'customer_id'),
    currency: text(body.currency, 'currency'),
    items: body.items.map((it) => ({
      sku: text(it?.sku, 'sku'),
      quantity: whole(it?.quantity, 'quantity'),
      unit_price_cents: whole(it?.unit_price_cents, 'unit_price_cents'),
    })),
  };
};

const app = express();
app.set('etag', false);
app.use(express.json());

app.post('/commands/PlaceOrder', async (request, response) => {
  try {
    const data = placeOrder(request.body);
    const result = await handle(
      eventStore,
      data.order_id,
      (state) => {
        if (state.placed)
          throw new IllegalStateError(`order ${data.order_id} exists`);
        return { type: 'OrderPlaced', data };
      },
      { expectedStreamVersion: STREAM_DOES_NOT_EXIST },
    );
    response
      .status(202)
      .location(`/orders/${encodeURIComponent(data.order_id)}`)
      .json({
        order_id: data.order_id,
        position: String(result.lastEventGlobalPosition),
      });
  } catch (error) {
    // as emmett-expressjs's problemDetailsMiddleware: an Emmett error's
    // errorCode is the status, anything else is a 500
    const code = Number(error?.errorCode);
    const status = Number.isInteger(code) && code >= 100 && code < 600 ? code : 500;
    response.status(status).json({ status, detail: String(error?.message ?? error) });
  }
});

app.get('/healthz', (_request, response) => {
  response.status(200).json({ status: 'ok' });
});

// the loopback only
http.createServer(app).listen(port, '127.0.0.1');

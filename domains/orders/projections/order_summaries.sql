-- Order summaries: one row per order with its status and payment status,
-- and, over the same rows, each customer's orders newest first.
--
-- Idempotent: OrderPlaced inserts once (ON CONFLICT DO NOTHING) and every
-- later event updates only a row whose version is older than the event's,
-- so an event applied twice changes nothing.
--
-- @projection order_summaries
-- @version 1
-- @mode async

CREATE TABLE IF NOT EXISTS order_summaries (
    order_id        TEXT PRIMARY KEY,
    customer_id     TEXT NOT NULL,
    status          TEXT NOT NULL,
    payment_status  TEXT NOT NULL,
    currency        TEXT NOT NULL,
    total_cents     BIGINT NOT NULL,
    paid_cents      BIGINT NOT NULL,
    item_count      BIGINT NOT NULL,
    placed_at       TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    placed_position BIGINT NOT NULL,
    version         BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS order_summaries_by_customer
    ON order_summaries (customer_id, placed_position);

-- @on OrderPlaced
INSERT INTO order_summaries (order_id, customer_id, status, payment_status,
    currency, total_cents, paid_cents, item_count, placed_at, updated_at,
    placed_position, version)
VALUES (:data.order_id, :data.customer_id, 'placed', 'unpaid',
    :data.currency, :data.total_cents, 0, COALESCE(:data.item_count, 0),
    :time, :time, :position, :version)
ON CONFLICT (order_id) DO NOTHING;

-- @on PaymentReceived
UPDATE order_summaries
   SET paid_cents = :data.paid_cents,
       payment_status = CASE WHEN :data.paid_cents >= total_cents
                             THEN 'paid' ELSE 'partially_paid' END,
       updated_at = :time, version = :version
 WHERE order_id = :data.order_id AND version < :version;

-- @on OrderPaid
UPDATE order_summaries
   SET status = 'paid', payment_status = 'paid', updated_at = :time,
       version = :version
 WHERE order_id = :data.order_id AND version < :version;

-- @on OrderShipped
UPDATE order_summaries
   SET status = 'shipped', updated_at = :time, version = :version
 WHERE order_id = :data.order_id AND version < :version;

-- @on OrderCancelled
UPDATE order_summaries
   SET status = 'cancelled',
       payment_status = CASE WHEN :data.refund_cents > 0
                             THEN 'refund_due' ELSE payment_status END,
       updated_at = :time, version = :version
 WHERE order_id = :data.order_id AND version < :version;

-- @query order_summary
-- @param order_id id required
-- @stream order-{order_id}
-- @result one
SELECT order_id, customer_id, status, payment_status, currency, total_cents,
       paid_cents, item_count, placed_at, updated_at, version
  FROM order_summaries
 WHERE order_id = :order_id;

-- @query customer_orders
-- @param customer_id id required
-- @param limit int 1..100 default 20
-- @param after int 1..9223372036854775807 default 9223372036854775807
-- @result page orders cursor
SELECT order_id, customer_id, status, payment_status, currency, total_cents,
       paid_cents, item_count, placed_at, updated_at, version,
       placed_position AS cursor
  FROM order_summaries
 WHERE customer_id = :customer_id AND placed_position < :after
 ORDER BY placed_position DESC
 LIMIT :limit;

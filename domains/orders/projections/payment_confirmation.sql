-- Payment confirmation: the synchronous read model. It is applied inline,
-- in the same transaction as the command's events, so a client that got
-- 202 for a payment reads its confirmation in the next request, without
-- waiting.
--
-- @projection payment_confirmation
-- @version 1
-- @mode inline

CREATE TABLE IF NOT EXISTS payment_confirmations (
    order_id        TEXT PRIMARY KEY,
    currency        TEXT NOT NULL,
    total_cents     BIGINT NOT NULL,
    paid_cents      BIGINT NOT NULL,
    status          TEXT NOT NULL,
    last_payment_id TEXT,
    updated_at      TEXT NOT NULL,
    version         BIGINT NOT NULL
);

-- @on OrderPlaced
INSERT INTO payment_confirmations (order_id, currency, total_cents,
    paid_cents, status, last_payment_id, updated_at, version)
VALUES (:data.order_id, :data.currency, :data.total_cents, 0, 'unpaid',
    NULL, :time, :version)
ON CONFLICT (order_id) DO NOTHING;

-- @on PaymentReceived
UPDATE payment_confirmations
   SET paid_cents = :data.paid_cents, last_payment_id = :data.payment_id,
       status = CASE WHEN :data.paid_cents >= total_cents
                     THEN 'paid' ELSE 'partially_paid' END,
       updated_at = :time, version = :version
 WHERE order_id = :data.order_id AND version < :version;

-- @on OrderPaid
UPDATE payment_confirmations
   SET status = 'paid', updated_at = :time, version = :version
 WHERE order_id = :data.order_id AND version < :version;

-- @on OrderCancelled
UPDATE payment_confirmations
   SET status = CASE WHEN :data.refund_cents > 0
                     THEN 'refund_due' ELSE 'cancelled' END,
       updated_at = :time, version = :version
 WHERE order_id = :data.order_id AND version < :version;

-- @query payment_confirmation
-- @param order_id id required
-- @stream order-{order_id}
-- @result one
SELECT order_id, status, currency, total_cents, paid_cents, last_payment_id,
       updated_at, version
  FROM payment_confirmations
 WHERE order_id = :order_id;

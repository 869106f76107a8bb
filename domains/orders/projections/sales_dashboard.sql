-- Sales dashboard: orders per status, orders and revenue per currency,
-- orders and revenue per day. Revenue is money received (payments) less
-- refunds (cancellations); a payment counts on the day it was received.
--
-- Exact under redelivery: counters are never blindly incremented. Each
-- order has a row in dashboard_orders holding the version of the last
-- event applied to it; every counter update is guarded by "this order's
-- row is older than this event" (or "does not exist yet", for
-- OrderPlaced), and the event's last statement then moves the row's
-- version forward. An event applied twice finds the guard closed.
--
-- @projection sales_dashboard
-- @version 1
-- @mode async

CREATE TABLE IF NOT EXISTS dashboard_orders (
    order_id      TEXT PRIMARY KEY,
    status        TEXT NOT NULL,
    currency      TEXT NOT NULL,
    revenue_cents BIGINT NOT NULL,
    version       BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS dashboard_status (
    status TEXT PRIMARY KEY,
    orders BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS dashboard_currency (
    currency      TEXT PRIMARY KEY,
    orders        BIGINT NOT NULL,
    revenue_cents BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS dashboard_day (
    day           TEXT PRIMARY KEY,
    orders        BIGINT NOT NULL,
    revenue_cents BIGINT NOT NULL
);

-- @on OrderPlaced
INSERT INTO dashboard_status (status, orders)
SELECT 'placed', 1
 WHERE NOT EXISTS (SELECT 1 FROM dashboard_orders
                    WHERE order_id = :data.order_id)
ON CONFLICT (status) DO UPDATE SET orders = dashboard_status.orders + 1;
INSERT INTO dashboard_currency (currency, orders, revenue_cents)
SELECT :data.currency, 1, 0
 WHERE NOT EXISTS (SELECT 1 FROM dashboard_orders
                    WHERE order_id = :data.order_id)
ON CONFLICT (currency) DO UPDATE SET orders = dashboard_currency.orders + 1;
INSERT INTO dashboard_day (day, orders, revenue_cents)
SELECT :day, 1, 0
 WHERE NOT EXISTS (SELECT 1 FROM dashboard_orders
                    WHERE order_id = :data.order_id)
ON CONFLICT (day) DO UPDATE SET orders = dashboard_day.orders + 1;
INSERT INTO dashboard_orders (order_id, status, currency, revenue_cents,
    version)
VALUES (:data.order_id, 'placed', :data.currency, 0, :version)
ON CONFLICT (order_id) DO NOTHING;

-- @on PaymentReceived
UPDATE dashboard_currency
   SET revenue_cents = revenue_cents + :data.amount_cents
 WHERE currency = (SELECT currency FROM dashboard_orders
                    WHERE order_id = :data.order_id AND version < :version);
INSERT INTO dashboard_day (day, orders, revenue_cents)
SELECT :day, 0, :data.amount_cents
 WHERE EXISTS (SELECT 1 FROM dashboard_orders
                WHERE order_id = :data.order_id AND version < :version)
ON CONFLICT (day) DO UPDATE
   SET revenue_cents = dashboard_day.revenue_cents + excluded.revenue_cents;
UPDATE dashboard_orders
   SET revenue_cents = revenue_cents + :data.amount_cents, version = :version
 WHERE order_id = :data.order_id AND version < :version;

-- @on OrderPaid
UPDATE dashboard_status SET orders = orders - 1
 WHERE status = (SELECT status FROM dashboard_orders
                  WHERE order_id = :data.order_id AND version < :version);
INSERT INTO dashboard_status (status, orders)
SELECT 'paid', 1
 WHERE EXISTS (SELECT 1 FROM dashboard_orders
                WHERE order_id = :data.order_id AND version < :version)
ON CONFLICT (status) DO UPDATE SET orders = dashboard_status.orders + 1;
UPDATE dashboard_orders SET status = 'paid', version = :version
 WHERE order_id = :data.order_id AND version < :version;

-- @on OrderShipped
UPDATE dashboard_status SET orders = orders - 1
 WHERE status = (SELECT status FROM dashboard_orders
                  WHERE order_id = :data.order_id AND version < :version);
INSERT INTO dashboard_status (status, orders)
SELECT 'shipped', 1
 WHERE EXISTS (SELECT 1 FROM dashboard_orders
                WHERE order_id = :data.order_id AND version < :version)
ON CONFLICT (status) DO UPDATE SET orders = dashboard_status.orders + 1;
UPDATE dashboard_orders SET status = 'shipped', version = :version
 WHERE order_id = :data.order_id AND version < :version;

-- @on OrderCancelled
UPDATE dashboard_status SET orders = orders - 1
 WHERE status = (SELECT status FROM dashboard_orders
                  WHERE order_id = :data.order_id AND version < :version);
INSERT INTO dashboard_status (status, orders)
SELECT 'cancelled', 1
 WHERE EXISTS (SELECT 1 FROM dashboard_orders
                WHERE order_id = :data.order_id AND version < :version)
ON CONFLICT (status) DO UPDATE SET orders = dashboard_status.orders + 1;
UPDATE dashboard_currency
   SET revenue_cents = revenue_cents - :data.refund_cents
 WHERE currency = (SELECT currency FROM dashboard_orders
                    WHERE order_id = :data.order_id AND version < :version);
INSERT INTO dashboard_day (day, orders, revenue_cents)
SELECT :day, 0, 0 - :data.refund_cents
 WHERE EXISTS (SELECT 1 FROM dashboard_orders
                WHERE order_id = :data.order_id AND version < :version)
ON CONFLICT (day) DO UPDATE
   SET revenue_cents = dashboard_day.revenue_cents + excluded.revenue_cents;
UPDATE dashboard_orders
   SET status = 'cancelled',
       revenue_cents = revenue_cents - :data.refund_cents,
       version = :version
 WHERE order_id = :data.order_id AND version < :version;

-- @query sales_dashboard
-- @result sections
-- @section by_status
SELECT status, orders FROM dashboard_status WHERE orders <> 0 ORDER BY status;
-- @section by_currency
SELECT currency, orders, revenue_cents FROM dashboard_currency
 ORDER BY currency;
-- @section by_day
SELECT day, orders, revenue_cents FROM dashboard_day ORDER BY day;

-- @projection order_summaries
-- @version 3
-- @mode async

CREATE TABLE IF NOT EXISTS order_summaries (
    order_id    TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    status      TEXT NOT NULL,
    total_cents BIGINT NOT NULL DEFAULT 0,
    placed_at   TEXT NOT NULL,
    version     BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS order_summaries_customer
    ON order_summaries (customer_id, placed_at);
CREATE TABLE IF NOT EXISTS order_lines (
    order_id TEXT NOT NULL,
    sku      TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    PRIMARY KEY (order_id, sku)
);
CREATE TABLE IF NOT EXISTS daily_sales (
    day    TEXT PRIMARY KEY,
    orders BIGINT NOT NULL
);

-- @on OrderPlaced
INSERT INTO order_summaries (order_id, customer_id, status, total_cents,
                             placed_at, version)
VALUES (:data.order_id, :data.customer_id, 'placed', :data.total_cents,
        :time, :version)
ON CONFLICT (order_id) DO UPDATE SET status = excluded.status,
    version = excluded.version
WHERE order_summaries.version < excluded.version;
INSERT INTO daily_sales (day, orders) VALUES (:day, 1)
ON CONFLICT (day) DO UPDATE SET orders = daily_sales.orders + 1;

-- @on OrderPlaced @each data.items
INSERT INTO order_lines (order_id, sku, quantity)
VALUES (:data.order_id, :item.sku, :item.quantity)
ON CONFLICT (order_id, sku) DO NOTHING;

-- @on OrderCancelled
UPDATE order_summaries SET status = 'cancelled', version = :version
WHERE order_id = :data.order_id AND version < :version;

-- @query order_summary
-- @param order_id id required
-- @stream order-{order_id}
-- @result one
SELECT order_id, customer_id, status, total_cents, placed_at, version
FROM order_summaries WHERE order_id = :order_id;

-- @query customer_orders
-- @param customer_id id required
-- @param limit int 1..100 default 20
-- @param after text 0..64 default ''
-- @result page orders placed_at
SELECT order_id, status, total_cents, placed_at FROM order_summaries
WHERE customer_id = :customer_id AND (:after = '' OR placed_at < :after)
ORDER BY placed_at DESC LIMIT :limit;

-- @query sales_dashboard
-- @result sections
-- @section by_status
SELECT status, COUNT(*) AS orders FROM order_summaries GROUP BY status;
-- @section per_day
SELECT day, orders FROM daily_sales ORDER BY day;

-- @projection p
-- @version 1
-- @on E @each data.items
INSERT INTO t VALUES (:item.sku, :item, :item[0], :data.items[1].q);

-- @projection p
-- @version 1
-- @on E
INSERT OR REPLACE INTO t VALUES (1);

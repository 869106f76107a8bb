-- @projection p
-- @version 1
-- @on E
DELETE FROM t WHERE a = ? AND b = $1;

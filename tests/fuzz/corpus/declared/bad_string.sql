-- @projection p
-- @version 1
-- @on E
DELETE FROM t WHERE a = 'x;

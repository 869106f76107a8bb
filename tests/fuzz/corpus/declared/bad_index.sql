-- @projection p
-- @version 1
-- @on E
DELETE FROM t WHERE a = :data.x[99999999999];

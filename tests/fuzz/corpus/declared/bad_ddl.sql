-- @projection p
-- @version 1
DROP TABLE t;

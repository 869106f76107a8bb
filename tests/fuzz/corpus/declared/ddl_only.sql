-- @projection p
-- @version 1
-- @mode inline
CREATE TABLE t (a TEXT PRIMARY KEY);
CREATE UNIQUE INDEX t_a ON t (a);

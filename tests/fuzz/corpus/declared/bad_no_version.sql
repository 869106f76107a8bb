-- @projection p
CREATE TABLE t (a);

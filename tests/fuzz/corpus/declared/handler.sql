-- @projection p
-- @version 1
CREATE TABLE t (a TEXT, v BIGINT);
-- @on E
INSERT INTO t (a, v) VALUES (:data.a, :version) ON CONFLICT (a) DO UPDATE SET v = excluded.v WHERE t.v < excluded.v;

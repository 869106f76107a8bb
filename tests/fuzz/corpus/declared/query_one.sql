-- @projection p
-- @version 1
-- @query q
-- @param id id required
-- @stream s-{id}
-- @result one
SELECT * FROM t WHERE a = :id;

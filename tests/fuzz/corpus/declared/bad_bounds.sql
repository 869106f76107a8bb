-- @projection p
-- @version 1
-- @query q
-- @param a int 9..1 required
-- @result one
SELECT :a;

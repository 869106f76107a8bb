-- @projection p
-- @version 1
-- @query q
-- @stream x-{nope}
-- @result one
SELECT 1;

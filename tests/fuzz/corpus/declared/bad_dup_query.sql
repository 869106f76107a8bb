-- @projection p
-- @version 1
-- @query q
-- @result list
SELECT 1;
-- @query q

-- @projection p
-- @version 1
-- @query q
-- @result list
-- @section a
SELECT 1;

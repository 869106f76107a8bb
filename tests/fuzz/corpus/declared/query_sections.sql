-- @projection p
-- @version 1
-- @query q
-- @result sections
-- @section one
SELECT 1;
-- @section two
WITH x AS (SELECT 2) SELECT * FROM x;

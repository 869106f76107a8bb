-- @projection p
-- @version 1
-- @query q
-- @param limit int 1..100 default 20
-- @param after text 0..64 default ''
-- @result page rows a
SELECT a FROM t WHERE a > :after ORDER BY a LIMIT :limit;

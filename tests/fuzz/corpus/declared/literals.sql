-- @projection p
-- @version 1
-- @on E
UPDATE t SET a = ':x; ?', "b:;" = :data.v::text /* :c; */ -- :d;
WHERE e = 'it''s';

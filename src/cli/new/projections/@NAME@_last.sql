-- @NAME@_last: the last entry of each @NAME@. Inline: applied by the
-- writer in the same transaction as the command's events (in events.db),
-- so it is up to date the moment the command is answered -- no
-- min_position needed. Keep inline read models small: they cost every
-- command a little time.
--
-- @projection @NAME@_last
-- @version 1
-- @mode inline

CREATE TABLE IF NOT EXISTS @NAME@_last (
    id      TEXT PRIMARY KEY,
    amount  BIGINT NOT NULL,
    note    TEXT,
    version BIGINT NOT NULL
);

-- @on @PASCAL@EntryRecorded
INSERT INTO @NAME@_last (id, amount, note, version)
VALUES (:data.id, :data.amount, :data.note, :version)
ON CONFLICT (id) DO UPDATE SET amount = excluded.amount,
    note = excluded.note, version = excluded.version
 WHERE @NAME@_last.version < excluded.version;

-- @query @NAME@_last
-- @param id id required
-- @result one
SELECT id, amount, note, version
  FROM @NAME@_last
 WHERE id = :id;

-- @NAME@_totals: one row per @NAME@ with its total and number of entries.
-- Asynchronous: applied by the projector thread just after the events
-- commit, in read.db. A client that wants to read its own write passes the
-- position the command answered: /queries/@NAME@_total?id=..&min_position=N
--
-- Idempotent: the insert happens once (ON CONFLICT DO NOTHING) and an
-- update only touches a row older than the event (version < :version).
--
-- @projection @NAME@_totals
-- @version 1
-- @mode async

CREATE TABLE IF NOT EXISTS @NAME@_totals (
    id         TEXT PRIMARY KEY,
    entries    BIGINT NOT NULL,
    total      BIGINT NOT NULL,
    opened_at  TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version    BIGINT NOT NULL
);

-- @on @PASCAL@Opened
INSERT INTO @NAME@_totals (id, entries, total, opened_at, updated_at, version)
VALUES (:data.id, 0, 0, :time, :time, :version)
ON CONFLICT (id) DO NOTHING;

-- @on @PASCAL@EntryRecorded
UPDATE @NAME@_totals
   SET entries = entries + 1, total = :data.total, updated_at = :time,
       version = :version
 WHERE id = :data.id AND version < :version;

-- @query @NAME@_total
-- @param id id required
-- @stream @NAME@-{id}
-- @result one
SELECT id, entries, total, opened_at, updated_at, version
  FROM @NAME@_totals
 WHERE id = :id;
